"""The replica side of object I/O (sheep.datapath.replica) on one in-memory
node (tests/unit/datapath/fakes.py): the epoch, serving and fencing checks —
at admission and again under the object's store lock right before the
change —, a change that finished after the epoch moved, recovery of a
missing object before it is served, damaged copies, and the peer handlers'
decoding of a gateway's fencing credentials.
"""

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fakes import (  # noqa: E402
    EPOCH,
    OBJ,
    VID,
    FakeRing,
    FakeSheep,
    addr,
    data_oid,
    eventually,
    make_node,
)

from sheep import proto
from sheep.datapath import replica
from sheep.datapath.replica import Fence
from sheep.proto.errors import CODES, SdError, error_for

pytestmark = pytest.mark.quick

OID = data_oid(1)
OLD = b"o" * OBJ
NODES = [make_node(i) for i in range(3)]
GW = addr(NODES[2])  # the gateway the fenced writes come through
GEN = 4


@pytest.fixture
def s():
    s = FakeSheep(NODES[0], EPOCH, FakeRing(NODES))
    s.store.objs[OID] = bytearray(OLD)
    s.locks.grant(VID, GEN, GW)
    return s


def code_of(excinfo) -> str:
    return proto.result_name(excinfo.value.code)


def untouched(s) -> bool:
    return s.store.changes == [] and bytes(s.store.objs[OID]) == OLD


# the changes, each as fn(sheep, epoch, fence)
CHANGES = {
    "write": lambda s, e, f=None: s.replica.write(OID, b"new", 10, e, f),
    "create": lambda s, e, f=None: s.replica.create(OID, b"new", 10, e, f),
    "remove": lambda s, e, f=None: s.replica.remove(OID, e),
}
FENCEABLE = ["write", "create"]


# -- the epoch at admission ---------------------------------------------------

@pytest.mark.parametrize("op", list(CHANGES) + ["read"])
async def test_a_request_of_an_older_epoch_is_refused_and_changes_nothing(s, op):
    call = (s.replica.read(OID, 0, 4, EPOCH - 1) if op == "read"
            else CHANGES[op](s, EPOCH - 1))
    with pytest.raises(SdError) as e:
        await call
    assert code_of(e) == "OLD_NODE_VER"
    assert untouched(s) and s.store.reads == []


async def test_epochs_compare_in_serial_arithmetic():
    s = FakeSheep(NODES[0], 2, FakeRing(NODES))
    with pytest.raises(SdError) as e:  # 0xffffffff is just before 2 (wrapped), not after
        await s.replica.admit_epoch(0xFFFFFFFF)
    assert code_of(e) == "OLD_NODE_VER"


async def test_a_request_of_a_newer_epoch_waits_until_this_node_has_it(s):
    task = asyncio.ensure_future(CHANGES["write"](s, EPOCH + 1))
    await eventually(lambda: s.group.waiting)
    assert not task.done() and untouched(s)
    s.group.set_epoch(EPOCH + 1)
    await asyncio.wait_for(task, 2)
    assert s.store.objs[OID][10:13] == b"new"
    assert s.store.changes == [("write", OID, EPOCH + 1)]


async def test_a_newer_epoch_that_never_comes_is_new_node_ver(s, monkeypatch):
    monkeypatch.setattr(replica, "EPOCH_WAIT", 0.05)
    with pytest.raises(SdError) as e:
        await CHANGES["write"](s, EPOCH + 1)
    assert code_of(e) == "NEW_NODE_VER"
    assert untouched(s)


async def test_a_newer_epoch_overtaken_while_waiting_is_old_node_ver(s):
    task = asyncio.ensure_future(CHANGES["write"](s, EPOCH + 1))
    await eventually(lambda: s.group.waiting)
    s.group.set_epoch(EPOCH + 2)  # this node went straight past it
    with pytest.raises(SdError) as e:
        await asyncio.wait_for(task, 2)
    assert code_of(e) == "OLD_NODE_VER"
    assert untouched(s)


async def test_a_request_waits_for_the_epochs_store_jobs_first(s):
    s.group.jobs = asyncio.Event()  # the epoch's disk work is still running
    task = asyncio.ensure_future(CHANGES["write"](s, EPOCH))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done() and untouched(s)
    s.group.jobs.set()
    await asyncio.wait_for(task, 2)
    assert s.store.objs[OID][10:13] == b"new"


