"""Local ops used by ``dog vdi check`` / ``dog cluster check`` (docs/protocol.md §7.3, §7.5).

* REPAIR_REPLICA (0xC5): fetch the whole object ``forw.oid`` with its version
  from the node ``forw.addr:forw.port`` (a recovery read, so the source never
  starts a recovery of its own) and store it here, replacing a missing,
  damaged or older copy — **never a newer one**.  The original ``dog`` picks
  its source by majority vote; when the copy here is newer than the source's
  (the majority missed acknowledged writes), the repair goes the other way:
  this node's copy is pushed to the source (a REPAIR_REPLICA sent to it, with
  ``SD_FLAG_CMD_SESSION`` meaning "do not push back"), so the check still
  converges on the newest copy and never makes a loss permanent.
* OIDS_EXIST (0xC6): the payload is an array of u64 oids; the reply is
  NO_OBJ with the oids this node does not store, or SUCCESS and nothing.

A repair races with client writes to the same object exactly as in Sheepdog:
the check tool is meant for quiet VDIs; a repair that spans an epoch change
is refused (OLD_NODE_VER) rather than installed.
"""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace

from sheep import proto
from sheep.cluster.fetch import LIVE
from sheep.proto.errors import CODES, SdError, error_for
from sheep.store.meta import fmt_version

log = logging.getLogger("sheep.datapath.repair")


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
    g, store = sheep.group, sheep.store
    await g.settled()
    epoch = g.epoch
    size = sheep.vdis.obj_size(oid)
    rd = proto.Request(proto.Op.READ_PEER, proto.ObjArgs(oid=oid, tgt_epoch=LIVE),
                       flags=proto.SD_FLAG_CMD_RECOVERY, epoch=epoch, data_length=size)
    rsp, data = await sheep.recovery_peers.request(src, rd)
    if len(data) != size:
        raise error_for(CODES["EIO"], f"short read of {oid:016x} from {src.host}:{port}: "
                                      f"{len(data)} of {size} bytes")
    version = rsp.args.offset
    local = await sheep.io_thread(_local_state, store, oid)
    if local is not None and local > version:
        if req.flags & proto.SD_FLAG_CMD_SESSION:
            raise error_for(CODES["INVALID_PARMS"], f"{oid:016x}: the copy here (version "
                            f"{fmt_version(local)}) is newer than the source's")
        await _push_back(sheep, oid, src, epoch)
        log.warning("repair of %016x from %s:%d refused: the copy here (version %s) is newer "
                    "than the source's (%s); pushed it there instead", oid, src.host, port,
                    fmt_version(local), fmt_version(version))
        return None, b""

    def check():
        if g.epoch != epoch:
            raise error_for(CODES["OLD_NODE_VER"], "epoch moved during the repair")
    done = await sheep.io_thread(lambda: store.install(oid, size, data, version,
                                                       proto.is_sparse_obj(oid), check,
                                                       replace_damaged=local is None))
    if done:
        log.info("repaired %016x from %s:%d (version %s)", oid, src.host, port,
                 fmt_version(version))
    else:  # intact after all (repaired or rewritten meanwhile), or newer than the source's
        log.warning("repair of %016x from %s:%d (version %s) left the copy here as it is",
                    oid, src.host, port, fmt_version(version))
    return None, b""


def _local_state(store, oid: int) -> int | None:
    """Version of an intact local copy; None if it is absent or damaged."""
    try:
        return store.read_object(oid)[0]
    except SdError:
        return None


async def _push_back(sheep, oid: int, src, epoch: int) -> None:
    req = proto.Request(proto.Op.REPAIR_REPLICA, flags=proto.SD_FLAG_CMD_SESSION, epoch=epoch)
    req.args.oid, req.args.addr, req.args.port = oid, bytes(sheep.me.addr), sheep.me.port
    await sheep.peers.request(src, req)


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
