"""The Sheepdog 1.0 wire format and the client side of the connection.

Theory of operation: this package knows bytes and, in ``connection``,
sockets; nothing else.  Records are plain dataclasses with ``pack()``
returning their exact wire bytes and an ``unpack(buf)`` classmethod;
everything is little-endian as on x86-64.  Round-trip guarantee: for every
header decoded here, ``Header.unpack(b).pack() == b`` (all bytes, including
pads and reserved fields, are kept).

The package imports only the standard library and nothing else of the
project; collie, qemu_client and the daemon all build on it (an import-rule
test holds every part to this).  Its modules:

``constants``  ports, sizes, flags and limits
``opcodes``    :class:`Op` and the protocol version each opcode is sent with
``records``    the packed record, request and response headers
``oids``       object ids, VDI-name and attribute hashes
``nodes``      node records and their order
``cluster``    cluster config, epoch log, cluster info, VDI state records
``inode``      the inode and attribute layouts
``sessions``   the lock-session and fencing header extension
``errors``     result codes and their exceptions
``placement``  the consistent-hash ring (where each object's copies live)
``framer``     bytes in, frames out (no sockets)
``connection`` pipelined asyncio and blocking connections

The codec names (everything but ``framer``, ``connection`` and
``placement``) are re-exported here, so ``from sheep import proto;
proto.Request`` reads as the protocol document does.
"""

from __future__ import annotations

from sheep.proto.cluster import (  # noqa: F401
    ClusterInfoHeader,
    EpochLogHeader,
    RecoveryState,
    RecoveryThrottling,
    SdStat,
    SheepdogConfig,
    VdiStateRecord,
    pack_cluster_info,
    pack_epoch_log,
    unpack_cluster_info,
    unpack_epoch_logs,
)
from sheep.proto.constants import (  # noqa: F401
    CLUSTER_INFO_SIZE,
    HDR_SIZE,
    LOCK_STATE_LOCKED,
    LOCK_STATE_SHARED,
    LOCK_STATE_UNLOCKED,
    LOCK_TYPE_NORMAL,
    LOCK_TYPE_SHARED,
    MAX_DATA_OBJS,
    SD_ATTR_OBJ_SIZE,
    SD_CLUSTER_FLAG_AUTO_VNODES,
    SD_CLUSTER_FLAG_AVOID_DISKFULL,
    SD_CLUSTER_FLAG_DISKMODE,
    SD_CLUSTER_FLAG_RECYCLE_VID,
    SD_CLUSTER_FLAG_STRICT,
    SD_CLUSTER_FLAG_USE_LOCK,
    SD_DATA_OBJ_SIZE,
    SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_DEFAULT_COPIES,
    SD_DEFAULT_VNODES,
    SD_FLAG_CMD_CACHE,
    SD_FLAG_CMD_COW,
    SD_FLAG_CMD_CREAT,
    SD_FLAG_CMD_DEL,
    SD_FLAG_CMD_DIRECT,
    SD_FLAG_CMD_EXCL,
    SD_FLAG_CMD_FWD,
    SD_FLAG_CMD_PIGGYBACK,
    SD_FLAG_CMD_RECOVERY,
    SD_FLAG_CMD_SESSION,
    SD_FLAG_CMD_TGT,
    SD_FLAG_CMD_WILDCARD,
    SD_FLAG_CMD_WRITE,
    SD_INODE_DATA_INDEX_SIZE,
    SD_INODE_HEADER_SIZE,
    SD_INODE_INDEX_END,
    SD_INODE_SIZE,
    SD_LEDGER_OBJ_SIZE,
    SD_MAX_BLOCK_SIZE_SHIFT,
    SD_MAX_COPIES,
    SD_MAX_NODES,
    SD_MAX_VDI_ATTR_KEY_LEN,
    SD_MAX_VDI_ATTR_VALUE_LEN,
    SD_MAX_VDI_LEN,
    SD_MAX_VDI_TAG_LEN,
    SD_MIN_BLOCK_SIZE_SHIFT,
    SD_NODE_SIZE,
    SD_NR_VDIS,
    SD_PORT,
    SD_PROTO_VER,
    SD_SHEEP_PROTO_VER,
    SD_STATUS_KILLED,
    SD_STATUS_OK,
    SD_STATUS_SHUTDOWN,
    SD_STATUS_WAIT,
    SD_STORE_NAME_LEN,
    VDI_BITMAP_SIZE,
)
from sheep.proto.errors import CODES, RESULTS, result_name, strerror  # noqa: F401
from sheep.proto.inode import (  # noqa: F401
    INODE_DATA_VDI_ID_OFF,
    INODE_GREF_OFF,
    INODE_NAME_OFF,
    INODE_SNAP_CTIME_OFF,
    INODE_TAG_OFF,
    INODE_VDI_SIZE_OFF,
    InodeHeader,
    VdiAttr,
    data_vdi_id_offset,
    gref_offset,
    sd_time,
    split_name_tag,
    vdi_name_payload,
)
from sheep.proto.nodes import (  # noqa: F401
    SdNode,
    addr_from_str,
    addr_to_str,
    default_zone,
    nid_to_str,
    pack_nodes,
    sort_nodes,
    unpack_nodes,
)
from sheep.proto.oids import (  # noqa: F401
    LEDGER_BIT,
    VDI_ATTR_BIT,
    VDI_BIT,
    VDI_BTREE_BIT,
    VID_MASK,
    VMSTATE_BIT,
    attr_slot,
    data_oid_to_idx,
    data_oid_to_ledger_oid,
    is_attr_obj,
    is_btree_obj,
    is_data_obj,
    is_ledger_obj,
    is_sparse_obj,
    is_vdi_obj,
    is_vmstate_obj,
    ledger_oid_to_data_oid,
    object_size,
    oid_to_vid,
    vdi_name_hash,
    vid_to_attr_oid,
    vid_to_btree_oid,
    vid_to_data_oid,
    vid_to_vdi_oid,
    vid_to_vmstate_oid,
)
from sheep.proto.opcodes import (  # noqa: F401
    Op,
    proto_ver_for,
    version_ok,
)
from sheep.proto.placement import FNV1A_64_INIT, FNV_64_PRIME, fnv1a64  # noqa: F401
from sheep.proto.records import (  # noqa: F401
    REQ_VARIANT,
    RSP_VARIANT,
    Z4,
    Z8,
    CheckpointArgs,
    ClusterArgs,
    ClusterDefaultRsp,
    CoherenceArgs,
    ForwArgs,
    HashRsp,
    NodeRsp,
    ObjArgs,
    ObjRsp,
    RawArgs,
    Record,
    RefArgs,
    Request,
    Response,
    VdiArgs,
    VdiRsp,
    VdiStateArgs,
    cstr,
    pad,
)
from sheep.proto.sessions import (  # noqa: F401
    LOCK_KIND_EXCLUSIVE,
    LOCK_KIND_READ,
    LOCK_KIND_SHARED,
    LOCK_KIND_STANDBY,
    LOCK_MODE_ACTIVATE,
    LOCK_MODE_INACTIVE,
    LOCK_MODE_READ,
    LOCK_MODE_REATTACH,
    LOCK_MODE_RENEW,
    LOCK_MODE_WRITE,
    LOCK_STATUS_ENFORCED,
    LOCK_STATUS_HELD,
    LOCK_STATUS_IN_USE,
    LOCK_STATUS_SESSION,
    LockRecord,
    fence_of,
    hash_version,
    lock_session,
    release_session,
    session_reply,
    set_fence,
    set_hash_version,
    set_lock_session,
    set_release_session,
    set_session_reply,
)
