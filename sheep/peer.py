"""Peer operations: object I/O on this node's store, sent by gateways.

Guarantees: a peer request carries the gateway's epoch.  One older than ours
is refused with OLD_NODE_VER (the gateway catches up and retries on the new
ring); one newer than ours waits until our membership view catches up
(bounded by ``EPOCH_WAIT``, then NEW_NODE_VER), so a replica never acts on a
placement it has not seen yet.
"""

from __future__ import annotations

from sheep import proto
from sheep.errors import CODES, error_for

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
    return None, b""


async def handle_read(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    a = req.args
    return None, await sheep.io(sheep.store.read, a.oid, a.offset, req.data_length)


async def handle_write(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    a = req.args
    await sheep.io(sheep.store.write, a.oid, payload, a.offset)
    return None, b""


async def handle_remove(sheep, req: proto.Request, payload: bytes):
    await _check_epoch(sheep, req)
    await sheep.io(sheep.store.remove, req.args.oid)
    return None, b""
