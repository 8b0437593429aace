"""The write-ahead journal of a durable plain store (sheep.store.journal,
sheep.store.journaled).

A power loss is simulated on copies of the store taken while it is open:
the object and record files of an earlier moment (what the disk held at the
last checkpoint), or any page-by-page mix of earlier and later (a partial
write-back), next to the journal as it was when the writes returned.  The
store opened on such a copy must read every acknowledged write, with every
block matching its record.
"""

import errno
import os
import random
import shutil
import threading

import pytest

from sheep.proto.errors import CODES, SdError
from sheep.store import journal as J
from sheep.store import meta as M
from sheep.store.plain import BLOCK, PlainStore

OID = 0x0000ABCD00000007
SIZE = 16 * BLOCK


def open_store(base, **kw) -> PlainStore:
    s = PlainStore(str(base), **kw)
    s.open()
    return s


def files(base):
    name = "%016x" % OID
    return base / "obj" / name, base / "meta" / name


def copy_store(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock"))


def mix_pages(old: bytes, new: bytes, rnd: random.Random) -> bytes:
    """What a partial write-back leaves: each 4 KiB page old or new."""
    assert len(old) == len(new)
    out = bytearray(new)
    for p in range(0, len(old), 4096):
        if rnd.random() < 0.5:
            out[p:p + 4096] = old[p:p + 4096]
    return bytes(out)


def crashed(tmp_path, before, after, tag, rnd=None):
    """A store dir: ``after``'s journal, object and record of ``before``
    (or a page mix of both with ``rnd``)."""
    dst = tmp_path / tag
    copy_store(after, dst)
    for b, d in zip(files(before), files(dst)):
        old = b.read_bytes()
        d.write_bytes(old if rnd is None else mix_pages(old, d.read_bytes(), rnd))
    return dst


def model_write(model: bytearray, off: int, data: bytes):
    model[off:off + len(data)] = data


# -- the codec ------------------------------------------------------------------


def test_entries_round_trip_and_anything_else_ends_the_journal():
    raw = J.encode(7, 3, OID, 99, 2, b"\1" * 16, b"x" * (BLOCK + 10))
    e, end = J.decode(raw, 0, 7, 3)
    assert (e.seq, e.oid, e.version, e.b0, e.pairs, e.data, end) == \
        (3, OID, 99, 2, b"\1" * 16, b"x" * (BLOCK + 10), len(raw))
    assert J.decode(raw, 0, 8, 3) is None  # another generation
    assert J.decode(raw, 0, 7, 4) is None  # not the next one
    assert J.decode(raw[:-1], 0, 7, 3) is None  # torn
    bad = bytearray(raw)
    bad[100] ^= 1
    assert J.decode(bytes(bad), 0, 7, 3) is None  # damaged


# -- crashes ----------------------------------------------------------------------


def test_a_write_is_durable_in_the_journal_alone(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, b"A" * SIZE, epoch=3)
    copy_store(base, tmp_path / "before")  # the object as synced by its create
    v = s.write(OID, b"B" * (2 * BLOCK + 10), BLOCK - 5, 3)
    copy_store(base, tmp_path / "after")
    s.close()
    for tag, rnd in (("none", None), ("mix1", random.Random(1)), ("mix2", random.Random(2))):
        c = open_store(crashed(tmp_path, tmp_path / "before", tmp_path / "after", tag, rnd))
        try:
            want = bytearray(b"A" * SIZE)
            model_write(want, BLOCK - 5, b"B" * (2 * BLOCK + 10))
            assert c.read(OID, 0, SIZE) == want
            assert c.verify(OID) == [] and c.version(OID) == v
        finally:
            c.close()


def test_random_writes_survive_any_partial_write_back(tmp_path):
    rnd = random.Random(5)
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    copy_store(base, tmp_path / "before")
    model = bytearray(SIZE)
    for i in range(60):
        off = rnd.randrange(SIZE - 1)
        data = bytes([i + 1]) * rnd.randrange(1, min(3 * BLOCK, SIZE - off))
        s.write(OID, data, off, 1)
        model_write(model, off, data)
    v = s.version(OID)
    copy_store(base, tmp_path / "after")
    s.close()
    for k in range(4):
        c = open_store(crashed(tmp_path, tmp_path / "before", tmp_path / "after", f"c{k}",
                               random.Random(k) if k else None))
        try:
            assert c.read(OID, 0, SIZE) == model
            assert c.verify(OID) == [] and c.version(OID) == v
            assert c._journal.entries_since_checkpoint() == 0  # replayed, then emptied
        finally:
            c.close()


def test_a_torn_tail_keeps_every_write_before_it(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    copy_store(base, tmp_path / "before")
    sizes = []
    for i in range(5):
        s.write(OID, bytes([i + 1]) * BLOCK, i * BLOCK, 1)
        sizes.append(s._journal.size)
    copy_store(base, tmp_path / "after")
    s.close()
    # the fourth entry torn: writes 4 and 5 were never acknowledged (nor applied)
    c_dir = crashed(tmp_path, tmp_path / "before", tmp_path / "after", "torn")
    with open(c_dir / "journal", "r+b") as f:
        f.truncate(sizes[3] - 7)
    c = open_store(c_dir)
    try:
        want = bytearray(SIZE)
        for i in range(3):
            want[i * BLOCK:(i + 1) * BLOCK] = bytes([i + 1]) * BLOCK
        assert c.read(OID, 0, SIZE) == want and c.verify(OID) == []
    finally:
        c.close()


def test_entries_of_an_older_generation_never_replay(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    for i in range(10):  # generation 1: ten entries of the same size
        s.write(OID, bytes([i + 1]) * BLOCK, 3 * BLOCK, 1)
    s._checkpoint()
    copy_store(base, tmp_path / "before")
    s.write(OID, b"a" * BLOCK, 3 * BLOCK, 1)
    s.write(OID, b"b" * BLOCK, 3 * BLOCK, 1)
    copy_store(base, tmp_path / "after")
    s.close()
    c = open_store(crashed(tmp_path, tmp_path / "before", tmp_path / "after", "gen"))
    try:  # entries 3..10 of generation 1 follow in the file: they must not replay
        assert c.read(OID, 3 * BLOCK, BLOCK) == b"b" * BLOCK and c.verify(OID) == []
    finally:
        c.close()


def test_one_damaged_header_copy_is_survived_two_refuse_to_start(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    copy_store(base, tmp_path / "before")
    for i in range(4):
        s.write(OID, bytes([i + 1]) * BLOCK, 0, 1)
    copy_store(base, tmp_path / "after")
    s.close()
    one = crashed(tmp_path, tmp_path / "before", tmp_path / "after", "one")
    with open(one / "journal", "r+b") as f:  # bit rot in the first copy
        f.write(b"junk")
    c = open_store(one)
    try:  # the second copy leads to the entries
        assert c.read(OID, 0, 1) == b"\4" and c.verify(OID) == []
    finally:
        c.close()
    both = crashed(tmp_path, tmp_path / "before", tmp_path / "after", "both")
    with open(both / "journal", "r+b") as f:
        for off in J.HDR_COPIES:
            f.seek(off)
            f.write(b"junk")
    with pytest.raises(SdError) as e:  # never drop entries that may be acknowledged
        open_store(both)
    assert e.value.code == CODES["EIO"] and "headers are damaged" in str(e.value)


def test_an_entry_made_of_client_data_never_replays(tmp_path):
    """Client data may hold bytes shaped like an entry; without the
    generation's random key it never counts (nor does an entry of no block)."""
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    s.write(OID, b"real" * 1024, 0, 1)
    raw = (base / "journal").read_bytes()
    gen, key = J.read_header(raw)
    first = J.decode(raw, J.HDR_SPACE, key, 1)
    assert first is not None
    for k in (key + 1, gen, gen + 1):  # a guessed key
        forged = J.encode(k, 2, OID + 1, 1 << 48, 0, M.pairs([0], [0]), b"x" * BLOCK)
        assert J.decode(raw[:first[1]] + forged, first[1], key, 2) is None
    empty = J.encode(key, 2, OID, 1 << 48, 0, b"", b"")
    assert J.decode(raw[:first[1]] + empty, first[1], key, 2) is None
    s.close()


def test_a_failed_sync_fails_every_later_write(tmp_path, monkeypatch):
    s = open_store(tmp_path / "base")
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    real = os.fdatasync
    fails = [1]

    def flaky(fd):
        if fails:
            fails.pop()
            raise OSError(errno.ENOSPC, "no space")
        real(fd)
    monkeypatch.setattr(os, "fdatasync", flaky)
    with pytest.raises(SdError) as e:
        s.write(OID, b"a" * BLOCK, 0, 1)
    assert e.value.code == CODES["EIO"]
    # the kernel may have dropped the failed pages: nothing after may be acknowledged
    with pytest.raises(SdError) as e:
        s.write(OID, b"b" * BLOCK, BLOCK, 1)
    assert e.value.code == CODES["EIO"] and "failed earlier" in str(e.value)
    monkeypatch.undo()
    j, s._journal = s._journal, None  # (the daemon leaves, restarts, replays)
    j.close()
    s.close()


@pytest.mark.parametrize("change", ["move_to_stale", "remove", "create", "install"])
def test_no_entry_replays_over_a_later_change_of_its_object(tmp_path, change):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    s.write(OID, b"old" * 100, 0, 1)  # journaled
    assert s._journal.pending(OID)
    if change == "move_to_stale":
        s.move_to_stale(OID, 1)
    elif change == "remove":
        s.remove(OID)
    if change == "install":
        s.install(OID, SIZE, b"new".ljust(SIZE, b"\0"), M.make_version(9, 1))
    else:
        s.create_and_write(OID, SIZE, b"new", epoch=2)
    assert not s._journal.pending(OID)  # checkpointed first
    copy_store(base, tmp_path / "after")
    s.close()
    c = open_store(tmp_path / "after")
    try:
        assert c.read(OID, 0, 3) == b"new" and c.verify(OID) == []
        if change == "move_to_stale":  # the stale copy holds the journaled write
            assert c.read_stale(OID, 1)[1][:6] == b"oldold"
    finally:
        c.close()


def test_a_full_journal_checkpoints_and_writes_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(J, "LIMIT", 8 * BLOCK)
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    model = bytearray(SIZE)
    for i in range(40):
        data = bytes([i + 1]) * BLOCK
        s.write(OID, data, (i % 16) * BLOCK, 1)
        model_write(model, (i % 16) * BLOCK, data)
        assert s._journal.size <= 8 * BLOCK + BLOCK + 256
    copy_store(base, tmp_path / "after")
    s.close()
    c = open_store(tmp_path / "after")
    try:
        assert c.read(OID, 0, SIZE) == model and c.verify(OID) == []
    finally:
        c.close()


def test_concurrent_writers_share_syncs(tmp_path, monkeypatch):
    base = tmp_path / "base"
    s = open_store(base)
    oids = [OID + i for i in range(8)]
    for o in oids:
        s.create_and_write(o, SIZE, bytes(SIZE), epoch=1)
    calls = []
    real = os.fdatasync
    gate = threading.Barrier(8)

    def slow_sync(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fdatasync", slow_sync)

    def writer(o):
        gate.wait()
        for i in range(20):
            s.write(o, bytes([i + 1]) * BLOCK, (i % 16) * BLOCK, 1)
    ts = [threading.Thread(target=writer, args=(o,)) for o in oids]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    try:
        assert len(calls) < 8 * 20  # fewer syncs than writes: they were shared
        for o in oids:
            assert s.read(o, 15 * BLOCK, 1) == bytes([16]) and s.verify(o) == []
    finally:
        s.close()


def test_a_nosync_start_replays_a_durable_runs_journal(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    copy_store(base, tmp_path / "before")
    s.write(OID, b"kept", 0, 1)
    copy_store(base, tmp_path / "after")
    s.close()
    c = open_store(crashed(tmp_path, tmp_path / "before", tmp_path / "after", "n"), nosync=True)
    try:
        assert c.read(OID, 0, 4) == b"kept" and c.verify(OID) == []
        assert c._journal is None  # -n writes take no journal
    finally:
        c.close()


def test_several_disks_write_without_the_journal(tmp_path):
    s = open_store(tmp_path / "base", extra_dirs=[str(tmp_path / "d1"), str(tmp_path / "d2")])
    try:
        s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
        s.write(OID, b"md", 0, 1)
        assert not s._journal.pending(OID) and s._journal.entries_since_checkpoint() == 0
        assert s.read(OID, 0, 2) == b"md"
    finally:
        s.close()


def test_a_large_write_goes_direct_unless_the_object_has_entries(tmp_path):
    base = tmp_path / "base"
    s = open_store(base)
    big = 128 * BLOCK  # writes of half of it: 256 KiB, more than DIRECT_MIN
    s.create_and_write(OID, big, bytes(big), epoch=1)
    s.write(OID, b"L" * (big // 2), 0, 1)  # direct: record, sync, data, sync
    assert not s._journal.pending(OID)
    s.write(OID, b"s", 0, 1)  # journaled
    copy_store(base, tmp_path / "before")
    s.write(OID, b"M" * (big // 2), 0, 1)  # after an entry: journaled too
    assert s._journal.entries_since_checkpoint() == 2
    copy_store(base, tmp_path / "after")
    s.close()
    c = open_store(crashed(tmp_path, tmp_path / "before", tmp_path / "after", "big"))
    try:  # the entry before it must not replay over it: the big one did too
        assert c.read(OID, 0, big // 2) == b"M" * (big // 2) and c.verify(OID) == []
    finally:
        c.close()


# -- a full disk ------------------------------------------------------------------


def test_the_journal_reserves_its_space_without_growing(tmp_path):
    s = open_store(tmp_path / "base")
    try:
        st = os.stat(tmp_path / "base" / "journal")
        assert s._journal.reserved
        assert st.st_blocks * 512 >= J.LIMIT + J.GROW  # blocks held for the whole journal
        assert st.st_size < J.LIMIT  # ... while the zeros are still written 4 MiB at a time
    finally:
        s.close()


def test_a_journal_that_cannot_grow_checkpoints_or_goes_direct(tmp_path, monkeypatch):
    """A disk full before the journal could reserve its space: a write
    needing a growth step checkpoints and reuses the zeros already written;
    with none written (a new journal), it goes direct (an overwrite needs no
    new block).  The journal stays healthy, nothing is lost across a crash."""
    monkeypatch.setattr(J, "reserve", lambda fd, length: False)  # the disk was nearly full
    real = J._pwrite_all
    full = [True]

    def pwrite(fd, data, off):
        if full[0] and len(data) >= J.GROW and not any(data[:4096]):  # a growth step's zeros
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, off)
    monkeypatch.setattr(J, "_pwrite_all", pwrite)
    base = tmp_path / "base"
    s = open_store(base)
    j = s._journal
    assert not j.reserved
    s.create_and_write(OID, SIZE, bytes(SIZE), epoch=1)
    other = OID + 1
    s.create_and_write(other, SIZE, bytes(SIZE), epoch=1)
    model, model2 = bytearray(SIZE), bytearray(SIZE)
    # a new journal holds no zeros: the write goes direct
    s.write(OID, b"d" * (BLOCK + 7), 3, 1)
    model_write(model, 3, b"d" * (BLOCK + 7))
    assert j.entries_since_checkpoint() == 0 and not j.pending(OID)
    full[0] = False  # room for one growth step, then full again
    s.write(OID, b"j" * BLOCK, 0, 1)
    model_write(model, 0, b"j" * BLOCK)
    assert j.pending(OID)
    full[0] = True
    j._allocated = j.size  # its zeros used up: the next write checkpoints and reuses them
    v = s.write(other, b"e" * 100, BLOCK, 1)
    model_write(model2, BLOCK, b"e" * 100)
    assert not j.pending(OID) and j.pending(other) and j.entries_since_checkpoint() == 1
    s.write(OID, b"f" * BLOCK, 2 * BLOCK, 1)
    model_write(model, 2 * BLOCK, b"f" * BLOCK)
    assert j.pending(OID)
    copy_store(base, tmp_path / "after")  # a crash now
    s.close()
    monkeypatch.undo()
    c = open_store(tmp_path / "after")
    try:
        assert c.read(OID, 0, SIZE) == model and c.read(other, 0, SIZE) == model2
        assert c.verify(OID) == [] and c.verify(other) == [] and c.version(other) == v
    finally:
        c.close()


def test_no_reservation_takes_a_nearly_full_disks_last_blocks(tmp_path, monkeypatch):
    fd = os.open(tmp_path / "j", os.O_RDWR | os.O_CREAT)
    try:
        vfs = os.fstatvfs(fd)
        free = vfs.f_bavail * vfs.f_frsize
        assert not J.reserve(fd, free)  # more than half the free space: not even tried
        assert os.fstat(fd).st_blocks == 0
        assert J.reserve(fd, 1 << 20) and os.fstat(fd).st_blocks * 512 >= 1 << 20
    finally:
        os.close(fd)
