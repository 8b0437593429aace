"""PlainStore: the 1.0 layout of obj/, and copies put there by hand
(docs/protocol.md §16).

``obj/`` holds only object files and ``.stale/`` (Sheepdog 1.0's
``get_obj_path`` / ``.stale/%016x.%u``); the records live in ``meta/``.  An
operator may copy or move object files by hand: a copy without a record, or
whose record describes another size, is served, gets a record computed from
its data (version 0 = unknown), and is never refused for lack of one.
"""

import os
import re

import pytest

from sheep.proto.errors import CODES, SdError
from sheep.store.plain import BLOCK, PlainStore

OID = 0x0000ABCD00000007
OID2 = 0x0000ABCD00000008
OBJ_RE = re.compile(r"[0-9a-f]{16}")
STALE_RE = re.compile(r"[0-9a-f]{16}\.[0-9]+")


@pytest.fixture
def base(tmp_path):
    return tmp_path / "base"


@pytest.fixture
def store(base):
    s = PlainStore(str(base), nosync=True)
    s.open()
    yield s
    s.close()


def fresh(base):
    """Another store object on the same directory (no cached records)."""
    return PlainStore(str(base), nosync=True)


def assert_1_0_layout(base):
    obj = base / "obj"
    names = set(os.listdir(obj))
    assert ".stale" in names and (obj / ".stale").is_dir()
    others = names - {".stale"}
    assert all(OBJ_RE.fullmatch(n) and (obj / n).is_file() for n in others), sorted(others)
    stale = os.listdir(obj / ".stale")
    assert all(STALE_RE.fullmatch(n) and (obj / ".stale" / n).is_file() for n in stale), stale


def test_obj_holds_only_objects_and_stale(store, base):
    store.create_and_write(OID, 4 * BLOCK, b"a" * 100, 10, epoch=1)
    store.create_and_write(OID2, 4 * BLOCK, b"b", 0, epoch=1)
    store.write(OID, b"c" * 5000, 3000, epoch=2)
    store.move_to_stale(OID2, 2)
    store.install(OID2, 4 * BLOCK, bytes(4 * BLOCK), 3 << 32 | 1)
    store.create_and_write(0x80ABCD0000000000, 12587576, b"hdr", 0, sparse=True, epoch=3)
    assert_1_0_layout(base)
    assert sorted(os.listdir(base / "obj")) == [".stale", "%016x" % OID, "%016x" % OID2,
                                                 "80abcd0000000000"]
    assert os.listdir(base / "obj" / ".stale") == ["%016x.2" % OID2]
    assert sorted(os.listdir(base / "meta")) == ["%016x" % OID, "%016x" % OID2,
                                                  "80abcd0000000000", "stale"]


def test_tmp_leftovers_in_obj_are_removed_at_start(base):
    s = PlainStore(str(base), nosync=True)
    s.open()
    s.create_and_write(OID, BLOCK, b"x", epoch=1)
    s.close()
    for d in (base / "obj", base / "obj" / ".stale", base / "meta", base / "meta" / "stale"):
        (d / ("%016x.tmp" % OID2)).write_bytes(b"half")  # a crash during a create
    s = fresh(base)
    s.open()
    try:
        assert_1_0_layout(base)
        assert not [p for p in base.rglob("*.tmp")]
        assert s.read(OID, 0, 1) == b"x"
    finally:
        s.close()


def test_object_copied_in_without_record_is_served_and_recorded(store, base):
    data = os.urandom(3 * BLOCK)
    (base / "obj" / ("%016x" % OID2)).write_bytes(data)  # copied in by hand
    s = fresh(base)
    assert s.read(OID2, BLOCK, 100) == data[BLOCK:BLOCK + 100]
    assert s.version(OID2) == 0
    assert (base / "meta" / ("%016x" % OID2)).exists()
    assert s.verify(OID2) == []
    assert s.write(OID2, b"new", 0, epoch=4) == 4 << 32 | 1  # usable as any copy


def test_object_replaced_by_hand_with_another_size(store, base):
    store.create_and_write(OID, 2 * BLOCK, b"old", epoch=3)
    assert store.version(OID) == 3 << 32 | 1
    data = os.urandom(5 * BLOCK + 17)
    path = base / "obj" / ("%016x" % OID)
    tmp = str(path) + ".hand"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # the old record stays: it describes 2 blocks
    for s in (store, fresh(base)):  # the cached record is noticed to be stale too
        assert s.read(OID, 0, len(data)) == data
        assert s.version(OID) == 0  # unknown: loses against every versioned copy
        assert s.verify(OID) == []


def test_object_replaced_by_hand_with_same_size_is_damaged_not_served(store, base):
    # Same size: indistinguishable from a damaged disk.  It reads as EIO (the
    # daemon repairs it from another replica), never as wrong data.
    store.create_and_write(OID, 2 * BLOCK, b"old", epoch=3)
    path = base / "obj" / ("%016x" % OID)
    tmp = str(path) + ".hand"
    with open(tmp, "wb") as f:
        f.write(os.urandom(2 * BLOCK))
    os.replace(tmp, path)
    with pytest.raises(SdError) as ei:
        fresh(base).read(OID, 0, 4)
    assert ei.value.code == CODES["EIO"]


def test_stale_copy_copied_in_without_record(store, base):
    data = os.urandom(2 * BLOCK)
    (base / "obj" / ".stale" / ("%016x.5" % OID2)).write_bytes(data)
    s = fresh(base)
    s.open()
    try:
        assert s.stale_copies(OID2) == {5: 0}
        assert s.read_stale(OID2, 5) == (0, data)
        assert (base / "meta" / "stale" / ("%016x.5" % OID2)).exists()
        assert s.stale_copies(OID2) == {5: 0}
        assert_1_0_layout(base)
    finally:
        s.close()


def test_stale_copy_replaced_by_hand_with_another_size(store, base):
    store.create_and_write(OID, 2 * BLOCK, b"old", epoch=3)
    store.move_to_stale(OID, 3)
    assert store.stale_copies(OID) == {3: 3 << 32 | 1}
    data = os.urandom(3 * BLOCK)
    (base / "obj" / ".stale" / ("%016x.3" % OID)).write_bytes(data)
    s = fresh(base)
    assert s.stale_copies(OID) == {3: 0}  # what read_stale will say
    assert s.read_stale(OID, 3) == (0, data)
    assert s.stale_copies(OID) == {3: 0}


def test_moved_by_hand_to_stale_gets_its_record_back(base):
    # An operator moves obj/<oid> into .stale/ by hand: at the next start the
    # record left in meta/ goes with it (its version is kept).
    s = PlainStore(str(base), nosync=True)
    s.open()
    s.create_and_write(OID, BLOCK, b"v", epoch=7)
    s.close()
    os.replace(base / "obj" / ("%016x" % OID), base / "obj" / ".stale" / ("%016x.7" % OID))
    s = fresh(base)
    s.open()
    try:
        assert s.stale_copies(OID) == {7: 7 << 32 | 1}
        assert s.read_stale(OID, 7)[1][:1] == b"v"
        assert not (base / "meta" / ("%016x" % OID)).exists()
    finally:
        s.close()
