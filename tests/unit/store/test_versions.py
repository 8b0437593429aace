"""Object versions, conditional installs, checks under the object lock, and
crash consistency of the plain store (sheep.store.meta, sheep.store.plain).

The crash tests run the store in a child process that SIGKILLs itself at the
worst moment of an operation (between the record and the data, between two
renames); the page cache survives, so the parent then sees exactly the state
a crash at that point leaves, and checks that every block is readable and
that no copy claims less than it holds.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sheep.proto.errors import CODES, SdError
from sheep.store import meta as M
from sheep.store.plain import BLOCK, PlainStore

OID = 0x0000ABCD00000007
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
V = M.make_version


@pytest.fixture
def store(tmp_path):
    s = PlainStore(str(tmp_path / "base"), nosync=True)
    s.open()
    yield s
    s.close()


def test_bump_rule():
    assert M.bump(0, 3) == V(3, 1)
    assert M.bump(V(3, 1), 3) == V(3, 2)
    assert M.bump(V(3, 7), 5) == V(5, 1)
    assert M.bump(V(5, 2), 4) == V(5, 3)  # never goes back
    assert V(4, 99) < V(5, 1)


def test_versions_follow_writes_and_creates(store):
    assert store.version(OID) is None
    assert store.create_and_write(OID, 2 * BLOCK, b"a", epoch=3) == V(3, 1)
    assert store.write(OID, b"b", 1, epoch=3) == V(3, 2)
    assert store.write(OID, b"c", 2, epoch=6) == V(6, 1)
    assert store.version(OID) == V(6, 1)
    assert store.read_object(OID) == (V(6, 1), b"abc" + bytes(2 * BLOCK - 3))
    # a create over an existing copy goes on from its version
    assert store.create_and_write(OID, 2 * BLOCK, b"new", epoch=6) == V(6, 2)
    # the version survives a restart (it is in the record)
    s2 = PlainStore(store.base_dir, nosync=True)
    assert s2.version(OID) == V(6, 2)


def test_install_never_replaces_a_newer_copy(store):
    size = 2 * BLOCK
    store.create_and_write(OID, size, b"current", epoch=5)  # V(5, 1)
    assert not store.install(OID, size, b"old".ljust(size, b"\0"), V(4, 9))
    assert store.read(OID, 0, 7) == b"current"
    # equal versions are replaced (divergent copies converge) ...
    assert store.install(OID, size, b"equal".ljust(size, b"\0"), V(5, 1))
    assert store.read(OID, 0, 5) == b"equal" and store.version(OID) == V(5, 1)
    # ... newer ones of course
    assert store.install(OID, size, b"newer".ljust(size, b"\0"), V(7, 2))
    assert store.read_object(OID) == (V(7, 2), b"newer".ljust(size, b"\0"))
    assert store.verify(OID) == []
    with pytest.raises(SdError) as ei:
        store.install(OID, size, b"short", V(9, 1))
    assert ei.value.code == CODES["INVALID_PARMS"]


def test_install_over_a_damaged_record_only_when_asked(store, tmp_path):
    size = BLOCK
    store.create_and_write(OID, size, b"x", epoch=1)
    rec = tmp_path / "base" / "meta" / ("%016x" % OID)
    rec.write_bytes(b"garbage")
    store._cache.clear()
    with pytest.raises(SdError) as ei:
        store.install(OID, size, b"y".ljust(size, b"\0"), V(1, 1))
    assert ei.value.code == CODES["EIO"]
    assert store.install(OID, size, b"y".ljust(size, b"\0"), V(1, 1), replace_damaged=True)
    assert store.read(OID, 0, 1) == b"y"


def test_check_runs_under_the_lock_and_can_refuse(store):
    store.create_and_write(OID, BLOCK, b"keep", epoch=1)

    def refuse():
        raise SdError(CODES["OLD_NODE_VER"], "epoch moved")
    for call in (lambda: store.write(OID, b"lost", 0, 2, refuse),
                 lambda: store.create_and_write(OID, BLOCK, b"lost", 0, False, 2, refuse),
                 lambda: store.install(OID, BLOCK, bytes(BLOCK), V(9, 9), check=refuse),
                 lambda: store.remove(OID, refuse)):
        with pytest.raises(SdError) as ei:
            call()
        assert ei.value.code == CODES["OLD_NODE_VER"]
    assert store.read_object(OID) == (V(1, 1), b"keep".ljust(BLOCK, b"\0"))
    lock = store._lock_for(OID)
    seen = []
    store.write(OID, b"k", 0, 1, lambda: seen.append(lock.locked()))
    assert seen == [True]


def test_stale_copies_keep_their_versions(store):
    store.create_and_write(OID, BLOCK, b"v1", epoch=2)
    assert store.move_many_to_stale([OID, OID + 1], 2) == 1
    store.create_and_write(OID, BLOCK, b"v2", epoch=4)
    store.move_to_stale(OID, 4)
    assert store.stale_copies(OID) == {2: V(2, 1), 4: V(4, 1)}
    assert store.read_stale(OID, 4) == (V(4, 1), b"v2".ljust(BLOCK, b"\0"))


# -- crashes ------------------------------------------------------------------

CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from sheep.store.plain import PlainStore
s = PlainStore({base!r}, {extra!r})
s.open()
calls = {{"n": 0}}
real = getattr(os, {fn!r})
def hook(*a, **kw):
    out = real(*a, **kw)
    calls["n"] += 1
    if calls["n"] == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(os, {fn!r}, hook)
{op}
print("survived")
"""