async def test_an_epoch_change_while_waiting_for_the_store_jobs_is_refused(s):
    s.group.jobs = asyncio.Event()
    task = asyncio.ensure_future(CHANGES["write"](s, EPOCH))
    for _ in range(20):
        await asyncio.sleep(0)
    s.group.set_epoch(EPOCH + 1)
    s.group.jobs.set()
    with pytest.raises(SdError) as e:
        await asyncio.wait_for(task, 2)
    assert code_of(e) == "OLD_NODE_VER"
    assert untouched(s)


# -- serving and fencing ------------------------------------------------------

@pytest.mark.parametrize("op", CHANGES)
async def test_a_node_that_may_not_serve_changes_nothing(s, op):
    s.group.up = False
    with pytest.raises(SdError) as e:
        await CHANGES[op](s, EPOCH)
    assert code_of(e) == "HALT"
    assert untouched(s)


async def test_a_read_by_a_node_cut_off_is_halt(s):
    s.group.up = False
    with pytest.raises(SdError) as e:
        await s.replica.read(OID, 0, 4, EPOCH)
    assert code_of(e) == "HALT"


@pytest.mark.parametrize("op", FENCEABLE)
@pytest.mark.parametrize("fence", [Fence(GEN - 1, GW), Fence(GEN, addr(NODES[1]))],
                         ids=["stale generation", "current generation via another gateway"])
async def test_a_fenced_write_that_is_not_the_current_grant_changes_nothing(s, op, fence):
    with pytest.raises(SdError) as e:
        await CHANGES[op](s, EPOCH, fence)
    assert code_of(e) == "FENCED"
    assert untouched(s)


@pytest.mark.parametrize("op", FENCEABLE)
async def test_a_write_of_the_current_grant_lands(s, op):
    await CHANGES[op](s, EPOCH, Fence(GEN, GW))
    assert s.store.objs[OID][10:13] == b"new"


async def test_a_draining_grants_writes_land_only_through_its_own_gateway(s):
    s.locks.end_grant(VID, draining=True)
    with pytest.raises(SdError) as e:
        await CHANGES["write"](s, EPOCH, Fence(GEN, addr(NODES[1])))
    assert code_of(e) == "FENCED"
    await CHANGES["write"](s, EPOCH, Fence(GEN, GW))
    assert s.store.objs[OID][10:13] == b"new"
    s.locks.draining.clear()  # drained: refused from now on
    with pytest.raises(SdError) as e:
        await s.replica.write(OID, b"end", 10, EPOCH, Fence(GEN, GW))
    assert code_of(e) == "FENCED"
    assert s.store.objs[OID][10:13] == b"new"


async def test_a_write_of_a_grant_not_applied_here_yet_waits_for_it(s):
    task = asyncio.ensure_future(CHANGES["write"](s, EPOCH, Fence(GEN + 1, GW)))
    await eventually(lambda: s.group.waiting)
    assert not task.done() and untouched(s)
    s.locks.grant(VID, GEN + 1, GW)  # the grant arrives in the total order
    await asyncio.wait_for(task, 2)
    assert s.store.objs[OID][10:13] == b"new"


# -- the same checks under the object's lock, right before the change ----------

def epoch_moves(s):
    s.group.epoch = EPOCH + 1


def cut_off(s):
    s.group.up = False


def taken_over(s):
    s.locks.grants[VID] = (GEN + 1, addr(NODES[1]))


@pytest.mark.parametrize("op", list(CHANGES))
@pytest.mark.parametrize("meanwhile,code", [(epoch_moves, "OLD_NODE_VER"), (cut_off, "HALT")])
async def test_what_changed_while_the_request_waited_for_the_lock_is_seen(s, op, meanwhile, code):
    s.store.on_locked = lambda oid: meanwhile(s)  # admitted, then this, then the lock
    with pytest.raises(SdError) as e:
        await CHANGES[op](s, EPOCH, Fence(GEN, GW))
    assert code_of(e) == code
    assert untouched(s)


@pytest.mark.parametrize("op", FENCEABLE)
async def test_a_grant_that_moved_on_while_the_write_waited_for_the_lock_is_seen(s, op):
    s.store.on_locked = lambda oid: taken_over(s)
    with pytest.raises(SdError) as e:
        await CHANGES[op](s, EPOCH, Fence(GEN, GW))
    assert code_of(e) == "FENCED"
    assert untouched(s)


