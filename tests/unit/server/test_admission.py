"""Admission and the replica-side checks without daemons
(docs/data-safety.md "Partitions and serving"): a node that may not serve refuses every op that does I/O — the
DISCARD_OBJ that writes an inode's index too — and the gateway's own leg of a
fan-out runs the same epoch, serving and fencing checks as a peer's.
"""

import asyncio

import pytest

from sheep import proto
from sheep.cluster import group as G
from sheep.datapath import replica
from sheep.proto.errors import CODES, SdError
from sheep.server import ops
from sheep.store.plain import PlainStore

OID = 0x0000ABCD00000007


class FakeGroup:
    def __init__(self):
        self.status = G.OK
        self.epoch = 5
        self.up = True
        self.quorum = True

    def serving(self):
        return self.up

    async def settled(self):
        pass

    async def wait_epoch_at_least(self, epoch, timeout):
        return self.epoch >= epoch


class FakeLocks:
    def __init__(self):
        self.current = {}  # vid -> (gen, node)

    async def fence_ready(self, gen):
        pass

    def fence_check(self, vid, gen, node, draining_ok=False):
        if self.current.get(vid) != (gen, node):
            raise SdError(CODES["FENCED"])


class FakeSheep:
    def __init__(self, tmp_path):
        self.group = FakeGroup()
        self.locks = FakeLocks()
        self.store = PlainStore(str(tmp_path / "s"), nosync=True)
        self.store.open()
        self.recovery = type("R", (), {"holds": lambda _s, oid: True})()
        self.replica = replica.Replica(store=self.store, group=self.group, locks=self.locks,
                                       vdis=None, recovery=self.recovery, io=self.io)

    async def io(self, fn, *args, size=None, cached=None):  # (the blocking call only)
        return fn(*args)


@pytest.fixture
def sheep(tmp_path):
    s = FakeSheep(tmp_path)
    yield s
    s.store.close()


@pytest.mark.parametrize("op", [proto.Op.READ_OBJ, proto.Op.WRITE_OBJ, proto.Op.DISCARD_OBJ,
                                proto.Op.CREATE_AND_WRITE_OBJ, proto.Op.WRITE_PEER,
                                proto.Op.READ_PEER, proto.Op.LOCK_VDI, proto.Op.NEW_VDI])
def test_a_node_that_may_not_serve_refuses_io_with_halt(sheep, op):
    sheep.group.up = False
    with pytest.raises(SdError) as e:
        ops.admit(sheep, proto.Request(op))
    assert e.value.code == CODES["HALT"]
    sheep.group.up = True
    assert ops.admit(sheep, proto.Request(op)).name == op.name


def test_node_list_and_cluster_info_stay_answerable(sheep):
    sheep.group.up = False
    for op in (proto.Op.GET_NODE_LIST, proto.Op.CLUSTER_INFO, proto.Op.STAT_CLUSTER):
        ops.admit(sheep, proto.Request(op))


def test_discard_is_classified_by_what_it_does():
    assert ops.OPS[proto.Op.DISCARD_OBJ].kind == "gateway"


def test_local_leg_checks_serving_epoch_and_fence_under_the_store_lock(sheep):
    st = sheep.store
    st.create_and_write(OID, 4096, b"old", epoch=5)
    vid = proto.oid_to_vid(OID)
    run = asyncio.run
    sheep.group.up = False
    with pytest.raises(SdError) as e:
        run(sheep.replica.write(OID, b"new", 0, 5))
    assert e.value.code == CODES["HALT"]
    sheep.group.up = True
    with pytest.raises(SdError) as e:  # a gateway of an older epoch
        run(sheep.replica.write(OID, b"new", 0, 4))
    assert e.value.code == CODES["OLD_NODE_VER"]
    sheep.locks.current[vid] = (9, "127.0.0.1:7001")
    for fence in (replica.Fence(8, "127.0.0.1:7001"), replica.Fence(9, "127.0.0.1:7002")):
        with pytest.raises(SdError) as e:  # an old grant, or the right one through another gateway
            run(sheep.replica.write(OID, b"new", 0, 5, fence))
        assert e.value.code == CODES["FENCED"]
    assert st.read(OID, 0, 3) == b"old"
    run(sheep.replica.write(OID, b"new", 0, 5, replica.Fence(9, "127.0.0.1:7001")))
    assert st.read(OID, 0, 3) == b"new"


def test_a_write_that_finished_after_the_epoch_moved_is_redone_and_leaves_no_orphan(sheep):
    st = sheep.store
    st.create_and_write(OID, 4096, b"old", epoch=5)
    real = st.write

    def slow_write(*a, **kw):  # the epoch moves while the write is on its way to disk
        out = real(*a, **kw)
        sheep.group.epoch = 6
        return out
    st.write = slow_write
    sheep.recovery.holds = lambda oid: False  # and this node no longer holds it
    with pytest.raises(SdError) as e:
        asyncio.run(sheep.replica.write(OID, b"new", 0, 5))
    assert e.value.code == CODES["OLD_NODE_VER"]  # the gateway redoes it on the new ring
    assert not st.exists(OID) and list(st.stale_copies(OID)) == [5]


@pytest.mark.parametrize("outcome,code", [("UNAVAILABLE", "AGAIN"), ("NOT_HOLDER", "AGAIN"),
                                          ("ABSENT", "NO_OBJ")])
def test_a_write_waiting_on_recovery_says_no_obj_only_if_the_object_exists_nowhere(
        sheep, outcome, code):
    from sheep.cluster.fetch import Outcome

    async def recover_object(oid, wait=5.0):
        return Outcome[outcome]
    sheep.recovery.recover_object = recover_object
    with pytest.raises(SdError) as e:  # the object is not here (yet)
        asyncio.run(sheep.replica.write(OID, b"new", 0, 5))
    assert e.value.code == CODES[code]


def test_a_recovery_pass_keeps_a_fixed_number_of_tasks(tmp_path):
    """Point 10: one task per missing object made 250,000 objects cost 370 MiB."""
    import numpy as np

    from sheep.cluster import recovery
    from sheep.cluster.fetch import Outcome

    group = FakeGroup()
    group.disable_recovery = False
    rec = recovery.Recovery(me=proto.SdNode.make("127.0.0.1", 7000), group=group, store=None,
                            vdis=None, throttle=proto.RecoveryThrottling(), peers=None,
                            io=None, io_thread=None)
    todo = np.arange(1, 250_001, dtype=np.uint64)
    peak = {"tasks": 0, "done": 0}

    async def list_missing(epoch):
        return todo, True

    async def recover_object(oid, wait=0.0):
        peak["tasks"] = max(peak["tasks"], len(asyncio.all_tasks()))
        peak["done"] += 1
        if peak["done"] % 1000 == 0:
            await asyncio.sleep(0)
        return Outcome.PRESENT

    class Driver:
        async def notify(self, msg):
            pass
    group.driver = Driver()
    rec._list_missing = list_missing
    rec.recover_object = recover_object
    assert asyncio.run(rec._pass(5)) is True
    assert peak["done"] == len(todo)
    assert peak["tasks"] <= recovery.DEFAULT_MAX_EXEC + 2
