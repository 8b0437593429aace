"""PlainStore on real files (docs/protocol.md §15, §16; docs/data-safety.md)."""

import errno
import os
import struct
import subprocess
import sys
import threading

import pytest

from sheep.proto.errors import CODES, SdError
from sheep.store.base import Store
from sheep.store.plain import BLOCK, HDR_LEN, PlainStore

OID = 0x0000ABCD00000007
INODE_OID = 0x80ABCD0000000000
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def code_of(excinfo):
    return excinfo.value.code


@pytest.fixture
def store(tmp_path):
    s = PlainStore(str(tmp_path / "base"), nosync=True)
    s.open()
    yield s
    s.close()


def obj_path(tmp_path, oid, root="base"):
    return tmp_path / root / "obj" / ("%016x" % oid)


def pattern(n, seed=1):
    return bytes((i * 7 + seed * 13 + (i >> 8)) & 0xFF for i in range(n))


def test_is_a_store(store):
    assert isinstance(store, Store)


def test_layout_created(tmp_path, store):
    base = tmp_path / "base"
    for p in ("epoch", "obj", "obj/.stale", "meta", "meta/stale", "lock"):
        assert (base / p).exists(), p
    # Sheepdog 1.0's layout: obj/ holds only object files and .stale/
    assert os.listdir(base / "obj") == [".stale"]


# -- objects: round trips ---------------------------------------------------

@pytest.mark.parametrize("size", [4 * 1024 * 1024, 66320, 12587576, 100])
def test_create_read_round_trip_and_zeros(store, tmp_path, size):
    data = pattern(min(10000, size // 2), 3)
    off = size // 3 + 1
    store.create_and_write(OID, size, data, off, sparse=size == 12587576)
    assert os.path.getsize(obj_path(tmp_path, OID)) == size
    assert store.object_size(OID) == size
    assert store.read(OID, off, len(data)) == data
    assert store.read(OID, 0, off) == bytes(off)  # never written: zeros
    tail = size - off - len(data)
    assert store.read(OID, off + len(data), tail) == bytes(tail)
    whole = store.read(OID, 0, size)
    assert whole == bytes(off) + data + bytes(tail)
    assert store.verify(OID) == []


@pytest.mark.parametrize("off,length", [
    (0, 1), (1, 1), (4095, 2), (4096, 4096), (100, 9000), (4000, 4096 * 3 + 17),
    (66320 - 1, 1), (66320 - 5000, 5000), (0, 66320), (8191, 1), (12288, 4096 * 2),
])
def test_write_arbitrary_ranges(store, off, length):
    size = 66320  # not a multiple of 4 KiB: last block is short
    base = bytearray(pattern(size, 5))
    store.create_and_write(OID, size, bytes(base))
    new = pattern(length, 9)
    store.write(OID, new, off)
    base[off:off + length] = new
    assert store.read(OID, 0, size) == bytes(base)
    # Reads of sub-ranges around the write, at arbitrary alignment.
    for o, n in [(off, length), (max(0, off - 3), min(size - max(0, off - 3), length + 6)),
                 (size - 1, 1), (0, 1)]:
        assert store.read(OID, o, n) == bytes(base[o:o + n])
    assert store.verify(OID) == []


def test_write_accepts_memoryview_and_bytearray(store):
    store.create_and_write(OID, 3 * BLOCK)
    store.write(OID, memoryview(b"abcdef")[1:4], 10)
    store.write(OID, bytearray(b"XY"), BLOCK * 2 + 5)
    assert store.read(OID, 9, 5) == b"\0bcd\0"
    assert store.read(OID, BLOCK * 2 + 4, 4) == b"\0XY\0"


def test_zero_length_ops(store):
    store.create_and_write(OID, BLOCK)
    assert store.read(OID, BLOCK, 0) == b""
    store.write(OID, b"", 0)
    assert store.read(OID, 0, BLOCK) == bytes(BLOCK)


def test_sparse_create_is_sparse(store, tmp_path):
    store.create_and_write(INODE_OID, 12587576, b"hdr", 0, sparse=True)
    st = os.stat(obj_path(tmp_path, INODE_OID))
    assert st.st_blocks * 512 < 1024 * 1024
    assert store.read(INODE_OID, 0, 4) == b"hdr\0"


# -- atomic create ------------------------------------------------------------

def test_create_leaves_no_tmp(store, tmp_path):
    store.create_and_write(OID, 4 * 1024 * 1024, b"x" * 5000, 123)
    names = os.listdir(tmp_path / "base" / "obj")
    assert "%016x" % OID in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert not [n for n in os.listdir(tmp_path / "base" / "meta") if n.endswith(".tmp")]


def test_stale_tmp_removed_on_open(tmp_path):
    objdir = tmp_path / "base" / "obj"
    objdir.mkdir(parents=True)
    (objdir / ("%016x.tmp" % OID)).write_bytes(b"half written")
    (objdir / "0000000000000001").write_bytes(b"orphan")  # object w/o record stays
    s = PlainStore(str(tmp_path / "base"), nosync=True)
    s.open()
    try:
        assert not (objdir / ("%016x.tmp" % OID)).exists()
        assert (objdir / "0000000000000001").exists()
        s.create_and_write(OID, BLOCK, b"ok")
        assert s.read(OID, 0, 2) == b"ok"
    finally:
        s.close()


def test_leftover_tmp_does_not_swallow_a_create(store, tmp_path):
    # Sheepdog 1.0 reports success without writing when <name>.tmp exists (a
    # create "in progress").  Creates of one object are serialised by the
    # object's lock here, so a .tmp can only be a leftover: it is replaced and
    # the create really happens.
    tmp = tmp_path / "base" / "obj" / ("%016x.tmp" % OID)
    tmp.write_bytes(b"")
    store.create_and_write(OID, BLOCK, b"zz")
    assert not tmp.exists() and store.read(OID, 0, 2) == b"zz"


def test_create_replaces_existing_object(store, tmp_path):
    store.create_and_write(OID, 2 * BLOCK, b"A" * (2 * BLOCK))
    ino_before = os.stat(obj_path(tmp_path, OID)).st_ino
    store.create_and_write(OID, 3 * BLOCK, b"B" * 10, BLOCK)
    assert os.stat(obj_path(tmp_path, OID)).st_ino != ino_before  # renamed over
    assert store.object_size(OID) == 3 * BLOCK
    assert store.read(OID, 0, 3 * BLOCK) == bytes(BLOCK) + b"B" * 10 + bytes(2 * BLOCK - 10)
    assert store.verify(OID) == []


def test_create_invalid_parms(store, tmp_path):
    with pytest.raises(SdError) as ei:
        store.create_and_write(OID, BLOCK, b"x" * 10, BLOCK - 5)
    assert code_of(ei) == CODES["INVALID_PARMS"]
    assert not store.exists(OID)
    assert set(os.listdir(tmp_path / "base" / "obj")) == {".stale"}
    assert set(os.listdir(tmp_path / "base" / "meta")) == {"stale"}


# -- integrity ---------------------------------------------------------------------

def flip_byte(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x40]))


