"""The generic packed record and the request and response headers (docs/protocol.md §2, §3).

Round-trip guarantee: for every header decoded here, ``Header.unpack(b).pack() == b``
(all bytes, including pads and reserved fields, are kept)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from operator import attrgetter

from sheep.proto.constants import HDR_SIZE, SD_FLAG_CMD_PIGGYBACK, SD_FLAG_CMD_WRITE
from sheep.proto.opcodes import Op, proto_ver_for


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

    @classmethod
    def _getter(cls):
        get = cls.__dict__.get("_values_getter")
        if get is None:
            names = cls._names()
            many = attrgetter(*names) if names else (lambda _r: ())
            get = many if len(names) != 1 else (lambda r, _g=many: (_g(r),))
            type.__setattr__(cls, "_values_getter", get)
        return get

    def values(self) -> tuple:
        return self._getter()(self)

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
