"""Sheepdog 1.0 wire codec (docs/protocol.md): headers, records, oid helpers.

Theory of operation: this module knows bytes and nothing else.  Records are
plain dataclasses with ``pack()`` returning their exact wire bytes and a
``unpack(buf)`` classmethod; no sockets, no asyncio, no file I/O, and no import
from the rest of the project.  Everything is little-endian as on x86-64.
Round-trip guarantee: for every header this module decodes,
``Header.unpack(b).pack() == b`` (all bytes, including pads and reserved
fields, are kept).
"""

from __future__ import annotations

FNV1A_64_INIT = 0xCBF29CE484222325
FNV_64_PRIME = 0x100000001B3
_M64 = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: bytes, h: int = FNV1A_64_INIT) -> int:
    """FNV-1a 64 of ``data`` continuing from ``h`` (docs/protocol.md §12.1)."""
    for b in data:
        h = ((h ^ b) * FNV_64_PRIME) & _M64
    return h


# The result-code table lives in the leaf module sheep.errors (it imports
# nothing); it is re-exported here so the codec is complete on its own.
import struct  # noqa: E402
from dataclasses import dataclass, fields  # noqa: E402
from enum import IntEnum  # noqa: E402

from sheep.errors import CODES, RESULTS, result_name, strerror  # noqa: E402,F401

# ---------------------------------------------------------------------------
# constants (docs/protocol.md §1, §4, §5, §9, §10, §18)

SD_PORT = 7000
HDR_SIZE = 48
SD_PROTO_VER = 0x02
SD_SHEEP_PROTO_VER = 0x0A

SD_FLAG_CMD_WRITE = 0x0001
SD_FLAG_CMD_COW = 0x0002
SD_FLAG_CMD_CACHE = 0x0004
SD_FLAG_CMD_DIRECT = 0x0008
SD_FLAG_CMD_PIGGYBACK = 0x0010
SD_FLAG_CMD_TGT = 0x0020
SD_FLAG_CMD_FWD = 0x0040
SD_FLAG_CMD_RECOVERY = 0x0080
SD_FLAG_CMD_WILDCARD = 0x0100
SD_FLAG_CMD_CREAT = 0x0100
SD_FLAG_CMD_EXCL = 0x0200
SD_FLAG_CMD_DEL = 0x0400
# pysheepdog extension (not used by Sheepdog 1.0): lock sessions and fencing,
# see "lock sessions" below for which header bytes carry what
SD_FLAG_CMD_SESSION = 0x8000

SD_CLUSTER_FLAG_STRICT = 0x0001
SD_CLUSTER_FLAG_DISKMODE = 0x0002
SD_CLUSTER_FLAG_AUTO_VNODES = 0x0004
SD_CLUSTER_FLAG_USE_LOCK = 0x0008
SD_CLUSTER_FLAG_RECYCLE_VID = 0x0010
SD_CLUSTER_FLAG_AVOID_DISKFULL = 0x0020

SD_NR_VDIS = 1 << 24
SD_MAX_VDI_LEN = 256
SD_MAX_VDI_TAG_LEN = 256
SD_MAX_VDI_ATTR_KEY_LEN = 256
SD_MAX_VDI_ATTR_VALUE_LEN = 65536
SD_DEFAULT_COPIES = 3
SD_DEFAULT_BLOCK_SIZE_SHIFT = 22
# dog accepts 20..31; we cap objects at 64 MiB so that a whole object fits in
# one request the daemon is willing to buffer (documented deviation)
SD_MIN_BLOCK_SIZE_SHIFT = 20
SD_MAX_BLOCK_SIZE_SHIFT = 26
SD_DATA_OBJ_SIZE = 1 << SD_DEFAULT_BLOCK_SIZE_SHIFT
SD_DEFAULT_VNODES = 128
MAX_DATA_OBJS = 1 << 20
SD_INODE_HEADER_SIZE = 4664
SD_INODE_DATA_INDEX_SIZE = 4 * MAX_DATA_OBJS  # 4 MiB
SD_INODE_INDEX_END = SD_INODE_HEADER_SIZE + SD_INODE_DATA_INDEX_SIZE  # 4198968
SD_INODE_SIZE = SD_INODE_INDEX_END + 8 * MAX_DATA_OBJS  # 12587576
SD_ATTR_OBJ_SIZE = 66320
SD_LEDGER_OBJ_SIZE = 1 << 22
VDI_BITMAP_SIZE = SD_NR_VDIS // 8  # 2 MiB
SD_MAX_NODES = 6144
SD_NODE_SIZE = 80
CLUSTER_INFO_SIZE = 48 + SD_MAX_NODES * SD_NODE_SIZE  # 491568
SD_STORE_NAME_LEN = 16

LOCK_TYPE_NORMAL = 0
LOCK_TYPE_SHARED = 1
LOCK_STATE_UNLOCKED = 1
LOCK_STATE_LOCKED = 2
LOCK_STATE_SHARED = 3

# cluster_info.status
SD_STATUS_OK = 1
SD_STATUS_WAIT = 2
SD_STATUS_SHUTDOWN = 3
SD_STATUS_KILLED = 4