def test_corruption_detected_on_read_and_verify(store, tmp_path):
    size = 8 * BLOCK
    data = pattern(size, 2)
    store.create_and_write(OID, size, data)
    assert store.read(OID, 0, size) == data  # warm the checksum cache
    flip_byte(obj_path(tmp_path, OID), 3 * BLOCK + 100)
    for off, n in [(3 * BLOCK, BLOCK), (3 * BLOCK + 100, 1), (0, size), (2 * BLOCK + 4000, 200)]:
        with pytest.raises(SdError) as ei:
            store.read(OID, off, n)
        assert code_of(ei) == CODES["EIO"]
        assert "%016x" % OID in str(ei.value) and "block 3" in str(ei.value)
    assert store.read(OID, 0, 3 * BLOCK) == data[:3 * BLOCK]
    assert store.read(OID, 4 * BLOCK, 4 * BLOCK) == data[4 * BLOCK:]
    assert store.verify(OID) == [3]
    # A partial write into the bad block is refused (it would bless bad bytes) ...
    with pytest.raises(SdError) as ei:
        store.write(OID, b"q", 3 * BLOCK + 5)
    assert code_of(ei) == CODES["EIO"]
    # ... while rewriting the whole block repairs it.
    store.write(OID, data[3 * BLOCK:4 * BLOCK], 3 * BLOCK)
    assert store.verify(OID) == []
    assert store.read(OID, 0, size) == data


