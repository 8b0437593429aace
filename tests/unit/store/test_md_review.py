"""Adversarial review of the multi-disk store (sheep.store.md_disks): what a
changed disk list, a plug of a wrong path or a full disk may do to copies."""

import errno
import os

import pytest

from sheep.store import md
from sheep.store.plain import BLOCK, PlainStore


def _data(o: int, tag: bytes = b"v") -> bytes:
    return (tag + o.to_bytes(7, "little")) * (BLOCK // 8)


def _where(disks, o):
    return [d for d in disks if os.path.exists(os.path.join(d, "%016x" % o))]


def _homed_on(disks, want, n=200):
    """oids (from 1) whose home among ``disks`` is ``disks[want]``."""
    place = md.Placement([(d, md.disk_space(d)) for d in disks])
    return [o for o in range(1, n) if place.disk_of(o) == want]


def test_duplicate_at_open_keeps_the_newest_copy_not_the_home_one(tmp_path):
    """A node ran with a plugged disk D3 (objects moved there), was restarted
    with its command line (D1,D2: D3 is not remembered), got newer copies of
    those objects (recovery, writes), then was started with D3 given again.
    D3 was never dropped, so it is not purged: its copies are older than the
    ones on D1/D2.  The start-up de-duplication must keep the newest copy —
    keeping the home one (D3) replaces an acknowledged write by an older copy."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(3)]
    for d in disks:
        os.makedirs(d)
    s = PlainStore(base, disks[:2], nosync=True)
    s.open()
    oids = _homed_on(disks, 2)[:5]
    assert oids
    for o in oids:
        s.create_and_write(o, BLOCK, _data(o, b"o"), epoch=2)
    assert s.md_plug([disks[2]]) == [disks[2]]
    assert s.md_rebalance() == 0
    assert all(_where(disks, o) == [disks[2]] for o in oids)
    s.close()

    s = PlainStore(base, disks[:2], nosync=True)  # restarted with the command line
    s.open()
    new = {}
    for o in oids:
        assert not s.exists(o)  # on the forgotten disk
        s.install(o, BLOCK, _data(o, b"o"), (3 << 32) | 1)  # recovered from a peer
        new[o] = s.write(o, _data(o, b"n"), 0, epoch=3)  # then an acknowledged write
    s.close()
    # (BASE/md_set now purges a disk left out like this one: without it — a
    # store from before md_set — the de-duplication must still be right)
    for f in ("md_set", "md_dropped"):
        if os.path.exists(os.path.join(base, f)):
            os.unlink(os.path.join(base, f))

    s = PlainStore(base, disks, nosync=True)  # the plugged disk given again
    s.open()
    try:
        for o in oids:
            assert s.version(o) == new[o], hex(o)
            assert s.read(o, 0, BLOCK) == _data(o, b"n"), hex(o)
    finally:
        s.close()


@pytest.mark.parametrize("inside", ["epoch", "disk-stale", "disk-meta"])
def test_plug_refuses_a_directory_of_the_store_itself(tmp_path, inside):
    """MD_PLUG purges the directory it adds.  A path inside the base
    directory (its epoch logs, its records) or inside one of the node's own
    disks (their records in .meta) must be refused, not purged."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        oids = list(range(1, 20))
        vers = {o: s.create_and_write(o, BLOCK, _data(o), epoch=5) for o in oids}
        s.move_many_to_stale([o for o in oids if _where(disks, o) == [disks[0]]][:2], 4)
        s.write_file("epoch/00000001", b"x" * 16)
        target = {"epoch": os.path.join(base, "epoch"),
                  "disk-stale": os.path.join(disks[0], ".stale"),
                  "disk-meta": os.path.join(disks[0], ".meta")}[inside]
        before = sorted(os.listdir(target))
        assert s.md_plug([target]) == []
        assert sorted(os.listdir(target)) == before
        stale = s.list_stale()
        assert stale
        live = [o for o in oids if o not in stale]
        assert {o: s.version(o) for o in live} == {o: vers[o] for o in live}  # no record lost
        for o in stale:
            assert s.read_stale(o, 4) == (vers[o], _data(o))
    finally:
        s.close()


def test_a_full_disk_is_not_a_lost_disk(tmp_path, monkeypatch):
    """The write probe of ``drop_lost_disks(deep=True)`` (run on any EIO, e.g.
    one damaged block) must not drop a disk only because it is full: its
    objects are all good."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        for o in range(1, 20):
            s.create_and_write(o, BLOCK, _data(o))
        real_write = os.write

        def write(fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(disks[1]):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)
        monkeypatch.setattr(os, "write", write)
        assert s.drop_lost_disks(deep=True) == ([], False)
        assert [p for p, _ in s.md_disks()] == disks
    finally:
        monkeypatch.undo()
        s.close()


def test_an_empty_mountpoint_left_by_an_unmounted_disk_is_a_lost_disk(tmp_path):
    """A failed disk that was unmounted leaves its mountpoint: an empty,
    writable directory.  Its objects are gone just as if it had vanished."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        oids = list(range(1, 30))
        for o in oids:
            s.create_and_write(o, BLOCK, _data(o))
        os.rename(disks[1], disks[1] + ".gone")
        os.mkdir(disks[1])  # the mountpoint
        assert s.drop_lost_disks(deep=True)[0] == [disks[1]]
        assert [p for p, _ in s.md_disks()] == [disks[0]]
    finally:
        s.close()


def test_kill_during_unplug_drain_loses_no_copy(tmp_path, monkeypatch):
    """kill -9 in the middle of an unplug's drain, then a restart with the
    same command line: the copies not moved yet must still be there (they
    are this node's only copies of those objects: purging them leaves the
    node a present holder without its copy, and recovery then calls an
    object "absent" if its other holders are away)."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(3)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    oids = list(range(1, 80))
    vers = {o: s.create_and_write(o, BLOCK, _data(o), epoch=4) for o in oids}
    victim = disks[2]
    on_victim = [o for o in oids if _where(disks, o) == [victim]]
    assert len(on_victim) >= 4
    real, moved = s._relocate, []

    def relocate(oid):
        if len(moved) == 2:
            raise KeyboardInterrupt  # the process dies here (kill -9)
        done = real(oid)
        if done:
            moved.append(oid)
        return done
    monkeypatch.setattr(s, "_relocate", relocate)
    with pytest.raises(KeyboardInterrupt):
        s.md_unplug([victim])
    s.close()  # (what a restart sees: the directories as they are)
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        assert set(s.list_oids()) == set(oids)
        for o in oids:
            assert s.version(o) == vers[o], hex(o)
            assert s.read(o, 0, BLOCK) == _data(o)
    finally:
        s.close()


def test_plug_refuses_another_name_of_a_disk_in_the_set(tmp_path):
    """A symlink (or bind path) to one of the node's disks is the same disk:
    plugging it must not purge it."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        oids = list(range(1, 30))
        vers = {o: s.create_and_write(o, BLOCK, _data(o), epoch=5) for o in oids}
        link = str(tmp_path / "alias")
        os.symlink(disks[0], link)
        assert s.md_plug([link]) == []
        assert set(s.list_oids()) == set(oids)
        assert {o: s.version(o) for o in oids} == vers
    finally:
        s.close()


def test_a_disk_left_out_of_a_start_comes_back_purged(tmp_path):
    """A plugged disk is not on the command line: a restart leaves it out
    (as in 1.0), and the node carries on without its copies (recovered from
    peers, written further).  Given again later, its copies may miss those
    writes — an object found only there must not come back as a live copy
    of its old version (it would be served, and never recovered)."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(3)]
    for d in disks:
        os.makedirs(d)
    s = PlainStore(base, disks[:2], nosync=True)
    s.open()
    oids = _homed_on(disks, 2)[:5]
    for o in oids:
        s.create_and_write(o, BLOCK, _data(o, b"o"), epoch=2)
    assert s.md_plug([disks[2]]) == [disks[2]]
    assert s.md_rebalance() == 0
    assert all(_where(disks, o) == [disks[2]] for o in oids)
    s.close()
    s = PlainStore(base, disks[:2], nosync=True)  # restarted with the command line
    s.open()
    assert not any(s.exists(o) for o in oids)
    s.close()
    s = PlainStore(base, disks, nosync=True)  # the plugged disk given again
    s.open()
    try:
        assert not any(s.exists(o) for o in oids)
        assert not [n for n in os.listdir(disks[2]) if not n.startswith(".")]
    finally:
        s.close()