class Op(IntEnum):
    """Opcodes (docs/protocol.md §7.2, §7.3)."""

    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    MAKE_FS = 0x84
    SHUTDOWN = 0x85
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    FORCE_RECOVER = 0x8A
    GET_STORE_LIST = 0x90
    SNAPSHOT = 0x91
    RESTORE = 0x92
    GET_SNAP_FILE = 0x93
    CLEANUP = 0x94
    TRACE_STATUS = 0x95
    TRACE_READ_BUF = 0x96
    STAT_RECOVERY = 0x97
    FLUSH_DEL_CACHE = 0x98
    NOTIFY_VDI_DEL = 0x99
    KILL_NODE = 0x9A
    TRACE_ENABLE = 0x9B
    TRACE_DISABLE = 0x9C
    GET_OBJ_LIST = 0xA1
    GET_EPOCH = 0xA2
    CREATE_AND_WRITE_PEER = 0xA3
    READ_PEER = 0xA4
    WRITE_PEER = 0xA5
    REMOVE_PEER = 0xA6
    ENABLE_RECOVER = 0xA8
    DISABLE_RECOVER = 0xA9
    GET_VDI_COPIES = 0xAB
    COMPLETE_RECOVERY = 0xAC
    FLUSH_NODES = 0xAD
    FLUSH_PEER = 0xAE
    NOTIFY_VDI_ADD = 0xAF
    DELETE_CACHE = 0xB0
    MD_INFO = 0xB1
    MD_PLUG = 0xB2
    MD_UNPLUG = 0xB3
    GET_HASH = 0xB4
    REWEIGHT = 0xB5
    GET_CACHE_INFO = 0xB6
    CACHE_PURGE = 0xB7
    STAT = 0xB8
    GET_LOGLEVEL = 0xB9
    SET_LOGLEVEL = 0xBA
    NFS_CREATE = 0xBB
    NFS_DELETE = 0xBC
    EXIST = 0xBD
    CLUSTER_INFO = 0xBE
    ALTER_CLUSTER_COPY = 0xBF
    ALTER_VDI_COPY = 0xC0
    DECREF_OBJ = 0xC1
    DECREF_PEER = 0xC2
    PREVENT_INODE_UPDATE = 0xC3
    ALLOW_INODE_UPDATE = 0xC4
    REPAIR_REPLICA = 0xC5
    OIDS_EXIST = 0xC6
    VDI_STATE_CHECKPOINT_CTL = 0xC7
    INODE_COHERENCE = 0xC8
    READ_DEL_VDIS = 0xC9
    GET_RECOVERY = 0xCA
    SET_RECOVERY = 0xCB
    SET_VNODES = 0xCC
    GET_VNODES = 0xCD
    # pysheepdog extension: every lock holder (session, generation, age)
    GET_LOCKS = 0xD0


def proto_ver_for(opcode: int) -> int:
    """The version dog sends: 0x0A for internal opcodes (>= 0x80), else 0x02."""
    return SD_SHEEP_PROTO_VER if opcode >= 0x80 else SD_PROTO_VER


def version_ok(opcode: int, proto_ver: int) -> bool:
    """Admission rule 1 of docs/protocol.md §4."""
    if opcode >= 0x80:
        return proto_ver == SD_SHEEP_PROTO_VER
    return proto_ver <= SD_PROTO_VER


# ---------------------------------------------------------------------------
# object ids (docs/protocol.md §9)

VDI_BIT = 1 << 63
VMSTATE_BIT = 1 << 62
VDI_ATTR_BIT = 1 << 61
VDI_BTREE_BIT = 1 << 60
LEDGER_BIT = 1 << 59
_SPECIAL_BITS = VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT
VID_MASK = 0x00FFFFFF00000000


def vid_to_vdi_oid(vid: int) -> int:
    return VDI_BIT | (vid << 32)


def vid_to_data_oid(vid: int, idx: int) -> int:
    return (vid << 32) | idx


def vid_to_vmstate_oid(vid: int, idx: int) -> int:
    return VMSTATE_BIT | (vid << 32) | idx


def vid_to_attr_oid(vid: int, attr: int) -> int:
    return (vid << 32) | VDI_ATTR_BIT | (attr & 0xFFFFFFFF)


def vid_to_btree_oid(vid: int, n: int) -> int:
    return (vid << 32) | VDI_BTREE_BIT | n


def oid_to_vid(oid: int) -> int:
    return (oid & VID_MASK) >> 32


def data_oid_to_idx(oid: int) -> int:
    return oid & 0xFFFFFFFF


def data_oid_to_ledger_oid(oid: int) -> int:
    return oid | LEDGER_BIT


def ledger_oid_to_data_oid(oid: int) -> int:
    return oid & ~LEDGER_BIT


def is_vdi_obj(oid: int) -> bool:
    return bool(oid & VDI_BIT)


def is_vmstate_obj(oid: int) -> bool:
    return bool(oid & VMSTATE_BIT)


def is_attr_obj(oid: int) -> bool:
    return bool(oid & VDI_ATTR_BIT)


