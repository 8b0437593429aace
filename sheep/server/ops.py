"""The op table: one entry per opcode, and request admission (docs/protocol.md §4, §7).

Each :class:`OpSpec` names the op, its admission class ``kind`` (gateway,
peer, local, cluster), its ``nature`` (what it does: object I/O, VDI query,
cluster change, ...; :mod:`sheep.server.op_natures`), whether it is a *force* op (allowed before format and while
waiting for nodes), and its handler ``handler(sheep, req, payload)`` which
returns ``(rsp_args | None, body)`` or ``(rsp_args, body, result)`` and raises
:class:`SdError` on failure.  Cluster ops go through ``group.cluster_op``
with a work step (this node, exclusive) and a main step (every node, in
order) — the main steps are listed in ``MAIN``.

:func:`dispatch` guarantees: every request gets exactly one reply header
echoing ``opcode`` and ``id`` with the current epoch; a reply payload never
exceeds what the client said it can receive; unknown opcodes get
INVALID_PARMS; failures inside a handler become their result code, never a
dropped connection.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from sheep import proto
from sheep.cluster import group as G
from sheep.datapath import repair, replica
from sheep.proto.errors import CODES, SdError, error_for, sd_error
from sheep.proto.inode import split_name_tag
from sheep.server import md_ops, metrics, stats
from sheep.server import ops_compat as compat
from sheep.server.op_natures import NATURE
from sheep.vdi import copies, locks

log = logging.getLogger("sheep.server.ops")
Op = proto.Op


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: str  # admission class: gateway | peer | local | cluster
    force: bool
    handler: Callable[..., Awaitable]
    nature: str  # what the op does, one of op_natures.NATURES (admission never reads it)




# ---------------------------------------------------------------------------
# local ops


async def get_node_list(sheep, req, payload):
    nodes = sheep.group.nodes
    return proto.NodeRsp(nr_nodes=len(nodes)), proto.pack_nodes(nodes)


async def stat_cluster(sheep, req, payload):
    g = sheep.group
    k = req.args.nodes_nr
    size = proto.EpochLogHeader.SIZE + k * proto.SD_NODE_SIZE
    result = {G.OK: 0, G.WAIT_FOR_FORMAT: CODES["WAIT_FOR_FORMAT"],
              G.WAIT_FOR_JOIN: CODES["WAIT_FOR_JOIN"],
              G.SHUTDOWN: CODES["SHUTDOWN"]}.get(g.status, CODES["SYSTEM_ERROR"])
    if not g.quorum:
        result = CODES["HALT"]
    if not g.formatted:
        return None, b"", result
    out = []
    for i, epoch in enumerate(range(g.epoch, 0, -1)):
        if (len(out) + 1) * size > req.data_length:
            break
        hdr = proto.EpochLogHeader(epoch=epoch)
        nodes = []
        if i == 0:
            c = g.config
            hdr.ctime, hdr.disable_recovery = c.ctime, int(g.disable_recovery)
            hdr.nr_copies, hdr.copy_policy, hdr.flags = c.copies, c.copy_policy, c.flags
            hdr.drv_name = c.default_store
        if k:
            rec = sheep.store.read_epoch(epoch)
            if rec:
                nodes = proto.unpack_nodes(rec[0])
                hdr.time = rec[1]
            if len(nodes) > k:
                return None, b"", CODES["BUFFER_SMALL"]
            hdr.nr_nodes = len(nodes)
        out.append(proto.pack_epoch_log(hdr, nodes, k))
    return None, b"".join(out), result


async def cluster_info(sheep, req, payload):
    g = sheep.group
    c = g.config
    hdr = proto.ClusterInfoHeader(
        disable_recovery=int(g.disable_recovery), nr_nodes=len(g.nodes), epoch=g.epoch,
        ctime=c.ctime,
        # before format, dog reads the vnode strategy of each node from here
        flags=c.flags if g.formatted else (
            0 if sheep.cfg.vnodes is not None else proto.SD_CLUSTER_FLAG_AUTO_VNODES),
        nr_copies=c.copies, copy_policy=c.copy_policy, status=G.STATUS_CODE[g.status],
        block_size_shift=c.block_size_shift, default_store=c.default_store)
    return None, proto.pack_cluster_info(hdr, g.nodes)


async def stat_sheep(sheep, req, payload):
    if sheep.cfg.gateway:
        return proto.NodeRsp(), b""
    # 1.0's md_get_size: the node's space (its weight, see sheep.store.space)
    cap = sheep.me.space
    used = await sheep.io(sheep.store.used)
    return proto.NodeRsp(store_size=cap, store_free=max(cap - used, 0)), b""


async def stat_recovery(sheep, req, payload):
    return None, sheep.recovery.state.pack()


async def get_cluster_default(sheep, req, payload):
    c = sheep.group.config
    return proto.ClusterDefaultRsp(nr_copies=c.copies, copy_policy=c.copy_policy,
                                   block_size_shift=c.block_size_shift), b""


def _bitmap(attr):
    async def handler(sheep, req, payload):
        if req.data_length != proto.VDI_BITMAP_SIZE:
            raise sd_error("INVALID_PARMS", "the VDI bitmap reply needs a 2097152-byte buffer")
        return None, bytes(getattr(sheep.vdis, attr))
    return handler


async def get_vdi_copies(sheep, req, payload):
    body = sheep.locks.copies_records()  # the VDI states with their lock fields
    if len(body) > req.data_length:
        return None, b"", CODES["BUFFER_SMALL"]
    return None, body


async def get_store_list(sheep, req, payload):
    return None, b"plain \0"


async def kill_node(sheep, req, payload):
    sheep.group.status = G.KILLED
    log.info("killed by KILL_NODE request")
    sheep.request_exit(0.1)
    return None, b""


async def invalid(sheep, req, payload):
    raise sd_error("INVALID_PARMS", f"opcode {req.opcode:#x} is not supported")


async def success(sheep, req, payload):
    return None, b""


async def get_epoch(sheep, req, payload):
    rec = sheep.store.read_epoch(req.args.tgt_epoch)
    if rec is None:
        raise sd_error("NO_TAG", f"no epoch {req.args.tgt_epoch}")
    body = rec[0] + struct.pack("<Q", rec[1])
    if len(body) > req.data_length:
        return None, b"", CODES["BUFFER_SMALL"]
    return None, body


async def get_obj_list(sheep, req, payload):
    """Every local oid; with the RECOVERY flag (another node's recovery) the
    stale ones too, at the requester's epoch once its moves are done (live
    copies are listed before stale ones: a copy moving meanwhile is seen)."""
    store = sheep.store
    if req.flags & proto.SD_FLAG_CMD_RECOVERY:
        await sheep.replica.admit_epoch(req.epoch)

        def both():
            return np.union1d(store.oid_array(), store.stale_oid_array())
        oids = await sheep.io_thread(both)
    else:
        oids = await sheep.io_thread(store.oid_array)
    body = oids.astype("<u8").tobytes()
    if len(body) > req.data_length:
        return None, b"", CODES["BUFFER_SMALL"]
    return None, body


async def exist(sheep, req, payload):
    if not await sheep.io(sheep.store.exists, req.args.oid):
        raise sd_error("NO_OBJ")
    return None, b""


async def get_hash(sheep, req, payload):
    """SHA-1 of the whole live copy; with SD_FLAG_CMD_SESSION also its version
    (``collie vdi check`` keeps the newest copy, never a majority's)."""
    version, data = await sheep.io_thread(sheep.store.read_object, req.args.oid)
    rsp = proto.HashRsp(digest=hashlib.sha1(data).digest())
    if req.flags & proto.SD_FLAG_CMD_SESSION:
        proto.set_hash_version(rsp, version)
    return rsp, b""


async def stat(sheep, req, payload):
    return None, stats.counters(sheep).pack()


async def get_loglevel(sheep, req, payload):
    return None, struct.pack("<i", sheep.cfg.log_level)


async def set_loglevel(sheep, req, payload):
    if len(payload) != 4:
        raise sd_error("INVALID_PARMS")
    level = struct.unpack("<i", payload)[0]
    if not 0 <= level <= 7:
        raise sd_error("INVALID_PARMS", "log level must be 0..7")
    sheep.set_log_level(level)
    return None, b""


async def get_vnodes(sheep, req, payload):
    me = sheep.group.node_by_key(f"{sheep.me.host}:{sheep.me.port}") or sheep.me
    return None, struct.pack("<i", me.nr_vnodes)


async def get_recovery(sheep, req, payload):
    return None, sheep.recovery.throttle.pack()


async def set_recovery(sheep, req, payload):
    if len(payload) != proto.RecoveryThrottling.SIZE:
        raise sd_error("INVALID_PARMS")
    sheep.recovery.throttle = proto.RecoveryThrottling.unpack(payload)
    sheep.recovery.kick()
    return None, b""


# ---------------------------------------------------------------------------
# VDI lookups (local) and cluster ops


async def get_vdi_info(sheep, req, payload):
    name, tag = split_name_tag(payload)
    vid = await sheep.vdis.find(name, tag, req.args.snapid)
    st = sheep.vdis.state(vid)
    rsp = proto.VdiRsp(vdi_id=vid, copies=st.copies if st else 0,
                       block_size_shift=sheep.vdis.shift_of(vid))
    openers = [h for h in sheep.locks.table.holders(vid) if h.kind != "standby"]
    if openers:  # in use: collie's delete refuses (zero, as 1.0, otherwise)
        proto.set_session_reply(rsp, proto.LOCK_STATUS_IN_USE, lock_count=len(openers))
    return rsp, b""


async def new_vdi(sheep, req, payload):
    if len(payload) != proto.SD_MAX_VDI_LEN:
        raise sd_error("INVALID_PARMS", "NEW_VDI needs a 256-byte name")
    if b"\0" not in payload:  # no room for the NUL: a longer name the client cut
        raise sd_error("INVALID_PARMS", f"VDI name longer than {proto.SD_MAX_VDI_LEN - 1} bytes")
    return await sheep.group.cluster_op(lambda: sheep.vdis.new_vdi_work(payload, req.args)), b""


async def del_vdi(sheep, req, payload):
    name, tag = split_name_tag(payload)
    # in use by another than the requester (locks.CURRENT_CONN: its sessions)?
    # Judged in the work step, inside the cluster-wide turn: a lock granted
    # between a check made here and the delete's turn would be left on a
    # deleted VDI.
    conn = locks.CURRENT_CONN.get()
    return await sheep.group.cluster_op(
        lambda: sheep.vdis.del_vdi_work(name, tag, req.args.snapid, conn)), b""


async def get_vdi_attr(sheep, req, payload):
    return await sheep.group.cluster_op(lambda: sheep.vdis.attr_work(req, payload)), b""


async def alter_cluster_copy(sheep, req, payload):
    return await sheep.group.cluster_op(
        lambda: copies.alter_cluster_copy_work(sheep, req.args)), b""


async def alter_vdi_copy(sheep, req, payload):
    return await sheep.group.cluster_op(
        lambda: copies.alter_vdi_copy_work(sheep, req.args)), b""


async def make_fs(sheep, req, payload):
    store = proto.cstr(payload) or "plain"
    if store != "plain":
        raise sd_error("NO_STORE", f"unknown store '{store}' (available: plain)")
    a = req.args
    if a.copy_policy:
        raise sd_error("INVALID_PARMS", "erasure coding is not supported")
    shift = a.block_size_shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT
    if not proto.SD_MIN_BLOCK_SIZE_SHIFT <= shift <= proto.SD_MAX_BLOCK_SIZE_SHIFT:
        raise sd_error("INVALID_PARMS", f"invalid block size shift {shift}")
    msg = {"op": "format", "ctime": a.ctime, "flags": a.flags,
           "copies": a.copies or proto.SD_DEFAULT_COPIES, "copy_policy": 0,
           "block_size_shift": shift, "store": store}

    async def work():
        return msg
    await sheep.group.cluster_op(work)
    return None, b""


async def shutdown(sheep, req, payload):
    async def work():
        return {"op": "shutdown"}
    await sheep.group.cluster_op(work)
    return None, b""


async def force_recover(sheep, req, payload):
    async def work():
        return {"op": "force_recover"}
    nodes = await sheep.group.cluster_op(work)
    return None, proto.pack_nodes(nodes)


async def set_vnodes(sheep, req, payload):
    # 1.0 reads an int from the start of the payload; its dog sends 8 bytes
    if len(payload) < 4:
        raise sd_error("INVALID_PARMS", "SET_VNODES needs a vnode count (i32 at offset 0)")
    count = struct.unpack_from("<i", payload)[0]
    g = sheep.group
    # 1.0's local_set_vnodes: gateway, then strategy, then range
    if sheep.cfg.gateway:
        raise sd_error("GATEWAY_MODE", "failed to set vnodes, cause operating in gateway mode")
    if g.config.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES:
        raise sd_error("INVALID_VNODES_STRATEGY", "the cluster uses automatic vnodes; format "
                                              "it with -V to set vnode counts by hand")
    if not 1 <= count <= 65535:
        raise sd_error("INVALID_PARMS", f"invalid vnodes: {count}")
    key = f"{sheep.me.host}:{sheep.me.port}"

    async def work():
        return {"op": "weights", "weights": {key: [count, sheep.me.space]}}
    await g.cluster_op(work)
    return None, b""


async def reweight(sheep, req, payload):
    """Re-read every node's space (STAT_SHEEP); vnodes follow when they are automatic."""
    async def work():
        weights = {}
        for n in sheep.group.nodes:
            if not n.nr_vnodes:
                continue
            if sheep.group.is_me(n):
                space = sheep.me.space
            else:
                rsp, _ = await sheep.peers.request(n, proto.Request(proto.Op.STAT_SHEEP))
                space = rsp.args.store_size
            weights[f"{n.host}:{n.port}"] = [n.nr_vnodes, space]
        return {"op": "weights", "weights": weights}
    await sheep.group.cluster_op(work)
    return None, b""


async def set_auto_recovery(sheep, req, payload):
    disable = req.opcode == Op.DISABLE_RECOVER

    async def work():
        return {"op": "recovery", "disable": disable}
    await sheep.group.cluster_op(work)
    return None, b""


def _main_recovery(sheep, msg):
    sheep.group.disable_recovery = msg["disable"]
    sheep.recovery.kick()


def _main_force_recover(sheep, msg):
    return sheep.group.apply_force_recover()


def _main_weights(sheep, msg):
    sheep.group.apply_weights(msg["weights"])


def _main_attr(sheep, msg):
    return proto.VdiRsp(vdi_id=msg["vid"], attr_id=msg["attr_id"], copies=msg["copies"])


def _main_error(sheep, msg):
    raise error_for(msg["code"], msg.get("message"))


def _main_format(sheep, msg):
    sheep.group.apply_format(msg)
    sheep.locks.clear()


def _main_shutdown(sheep, msg):
    sheep.group.apply_shutdown()


def _main_new_vdi(sheep, msg):
    rsp = sheep.vdis.apply_new_vdi(msg)
    sheep.locks.on_new_vdi(msg)  # a snapshot moves the writer's lock to the new working VDI
    return rsp


def _main_del_vdi(sheep, msg):
    rsp = sheep.vdis.apply_del_vdi(msg)
    sheep.locks.on_del_vdi(msg["vid"])
    return rsp


def _main_nothing(sheep, msg):
    return None


MAIN = {"force_recover": _main_force_recover, "recovery": _main_recovery, "weights": _main_weights,
        "format": _main_format, "shutdown": _main_shutdown, "new_vdi": _main_new_vdi,
        "del_vdi": _main_del_vdi, "attr": _main_attr, "error": _main_error,
        "reclaim": _main_nothing, "lock": locks.main_lock,
        "alter_cluster_copy": copies.apply_alter_cluster_copy,
        "alter_vdi_copy": copies.apply_alter_vdi_copy, "vdi_add": compat.main_vdi_add}


# ---------------------------------------------------------------------------
# the table


def _gw(method):
    async def handler(sheep, req, payload):
        return await getattr(sheep.gateway, method)(req, payload)
    return handler


_TABLE = [
    # opcode, kind, force, handler
    (Op.CREATE_AND_WRITE_OBJ, "gateway", False, _gw("handle_create")),
    (Op.READ_OBJ, "gateway", False, _gw("handle_read")),
    (Op.WRITE_OBJ, "gateway", False, _gw("handle_write")),
    (Op.REMOVE_OBJ, "gateway", False, _gw("handle_remove")),
    (Op.DISCARD_OBJ, "gateway", False, _gw("handle_discard")),  # writes the inode
    (Op.NEW_VDI, "cluster", False, new_vdi),
    (Op.LOCK_VDI, "cluster", False, locks.lock_vdi),
    (Op.RELEASE_VDI, "cluster", False, locks.release_vdi),
    (Op.GET_VDI_INFO, "cluster", False, get_vdi_info),
    (Op.READ_VDIS, "local", True, _bitmap("inuse")),
    (Op.FLUSH_VDI, "local", False, invalid),
    (Op.DEL_VDI, "cluster", False, del_vdi),
    (Op.GET_CLUSTER_DEFAULT, "local", True, get_cluster_default),
    (Op.GET_NODE_LIST, "local", True, get_node_list),
    (Op.MAKE_FS, "cluster", True, make_fs),
    (Op.SHUTDOWN, "cluster", True, shutdown),
    (Op.STAT_SHEEP, "local", False, stat_sheep),
    (Op.STAT_CLUSTER, "local", True, stat_cluster),
    (Op.GET_VDI_ATTR, "cluster", False, get_vdi_attr),
    (Op.GET_STORE_LIST, "local", True, get_store_list),
    (Op.STAT_RECOVERY, "local", False, stat_recovery),
    (Op.FLUSH_DEL_CACHE, "local", False, success),
    (Op.KILL_NODE, "local", True, kill_node),
    (Op.GET_OBJ_LIST, "local", False, get_obj_list),
    (Op.GET_EPOCH, "local", False, get_epoch),
    (Op.CREATE_AND_WRITE_PEER, "peer", False, replica.handle_create),
    (Op.READ_PEER, "peer", False, replica.handle_read),
    (Op.WRITE_PEER, "peer", False, replica.handle_write),
    (Op.REMOVE_PEER, "peer", False, replica.handle_remove),
    (Op.GET_VDI_COPIES, "local", True, get_vdi_copies),
    (Op.DELETE_CACHE, "cluster", False, success),
    (Op.GET_HASH, "local", False, get_hash),
    (Op.STAT, "local", False, stat),
    (Op.GET_LOGLEVEL, "local", True, get_loglevel),
    (Op.SET_LOGLEVEL, "local", True, set_loglevel),
    (Op.EXIST, "local", True, exist),
    (Op.CLUSTER_INFO, "local", True, cluster_info),
    (Op.READ_DEL_VDIS, "local", True, _bitmap("deleted")),
    (Op.GET_RECOVERY, "local", True, get_recovery),
    (Op.SET_RECOVERY, "local", True, set_recovery),
    (Op.GET_VNODES, "local", False, get_vnodes),
    (Op.SET_VNODES, "local", False, set_vnodes),
    (Op.FORCE_RECOVER, "cluster", True, force_recover),
    (Op.REWEIGHT, "cluster", False, reweight),
    (Op.ENABLE_RECOVER, "cluster", False, set_auto_recovery),
    (Op.DISABLE_RECOVER, "cluster", False, set_auto_recovery),
    (Op.ALTER_CLUSTER_COPY, "cluster", False, alter_cluster_copy),
    (Op.ALTER_VDI_COPY, "cluster", False, alter_vdi_copy),
    (Op.REPAIR_REPLICA, "local", False, repair.repair_replica),
    (Op.OIDS_EXIST, "local", True, repair.oids_exist),
    (Op.GET_LOCKS, "local", False, locks.get_locks),
    # in 1.0's table although this daemon has no object cache / tracer (see above)
    (Op.GET_CACHE_INFO, "local", False, compat.empty_reply),
    (Op.CACHE_PURGE, "local", False, compat.empty_reply),
    (Op.TRACE_ENABLE, "local", True, compat.empty_reply),
    (Op.TRACE_DISABLE, "local", True, compat.empty_reply),
    (Op.TRACE_STATUS, "local", True, compat.empty_reply),
    (Op.TRACE_READ_BUF, "local", True, compat.empty_reply),
    (Op.PREVENT_INODE_UPDATE, "local", False, success),
    (Op.ALLOW_INODE_UPDATE, "local", False, success),
    (Op.NOTIFY_VDI_DEL, "cluster", True, success),  # drops object-list cache entries: none here
    (Op.NOTIFY_VDI_ADD, "cluster", True, compat.notify_vdi_add),
]

_TABLE += md_ops.OPS  # MD_INFO / MD_PLUG / MD_UNPLUG (sheep.md_ops)

OPS: dict[int, OpSpec] = {int(op): OpSpec(op.name, kind, force, h, NATURE[int(op)])
                          for op, kind, force, h in _TABLE}


def apply_main(sheep, msg: dict):
    """Apply one cluster op's main step on this node (called in total order)."""
    return MAIN[msg["op"]](sheep, msg)


def admit(sheep, req: proto.Request) -> OpSpec:
    """Admission rules of §4, in order; raises the refusal as SdError."""
    if not proto.version_ok(req.opcode, req.proto_ver):
        raise sd_error("VER_MISMATCH")
    spec = OPS.get(req.opcode)
    if spec is None:
        raise sd_error("INVALID_PARMS", f"unknown opcode {req.opcode:#x}")
    status = sheep.group.status
    if status == G.KILLED:
        raise sd_error("KILLED")
    if status == G.SHUTDOWN:
        raise sd_error("SHUTDOWN")
    if spec.kind in ("gateway", "peer", "cluster") and not sheep.group.serving():
        raise sd_error("HALT", "this node is cut off from the cluster (not in the primary view, "
                           "or its membership lease lapsed)")
    if status != G.OK and not spec.force:
        raise sd_error("WAIT_FOR_FORMAT" if status == G.WAIT_FOR_FORMAT else "WAIT_FOR_JOIN")
    return spec


async def dispatch(sheep, req: proto.Request, payload: bytes) -> tuple[proto.Response, bytes]:
    """Run one request to completion; always returns a reply."""
    t0 = time.perf_counter()
    rsp = proto.Response(req.opcode, id=req.id)
    body = b""
    counted = spec = None
    try:
        spec = admit(sheep, req)
        counted = stats.count_begin(sheep, req, spec.kind)
        out = await spec.handler(sheep, req, payload)
        if len(out) == 3:
            args, body, rsp.result = out
        else:
            args, body = out
        if args is not None:
            rsp.args = args
    except SdError as e:
        rsp.result = e.code
        body = b""
        if e.code not in (CODES["NO_OBJ"], CODES["NO_VDI"], CODES["OLD_NODE_VER"]):
            log.info("%s failed: %s", proto.Op(req.opcode).name if req.opcode in OPS
                     else hex(req.opcode), e.message)
    except Exception:  # a bug must cost one request, never the daemon
        log.exception("request %#x failed", req.opcode)
        rsp.result = CODES["SYSTEM_ERROR"]
        body = b""
    finally:
        if counted:
            stats.count_end(sheep, counted)
    cap = req.reply_capacity
    if len(body) > cap:
        log.warning("reply to %#x truncated from %d to %d bytes", req.opcode, len(body), cap)
        body = body[:cap]
    rsp.epoch = sheep.group.epoch
    rsp.data_length = len(body)
    spec = spec or OPS.get(req.opcode)  # refused at admission: still counted under its op
    metrics.requests(sheep).record(
        req.opcode if spec else -1, spec.name if spec else "unknown",
        spec.kind if spec else "unknown", len(payload), len(body),
        time.perf_counter() - t0, rsp.result != 0)
    return rsp, body