async def test_a_read_cut_off_while_it_read_is_halt(s):
    real = s.store.read

    def read(*a):
        data = real(*a)
        cut_off(s)  # the data may already be stale
        return data
    s.store.read = read
    with pytest.raises(SdError) as e:
        await s.replica.read(OID, 0, 4, EPOCH)
    assert code_of(e) == "HALT"


@pytest.mark.parametrize("op", FENCEABLE)
@pytest.mark.parametrize("holder", [True, False])
async def test_a_change_that_finished_after_the_epoch_moved_is_refused(s, op, holder):
    s.store.after_change = lambda oid: epoch_moves(s)
    s.recovery.holder = holder
    with pytest.raises(SdError) as e:
        await CHANGES[op](s, EPOCH)
    assert code_of(e) == "OLD_NODE_VER"  # the gateway redoes it on the new ring
    if holder:  # still ours: the copy stays live (recovery of the new epoch uses it)
        assert s.store.objs[OID][10:13] == b"new" and s.store.stale == {}
    else:  # no longer ours: no live orphan; a stale copy of the old epoch
        assert OID not in s.store.objs
        assert s.store.stale[(OID, EPOCH)][10:13] == b"new"


# -- missing and damaged copies -----------------------------------------------

async def test_a_missing_object_is_recovered_before_it_is_written(s):
    del s.store.objs[OID]
    s.recovery.elsewhere[OID] = b"r" * OBJ
    await CHANGES["write"](s, EPOCH)
    assert bytes(s.store.objs[OID]) == b"r" * 10 + b"new" + b"r" * (OBJ - 13)
    assert s.recovery.recovered == [OID]


async def test_a_missing_object_is_recovered_before_it_is_read(s):
    del s.store.objs[OID]
    s.recovery.elsewhere[OID] = b"r" * OBJ
    assert await s.replica.read(OID, 0, 4, EPOCH) == b"rrrr"


@pytest.mark.parametrize("case,code", [("absent", "NO_OBJ"), ("undecided", "AGAIN"),
                                       ("not holder", "AGAIN")])
async def test_a_missing_object_is_no_obj_only_when_it_exists_nowhere(s, case, code):
    del s.store.objs[OID]
    s.recovery.undecided = case == "undecided"
    s.recovery.holder = case != "not holder"
    for call in (s.replica.read(OID, 0, 4, EPOCH), CHANGES["write"](s, EPOCH)):
        with pytest.raises(SdError) as e:
            await call
        assert code_of(e) == code
    assert OID not in s.store.objs


async def test_a_damaged_copy_answers_eio_to_a_read_and_is_repaired_later(s):
    s.store.damaged.add(OID)
    with pytest.raises(SdError) as e:
        await s.replica.read(OID, 0, 4, EPOCH)
    assert code_of(e) == "EIO"
    assert s.recovery.later == [OID]


async def test_a_failing_disk_is_not_an_object_to_repair(s):
    err = error_for(CODES["EIO"], "disk gone")
    err.disk_failure = True
    s.store.fail = err
    with pytest.raises(SdError) as e:
        await s.replica.read(OID, 0, 4, EPOCH)
    assert code_of(e) == "EIO"
    assert s.recovery.later == []


async def test_a_write_over_a_damaged_copy_repairs_it_first_then_writes(s):
    s.store.damaged.add(OID)
    s.recovery.elsewhere[OID] = b"g" * OBJ
    await CHANGES["write"](s, EPOCH)
    assert bytes(s.store.objs[OID]) == b"g" * 10 + b"new" + b"g" * (OBJ - 13)
    assert s.recovery.repaired == [OID]


async def test_a_write_over_a_damaged_copy_that_cannot_be_repaired_is_eio(s):
    s.store.damaged.add(OID)
    with pytest.raises(SdError) as e:
        await CHANGES["write"](s, EPOCH)
    assert code_of(e) == "EIO"
    assert untouched(s) and s.recovery.repaired == [OID]


async def test_a_remove_of_an_absent_object_succeeds(s):
    del s.store.objs[OID]
    await CHANGES["remove"](s, EPOCH)


async def test_a_create_makes_a_whole_object_of_the_vdis_size(s):
    del s.store.objs[OID]
    await CHANGES["create"](s, EPOCH)
    assert bytes(s.store.objs[OID]) == bytes(10) + b"new" + bytes(OBJ - 13)
    assert s.store.changes == [("create", OID, EPOCH)]


# -- peer handlers: the request as a gateway sends it --------------------------