def is_btree_obj(oid: int) -> bool:
    return bool(oid & VDI_BTREE_BIT)


def is_ledger_obj(oid: int) -> bool:
    return bool(oid & LEDGER_BIT)


def is_data_obj(oid: int) -> bool:
    return not (oid & _SPECIAL_BITS)


def object_size(oid: int, block_size_shift: int = SD_DEFAULT_BLOCK_SIZE_SHIFT) -> int:
    """Full size of object ``oid`` (docs/protocol.md §10) for a VDI of that shift."""
    if oid & VDI_BIT:
        return SD_INODE_SIZE
    if oid & VDI_ATTR_BIT:
        return SD_ATTR_OBJ_SIZE
    if oid & (VDI_BTREE_BIT | LEDGER_BIT):
        return SD_INODE_DATA_INDEX_SIZE
    return 1 << block_size_shift


def is_sparse_obj(oid: int) -> bool:
    """Inode and ledger objects are stored sparse (docs/protocol.md §16)."""
    return bool(oid & (VDI_BIT | LEDGER_BIT))


def vdi_name_hash(name: bytes | str) -> int:
    """``sd_hash_vdi``: FNV-1a 64 of the name up to the first NUL, & 0xFFFFFF."""
    if isinstance(name, str):
        name = name.encode()
    name = name.split(b"\0", 1)[0]
    return fnv1a64(name) & 0xFFFFFF


def attr_slot(name: bytes, tag: bytes, snap_id: int, key: bytes) -> int:
    """Attribute probe start slot (docs/protocol.md §13 step 4)."""
    h = fnv1a64(pad(name, 256))
    h = fnv1a64(pad(tag, 256), h)
    h = fnv1a64(struct.pack("<I", snap_id), h)
    h = fnv1a64(pad(key, 256), h)
    return h & 0xFFFFFFFF


def pad(s: bytes | str, n: int) -> bytes:
    """NUL-pad (or truncate) to exactly ``n`` bytes."""
    if isinstance(s, str):
        s = s.encode()
    return s[:n].ljust(n, b"\0")


def cstr(b: bytes) -> str:
    """Decode a NUL-padded C string field."""
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# generic packed record

class Record:
    """A fixed-layout little-endian record: ``FMT`` lists every field in order.

    ``pack()`` returns exactly ``SIZE`` bytes; ``unpack(buf, off)`` reads them
    back.  Pad bytes are fields too, so unpack/pack round-trips exactly.
    """

    FMT = "<"
    SIZE = 0
    _st: struct.Struct

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._st = struct.Struct(cls.FMT)
        cls.SIZE = cls._st.size

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = tuple(f.name for f in fields(cls))
            type.__setattr__(cls, "_field_names", names)
        return names

    def values(self) -> tuple:
        return tuple(getattr(self, n) for n in self._names())

    def pack(self) -> bytes:
        return self._st.pack(*self.values())

    def pack_into(self, buf, off: int = 0) -> None:
        self._st.pack_into(buf, off, *self.values())

    @classmethod
    def unpack(cls, buf, off: int = 0):
        return cls(*cls._st.unpack_from(buf, off))


Z4, Z8 = b"\0" * 4, b"\0" * 8

# ---- request union variants (docs/protocol.md §2.1); each is 32 bytes ----


@dataclass(slots=True)
class ObjArgs(Record):
    FMT = "<QQBBBBIII"
    oid: int = 0
    cow_oid: int = 0
    copies: int = 0
    copy_policy: int = 0
    ec_index: int = 0
    reserved: int = 0
    tgt_epoch: int = 0
    offset: int = 0
    pad: int = 0


@dataclass(slots=True)
class VdiArgs(Record):
    FMT = "<QIBBBBII8s"
    vdi_size: int = 0
    base_vdi_id: int = 0
    copies: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    block_size_shift: int = 0
    snapid: int = 0
    type: int = 0
    unused: bytes = Z8


@dataclass(slots=True)
class ClusterArgs(Record):
    FMT = "<QQBBHIIB3s"
    oid: int = 0
    ctime: int = 0
    copies: int = 0
    copy_policy: int = 0
    flags: int = 0
    tag: int = 0
    nodes_nr: int = 0
    block_size_shift: int = 0
    reserved: bytes = b"\0\0\0"


@dataclass(slots=True)
class VdiStateArgs(Record):
    FMT = "<IIBBBB20s"
    old_vid: int = 0
    new_vid: int = 0
    copies: int = 0
    set_bitmap: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    rest: bytes = b"\0" * 20


@dataclass(slots=True)
class RefArgs(Record):
    FMT = "<QII16s"
    oid: int = 0
    generation: int = 0
    count: int = 0
    rest: bytes = b"\0" * 16


@dataclass(slots=True)
class ForwArgs(Record):
    FMT = "<Q16sH6s"
    oid: int = 0
    addr: bytes = b"\0" * 16
    port: int = 0
    pad: bytes = b"\0" * 6


@dataclass(slots=True)
class CheckpointArgs(Record):
    FMT = "<III20s"
    get: int = 0
    tgt_epoch: int = 0
    vid: int = 0
    rest: bytes = b"\0" * 20


