"""The inode and VDI attribute layouts (docs/protocol.md §11, §13)."""

from __future__ import annotations

from dataclasses import dataclass

from sheep.proto.constants import (
    SD_DEFAULT_BLOCK_SIZE_SHIFT,
    SD_INODE_HEADER_SIZE,
    SD_INODE_INDEX_END,
    SD_MAX_VDI_LEN,
    SD_MAX_VDI_TAG_LEN,
)
from sheep.proto.errors import sd_error
from sheep.proto.records import Record, cstr, pad

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


def split_name_tag(payload: bytes, allow_tag: bool = True) -> tuple[bytes, bytes]:
    """A VDI-name request payload split into (name, tag) fields.

    The payload is the 256-byte name, or (when ``allow_tag``) the name followed
    by the 256-byte snapshot tag; any other size is INVALID_PARMS.
    """
    if len(payload) == SD_MAX_VDI_LEN:
        return payload, b""
    if allow_tag and len(payload) == SD_MAX_VDI_LEN + SD_MAX_VDI_TAG_LEN:
        return payload[:SD_MAX_VDI_LEN], payload[SD_MAX_VDI_LEN:]
    raise sd_error("INVALID_PARMS",
                   f"VDI name payload must be 256 or 512 bytes, got {len(payload)}")