def test_corruption_detected_with_fresh_store(tmp_path):
    s = PlainStore(str(tmp_path / "base"), nosync=True)
    s.open()
    s.create_and_write(OID, 3 * BLOCK + 10, pattern(3 * BLOCK + 10))
    s.close()
    flip_byte(obj_path(tmp_path, OID), 3 * BLOCK + 9)  # in the short last block
    s = PlainStore(str(tmp_path / "base"), nosync=True)
    s.open()
    try:
        with pytest.raises(SdError) as ei:
            s.read(OID, 3 * BLOCK, 10)
        assert code_of(ei) == CODES["EIO"]
        assert s.read(OID, 0, 3 * BLOCK) == pattern(3 * BLOCK + 10)[:3 * BLOCK]
        assert s.verify(OID) == [3]
    finally:
        s.close()


def test_record_format_and_damaged_record_is_eio(store, tmp_path):
    store.create_and_write(OID, 2 * BLOCK, b"abc", epoch=4)
    rec = tmp_path / "base" / "meta" / ("%016x" % OID)
    raw = rec.read_bytes()
    assert raw[:4] == b"SDMD" and len(raw) == HDR_LEN + 2 * 8
    assert struct.unpack_from("<HHIIQ", raw, 4) == (2, HDR_LEN, BLOCK, 2, 4 << 32 | 1)
    # A damaged record (here: its header checksum) makes the copy EIO: it is
    # repaired from another replica, never trusted.
    bad = bytearray(raw)
    bad[17] ^= 1
    rec.write_bytes(bytes(bad))
    p = obj_path(tmp_path, OID)
    tmpf = str(p) + ".new"  # new inode: the cached record is not used
    with open(tmpf, "wb") as f:
        f.write(open(p, "rb").read())
    os.replace(tmpf, p)
    with pytest.raises(SdError) as ei:
        store.read(OID, 0, 3)
    assert code_of(ei) == CODES["EIO"]
    assert store.verify(OID) == [0, 1]


def test_copy_without_record_is_rebuilt_not_refused(store, tmp_path):
    # An operator moved object files in by hand: the record is computed from
    # the data (version 0 = unknown) and the copy is served.
    store.create_and_write(OID, 2 * BLOCK, b"hand-moved", epoch=2)
    (tmp_path / "base" / "meta" / ("%016x" % OID)).unlink()
    p = obj_path(tmp_path, OID)
    os.replace(p, str(p) + ".x")
    os.replace(str(p) + ".x", p)
    s2 = PlainStore(str(tmp_path / "base"), nosync=True)  # no cache
    assert s2.read(OID, 0, 10) == b"hand-moved"
    assert s2.version(OID) == 0
    assert (tmp_path / "base" / "meta" / ("%016x" % OID)).exists()
    assert s2.verify(OID) == []


def test_deleted_behind_back_is_no_obj(store, tmp_path):
    store.create_and_write(OID, BLOCK, b"data")
    assert store.read(OID, 0, 4) == b"data"
    os.unlink(obj_path(tmp_path, OID))
    for call in (lambda: store.read(OID, 0, 4), lambda: store.write(OID, b"x", 0),
                 lambda: store.verify(OID)):
        with pytest.raises(SdError) as ei:
            call()
        assert code_of(ei) == CODES["NO_OBJ"]
    assert not store.exists(OID) and store.object_size(OID) is None


def test_no_obj_and_invalid_parms(store):
    for call in (lambda: store.read(OID, 0, 1), lambda: store.write(OID, b"x", 0),
                 lambda: store.remove(OID)):
        with pytest.raises(SdError) as ei:
            call()
        assert code_of(ei) == CODES["NO_OBJ"]
    store.create_and_write(OID, BLOCK)
    for call in (lambda: store.read(OID, BLOCK - 1, 2), lambda: store.read(OID, -1, 1),
                 lambda: store.write(OID, b"xy", BLOCK - 1), lambda: store.write(OID, b"x", -1)):
        with pytest.raises(SdError) as ei:
            call()
        assert code_of(ei) == CODES["INVALID_PARMS"]
    assert store.read(OID, 0, BLOCK) == bytes(BLOCK)