@dataclass(slots=True)
class CoherenceArgs(Record):
    FMT = "<II24s"
    vid: int = 0
    validate: int = 0
    rest: bytes = b"\0" * 24


@dataclass(slots=True)
class RawArgs(Record):
    """Union bytes of an opcode with no known variant, kept verbatim."""

    FMT = "<32s"
    data: bytes = b"\0" * 32


_VDI_OPS = {Op.NEW_VDI, Op.LOCK_VDI, Op.RELEASE_VDI, Op.GET_VDI_INFO,
            Op.READ_VDIS, Op.FLUSH_VDI, Op.DEL_VDI, Op.GET_VDI_ATTR}
_CLUSTER_OPS = {Op.MAKE_FS, Op.SHUTDOWN, Op.STAT_CLUSTER, Op.ALTER_CLUSTER_COPY,
                Op.GET_CLUSTER_DEFAULT, Op.GET_NODE_LIST, Op.STAT_SHEEP,
                Op.CLUSTER_INFO, Op.FORCE_RECOVER, Op.GET_STORE_LIST,
                Op.READ_DEL_VDIS, Op.GET_VDI_COPIES, Op.KILL_NODE,
                Op.STAT_RECOVERY, Op.CLEANUP, Op.REWEIGHT,
                Op.ENABLE_RECOVER, Op.DISABLE_RECOVER,
                Op.GET_RECOVERY, Op.SET_RECOVERY}
REQ_VARIANT: dict[int, type[Record]] = {}
for _op in Op:
    if _op in _VDI_OPS:
        REQ_VARIANT[_op] = VdiArgs
    elif _op in _CLUSTER_OPS:
        REQ_VARIANT[_op] = ClusterArgs
    else:
        REQ_VARIANT[_op] = ObjArgs
REQ_VARIANT.update({
    Op.NOTIFY_VDI_ADD: VdiStateArgs, Op.ALTER_VDI_COPY: VdiStateArgs,
    Op.DECREF_OBJ: RefArgs, Op.DECREF_PEER: RefArgs,
    Op.REPAIR_REPLICA: ForwArgs, Op.VDI_STATE_CHECKPOINT_CTL: CheckpointArgs,
    Op.INODE_COHERENCE: CoherenceArgs,
})


_REQ_COMMON = struct.Struct("<BBHIII")


@dataclass(slots=True)
class Request:
    """``sd_req``: the 48-byte request header (docs/protocol.md §2).

    ``args`` is the union variant for ``opcode`` (``RawArgs`` when unknown).
    """

    opcode: int
    args: Record = None  # type: ignore[assignment]
    flags: int = 0
    epoch: int = 0
    id: int = 0
    data_length: int = 0
    proto_ver: int = -1

    def __post_init__(self):
        if self.proto_ver < 0:
            self.proto_ver = proto_ver_for(self.opcode)
        if self.args is None:
            self.args = REQ_VARIANT.get(self.opcode, RawArgs)()

    def pack(self) -> bytes:
        return _REQ_COMMON.pack(self.proto_ver, self.opcode, self.flags, self.epoch,
                                self.id, self.data_length) + self.args.pack()

    @classmethod
    def unpack(cls, buf, off: int = 0) -> "Request":
        if len(buf) - off < HDR_SIZE:
            raise ValueError("request header needs 48 bytes")
        ver, opcode, flags, epoch, rid, dlen = _REQ_COMMON.unpack_from(buf, off)
        variant = REQ_VARIANT.get(opcode, RawArgs)
        return cls(opcode, variant.unpack(buf, off + 16), flags, epoch, rid, dlen, ver)

    @property
    def has_payload(self) -> bool:
        """True iff ``data_length`` payload bytes follow the header (§1)."""
        return bool(self.flags & SD_FLAG_CMD_WRITE)

    @property
    def reply_capacity(self) -> int:
        """How many payload bytes the client will read from the reply (§1)."""
        if not self.flags & SD_FLAG_CMD_WRITE or self.flags & SD_FLAG_CMD_PIGGYBACK:
            return self.data_length
        return 0


# ---- response union variants (docs/protocol.md §3); each is 28 bytes after result ----


@dataclass(slots=True)
class ObjRsp(Record):
    FMT = "<B3sQ16s"
    copies: int = 0
    pad0: bytes = b"\0" * 3
    offset: int = 0
    pad1: bytes = b"\0" * 16


@dataclass(slots=True)
class VdiRsp(Record):
    FMT = "<IIIBB14s"
    rsvd: int = 0
    vdi_id: int = 0
    attr_id: int = 0
    copies: int = 0
    block_size_shift: int = 0
    pad: bytes = b"\0" * 14


@dataclass(slots=True)
class NodeRsp(Record):
    FMT = "<I8sQQ"
    nr_nodes: int = 0
    reserved: bytes = Z8
    store_size: int = 0
    store_free: int = 0


@dataclass(slots=True)
class HashRsp(Record):
    FMT = "<4s20s4s"
    pad0: bytes = Z4
    digest: bytes = b"\0" * 20
    pad1: bytes = Z4


