"""VDI ids, lookup and the NEW_VDI/DEL_VDI algorithms (docs/protocol.md §12) against an
in-memory object store standing in for the gateway (no daemons)."""

import pytest
from vdi_fakes import FakeSheep, del_vdi, header, new_vdi, run, snapshot

from sheep import proto
from sheep.proto.errors import CODES, SdError

# names found offline whose 24-bit FNV-1a hashes collide / neighbour
SAME = ["n164422", "n583384", "n1235039", "n1307514"]  # all hash to 0x12f46
NEXT = "n285054"  # hashes to 0x12f47: its run interleaves with SAME's
EDGE = "n1739616"  # hashes to 0xfffffe: its run wraps around to vid 1


@pytest.fixture
def sheep():
    return FakeSheep()


def test_hashes_of_the_test_names():
    assert {proto.vdi_name_hash(n) for n in SAME} == {0x12F46}
    assert proto.vdi_name_hash(NEXT) == 0x12F47
    assert proto.vdi_name_hash(EDGE) == 0xFFFFFE
    assert proto.vdi_name_hash("test") == 0x7C2B25


def test_first_vdi_of_a_name_gets_its_hash(sheep):
    assert new_vdi(sheep, "test") == 0x7C2B25
    assert new_vdi(sheep, "alice") == 0xA03907
    assert header(sheep, 0x7C2B25).snap_id == 1
    with pytest.raises(SdError) as e:
        new_vdi(sheep, "test")
    assert e.value.code == CODES["VDI_EXIST"]


def test_colliding_names_probe_linearly_and_are_found(sheep):
    vids = [new_vdi(sheep, n) for n in SAME]
    assert vids == [0x12F46, 0x12F47, 0x12F48, 0x12F49]
    # NEXT's own slot is taken by SAME[1]: it goes to the end of the run
    assert new_vdi(sheep, NEXT) == 0x12F4A
    for n, v in zip(SAME + [NEXT], vids + [0x12F4A]):
        assert run(sheep.vdis.find(proto.pad(n, 256))) == v
    # a snapshot of a name inside the run lands at the end of the run too
    w, n = snapshot(sheep, SAME[0], "t0")
    assert (w, n) == (0x12F46, 0x12F4B)
    assert run(sheep.vdis.find(proto.pad(SAME[0], 256))) == n
    assert run(sheep.vdis.find(proto.pad(SAME[0], 256), proto.pad("t0", 256))) == w
    assert run(sheep.vdis.find(proto.pad(SAME[0], 256), snapid=1)) == w
    assert header(sheep, n).snap_id == 2
    # deleting one in the middle keeps the run intact for the others
    assert del_vdi(sheep, SAME[1]) == 0x12F47
    for n_, v in ((SAME[2], 0x12F48), (SAME[3], 0x12F49), (NEXT, 0x12F4A)):
        assert run(sheep.vdis.find(proto.pad(n_, 256))) == v
    # ... and the deleted name can be created again, after the run
    assert new_vdi(sheep, SAME[1]) == 0x12F4C


def test_lookup_wraps_around_the_bitmap_end(sheep):
    assert new_vdi(sheep, EDGE) == 0xFFFFFE
    _, n = snapshot(sheep, EDGE)
    assert n == 0xFFFFFF
    w2, n2 = snapshot(sheep, EDGE)
    assert (w2, n2) == (0xFFFFFF, 1)  # wrapped: vid 0 is never used
    assert run(sheep.vdis.find(proto.pad(EDGE, 256))) == 1
    assert run(sheep.vdis.find(proto.pad(EDGE, 256), snapid=2)) == 0xFFFFFF
    assert header(sheep, 1).snap_id == 3


def test_lookup_errors(sheep):
    r = run(sheep.vdis.lookup(proto.pad("nosuch", 256)))
    assert r.vid is None and r.code == CODES["NO_VDI"]
    assert r.free == proto.vdi_name_hash("nosuch")
    new_vdi(sheep, "test")
    r = run(sheep.vdis.lookup(proto.pad("test", 256), proto.pad("nosuchtag", 256)))
    assert r.code == CODES["NO_TAG"]  # the name exists, the tag does not
    r = run(sheep.vdis.lookup(proto.pad("test", 256), snapid=1))
    assert r.code == CODES["NO_TAG"]  # snap 1 is the working VDI, not a snapshot