def crash(base: str, fn: str, nth: int, op: str, extra: tuple = ()) -> None:
    """Run ``op`` on the store at ``base`` (durable; ``extra`` object disks)
    in a child that SIGKILLs itself right after the ``nth`` call of
    ``os.<fn>`` returned."""
    code = CHILD.format(repo=REPO, base=base, extra=list(extra), fn=fn, nth=nth,
                        op=textwrap.dedent(op))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr)


def reopen(base: str, extra: tuple = ()) -> PlainStore:
    s = PlainStore(base, extra, nosync=True)
    s.open()
    return s


def test_crash_between_record_and_data_of_a_write(tmp_path):
    """The write path without the journal (several disks): record, sync, data."""
    base = str(tmp_path / "base")
    disks = (str(tmp_path / "d1"), str(tmp_path / "d2"))
    s = reopen(base, disks)
    s.create_and_write(OID, 4 * BLOCK, b"A" * (4 * BLOCK), epoch=3)
    s.close()
    # durable mode: the first fdatasync of a write is the record's; die right
    # after it, before the data is written
    crash(base, "fdatasync", 1,
          f"s.write({OID}, b'B' * (2 * {BLOCK} + 10), {BLOCK} - 5, 3)", disks)
    s = reopen(base, disks)
    try:
        # every block is readable and holds its old content (matches prev) ...
        assert s.read(OID, 0, 4 * BLOCK) == b"A" * (4 * BLOCK)
        assert s.verify(OID) == []
        # ... and the version claims at least what the data holds, never less
        assert s.version(OID) == V(3, 2)
        # writing on works, and a partial write over a "prev" block too
        s.write(OID, b"C", 2 * BLOCK, 3)
        assert s.read(OID, 2 * BLOCK - 1, 3) == b"ACA"
    finally:
        s.close()


def test_crash_between_the_renames_of_a_create(tmp_path):
    base = str(tmp_path / "base")
    s = reopen(base)
    s.create_and_write(OID, 2 * BLOCK, b"old", epoch=2)
    s.close()
    # rename #1 puts the record in place, rename #2 the object: die before #2
    crash(base, "rename", 1, f"s.create_and_write({OID}, 2 * {BLOCK}, b'new', 0, False, 2)")
    s = reopen(base)
    try:
        assert s.read(OID, 0, 3) == b"old" and s.verify(OID) == []
        assert s.version(OID) == V(2, 2)  # claims the create, holds less: never the reverse
        assert not [n for n in os.listdir(os.path.join(base, "obj")) if n.endswith(".tmp")]
    finally:
        s.close()


def test_crash_between_the_renames_of_an_install(tmp_path):
    base = str(tmp_path / "base")
    s = reopen(base)
    s.create_and_write(OID, BLOCK, b"older", epoch=2)
    s.close()
    # an install renames the object first: die before the record follows
    crash(base, "rename", 1, f"s.install({OID}, {BLOCK}, b'fetched'.ljust({BLOCK}, b'\\0'), "
                             f"{V(9, 4)})")
    s = reopen(base)
    try:
        # new data under the old record: reported as damaged (repairable from
        # the source), and it does not claim the fetched version
        with pytest.raises(SdError) as ei:
            s.read(OID, 0, 7)
        assert ei.value.code == CODES["EIO"]
        assert s.version(OID) == V(2, 1)
        assert s.install(OID, BLOCK, b"fetched".ljust(BLOCK, b"\0"), V(9, 4), replace_damaged=True)
        assert s.read_object(OID) == (V(9, 4), b"fetched".ljust(BLOCK, b"\0"))
    finally:
        s.close()