@dataclass(slots=True)
class ClusterDefaultRsp(Record):
    FMT = "<BBB25s"
    nr_copies: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    pad: bytes = b"\0" * 25


RSP_VARIANT: dict[int, type[Record]] = {
    Op.NEW_VDI: VdiRsp, Op.LOCK_VDI: VdiRsp, Op.GET_VDI_INFO: VdiRsp,
    Op.DEL_VDI: VdiRsp, Op.GET_VDI_ATTR: VdiRsp,
    Op.GET_NODE_LIST: NodeRsp, Op.STAT_SHEEP: NodeRsp,
    Op.GET_HASH: HashRsp, Op.GET_CLUSTER_DEFAULT: ClusterDefaultRsp,
}

_RSP_COMMON = struct.Struct("<BBHIIII")


@dataclass(slots=True)
class Response:
    """``sd_rsp``: the 48-byte response header (docs/protocol.md §3)."""

    opcode: int
    result: int = 0
    args: Record = None  # type: ignore[assignment]
    epoch: int = 0
    id: int = 0
    data_length: int = 0
    flags: int = 0
    proto_ver: int = 0

    def __post_init__(self):
        if self.args is None:
            self.args = RSP_VARIANT.get(self.opcode, ObjRsp)()

    def pack(self) -> bytes:
        return _RSP_COMMON.pack(self.proto_ver, self.opcode, self.flags, self.epoch,
                                self.id, self.data_length, self.result) + self.args.pack()

    @classmethod
    def unpack(cls, buf, off: int = 0) -> "Response":
        if len(buf) - off < HDR_SIZE:
            raise ValueError("response header needs 48 bytes")
        ver, opcode, flags, epoch, rid, dlen, result = _RSP_COMMON.unpack_from(buf, off)
        variant = RSP_VARIANT.get(opcode, ObjRsp)
        return cls(opcode, result, variant.unpack(buf, off + 20), epoch, rid, dlen, flags, ver)


# ---------------------------------------------------------------------------
# nodes (docs/protocol.md §14.1, §14.2)


def addr_from_str(host: str) -> bytes:
    """16-byte address field for a textual IPv4/IPv6 address."""
    import ipaddress  # stdlib, no I/O

    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return b"\0" * 12 + ip.packed
    return ip.packed


def addr_to_str(addr: bytes) -> str:
    """Text form of a 16-byte address (IPv4 when bytes 0..11 are zero, §14.1)."""
    import ipaddress

    if addr[:12] == b"\0" * 12 and addr[12] != 0:
        return str(ipaddress.IPv4Address(addr[12:16]))
    return str(ipaddress.IPv6Address(addr))


def default_zone(addr: bytes) -> int:
    """Default zone: the last four address bytes as a little-endian u32."""
    return struct.unpack("<I", addr[12:16])[0]


@dataclass(slots=True, frozen=True)
class SdNode(Record):
    """``sd_node`` (80 bytes) with its ``node_id`` flattened in."""

    FMT = "<24s16sH16sH4sH2sIQ"
    rb: bytes = b"\0" * 24
    addr: bytes = b"\0" * 16
    port: int = 0
    io_addr: bytes = b"\0" * 16
    io_port: int = 0
    nid_pad: bytes = Z4
    nr_vnodes: int = 0
    pad: bytes = b"\0\0"
    zone: int = 0
    space: int = 0

    @classmethod
    def make(cls, host: str, port: int, nr_vnodes: int = SD_DEFAULT_VNODES,
             zone: int | None = None, space: int = 0) -> "SdNode":
        addr = addr_from_str(host)
        return cls(addr=addr, port=port, nr_vnodes=nr_vnodes,
                   zone=default_zone(addr) if zone is None else zone, space=space)

    @property
    def host(self) -> str:
        return addr_to_str(self.addr)

    @property
    def nid(self) -> bytes:
        """The 40-byte ``node_id``."""
        return self.pack()[24:64]

    @property
    def key(self) -> tuple[bytes, int]:
        """Node order key: address bytes, then port."""
        return (self.addr, self.port)

    def wire(self) -> bytes:
        """On-wire/epoch-file form: ``rb`` zeroed."""
        return SdNode.pack(self if self.rb == b"\0" * 24 else self.replace(rb=b"\0" * 24))

    def replace(self, **kw) -> "SdNode":
        import dataclasses

        return dataclasses.replace(self, **kw)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def pack_nodes(nodes) -> bytes:
    return b"".join(n.wire() for n in nodes)


def unpack_nodes(buf, count: int | None = None) -> list[SdNode]:
    n = len(buf) // SD_NODE_SIZE if count is None else count
    return [SdNode.unpack(buf, i * SD_NODE_SIZE) for i in range(n)]


def sort_nodes(nodes) -> list[SdNode]:
    return sorted(nodes, key=lambda n: (n.addr, n.port))


def nid_to_str(nid: bytes) -> str:
    """``addr:port`` of a 40-byte node_id."""
    port = struct.unpack_from("<H", nid, 16)[0]
    return f"{addr_to_str(nid[:16])}:{port}"


# ---------------------------------------------------------------------------
# cluster records (docs/protocol.md §16, §18)