def test_snapshot_clone_rollback_ids_as_in_the_captured_session(sheep):
    base = new_vdi(sheep, "test", 100 << 20)
    assert base == 0x7C2B25
    for i in (0, 1):  # the data written by 'vdi write test 4190208 8192'
        oid = proto.vid_to_data_oid(base, i)
        run(sheep.gateway.create_and_write(oid, 0, b"x"))
        run(sheep.gateway.write(proto.vid_to_vdi_oid(base), proto.data_vdi_id_offset(i),
                                base.to_bytes(4, "little")))
    w, n = snapshot(sheep, "test", "snap1")
    assert (w, n) == (0x7C2B25, 0x7C2B26)
    assert sheep.vdis.state(w).snapshot and not sheep.vdis.state(n).snapshot
    assert header(sheep, w).is_snapshot and header(sheep, n).parent_vdi_id == w
    clone = new_vdi(sheep, "clone1", 100 << 20, base=w)
    assert clone == 0xC8F989
    h = header(sheep, clone)
    assert (h.snap_id, h.parent_vdi_id) == (1, w)  # dog shows it as 'c'
    # rollback: delete the working VDI, then a clone of the snapshot under the name
    assert del_vdi(sheep, "test") == 0x7C2B26
    r = run(sheep.vdis.lookup(proto.pad("test", 256)))
    assert r.code == CODES["NO_VDI"] and r.deleted_working == w and r.next_snap_id == 2
    rb = new_vdi(sheep, "test", 100 << 20, base=w)
    assert rb == 0x7C2B27
    h = header(sheep, rb)
    assert (h.snap_id, h.parent_vdi_id) == (2, w)
    idx = run(sheep.gateway.read(proto.vid_to_vdi_oid(rb), proto.SD_INODE_HEADER_SIZE, 8))
    assert idx == base.to_bytes(4, "little") * 2  # shares the snapshot's objects


def test_clone_and_rebase_need_a_snapshot_base(sheep):
    w = new_vdi(sheep, "a")
    with pytest.raises(SdError) as e:
        new_vdi(sheep, "b", base=w)
    assert e.value.code == CODES["INVALID_PARMS"] and "snapshot" in e.value.message
    with pytest.raises(SdError) as e:
        new_vdi(sheep, "b", base=0x123456)
    assert e.value.code == CODES["NO_BASE_VDI"]
    other = new_vdi(sheep, "other")
    with pytest.raises(SdError) as e:  # rebase of 'a' onto a writable VDI
        new_vdi(sheep, "a", base=other, snapid=1)
    assert e.value.code == CODES["INVALID_PARMS"]
    with pytest.raises(SdError) as e:
        new_vdi(sheep, "nosuch", base=0, snapid=1)
    assert e.value.code == CODES["NO_VDI"]


def test_a_stale_snapshot_request_loses(sheep):
    w = new_vdi(sheep, "a")
    n = new_vdi(sheep, "a", base=w, snapid=1)
    with pytest.raises(SdError) as e:  # the same request again (a concurrent loser)
        new_vdi(sheep, "a", base=w, snapid=1)
    assert e.value.code == CODES["VDI_EXIST"]
    assert run(sheep.vdis.find(proto.pad("a", 256))) == n
    # a rebase onto a snapshot that the working VDI was cloned from still works
    del_vdi(sheep, "a")
    r = new_vdi(sheep, "a", base=w)
    r2 = new_vdi(sheep, "a", base=w, snapid=1)
    assert sheep.vdis.state(r).snapshot and header(sheep, r2).parent_vdi_id == w


def test_deleted_working_vdi_leaves_snapshots_and_name_is_recreated_as_root(sheep):
    w = new_vdi(sheep, "v")
    _, n = snapshot(sheep, "v")
    del_vdi(sheep, "v")
    fresh = new_vdi(sheep, "v")
    h = header(sheep, fresh)
    assert fresh not in (w, n) and (h.snap_id, h.parent_vdi_id) == (2, 0)  # latest + 1
    assert sheep.vdis.state(w).snapshot  # still a snapshot, still found by id
    assert run(sheep.vdis.find(proto.pad("v", 256), snapid=1)) == w


def test_delete_releases_only_unshared_objects(sheep):
    gw = sheep.gateway
    a = new_vdi(sheep, "a")
    for i in range(3):
        run(gw.create_and_write(proto.vid_to_data_oid(a, i), 0, b"d"))
        run(gw.write(proto.vid_to_vdi_oid(a), proto.data_vdi_id_offset(i), a.to_bytes(4, "little")))
    _, w = snapshot(sheep, "a")
    # the working VDI overwrites object 2 (copy-on-write) and drops the reference
    run(gw.create_and_write(proto.vid_to_data_oid(w, 2), 0, b"e"))
    run(gw.write(proto.vid_to_vdi_oid(w), proto.data_vdi_id_offset(2), w.to_bytes(4, "little")))
    data = lambda: sorted(o for o in gw.objs if proto.is_data_obj(o))
    del_vdi(sheep, "a", snapid=1)  # the snapshot: 0 and 1 are still used by w
    assert data() == [proto.vid_to_data_oid(a, 0), proto.vid_to_data_oid(a, 1),
                      proto.vid_to_data_oid(w, 2)]
    del_vdi(sheep, "a")
    assert data() == []
