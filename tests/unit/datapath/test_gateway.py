"""The gateway (sheep.datapath.gateway) against an in-memory cluster
(tests/unit/datapath/fakes.py): peer ops reach the real replica code of the
other nodes through a fake peer pool, the gateway's own leg runs it in-process.

What is checked is the module's promise: a write is acknowledged only when
every replica of one epoch's ring has it; unreachable replicas and epoch
errors make it wait for the next epoch and redo the whole write on the new
ring; HALT / AGAIN are retried after a pause; reads take the local copy
first and skip NO_OBJ / EIO copies; fenced writes are checked at the
gateway, again before a retry, and carry the gateway's identity to every
replica.
"""

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fakes import EPOCH, OBJ, VID, FakeCluster, addr, data_oid, eventually  # noqa: E402

from sheep import proto
from sheep.datapath import gateway
from sheep.datapath.replica import Fence
from sheep.proto.errors import CODES, SdError, error_for

pytestmark = pytest.mark.quick

OID = data_oid(3)
OLD = b"o" * OBJ


@pytest.fixture
def c():
    """4 nodes, 3 copies; every oid on nodes 0 (the gateway), 1, 2."""
    c = FakeCluster(n=4)
    c.put(OID, OLD, on={0, 1, 2})
    return c


def code_of(excinfo) -> str:
    return proto.result_name(excinfo.value.code)


def landed(c, nodes, data=b"new", offset=100):
    return all(c.copy(i, OID)[offset:offset + len(data)] == data for i in nodes)


# -- writes: all replicas or nothing acknowledged ------------------------------

async def test_a_write_goes_to_every_replica_of_the_epoch_and_nowhere_else(c):
    await c.gw.write(OID, 100, b"new")
    assert landed(c, [0, 1, 2])
    assert c.copy(3, OID) is None
    assert sorted(c.net.sent("WRITE_PEER")) == [1, 2]  # the local leg is not a peer op
    assert {e for _op, _i, e in c.net.log} == {EPOCH}


