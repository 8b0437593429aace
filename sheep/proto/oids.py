"""Object ids and the name hashes that pick VDI ids and attribute slots (docs/protocol.md §9, §12, §13)."""

from __future__ import annotations

import struct

from sheep.proto.constants import (
    SD_ATTR_OBJ_SIZE,
    SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_INODE_DATA_INDEX_SIZE,
    SD_INODE_SIZE,
)
from sheep.proto.placement import fnv1a64
from sheep.proto.records import pad

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