def test_remove_list_used_wipe(store, tmp_path):
    oids = [0x10, 0x0000000200000003, INODE_OID]
    for o in oids:
        store.create_and_write(o, 2 * BLOCK, b"k")
    objdir = tmp_path / "base" / "obj"
    for junk in ("0000000000000000", "zzzz", "abc", "00000000000000010", ".hidden"):
        (objdir / junk).write_bytes(b"junk")
    (objdir / ".stale" / "0000000000000010.3").write_bytes(b"stale")
    assert store.list_oids() == sorted(oids)
    assert store.used() == 3 * 2 * BLOCK
    store.remove(0x10)
    assert not store.exists(0x10)
    assert not (tmp_path / "base" / "meta" / "0000000000000010").exists()
    assert not (objdir / ".stale" / "0000000000000010.3").exists()  # older versions go too
    assert store.list_oids() == sorted(oids[1:])
    store.wipe()
    assert store.list_oids() == [] and store.used() == 0
    assert os.listdir(objdir / ".stale") == [] and os.listdir(tmp_path / "base" / "meta") == ["stale"]
    assert os.listdir(tmp_path / "base" / "meta" / "stale") == []
    store.create_and_write(0x10, BLOCK, b"again")
    assert store.read(0x10, 0, 5) == b"again"


def test_capacity(store, tmp_path):
    vfs = os.statvfs(tmp_path)
    assert store.capacity() == vfs.f_blocks * vfs.f_frsize


# -- config and epochs -------------------------------------------------------

def test_config_save_load(store, tmp_path):
    assert store.load_config() is None
    raw = struct.pack("<QHB16sBBBHQ", 1234, 0, 3, b"plain", 0, 0, 22, 6, 1 << 40)
    assert len(raw) == 40
    store.save_config(raw)
    assert store.load_config() == raw
    assert (tmp_path / "base" / "config").read_bytes() == raw
    assert not (tmp_path / "base" / "config.tmp").exists()
    raw2 = raw[:27] + b"\x01" + raw[28:]
    store.save_config(raw2)
    assert store.load_config() == raw2
    with pytest.raises(SdError) as ei:
        store.save_config(b"short")
    assert code_of(ei) == CODES["INVALID_PARMS"]


def test_epoch_log(store, tmp_path):
    edir = tmp_path / "base" / "epoch"
    assert store.epochs() == [] and store.latest_epoch() == 0
    assert store.read_epoch(1) is None
    n1 = bytes(range(80))
    n2 = bytes(80) + b"\x01" * 80
    store.write_epoch(1, n1, timestamp=1_700_000_000)
    store.write_epoch(2, n2)
    store.write_epoch(10, b"", timestamp=5)
    assert (edir / "00000001").read_bytes() == n1 + struct.pack("<q", 1_700_000_000)
    assert store.read_epoch(1) == (n1, 1_700_000_000)
    nodes, ts = store.read_epoch(2)
    assert nodes == n2 and abs(ts - __import__("time").time()) < 60
    assert store.read_epoch(10) == (b"", 5)
    for junk in ("123", "000000011", "0000001a", "00000099.tmp"):
        (edir / junk).write_bytes(b"\0" * 8)
    assert store.epochs() == [1, 2, 10]
    assert store.latest_epoch() == 10
    assert sorted(n for n in os.listdir(edir) if len(n) == 8 and n.isdigit()) == \
        ["00000001", "00000002", "00000010"]
    store.remove_epochs()
    assert store.epochs() == [] and store.latest_epoch() == 0
    assert store.read_epoch(2) is None


# -- daemon lock -------------------------------------------------------------

LOCK_SCRIPT = """
import sys
from sheep.store.plain import PlainStore
from sheep.store.base import StoreLockedError
s = PlainStore(sys.argv[1])
try:
    s.open()
except StoreLockedError as e:
    print("LOCKED", e)
    sys.exit(3)
print("OPENED")
s.close()
"""


def run_other(base):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", LOCK_SCRIPT, base], env=env,
                          capture_output=True, text=True, timeout=60)


def test_second_process_cannot_open(tmp_path):
    base = str(tmp_path / "base")
    s = PlainStore(base, nosync=True)
    s.open()
    try:
        r = run_other(base)
        assert r.returncode == 3, r.stderr
        assert "LOCKED cannot lock" in r.stdout and base in r.stdout
    finally:
        s.close()
    r = run_other(base)
    assert r.returncode == 0 and "OPENED" in r.stdout, r.stderr


