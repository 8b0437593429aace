"""Local ops used by ``dog vdi check`` / ``dog cluster check`` (PROTOCOL §7.3, §7.5).

* REPAIR_REPLICA (0xC5): fetch the whole object ``forw.oid`` from the node
  ``forw.addr:forw.port`` with a recovery read (READ_PEER + RECOVERY flag, so
  the source never starts a recovery of its own) and store it here, atomically
  replacing a damaged copy or creating a missing one.
* OIDS_EXIST (0xC6): the payload is an array of u64 oids; the reply is
  NO_OBJ with the oids this node does not store, or SUCCESS and nothing.

A repair races with client writes to the same object exactly as in Sheepdog:
the check tool is meant for quiet VDIs.
"""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace

from sheep import proto
from sheep.errors import CODES, error_for

log = logging.getLogger("sheep.repair")


def _source_node(sheep, addr: bytes, port: int):
    """The member at addr:port (or a bare address if it is not a member)."""
    for n in sheep.group.nodes:
        if bytes(n.addr) == bytes(addr) and n.port == port:
            return n
    host = proto.addr_to_str(bytes(addr))
    return SimpleNamespace(host=host, port=port, addr=addr)


async def repair_replica(sheep, req: proto.Request, payload: bytes):
    a = req.args
    oid, port = a.oid, a.port
    if not oid or not port:
        raise error_for(CODES["INVALID_PARMS"], "REPAIR_REPLICA needs forw.oid and forw.port")
    src = _source_node(sheep, a.addr, port)
    if src.host == sheep.me.host and port == sheep.me.port:
        raise error_for(CODES["INVALID_PARMS"], "REPAIR_REPLICA: the source is this node")
    if proto.is_data_obj(oid):  # its size comes from the VDI
        await sheep.vdis.await_state(proto.oid_to_vid(oid))
    size = sheep.gateway.obj_size(oid)
    rd = proto.Request(proto.Op.READ_PEER, proto.ObjArgs(oid=oid),
                       flags=proto.SD_FLAG_CMD_RECOVERY, epoch=sheep.group.epoch,
                       data_length=size)
    _rsp, data = await sheep.gateway.peers.request(src, rd)
    if len(data) != size:
        raise error_for(CODES["EIO"], f"short read of {oid:016x} from {src.host}:{port}: "
                                      f"{len(data)} of {size} bytes")
    await sheep.io(sheep.store.create_and_write, oid, size, data, 0, proto.is_sparse_obj(oid))
    log.info("repaired %016x from %s:%d", oid, src.host, port)
    return None, b""


async def oids_exist(sheep, req: proto.Request, payload: bytes):
    if len(payload) % 8:
        raise error_for(CODES["INVALID_PARMS"], "OIDS_EXIST needs an array of u64 oids")
    oids = struct.unpack(f"<{len(payload) // 8}Q", payload)

    def missing():
        store = sheep.store
        return [o for o in oids if not store.exists(o)]
    lost = await sheep.io(missing)
    if not lost:
        return None, b""
    return None, struct.pack(f"<{len(lost)}Q", *lost), CODES["NO_OBJ"]