async def test_the_write_is_acknowledged_only_once_the_slowest_replica_has_it(c):
    gate = asyncio.Event()
    c.net.fault(2, gate.wait)  # replica 2 is slow
    task = asyncio.ensure_future(c.gw.write(OID, 100, b"new"))
    await eventually(lambda: landed(c, [0, 1]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done() and not landed(c, [2])
    gate.set()
    await asyncio.wait_for(task, 2)
    assert landed(c, [0, 1, 2])


@pytest.mark.parametrize("failing", [0, 2])  # the gateway's own leg, or a peer's
async def test_one_replica_failing_fails_the_write_though_the_others_applied_it(c, failing):
    c.sheep[failing].store.fail = error_for(CODES["NO_SPACE"])
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new")
    assert code_of(e) == "NO_SPACE"
    assert landed(c, {0, 1, 2} - {failing})  # applied, but never acknowledged
    assert not landed(c, [failing])
    assert len(c.net.sent("WRITE_PEER")) == 2  # not retried: a final answer


async def test_an_exception_that_is_no_result_code_is_not_swallowed(c):
    c.sheep[0].store.fail = RuntimeError("bug in the local leg")
    with pytest.raises(RuntimeError, match="local leg"):
        await c.gw.write(OID, 100, b"new")
    assert len(c.net.sent("WRITE_PEER")) == 2  # not retried


async def test_an_unreachable_replica_makes_the_write_wait_for_the_next_epoch_and_redo_it(c):
    c.net.down.add(2)
    c.sheep[3].recovery.elsewhere[OID] = OLD  # node 3 will recover the object on access
    task = asyncio.ensure_future(c.gw.write(OID, 100, b"new"))
    g = c.sheep[0].group
    await eventually(lambda: task.done() or g.waiting)
    assert not task.done()  # not acknowledged while replica 2 may lack the write
    c.bump(0, 1, 3)  # node 2 left: epoch 6, the object on nodes 0, 1, 3
    await asyncio.wait_for(task, 2)
    assert landed(c, [0, 1, 3])
    assert sorted(i for op, i, e in c.net.log if op == "WRITE_PEER" and e == EPOCH + 1) == [1, 3]


@pytest.mark.parametrize("code", ["OLD_NODE_VER", "NEW_NODE_VER", "NETWORK_ERROR",
                                  "WAIT_FOR_JOIN", "WAIT_FOR_FORMAT", "KILLED", "SHUTDOWN"])
async def test_an_epoch_error_waits_for_the_next_epoch_then_retries_on_its_ring(c, code):
    c.net.fault(1, CODES[code])
    task = asyncio.ensure_future(c.gw.write(OID, 100, b"new"))
    g = c.sheep[0].group
    await eventually(lambda: task.done() or g.waiting)
    assert not task.done()
    assert c.net.sent("WRITE_PEER").count(1) == 1  # no retry on the same epoch
    c.bump()
    await asyncio.wait_for(task, 2)
    assert landed(c, [0, 1, 2])
    assert [e for op, i, e in c.net.log if i == 1] == [EPOCH, EPOCH + 1]


async def test_a_replica_ahead_of_the_gateway_refuses_and_the_write_follows_the_new_epoch(c):
    c.bump(only={1, 2})  # nodes 1, 2 saw epoch 6; the gateway has not yet
    task = asyncio.ensure_future(c.gw.write(OID, 100, b"new"))
    await eventually(lambda: task.done() or c.sheep[0].group.waiting)
    assert not task.done()  # OLD_NODE_VER from 1 and 2: not acknowledged
    assert not landed(c, [1, 2])
    c.bump(only={0, 3})
    await asyncio.wait_for(task, 2)
    assert landed(c, [0, 1, 2])


@pytest.mark.parametrize("codes", [("HALT",), ("AGAIN",), ("HALT", "AGAIN", "HALT")])
async def test_halt_and_again_are_retried_after_a_pause_on_the_same_epoch(c, codes):
    c.net.fault(2, *(CODES[x] for x in codes))
    await asyncio.wait_for(c.gw.write(OID, 100, b"new"), 3)  # no epoch change needed
    assert landed(c, [0, 1, 2])
    assert c.net.sent("WRITE_PEER").count(2) == len(codes) + 1
    assert {e for _op, _i, e in c.net.log} == {EPOCH}


async def test_a_write_some_replicas_applied_while_another_saw_no_object_is_retried(c):
    c.net.fault(2, CODES["NO_OBJ"])  # replica 2 could not see the object yet
    await asyncio.wait_for(c.gw.write(OID, 100, b"new"), 3)
    assert landed(c, [0, 1, 2])
    assert c.net.sent("WRITE_PEER").count(2) == 2


async def test_no_object_on_one_replica_and_halt_on_another_is_retried_too(c):
    c.net.fault(1, CODES["HALT"])
    c.net.fault(2, CODES["NO_OBJ"])  # replica 0 (the gateway) applies the write
    await asyncio.wait_for(c.gw.write(OID, 100, b"new"), 3)
    assert landed(c, [0, 1, 2])


async def test_a_write_of_an_object_no_replica_has_is_no_obj_without_retrying():
    c = FakeCluster(n=4)
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new")
    assert code_of(e) == "NO_OBJ"
    assert sorted(c.net.sent("WRITE_PEER")) == [1, 2]


@pytest.mark.parametrize("how", ["down", "halt"])
async def test_retries_end_with_network_error_after_the_retry_window(c, monkeypatch, how):
    monkeypatch.setattr(gateway, "RETRY_WINDOW", 0.3)
    if how == "down":
        c.net.down.add(1)
    else:
        c.net.fault(1, *[CODES["HALT"]] * 1000)
    with pytest.raises(SdError) as e:
        await asyncio.wait_for(c.gw.write(OID, 100, b"new"), 3)
    assert code_of(e) == "NETWORK_ERROR"
    assert c.net.sent("WRITE_PEER").count(1) >= 2  # it did retry meanwhile


async def test_no_storing_node_at_all_is_halt(c):
    c.order()  # the ring names no replica
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new")
    assert code_of(e) == "HALT"


async def test_a_work_step_that_lost_its_turn_sends_nothing(c):
    c.sheep[0].group.token_error = CODES["HALT"]
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new")
    assert code_of(e) == "HALT"
    assert c.net.log == [] and not landed(c, [0])


async def test_remove_reaches_every_replica_and_an_absent_copy_is_fine(c):
    del c.sheep[2].store.objs[OID]
    await c.gw.remove(OID)
    assert [c.copy(i, OID) for i in range(4)] == [None] * 4
    assert sorted(c.net.sent("REMOVE_PEER")) == [1, 2]


async def test_create_and_write_makes_the_object_on_every_replica():
    c = FakeCluster(n=4)
    await c.gw.create_and_write(OID, 10, b"abc")
    for i in (0, 1, 2):
        assert c.copy(i, OID) == bytes(10) + b"abc" + bytes(OBJ - 13)
    assert c.copy(3, OID) is None
    with pytest.raises(SdError) as e:
        await c.gw.create_and_write(OID, OBJ - 1, b"ab")
    assert code_of(e) == "INVALID_PARMS"


# -- fencing -------------------------------------------------------------------

GEN = 7


@pytest.fixture
def fenced(c):
    c.grant(GEN, via=0)
    return Fence(GEN, addr(c.nodes[0]))


async def test_a_fenced_write_carries_the_gateways_identity_to_every_replica(c, fenced):
    await c.gw.write(OID, 100, b"new", fence=fenced)
    assert landed(c, [0, 1, 2])
    assert c.sheep[0].locks.inflight == {} and c.sheep[0].locks.begun == 1


async def test_a_replica_that_applied_a_newer_grant_refuses_the_write(c, fenced):
    c.sheep[2].locks.grant(VID, GEN + 1, addr(c.nodes[3]))  # the gateway lags behind
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new", fence=fenced)
    assert code_of(e) == "FENCED"
    assert not landed(c, [2])
    assert c.sheep[0].locks.inflight == {}  # the fan-out is no longer counted


async def test_a_stale_generation_is_refused_at_the_gateway_before_anything_is_sent(c, fenced):
    c.grant(GEN + 1, via=0)
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new", fence=fenced)
    assert code_of(e) == "FENCED"
    assert c.net.log == [] and not landed(c, [0])
    assert c.sheep[0].locks.begun == 0


async def test_a_frozen_vdi_admits_no_new_fenced_write(c, fenced):
    c.sheep[0].locks.frozen.add(VID)
    with pytest.raises(SdError) as e:
        await c.gw.write(OID, 100, b"new", fence=fenced)
    assert code_of(e) == "AGAIN"
    assert c.net.log == [] and c.sheep[0].locks.begun == 0


async def test_a_retry_of_a_write_admitted_before_its_grant_ended_still_lands(c, fenced):
    async def grant_ends():  # once 0 and 1 have it: the grant starts draining, 2 HALTs
        await eventually(lambda: landed(c, [0, 1]))
        for s in c.sheep:
            s.locks.end_grant(VID, draining=True)
        raise error_for(CODES["HALT"])
    c.net.fault(2, grant_ends)
    await asyncio.wait_for(c.gw.write(OID, 100, b"new", fence=fenced), 3)
    assert landed(c, [0, 1, 2])


async def test_a_retry_after_the_grant_moved_on_is_fenced_and_sends_nothing_more(c, fenced):
    async def taken_over():  # once 0 and 1 have it: another writer's grant, 2 HALTs
        await eventually(lambda: landed(c, [0, 1]))
        for s in c.sheep:
            s.locks.end_grant(VID, draining=False)
            s.locks.grant(VID, GEN + 1, addr(c.nodes[3]))
        raise error_for(CODES["HALT"])
    c.net.fault(2, taken_over)
    with pytest.raises(SdError) as e:
        await asyncio.wait_for(c.gw.write(OID, 100, b"new", fence=fenced), 3)
    assert code_of(e) == "FENCED"
    assert len(c.net.sent("WRITE_PEER")) == 2  # the first attempt only
    assert not landed(c, [2]) and c.sheep[0].locks.inflight == {}


def client_write(oid, offset, data, gen):
    args = proto.ObjArgs(oid=oid, offset=offset, copies=3)
    req = proto.Request(proto.Op.WRITE_OBJ, args, flags=proto.SD_FLAG_CMD_WRITE,
                        data_length=len(data))
    if gen:
        req.flags |= proto.SD_FLAG_CMD_SESSION
        proto.set_fence(args, gen)
    return req


async def test_a_client_write_with_its_generation_is_fenced_end_to_end(c, fenced):
    await c.gw.handle_write(client_write(OID, 100, b"new", GEN), b"new")
    assert landed(c, [0, 1, 2])
    c.grant(GEN + 1, via=3)  # another writer took the VDI
    with pytest.raises(SdError) as e:
        await c.gw.handle_write(client_write(OID, 100, b"old", GEN), b"old")
    assert code_of(e) == "FENCED"
    assert landed(c, [0, 1, 2])
    assert len(c.net.sent("WRITE_PEER")) == 2


# -- reads: local copy first, bad copies skipped -------------------------------

@pytest.fixture
def tagged(c):
    """Copies told apart by their first byte (node 0's is ``0``...)."""
    for i in (0, 1, 2, 3):
        c.put(OID, bytes([48 + i]) * 8, on={i})
    c.order(1, 2, 0)  # the local copy is not the ring's first
    return c


async def test_a_read_takes_the_local_copy_and_asks_no_peer(tagged):
    assert await tagged.gw.read(OID, 0, 4) == b"0000"
    assert tagged.net.log == []


async def test_a_damaged_local_copy_is_skipped_and_scheduled_for_repair(tagged):
    tagged.sheep[0].store.damaged.add(OID)
    assert await tagged.gw.read(OID, 0, 4) == b"1111"
    assert tagged.net.sent() == [1]
    assert tagged.sheep[0].recovery.later == [OID]


async def test_a_read_skips_damaged_and_missing_copies_in_ring_order(tagged):
    tagged.order(1, 2, 3)  # the gateway holds no replica
    tagged.sheep[1].store.damaged.add(OID)
    del tagged.sheep[2].store.objs[OID]  # and no copy exists for its recovery
    assert await tagged.gw.read(OID, 0, 4) == b"3333"
    assert tagged.net.sent("READ_PEER") == [1, 2, 3]


async def test_a_local_copy_recovery_has_not_brought_yet_is_read_elsewhere(tagged):
    del tagged.sheep[0].store.objs[OID]  # node 0 holds it, recovery is not there yet
    tagged.sheep[0].recovery.elsewhere[OID] = b"r" * 8
    assert await tagged.gw.read(OID, 0, 4) == b"1111"  # the next holder, without waiting
    assert tagged.net.sent("READ_PEER") == [1]
    assert tagged.sheep[0].recovery.soon == [OID]  # ... while its recovery starts
    assert tagged.sheep[0].recovery.recovered == []


async def test_a_missing_local_copy_no_other_holder_serves_is_waited_for(tagged):
    del tagged.sheep[0].store.objs[OID]
    tagged.sheep[0].recovery.elsewhere[OID] = b"r" * 8
    for i in (1, 2):
        tagged.sheep[i].store.damaged.add(OID)
    assert await tagged.gw.read(OID, 0, 4) == b"rrrr"  # recovered here, then read
    assert tagged.net.sent("READ_PEER") == [1, 2]
    assert tagged.sheep[0].recovery.recovered == [OID]


async def test_a_damaged_local_copy_is_read_once_only(tagged):
    tagged.sheep[0].store.damaged.add(OID)
    for i in (1, 2):
        tagged.sheep[i].store.damaged.add(OID)
    with pytest.raises(SdError) as e:
        await tagged.gw.read(OID, 0, 4)
    assert code_of(e) == "EIO" and tagged.sheep[0].recovery.later == [OID]
    assert tagged.sheep[0].recovery.soon == []


async def test_a_missing_local_copy_of_a_single_copy_object_is_waited_for(tagged):
    tagged.order(0)
    del tagged.sheep[0].store.objs[OID]
    tagged.sheep[0].recovery.elsewhere[OID] = b"r" * 8
    assert await tagged.gw.read(OID, 0, 4) == b"rrrr"
    assert tagged.net.log == [] and tagged.sheep[0].recovery.soon == []


async def test_a_read_with_no_good_copy_fails_without_retrying(tagged):
    for i in (0, 1, 2):
        tagged.sheep[i].store.damaged.add(OID)
    with pytest.raises(SdError) as e:
        await tagged.gw.read(OID, 0, 4)
    assert code_of(e) == "EIO"
    assert tagged.net.sent() == [1, 2]


async def test_a_read_skips_a_cut_off_local_replica(tagged):
    tagged.sheep[0].group.up = False
    assert await tagged.gw.read(OID, 0, 4) == b"1111"


async def test_a_read_every_replica_halts_is_retried_after_a_pause(tagged):
    tagged.sheep[0].group.up = False

    def back():
        tagged.sheep[0].group.up = True
        raise error_for(CODES["AGAIN"])
    tagged.net.fault(1, CODES["HALT"])
    tagged.net.fault(2, back)
    assert await asyncio.wait_for(tagged.gw.read(OID, 0, 4), 3) == b"0000"
    assert tagged.net.sent() == [1, 2]  # the second attempt was served locally


async def test_a_read_every_replica_answers_with_an_epoch_error_follows_the_epoch(tagged):
    tagged.order(1, 2)
    tagged.net.fault(1, CODES["OLD_NODE_VER"])
    tagged.net.fault(2, CODES["AGAIN"])
    task = asyncio.ensure_future(tagged.gw.read(OID, 0, 4))
    await eventually(lambda: task.done() or tagged.sheep[0].group.waiting)
    assert not task.done()  # waiting for the epoch, not just pausing
    tagged.bump()
    assert await asyncio.wait_for(task, 2) == b"1111"


async def test_a_read_error_that_is_neither_skippable_nor_retryable_is_raised(tagged):
    tagged.order(1, 2, 3)
    tagged.net.fault(1, CODES["INVALID_PARMS"])
    with pytest.raises(SdError) as e:
        await tagged.gw.read(OID, 0, 4)
    assert code_of(e) == "INVALID_PARMS"
    assert tagged.net.sent() == [1]


async def test_no_object_anywhere_next_to_a_lasting_halt_is_no_obj_at_once(monkeypatch):
    """No replica applied the write: NO_OBJ is final even while another replica
    keeps answering HALT (no stall for the retry window)."""
    monkeypatch.setattr(gateway, "RETRY_WINDOW", 5.0)
    c = FakeCluster(n=4)
    c.net.fault(1, *[CODES["HALT"]] * 1000)
    with pytest.raises(SdError) as e:
        await asyncio.wait_for(c.gw.write(OID, 100, b"new"), 2)
    assert code_of(e) == "NO_OBJ"
