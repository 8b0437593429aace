"""sheep.store.md_disks: plug, unplug and lost disks of a multi-disk PlainStore
(real directories; the placement is checked against sheep.store.md)."""

import os
import shutil

import pytest

from sheep.store import md
from sheep.store.basedir import err
from sheep.store.plain import BLOCK, PlainStore


def _data(o: int) -> bytes:
    return o.to_bytes(8, "little") * (BLOCK // 8)


@pytest.fixture
def md_store(tmp_path):
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(3)]
    s = PlainStore(base, disks[:2], nosync=True)
    s.open()
    yield s, base, disks
    s.close()


def _where(disks, o):
    return [d for d in disks if os.path.exists(os.path.join(d, "%016x" % o))]


def _check_home(s, disks, oids):
    place = md.Placement(s.md_disks())
    paths = [p for p, _ in s.md_disks()]
    for o in oids:
        assert _where(disks, o) == [paths[place.disk_of(o)]], hex(o)
        assert s.read(o, 0, BLOCK) == _data(o)


def test_plug_moves_objects_home_and_keeps_versions(md_store):
    s, _base, disks = md_store
    oids = list(range(1, 60))
    versions = {o: s.create_and_write(o, BLOCK, _data(o), epoch=3) for o in oids}
    _check_home(s, disks, oids)
    # a stale leftover on the disk to plug is purged (it could be older)
    os.makedirs(disks[2])
    with open(os.path.join(disks[2], "%016x" % oids[0]), "wb") as f:
        f.write(b"old" * 100)
    assert s.md_plug([disks[2], disks[0]]) == [disks[2]]  # disks[0]: duplicate
    # before the move: every object still reads (looked up across disks)
    for o in oids:
        assert s.read(o, 0, BLOCK) == _data(o)
    assert s.md_rebalance() == 0
    _check_home(s, disks, oids)
    assert any(_where(disks, o) == [disks[2]] for o in oids)
    assert {o: s.version(o) for o in oids} == versions
    assert s.capacity() == sum(sp for _, sp in s.md_disks())
    assert len(s.md_info()) == 3


def test_unplug_drains_live_and_stale_copies(md_store):
    s, _base, disks = md_store
    oids = list(range(1, 60))
    for o in oids:
        s.create_and_write(o, BLOCK, _data(o))
    stale = [o for o in oids if _where(disks, o) == [disks[1]]][:3]
    assert stale
    s.move_many_to_stale(stale, 7)
    space = s.capacity()
    assert s.md_unplug([disks[1]]) == [disks[1]]
    assert s.md_disks() == [(disks[0], md.disk_space(disks[0]))]
    assert s.capacity() < space
    live = [o for o in oids if o not in stale]
    for o in live:
        assert _where(disks, o) == [disks[0]]
        assert s.read(o, 0, BLOCK) == _data(o)
    for o in stale:
        assert s.read_stale(o, 7)[1] == _data(o)
        assert not os.listdir(os.path.join(disks[1], ".stale"))
    assert s.md_unplug([disks[0]]) == []  # never the last disk


def test_lost_disk_is_dropped_and_its_objects_are_absent(md_store):
    s, _base, disks = md_store
    oids = list(range(1, 60))
    for o in oids:
        s.create_and_write(o, BLOCK, _data(o))
    on_lost = [o for o in oids if _where(disks, o) == [disks[1]]]
    assert on_lost
    shutil.rmtree(disks[1])
    assert s.healthy() is None  # not fatal: one disk of two
    assert s.drop_lost_disks() == ([disks[1]], False)
    assert [p for p, _ in s.md_disks()] == [disks[0]]
    assert set(s.list_oids()) == set(oids) - set(on_lost)
    for o in on_lost:
        assert not s.exists(o)
        s.create_and_write(o, BLOCK, _data(o))  # recovered copies go to a live disk
        assert _where(disks, o) == [disks[0]]
    shutil.rmtree(disks[0])
    assert s.drop_lost_disks() == ([], True)  # the last disk: the node must leave


def test_duplicate_after_interrupted_move_is_dropped_at_open(tmp_path):
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    o = 0x00A0390700000001
    s.create_and_write(o, BLOCK, _data(o))
    home = _where(disks, o)[0]
    other = disks[1 - disks.index(home)]
    for sub in ("", ".meta"):
        shutil.copyfile(os.path.join(home, sub, "%016x" % o), os.path.join(other, sub, "%016x" % o))
    s.close()
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        assert _where(disks, o) == [home]
        assert s.read(o, 0, BLOCK) == _data(o)
    finally:
        s.close()


def test_base_dir_as_disk_is_refused(tmp_path):
    other = tmp_path / "other"
    (other / "epoch").mkdir(parents=True)
    (other / "config").write_bytes(b"\0" * 40)
    s = PlainStore(str(tmp_path / "base"), [str(tmp_path / "d0"), str(other)], nosync=True)
    with pytest.raises(type(err("INVALID_PARMS", ""))):
        s.open()
    s.close()


def test_dropped_disk_coming_back_is_purged(tmp_path):
    """A disk lost (or unplugged) and given again later may hold copies that
    missed writes: it comes back empty."""
    base = str(tmp_path / "base")
    disks = [str(tmp_path / f"d{i}") for i in range(2)]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    oids = list(range(1, 30))
    for o in oids:
        s.create_and_write(o, BLOCK, _data(o))
    victim = disks[1]
    on_victim = [o for o in oids if _where(disks, o) == [victim]]
    assert on_victim
    saved = str(tmp_path / "saved")
    shutil.copytree(victim, saved)
    shutil.rmtree(victim)
    assert s.drop_lost_disks()[0] == [victim]
    s.close()
    shutil.copytree(saved, victim)  # the disk is back, with its old copies
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        assert set(s.list_oids()) == set(oids) - set(on_victim)
        assert not [n for n in os.listdir(victim) if not n.startswith(".")]
        assert not os.listdir(os.path.join(victim, ".meta", "stale"))
    finally:
        s.close()
    with open(os.path.join(base, "md_dropped")) as f:
        assert f.read() == ""  # purged once: the list is cleared
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        s.create_and_write(on_victim[0], BLOCK, _data(on_victim[0]))
        s.close()
        s.open()
        assert s.exists(on_victim[0])
    finally:
        s.close()


def test_md_info_lists_disks_in_path_order(tmp_path):
    base = str(tmp_path / "base")
    disks = [str(tmp_path / n) for n in ("zz", "aa", "mm")]
    s = PlainStore(base, disks, nosync=True)
    s.open()
    try:
        s.create_and_write(1, BLOCK, _data(1))
        info = s.md_info()
        assert [p for p, _, _ in info] == sorted(disks)
        assert sum(u for _, _, u in info) >= BLOCK and all(f > 0 for _, f, _ in info)
    finally:
        s.close()
