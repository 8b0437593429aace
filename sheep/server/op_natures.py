"""What each op *is*, as opposed to how it is admitted.

The op table's ``kind`` (gateway | peer | local | cluster) is the admission
class: it decides whether a request may run while the node is not serving
and whether it goes through the cluster's total order.  It says nothing
about what the op does — GET_VDI_INFO is admitted as a cluster op (its
answer must agree with the ordered VDI table) yet only reads; DISCARD_OBJ is
a gateway op that writes an inode.  ``NATURE`` states that, one word-pair
per opcode, from the closed set ``NATURES``.  It is documentation the code
can check (every opcode has one; tests spot-check them); admission never
reads it.
"""

from __future__ import annotations

from sheep import proto

Op = proto.Op

NATURES: dict[str, str] = {
    "object I/O": "a client's read or write of an object, fanned out by this gateway to the replicas",
    "replica I/O": "one node's copy of an object, asked for by a gateway or a repair",
    "VDI query": "reads VDI state (names, bitmaps, copies, locks); changes nothing",
    "VDI change": "changes VDI state at one point of the cluster's total order",
    "cluster change": "changes cluster-wide state (format, copies, recovery, shutdown) in total order",
    "node query": "reads this node's or the cluster's state; changes nothing",
    "node admin": "changes this node's local settings or disks",
    "compatibility": "Sheepdog 1.0 has it; here a fixed answer (no object cache, no tracer)",
}

_BY_NATURE: dict[str, tuple[Op, ...]] = {
    "object I/O": (Op.CREATE_AND_WRITE_OBJ, Op.READ_OBJ, Op.WRITE_OBJ, Op.REMOVE_OBJ,
                   Op.DISCARD_OBJ),
    "replica I/O": (Op.CREATE_AND_WRITE_PEER, Op.READ_PEER, Op.WRITE_PEER, Op.REMOVE_PEER,
                    Op.REPAIR_REPLICA),
    "VDI query": (Op.GET_VDI_INFO, Op.READ_VDIS, Op.READ_DEL_VDIS, Op.GET_VDI_COPIES,
                  Op.GET_LOCKS),
    # GET_VDI_ATTR creates the attribute when asked to (SD_FLAG_CMD_CREAT)
    "VDI change": (Op.NEW_VDI, Op.DEL_VDI, Op.LOCK_VDI, Op.RELEASE_VDI, Op.GET_VDI_ATTR,
                   Op.ALTER_VDI_COPY, Op.NOTIFY_VDI_ADD, Op.NOTIFY_VDI_DEL),
    "cluster change": (Op.MAKE_FS, Op.SHUTDOWN, Op.FORCE_RECOVER, Op.REWEIGHT,
                       Op.ENABLE_RECOVER, Op.DISABLE_RECOVER, Op.ALTER_CLUSTER_COPY),
    "node query": (Op.GET_CLUSTER_DEFAULT, Op.GET_NODE_LIST, Op.STAT_SHEEP, Op.STAT_CLUSTER,
                   Op.GET_STORE_LIST, Op.STAT_RECOVERY, Op.GET_OBJ_LIST, Op.GET_EPOCH,
                   Op.GET_HASH, Op.STAT, Op.GET_LOGLEVEL, Op.EXIST, Op.CLUSTER_INFO,
                   Op.GET_RECOVERY, Op.GET_VNODES, Op.OIDS_EXIST, Op.MD_INFO),
    "node admin": (Op.SET_LOGLEVEL, Op.KILL_NODE, Op.SET_RECOVERY, Op.SET_VNODES,
                   Op.MD_PLUG, Op.MD_UNPLUG),
    "compatibility": (Op.FLUSH_VDI, Op.FLUSH_DEL_CACHE, Op.DELETE_CACHE, Op.GET_CACHE_INFO,
                      Op.CACHE_PURGE, Op.TRACE_ENABLE, Op.TRACE_DISABLE, Op.TRACE_STATUS,
                      Op.TRACE_READ_BUF, Op.PREVENT_INODE_UPDATE, Op.ALLOW_INODE_UPDATE),
}

NATURE: dict[int, str] = {int(op): n for n, ops in _BY_NATURE.items() for op in ops}