def test_crash_in_the_middle_of_a_move_to_stale(tmp_path):
    base = str(tmp_path / "base")
    s = reopen(base)
    s.create_and_write(OID, BLOCK, b"moving", epoch=5)
    s.close()
    crash(base, "replace", 1, f"s.move_to_stale({OID}, 5)")
    assert os.path.exists(os.path.join(base, "meta", "%016x" % OID))  # left behind
    s = reopen(base)  # open() gives the record back to its stale copy
    try:
        assert not s.exists(OID)
        assert s.stale_copies(OID) == {5: V(5, 1)}
        assert s.read_stale(OID, 5) == (V(5, 1), b"moving".ljust(BLOCK, b"\0"))
        assert os.listdir(os.path.join(base, "meta")) == ["stale"]
    finally:
        s.close()


def test_format_1_checksums_are_converted(tmp_path):
    base = tmp_path / "base"
    (base / "obj" / ".crc").mkdir(parents=True)
    (base / "obj" / ".stale" / ".crc").mkdir(parents=True)
    data = b"v1 object".ljust(BLOCK + 7, b"\0")
    name = "%016x" % OID
    (base / "obj" / name).write_bytes(data)
    crcs = M.block_crcs(data)
    side = b"SDCK" + (1).to_bytes(2, "little") + (16).to_bytes(2, "little") + \
        BLOCK.to_bytes(4, "little") + len(crcs).to_bytes(4, "little") + crcs.tobytes()
    (base / "obj" / ".crc" / name).write_bytes(side)
    (base / "obj" / ".stale" / f"{name}.3").write_bytes(data)
    (base / "obj" / ".stale" / ".crc" / f"{name}.3").write_bytes(side)
    s = reopen(str(base))
    try:
        assert sorted(os.listdir(base / "obj")) == [".stale", name]
        assert os.listdir(base / "obj" / ".stale") == [f"{name}.3"]
        assert s.read(OID, 0, 9) == b"v1 object" and s.version(OID) == 0
        assert s.read_stale(OID, 3) == (0, data)
        # the converted CRCs are the real ones: damage is still detected
        raw = bytearray(data)
        raw[3] ^= 1
        (base / "obj" / name).write_bytes(bytes(raw))
        s._cache.clear()
        assert s.verify(OID) == [0]
    finally:
        s.close()


def test_meta_record_codec():
    cur = np.array([1, 2, 3], dtype="<u4")
    m = M.Meta.fresh(V(7, 3), cur)
    raw = m.pack()
    back = M.Meta.unpack(raw, 3 * BLOCK - 100)
    assert back.version == V(7, 3) and back.crcs.tolist() == [[1, 1], [2, 2], [3, 3]]
    with pytest.raises(M.MetaError):
        M.Meta.unpack(raw, 4 * BLOCK)  # another size
    bad = bytearray(raw)
    bad[20] ^= 1
    with pytest.raises(M.MetaError):
        M.Meta.unpack(bytes(bad), 3 * BLOCK)
    m.update(1, np.array([9], dtype="<u4"), np.array([2], dtype="<u4"), V(7, 4))
    assert m.crcs.tolist() == [[1, 1], [9, 2], [3, 3]]
    assert m.bad_blocks(np.array([1, 2, 5], dtype="<u4"), 0).tolist() == [2]


def test_crash_in_a_move_to_stale_over_an_older_stale_copy_of_the_same_epoch(tmp_path):
    base = str(tmp_path / "base")
    s = reopen(base)
    s.create_and_write(OID, BLOCK, b"first", epoch=5)
    s.move_to_stale(OID, 5)
    s.create_and_write(OID, BLOCK, b"second", epoch=5)
    s.close()
    # the object is renamed over the older stale copy: die before its record follows
    crash(base, "replace", 1, f"s.move_to_stale({OID}, 5)")
    s = reopen(base)
    try:  # never the new copy under the older copy's record (EIO)
        version, data = s.read_stale(OID, 5)
        assert data == b"second".ljust(BLOCK, b"\0") and version == V(5, 1)
    finally:
        s.close()