# -- extra dirs --------------------------------------------------------------

def test_extra_dirs_placement(tmp_path):
    """Extra dirs hold the objects themselves (1.0: DIR/<oid>), placed by md."""
    from sheep.store import md

    dirs = [str(tmp_path / "base"), str(tmp_path / "d1"), str(tmp_path / "d2")]
    s = PlainStore(dirs[0], dirs[1:], nosync=True)
    s.open()
    try:
        place = md.Placement([(d, md.disk_space(d)) for d in dirs[1:]])
        oids = list(range(1, 40))
        for o in oids:
            s.create_and_write(o, BLOCK, o.to_bytes(8, "little"))
        used_dirs = set()
        for o in oids:
            want = 1 + place.disk_of(o)
            used_dirs.add(want)
            assert not os.path.exists(os.path.join(dirs[0], "obj", "%016x" % o))
            for i, d in enumerate(dirs[1:], 1):
                assert os.path.exists(os.path.join(d, "%016x" % o)) == (i == want)
                assert os.path.exists(os.path.join(d, ".meta", "%016x" % o)) == (i == want)
            assert s.read(o, 0, 8) == o.to_bytes(8, "little")
        assert used_dirs == {1, 2}
        assert s.list_oids() == oids
        assert s.used() == len(oids) * BLOCK
        # An object found in a non-home directory (e.g. not moved yet) is used.
        o = oids[0]
        home = 1 + place.disk_of(o)
        other = 3 - home
        for sub in ("", ".meta"):
            os.rename(os.path.join(dirs[home], sub, "%016x" % o),
                      os.path.join(dirs[other], sub, "%016x" % o))
        assert s.exists(o) and s.read(o, 0, 8) == o.to_bytes(8, "little")
        s.write(o, b"moved", 0)
        assert s.read(o, 0, 5) == b"moved"
        # Re-creating puts it home and drops the shadowed copy.
        s.create_and_write(o, BLOCK, b"home")
        assert os.path.exists(os.path.join(dirs[home], "%016x" % o))
        assert not os.path.exists(os.path.join(dirs[other], "%016x" % o))
        s.remove(o)
        assert not s.exists(o)
    finally:
        s.close()


# -- concurrency -------------------------------------------------------------

def test_concurrent_writes_to_one_object(store):
    size = 4 * 1024 * 1024
    store.create_and_write(OID, size)
    nthreads, per = 8, 40
    chunk = 3000  # not block aligned: neighbours share blocks
    errors = []

    def worker(t):
        try:
            for j in range(per):
                idx = j * nthreads + t
                store.write(OID, bytes([idx % 251 + 1]) * chunk, idx * chunk)
                store.read(OID, idx * chunk, chunk)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = store.read(OID, 0, size)
    for idx in range(nthreads * per):
        assert data[idx * chunk:(idx + 1) * chunk] == bytes([idx % 251 + 1]) * chunk, idx
    end = nthreads * per * chunk
    assert data[end:] == bytes(size - end)
    assert store.verify(OID) == []
    # And a fresh store (record read from disk) agrees.
    s2 = PlainStore(store.base_dir, nosync=True)
    assert s2.verify(OID) == []
    assert s2.read(OID, 0, size) == data


def test_sync_mode_round_trip(tmp_path):
    s = PlainStore(str(tmp_path / "base"))
    s.open()
    try:
        s.create_and_write(OID, 2 * BLOCK, b"durable", 5)
        s.write(OID, b"!", 4)
        assert s.read(OID, 4, 8) == b"!durable"
        s.write_epoch(1, b"n" * 80)
        assert s.read_epoch(1)[0] == b"n" * 80
    finally:
        s.close()