def peer_write(gen=0, gateway_index=None, epoch=EPOCH, op=proto.Op.WRITE_PEER):
    args = proto.ObjArgs(oid=OID, offset=10, copies=3)
    flags = proto.SD_FLAG_CMD_WRITE
    if gen:
        flags |= proto.SD_FLAG_CMD_SESSION
        proto.set_fence(args, gen)
        args.cow_oid = 1 + gateway_index
    req = proto.Request(op, args, flags=flags, epoch=epoch, data_length=3)
    return proto.Request.unpack(req.pack())


@pytest.mark.parametrize("op", [proto.Op.WRITE_PEER, proto.Op.CREATE_AND_WRITE_PEER])
async def test_a_peer_write_is_fenced_with_the_gateway_it_names(s, op):
    handler = replica.handle_write if op == proto.Op.WRITE_PEER else replica.handle_create
    with pytest.raises(SdError) as e:  # generation right, but through node 1
        await handler(s, peer_write(GEN, 1, op=op), b"new")
    assert code_of(e) == "FENCED"
    assert untouched(s)
    await handler(s, peer_write(GEN, 2, op=op), b"new")  # through node 2: the grant's
    assert s.store.objs[OID][10:13] == b"new"


async def test_a_fenced_peer_write_without_a_known_gateway_is_refused(s):
    for idx in (-1, len(NODES)):
        with pytest.raises(SdError) as e:
            await replica.handle_write(s, peer_write(GEN, idx), b"new")
        assert code_of(e) == "INVALID_PARMS"
    assert untouched(s)


async def test_a_peer_write_of_an_older_epoch_is_refused(s):
    with pytest.raises(SdError) as e:
        await replica.handle_write(s, peer_write(GEN, 2, epoch=EPOCH - 1), b"new")
    assert code_of(e) == "OLD_NODE_VER"
    assert untouched(s)


async def test_a_peer_read_returns_the_range(s):
    req = proto.Request(proto.Op.READ_PEER, proto.ObjArgs(oid=OID, offset=2), epoch=EPOCH,
                        data_length=3)
    _rsp, body = await replica.handle_read(s, req, b"")
    assert body == b"ooo"


async def test_a_read_uses_the_page_cache_inline_and_the_disk_only_when_it_must(s):
    assert await s.replica.read(OID, 0, 4, EPOCH) == b"oooo"
    assert s.store.waited == []  # cached: answered without leaving the loop
    s.store.cold.add(OID)
    assert await s.replica.read(OID, 4, 4, EPOCH) == b"oooo"
    assert s.store.waited == [OID]  # the blocking read answered it


async def test_a_write_over_a_copy_another_repair_just_fixed_succeeds(s):
    """Two legs (a write's and a retry's, or a read's repair) meet the same
    damaged copy: the repair that finds it already replaced gives up, and the
    write then goes through on the good copy instead of failing."""
    s.store.damaged.add(OID)
    s.recovery.elsewhere[OID] = b"g" * OBJ

    async def repaired_by_someone_else(oid):
        s.recovery.repaired.append(oid)
        s.store.objs[oid] = bytearray(s.recovery.elsewhere[oid])
        s.store.damaged.discard(oid)
        return False  # this repair found nothing left to replace
    s.recovery.fetcher.repair = repaired_by_someone_else
    await CHANGES["write"](s, EPOCH)
    assert bytes(s.store.objs[OID]) == b"g" * 10 + b"new" + b"g" * (OBJ - 13)


async def test_a_repair_that_cannot_decide_makes_the_write_again_not_eio(s):
    """A holder did not answer the repair's probe (load, a stall): the write
    is answered AGAIN, which the gateway retries, not EIO, which it gives
    the client; nothing is written."""
    from sheep.cluster.fetch import Retry
    s.store.damaged.add(OID)

    async def silent(oid):
        raise Retry("holder(s) 127.0.0.1:7001 did not answer")
    s.recovery.fetcher.repair = silent
    with pytest.raises(SdError) as e:
        await CHANGES["write"](s, EPOCH)
    assert code_of(e) == "AGAIN" and untouched(s)


@pytest.mark.parametrize("code", ["OLD_NODE_VER", "HALT"])
async def test_a_repair_cut_by_an_epoch_change_or_a_halt_passes_it_on(s, code):
    s.store.damaged.add(OID)

    async def cut(oid):
        raise error_for(CODES[code], "during the repair")
    s.recovery.fetcher.repair = cut
    with pytest.raises(SdError) as e:
        await CHANGES["write"](s, EPOCH)
    assert code_of(e) == code and untouched(s)