@dataclass(slots=True)
class SheepdogConfig(Record):
    """``sheepdog_config``: the 40-byte ``config`` file of a store (§16)."""

    FMT = "<QHB16sBBBHQ"
    ctime: int = 0
    flags: int = 0
    copies: int = 0
    default_store: bytes = b"\0" * 16
    shutdown: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    version: int = 6
    space: int = 0


@dataclass(slots=True)
class EpochLogHeader(Record):
    """Fixed 48-byte part of one STAT_CLUSTER ``epoch_log`` record (§18.2)."""

    FMT = "<QQIIBBB3sH16s"
    ctime: int = 0
    time: int = 0
    epoch: int = 0
    nr_nodes: int = 0
    disable_recovery: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    pad: bytes = b"\0\0\0"
    flags: int = 0
    drv_name: bytes = b"\0" * 16


def pack_epoch_log(hdr: EpochLogHeader, nodes, nodes_nr: int) -> bytes:
    """One epoch_log record with ``nodes_nr`` node slots (unused slots zero)."""
    body = pack_nodes(nodes)
    return hdr.pack() + body + b"\0" * (nodes_nr * SD_NODE_SIZE - len(body))


def unpack_epoch_logs(buf, nodes_nr: int) -> list[tuple[EpochLogHeader, list[SdNode]]]:
    """Decode a STAT_CLUSTER reply payload into (header, members) records."""
    size = EpochLogHeader.SIZE + nodes_nr * SD_NODE_SIZE
    out = []
    for off in range(0, len(buf) - size + 1, size):
        hdr = EpochLogHeader.unpack(buf, off)
        start = off + EpochLogHeader.SIZE
        out.append((hdr, unpack_nodes(buf[start:start + hdr.nr_nodes * SD_NODE_SIZE])))
    return out


@dataclass(slots=True)
class ClusterInfoHeader(Record):
    """Header of the 491 568-byte CLUSTER_INFO reply (§18.3)."""

    FMT = "<BBhIQHBBBB3s16s7s"
    proto_ver: int = SD_SHEEP_PROTO_VER
    disable_recovery: int = 0
    nr_nodes: int = 0
    epoch: int = 0
    ctime: int = 0
    flags: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    status: int = 0
    block_size_shift: int = 0
    pad0: bytes = b"\0" * 3
    default_store: bytes = b"\0" * 16
    pad1: bytes = b"\0" * 7


def pack_cluster_info(hdr: ClusterInfoHeader, nodes) -> bytes:
    body = pack_nodes(nodes)
    return hdr.pack() + body + b"\0" * (CLUSTER_INFO_SIZE - 48 - len(body))


def unpack_cluster_info(buf) -> tuple[ClusterInfoHeader, list[SdNode]]:
    hdr = ClusterInfoHeader.unpack(buf)
    return hdr, unpack_nodes(buf[48:48 + max(hdr.nr_nodes, 0) * SD_NODE_SIZE])


@dataclass(slots=True)
class VdiStateRecord(Record):
    """``vdi_state`` (1428 bytes): one GET_VDI_COPIES entry (§17.3)."""

    FMT = "<IBBBBB3sII40sI124s1240s"
    vid: int = 0
    nr_copies: int = 0
    snapshot: int = 0
    deleted: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    pad: bytes = b"\0\0\0"
    parent_vid: int = 0
    lock_state: int = LOCK_STATE_UNLOCKED
    lock_owner: bytes = b"\0" * 40
    nr_participants: int = 0
    participants_state: bytes = b"\0" * 124
    participants: bytes = b"\0" * 1240


@dataclass(slots=True)
class RecoveryState(Record):
    FMT = "<B3siQQ"
    in_recovery: int = 0
    pad: bytes = b"\0\0\0"
    state: int = 0
    nr_finished: int = 0
    nr_total: int = 0


@dataclass(slots=True)
class RecoveryThrottling(Record):
    FMT = "<I4sQ?7s"
    max_exec_count: int = 0
    pad0: bytes = Z4
    queue_work_interval: int = 0
    throttling: bool = False
    pad1: bytes = b"\0" * 7


@dataclass(slots=True)
class SdStat(Record):
    FMT = "<15Q"
    gw_active: int = 0
    peer_active: int = 0
    gw_total: int = 0
    peer_total: int = 0
    gw_rx: int = 0
    gw_tx: int = 0
    peer_rx: int = 0
    peer_tx: int = 0
    gw_remove: int = 0
    gw_read: int = 0
    gw_write: int = 0
    gw_flush: int = 0
    peer_remove: int = 0
    peer_read: int = 0
    peer_write: int = 0


# ---------------------------------------------------------------------------
# inode (docs/protocol.md §11) and attributes (§13)


