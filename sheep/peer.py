"""Peer operations: object I/O on this node's store, sent by gateways.

Guarantees: a peer request carries the gateway's epoch.  One older than ours
is refused with OLD_NODE_VER (the gateway catches up and retries on the new
ring); one newer than ours waits until our membership view catches up
(bounded by ``EPOCH_WAIT``, then NEW_NODE_VER), so a replica never acts on a
placement it has not seen yet.
"""

from __future__ import annotations

from sheep import proto
from sheep.errors import CODES, SdError, error_for

EPOCH_WAIT = 10.0


async def _check_epoch(sheep, req: proto.Request) -> None:
    group = sheep.group
    if req.epoch == group.epoch:
        return
    if (req.epoch - group.epoch) & 0x80000000:  # request is older (serial arithmetic)
        raise error_for(CODES["OLD_NODE_VER"])
    if not await group.wait_epoch_at_least(req.epoch, EPOCH_WAIT):
        raise error_for(CODES["NEW_NODE_VER"])


async def handle_create(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    a = req.args
    if proto.is_data_obj(a.oid):  # its size comes from the VDI: know the VDI first
        await sheep.vdis.await_state(proto.oid_to_vid(a.oid))
    size = sheep.gateway.obj_size(a.oid)
    await sheep.io(sheep.store.create_and_write, a.oid, size, payload, a.offset,
                   proto.is_sparse_obj(a.oid))
    settle_write(sheep, a.oid, req.epoch)
    return None, b""


def settle_write(sheep, oid: int, epoch: int) -> None:
    """After a store write admitted at ``epoch``: if the epoch moved meanwhile
    (the write waited on an I/O thread), the new holders may already have
    copied the object without it.  Refuse with OLD_NODE_VER so the gateway
    redoes the write on the new ring; and if this node no longer holds the
    object, keep the copy only as a stale one (never as a live orphan)."""
    g = sheep.group
    if g.epoch == epoch:
        return
    if not sheep.recovery.holds(oid):
        sheep.store.move_to_stale(oid, epoch)
    raise error_for(CODES["OLD_NODE_VER"], f"epoch moved from {epoch} to {g.epoch} during a write")


async def on_local(sheep, oid: int, call, *args):
    """Run a store call on ``oid``; if this node holds the object but lacks it
    (not recovered yet), recover it first and try again (I/O during recovery)."""
    try:
        return await sheep.io(call, *args)
    except SdError as e:
        if e.code != CODES["NO_OBJ"] or not await sheep.recovery.recover_object(oid):
            raise
    return await sheep.io(call, *args)


async def handle_read(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    a = req.args
    if req.flags & proto.SD_FLAG_CMD_RECOVERY:
        return _recovery_read(sheep, req)
    return None, await on_local(sheep, a.oid, sheep.store.read, a.oid, a.offset, req.data_length)


def _recovery_read(sheep, req: proto.Request):
    """A read by another node's recovery: never triggers recovery here.

    Without WILDCARD: the live copy only.  With WILDCARD and no buffer: a
    probe answering the newest stale epoch held (``rsp.obj.offset``; LIVE for
    a live copy only).  With WILDCARD and ``tgt_epoch``: that stale copy
    (``tgt_epoch`` = LIVE: the live copy)."""
    from sheep.recovery import LIVE

    a, store = req.args, sheep.store
    if not req.flags & proto.SD_FLAG_CMD_WILDCARD:
        return None, store.read(a.oid, a.offset, req.data_length)
    if req.data_length == 0:
        eps = store.stale_epochs(a.oid)
        if eps:
            return proto.ObjRsp(offset=eps[0]), b""
        if store.exists(a.oid):
            return proto.ObjRsp(offset=LIVE), b""
        raise error_for(CODES["NO_OBJ"])
    if a.tgt_epoch == LIVE:
        return None, store.read(a.oid, a.offset, req.data_length)
    data = store.read_stale(a.oid, a.tgt_epoch)
    return None, data[a.offset:a.offset + req.data_length]


async def handle_write(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    a = req.args
    await on_local(sheep, a.oid, sheep.store.write, a.oid, payload, a.offset)
    settle_write(sheep, a.oid, req.epoch)
    return None, b""


async def handle_remove(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    await sheep.io(sheep.store.remove, req.args.oid)
    return None, b""