def test_reads_during_writes_never_fail_or_tear_a_block(store):
    store.create_and_write(OID, 4 * BLOCK, b"A" * (4 * BLOCK))
    stop = threading.Event()
    seen, errors = set(), []

    def writer():
        i = 0
        while not stop.is_set():
            store.write(OID, (b"B" if i % 2 else b"A") * BLOCK, BLOCK)
            i += 1

    def reader():
        try:
            for _ in range(3000):
                blk = store.read(OID, BLOCK, BLOCK)
                assert blk in (b"A" * BLOCK, b"B" * BLOCK)
                seen.add(blk[:1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    w = threading.Thread(target=writer)
    readers = [threading.Thread(target=reader) for _ in range(3)]
    w.start()
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    stop.set()
    w.join()
    assert errors == []
    assert seen  # reads happened
    assert store.verify(OID) == []


def test_fast_crc32c_agrees_with_crcmod():
    import os as _os

    from sheep.store import plain

    for n in (0, 1, 511, 4096, 65536 + 3):
        data = _os.urandom(n)
        assert plain._crc32c(data) == plain.crcmod_crc32c(data)
    assert plain.crcmod_crc32c(b"123456789") == 0xE3069283  # the CRC32C check value


def test_stale_copies_move_read_purge(tmp_path):
    from sheep.store.plain import PlainStore

    st = PlainStore(str(tmp_path / "s"), nosync=True)
    st.open()
    oid = 0x007C2B2500000001
    st.create_and_write(oid, 1 << 20, b"old data", 100)
    assert st.move_to_stale(oid, 3)
    assert not st.exists(oid) and st.stale_epochs(oid) == [3]
    st.create_and_write(oid, 1 << 20, b"newer", 100)
    st.move_to_stale(oid, 5)
    assert st.stale_epochs(oid) == [5, 3]
    assert st.read_stale(oid, 3)[1][100:108] == b"old data"
    assert st.read_stale(oid, 5)[1][100:105] == b"newer"
    assert st.move_to_stale(oid, 6) is False  # nothing live any more
    # damage is detected, never returned
    path = tmp_path / "s" / "obj" / ".stale" / f"{oid:016x}.3"
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SdError) as e:
        st.read_stale(oid, 3)
    assert e.value.code == 0x03
    # the index survives a restart, purge removes everything
    st.close()
    st2 = PlainStore(str(tmp_path / "s"), nosync=True)
    st2.open()
    assert st2.list_stale() == {oid: [5, 3]}
    assert st2.purge_stale() == 2
    assert st2.list_stale() == {} and not list((tmp_path / "s" / "obj" / ".stale").glob("0*"))


# -- read_cached: the read that never waits (run on the event loop) -----------

def durable_store(tmp_path):
    s = PlainStore(str(tmp_path / "durable"))
    s.open()
    return s


def drop_page_cache(tmp_path, oid, root="durable"):
    fd = os.open(obj_path(tmp_path, oid, root), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_read_cached_answers_as_read_once_the_record_is_known(tmp_path, monkeypatch):
    from sheep.store.base import WouldBlock
    s = durable_store(tmp_path)
    try:
        data = pattern(3 * BLOCK)
        s.create_and_write(OID, 4 * BLOCK, data, 0, epoch=1)
        s.read(OID, 0, 1)  # the record is cached now
        for off, n in ((0, 4096), (BLOCK - 7, 300), (3 * BLOCK, BLOCK)):
            assert s.read_cached(OID, off, n) == s.read(OID, off, n)
        with pytest.raises(WouldBlock):  # unknown here: not even opened on the event loop
            s.read_cached(OID + 1, 0, 10)
        with pytest.raises(SdError) as e:  # (the blocking read tells)
            s.read(OID + 1, 0, 10)
        assert code_of(e) == CODES["NO_OBJ"]
        with pytest.raises(SdError) as e:  # the same errors as read
            s.read_cached(OID, 4 * BLOCK - 1, 2)
        assert code_of(e) == CODES["INVALID_PARMS"]
        # not in the page cache: the blocking read's job.  Dropping pages is
        # advice a busy kernel does not always take (pages still on a per-CPU
        # list stay): then the kernel's answer for uncached data is simulated
        for _ in range(20):
            drop_page_cache(tmp_path, OID)
            try:
                s.read_cached(OID, 0, 4096)
            except WouldBlock:
                break
        else:
            def uncached(*_a):
                raise BlockingIOError(errno.EAGAIN, "would block")
            monkeypatch.setattr(os, "preadv", uncached)
            with pytest.raises(WouldBlock):
                s.read_cached(OID, 0, 4096)
            monkeypatch.undo()
        assert s.read(OID, 0, 4096) == data[:4096]
    finally:
        s.close()


def test_read_cached_waits_for_nothing_a_fresh_store_has_to_load(tmp_path):
    from sheep.store.base import WouldBlock
    s = durable_store(tmp_path)
    s.create_and_write(OID, 2 * BLOCK, b"abc", 0, epoch=1)
    s.close()
    s = durable_store(tmp_path)  # restarted: no record cached
    try:
        with pytest.raises(WouldBlock):
            s.read_cached(OID, 0, 3)
        assert s.read(OID, 0, 3) == b"abc"
        assert s.read_cached(OID, 0, 3) == b"abc"
    finally:
        s.close()


def test_an_unlocked_read_racing_two_writes_is_not_eio(tmp_path, monkeypatch):
    """The unlocked read checks each block once against the cached record:
    two writes landing right after that check (the record is changed in
    place) must not make a good copy EIO."""
    from sheep.store import meta
    s = durable_store(tmp_path)
    try:
        s.create_and_write(OID, 2 * BLOCK, pattern(2 * BLOCK), 0, epoch=1)
        s.read(OID, 0, 1)
        real = meta.Meta.first_bad
        fired = []

        def check_then_two_writes(self, buf, b0):  # checked; now two writes land
            out = real(self, buf, b0)
            if not fired:
                fired.append(1)
                s.write(OID, b"\x01" * BLOCK, 0, epoch=1)
                s.write(OID, b"\x02" * BLOCK, 0, epoch=1)
            return out
        monkeypatch.setattr(meta.Meta, "first_bad", check_then_two_writes)
        # what was read before the writes, verified once: not an EIO
        assert s.read_cached(OID, 0, BLOCK) == pattern(2 * BLOCK)[:BLOCK]
        assert s.read(OID, 0, BLOCK) == b"\x02" * BLOCK
        assert fired  # the hook ran: the writes landed after the check
    finally:
        s.close()


def test_a_damaged_copy_is_replaced_only_while_damaged_and_never_by_an_older_version(
        tmp_path):
    s = durable_store(tmp_path)
    try:
        v = s.create_and_write(OID, 2 * BLOCK, b"live", 0, epoch=3)
        older = bytes(2 * BLOCK)
        # healthy: a repair that saw a false EIO replaces nothing
        assert s.install(OID, 2 * BLOCK, older, v, replace_damaged=True) is False
        assert s.read(OID, 0, 4) == b"live"
        with open(obj_path(tmp_path, OID, "durable"), "r+b") as f:
            f.seek(HDR_LEN + 1)
            f.write(b"X")
        s.close()
        s = durable_store(tmp_path)
        with pytest.raises(SdError):
            s.read(OID, 0, 4)
        # damaged, but the fetched copy is older than ours: no roll-back
        assert s.install(OID, 2 * BLOCK, older, v - 1, replace_damaged=True) is False
        good = b"live".ljust(2 * BLOCK, b"\0")
        assert s.install(OID, 2 * BLOCK, good, v, replace_damaged=True) is True
        assert s.read(OID, 0, 4) == b"live"
        s.remove(OID)  # missing: a repair puts the copy back
        assert s.install(OID, 2 * BLOCK, good, v, replace_damaged=True) is True
        assert s.read(OID, 0, 4) == b"live"
    finally:
        s.close()


def test_read_cached_never_takes_the_object_lock_and_never_returns_bad_data(tmp_path):
    from sheep.store.base import WouldBlock
    s = durable_store(tmp_path)
    try:
        s.create_and_write(OID, 2 * BLOCK, pattern(2 * BLOCK), 0, epoch=1)
        s.read(OID, 0, 1)
        with s._lock_for(OID):  # a writer holds it (a plain Lock: taking it would hang)
            assert s.read_cached(OID, 10, 20) == pattern(2 * BLOCK)[10:30]
        path = obj_path(tmp_path, OID, "durable")
        with open(path, "r+b") as f:  # damage a block behind the store's back
            f.seek(HDR_LEN + 100)
            f.write(b"\xff" * 8)
        with pytest.raises(WouldBlock):  # it does not match the record: the locked read decides
            s.read_cached(OID, 0, 200)
        with pytest.raises(SdError) as e:
            s.read(OID, 0, 200)
        assert code_of(e) == CODES["EIO"]
    finally:
        s.close()