@dataclass(slots=True)
class InodeHeader(Record):
    """The 4664-byte inode header; ``data_vdi_id`` follows at offset 4664."""

    FMT = "<256s256sQQQQQBBBBIIII4092s"
    name: bytes = b"\0" * 256
    tag: bytes = b"\0" * 256
    create_time: int = 0
    snap_ctime: int = 0
    vm_clock_nsec: int = 0
    vdi_size: int = 0
    vm_state_size: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    nr_copies: int = 0
    block_size_shift: int = SD_DEFAULT_BLOCK_SIZE_SHIFT
    snap_id: int = 0
    vdi_id: int = 0
    parent_vdi_id: int = 0
    btree_counter: int = 0
    unused: bytes = b"\0" * 4092

    @property
    def name_str(self) -> str:
        return cstr(self.name)

    @property
    def tag_str(self) -> str:
        return cstr(self.tag)

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def nr_objects(self) -> int:
        """Meaningful ``data_vdi_id`` entries: ceil(vdi_size / object size)."""
        s = self.object_size
        return (self.vdi_size + s - 1) // s


# field offsets inside the inode that clients write piecemeal
INODE_NAME_OFF = 0
INODE_TAG_OFF = 256
INODE_SNAP_CTIME_OFF = 520
INODE_VDI_SIZE_OFF = 536
INODE_DATA_VDI_ID_OFF = SD_INODE_HEADER_SIZE
INODE_GREF_OFF = SD_INODE_INDEX_END


def data_vdi_id_offset(idx: int) -> int:
    """Byte offset of ``data_vdi_id[idx]`` inside the inode object."""
    return SD_INODE_HEADER_SIZE + 4 * idx


def gref_offset(idx: int) -> int:
    """Byte offset of ``gref[idx]`` (generation, count) inside the inode."""
    return SD_INODE_INDEX_END + 8 * idx


@dataclass(slots=True)
class VdiAttr(Record):
    """``sheepdog_vdi_attr`` (66 320 bytes, §13)."""

    FMT = "<256s256sQII256s65536s"
    name: bytes = b"\0" * 256
    tag: bytes = b"\0" * 256
    ctime: int = 0
    snap_id: int = 0
    value_len: int = 0
    key: bytes = b"\0" * 256
    value: bytes = b"\0" * 65536


def sd_time(seconds: float) -> int:
    """Sheepdog time value: UNIX seconds << 32 | nanoseconds (µs × 1000)."""
    sec = int(seconds)
    usec = int((seconds - sec) * 1_000_000)
    return (sec << 32) | (usec * 1000)


def vdi_name_payload(name: str | bytes, tag: str | bytes | None = None) -> bytes:
    """GET_VDI_INFO/NEW_VDI/DEL_VDI payload: 256-byte name [+ 256-byte tag]."""
    out = pad(name, SD_MAX_VDI_LEN)
    if tag is not None:
        out += pad(tag, SD_MAX_VDI_TAG_LEN)
    return out


# ---------------------------------------------------------------------------
# lock sessions and fencing (pysheepdog extension, sheep/lock.py)
#
# Sheepdog 1.0 never sets request flag 0x8000 (SD_FLAG_CMD_SESSION).  With it,
# bytes that 1.0 leaves unused carry a lock session and/or a fencing
# generation; without it every request means exactly what it means in 1.0.
#
# vdi variant, LOCK_VDI / RELEASE_VDI with SD_FLAG_CMD_SESSION:
#   @40 u64  session id (``unused`` in 1.0): random, non-zero, chosen by the
#            client; 0 = no session (owner is the gateway node, as in 1.0)
#   @16 u64  (``vdi_size``, unused by both ops in 1.0):
#            LOCK_VDI:    low u32 = mode (LOCK_MODE_*), high u32 = the
#                         generation held (LOCK_MODE_REATTACH only)
#            RELEASE_VDI: handover target session (0 = plain release; with
#                         session 0 too: forced unlock of every holder)
#   @36 u32  ``type`` keeps its 1.0 meaning (0 exclusive, 1 shared)
#   LOCK_MODE_RENEW (lease heartbeat) needs no payload; the others take the
#   1.0 name[+tag] payload and ``snapid`` as LOCK_VDI always does.
# vdi reply to such a LOCK_VDI (``pad``@34, zero from a 1.0 server):
#   @34 u16 status bits (LOCK_STATUS_*), @36 u32 generation granted (0: no
#   exclusive lock), @40 u32 lease grace in ms, @44 u32 holds of the session
#   LOCK_MODE_RENEW with @24 u32 ``base_vdi_id`` = a vid and the generation
#   held in the high u32 of @16: the reply's status has LOCK_STATUS_HELD if
#   the session still holds that grant through this gateway.
# obj variant, WRITE_OBJ / CREATE_AND_WRITE_OBJ / READ_OBJ / DISCARD_OBJ with
# SD_FLAG_CMD_SESSION:
#   @44 u32  fencing generation (``__pad``; QEMU's upper offset half, always 0
#            in 1.0).  A non-zero generation that is not the VDI's current
#            exclusive grant (through this gateway) is refused with FENCED
#            (0x1B).
# peer writes (WRITE_PEER / CREATE_AND_WRITE_PEER) with SD_FLAG_CMD_SESSION:
#   @44 u32 the client's fencing generation, @24 u64 (``cow_oid``) 1 + the
#   index of the forwarding gateway in the epoch's node list; each replica
#   checks both under the object's lock.
# READ_PEER with SD_FLAG_CMD_RECOVERY: the reply's @24 u64 (``rsp.obj.offset``)
#   is the version of the copy sent; with WILDCARD and no buffer it is a
#   probe (sheep.fetch.probe_reply).
# GET_HASH with SD_FLAG_CMD_SESSION: the copy's version (set_hash_version).

