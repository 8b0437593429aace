"""VID recycling (``sheep.vdi.recycle``) against the in-memory stand-in for
the gateway of ``test_vdi`` (no daemons): sequential ids, family collection,
and the recycle-mode lookup that finds a working VDI below its snapshots."""

import numpy as np
import pytest
from vdi_fakes import FakeConfig, FakeSheep, del_vdi, header, new_vdi, run, snapshot

from sheep import proto
from sheep.proto.errors import SdError
from sheep.vdi import recycle
from sheep.vdi.table import VdiState


class RecycleConfig(FakeConfig):
    flags = proto.SD_CLUSTER_FLAG_RECYCLE_VID


@pytest.fixture
def sheep():
    s = FakeSheep()
    s.group.config = RecycleConfig()
    return s


def test_ids_are_sequential_and_reused(sheep):
    assert [new_vdi(sheep, n) for n in ("a", "b", "c")] == [1, 2, 3]
    assert del_vdi(sheep, "b") == 2
    assert not sheep.vdis.test(sheep.vdis.inuse, 2)
    assert not sheep.vdis.test(sheep.vdis.deleted, 2)
    assert 2 not in sheep.vdis.states
    assert proto.vid_to_vdi_oid(2) not in sheep.gateway.objs  # inode removed
    assert new_vdi(sheep, "b") == 2  # the name and the id are free again
    assert new_vdi(sheep, "d") == 4


def test_family_waits_for_its_last_member(sheep):
    a1 = new_vdi(sheep, "a")
    w_old, a2 = snapshot(sheep, "a", "s1")  # 1 is the snapshot, 2 the working VDI
    assert (w_old, a2) == (1, 2)
    clone = new_vdi(sheep, "c", base=1)
    assert clone == 3
    del_vdi(sheep, "a")
    del_vdi(sheep, "a", tag="s1")
    assert all(sheep.vdis.test(sheep.vdis.inuse, v) for v in (1, 2, 3))
    del_vdi(sheep, "c")  # the last live member
    assert not any(sheep.vdis.test(sheep.vdis.inuse, v) for v in (a1, a2, clone))
    assert not any(proto.vid_to_vdi_oid(v) in sheep.gateway.objs for v in (1, 2, 3))
    assert new_vdi(sheep, "z") == 1


def test_working_vdi_below_its_snapshots_is_found(sheep):
    new_vdi(sheep, "a")  # 1
    new_vdi(sheep, "b")  # 2
    del_vdi(sheep, "b")  # 2 free
    w, n = snapshot(sheep, "a", "s1")  # snapshot 1, working a takes 2
    assert (w, n) == (1, 2)
    new_vdi(sheep, "x")  # 3
    w2, n2 = snapshot(sheep, "a", "s2")  # snapshot 2, working a takes 4
    del_vdi(sheep, "x")  # 3 free
    w3, n3 = snapshot(sheep, "a", "s3")  # snapshot 4, working a takes 3: below 4
    assert (w3, n3) == (4, 3)
    assert run(sheep.vdis.find(proto.pad("a", 256))) == 3
    assert header(sheep, 3).snap_id == 4
    assert run(sheep.vdis.find(proto.pad("a", 256), proto.pad("s2", 256))) == 2
    assert run(sheep.vdis.find(proto.pad("a", 256), snapid=1)) == 1
    with pytest.raises(SdError) as e:
        run(sheep.vdis.find(proto.pad("a", 256), proto.pad("nope", 256)))
    assert e.value.name == "NO_TAG"
    del_vdi(sheep, "a")  # the working VDI only: the name can be created again
    r = run(sheep.vdis.lookup(proto.pad("a", 256)))
    assert r.vid is None and r.next_snap_id == 4 and r.deleted_working == 4


def test_family_of_follows_parents():
    states = {v: VdiState(v, 3, parent=p) for v, p in
              ((1, 0), (2, 1), (3, 1), (4, 3), (5, 0), (6, 99))}
    assert recycle.family(states, 4) == [1, 2, 3, 4]
    assert recycle.family(states, 5) == [5]
    assert recycle.family(states, 6) == [6]  # unknown parent: its own root


def test_merge_leaves_known_vids_and_honours_tombstones(sheep):
    new_vdi(sheep, "a")
    rec = {"vid": 1, "copies": 3, "deleted": True}
    sheep.vdis.merge([rec, {"vid": 7, "copies": 3, "deleted": True, "src": 1}])
    assert not sheep.vdis.test(sheep.vdis.deleted, 1)  # known: left as it is
    assert sheep.vdis.states[7].deleted
    # another node collected 7 at epoch 5: its tombstone kills the record (src 1)
    sheep.vdis.merge([], {"7": 5})
    assert 7 not in sheep.vdis.states and not sheep.vdis.test(sheep.vdis.inuse, 7)
    assert recycle.load_tombs(sheep.store) == {7: 5}  # durable
    # a node that was away brings the old record back: not merged
    sheep.vdis.merge([{"vid": 7, "copies": 3, "deleted": False, "src": 4}])
    assert 7 not in sheep.vdis.states
    # a reuse of the id (known from the collection's epoch on) is merged
    sheep.vdis.merge([{"vid": 7, "copies": 3, "deleted": False, "src": 5}])
    assert not sheep.vdis.states[7].deleted
    oids = np.array([proto.vid_to_vdi_oid(7), proto.vid_to_data_oid(7, 3),
                     proto.vid_to_data_oid(1, 0)], dtype=np.uint64)
    assert not recycle.collected_mask(sheep.vdis, oids).any()  # 7 is live again
    sheep.vdis.states.pop(7)
    assert list(recycle.collected_mask(sheep.vdis, oids)) == [True, True, False]