LOCK_MODE_WRITE = 0       # exclusive (type 0) or 1.0 shared (type 1) lock
LOCK_MODE_READ = 1        # read-only open: refused while a writer holds the VDI
LOCK_MODE_INACTIVE = 2    # migration destination: registered, no lock, no I/O
LOCK_MODE_ACTIVATE = 3    # take the lock handed over to this session (or a free one)
LOCK_MODE_REATTACH = 4    # re-attach this session's lock of the given generation
LOCK_MODE_RENEW = 5       # lease heartbeat for the session (no payload)

LOCK_STATUS_SESSION = 0x1  # the server understood SD_FLAG_CMD_SESSION
LOCK_STATUS_ENFORCED = 0x2  # the cluster enforces locks (SD_CLUSTER_FLAG_USE_LOCK)
# reply to a RENEW naming a VDI (``base_vdi_id``) and a generation: this
# session holds that VDI's exclusive grant of that generation through this
# gateway, as this gateway (in the primary view) knows it now
LOCK_STATUS_HELD = 0x4
# GET_VDI_INFO reply (any request, flagged or not): somebody holds the VDI open
# (a writer, shared or read lock; a standby is no open); @44 u32 holds = how
# many.  Zero (1.0's reply) when nobody does.  collie refuses to delete it.
LOCK_STATUS_IN_USE = 0x8

_U64 = struct.Struct("<Q")
_SESSION_RSP = struct.Struct("<HIII")


def set_lock_session(args: "VdiArgs", session: int, mode: int = 0, generation: int = 0) -> None:
    """Fill the session bytes of a LOCK_VDI request (send with SD_FLAG_CMD_SESSION)."""
    args.unused = _U64.pack(session)
    args.vdi_size = (mode & 0xFFFFFFFF) | (generation & 0xFFFFFFFF) << 32


def set_release_session(args: "VdiArgs", session: int, handover_to: int = 0) -> None:
    """Fill the session bytes of a RELEASE_VDI request (send with SD_FLAG_CMD_SESSION)."""
    args.unused = _U64.pack(session)
    args.vdi_size = handover_to


def lock_session(args: "VdiArgs") -> tuple[int, int, int]:
    """(session, mode, generation) of a flagged LOCK_VDI request."""
    return _U64.unpack(args.unused)[0], args.vdi_size & 0xFFFFFFFF, args.vdi_size >> 32


def release_session(args: "VdiArgs") -> tuple[int, int]:
    """(session, handover target) of a flagged RELEASE_VDI request."""
    return _U64.unpack(args.unused)[0], args.vdi_size


def set_session_reply(rsp: "VdiRsp", status: int, generation: int = 0, lease_ms: int = 0,
                      holds: int = 0) -> None:
    rsp.pad = _SESSION_RSP.pack(status, generation, lease_ms, holds)


def session_reply(rsp: "VdiRsp") -> tuple[int, int, int, int]:
    """(status bits, generation, lease grace ms, holds) of a LOCK_VDI reply."""
    return _SESSION_RSP.unpack(rsp.pad)


def set_fence(args: "ObjArgs", generation: int) -> None:
    """Fencing generation of a WRITE_OBJ/CREATE_AND_WRITE_OBJ (with SD_FLAG_CMD_SESSION)."""
    args.pad = generation


def set_hash_version(rsp: "HashRsp", version: int) -> None:
    """GET_HASH with SD_FLAG_CMD_SESSION: the copy's version in the padding
    (@20 u32 epoch part, @44 u32 sequence part; zero from a 1.0 server)."""
    rsp.pad0 = (version >> 32).to_bytes(4, "little")
    rsp.pad1 = (version & 0xFFFFFFFF).to_bytes(4, "little")


def hash_version(rsp: "HashRsp") -> int:
    return int.from_bytes(rsp.pad0, "little") << 32 | int.from_bytes(rsp.pad1, "little")


def fence_of(req: "Request") -> int:
    """The fencing generation a write carries (0: none)."""
    if not req.flags & SD_FLAG_CMD_SESSION or not isinstance(req.args, ObjArgs):
        return 0
    return req.args.pad


LOCK_KIND_EXCLUSIVE = 1
LOCK_KIND_SHARED = 2
LOCK_KIND_READ = 3
LOCK_KIND_STANDBY = 4


@dataclass(slots=True)
class LockRecord(Record):
    """One lock holder in the GET_LOCKS (0xD0, extension) reply, 72 bytes."""

    FMT = "<IB3sQIIQ40s"
    vid: int = 0
    kind: int = 0  # LOCK_KIND_*
    pad: bytes = b"\0\0\0"
    session: int = 0
    generation: int = 0
    reserved: int = 0
    since: int = 0  # UNIX seconds of the grant
    owner: bytes = b"\0" * 40  # node_id of the gateway the holder uses
