"""Cluster-wide VDI listing for qemu_client (what ``collie vdi list`` shows).

:func:`list_vdis` (asyncio) and :func:`qemu_client.list_vdis` (blocking)
read the in-use and deleted VDI bitmaps (READ_VDIS, READ_DEL_VDIS) and the
inode header of every live VDI, and return one :class:`VdiInfo` per working
VDI, snapshot and clone, ordered by vid as ``collie vdi list`` orders them.
The listing is a snapshot of the moment: VDIs created or deleted while it
runs may or may not appear.  Nothing is locked and nothing is written.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from sheep import proto
from sheep.proto.errors import CODES, SdError
from sheep.proto.failover import Connection

_NONZERO = re.compile(rb"[^\x00]")


@dataclass(frozen=True)
class VdiInfo:
    """One VDI of the cluster, with the fields of ``collie vdi list --json``.

    ``size`` is the virtual size in bytes; ``id`` the snapshot id (0 for a
    working VDI or a clone, as collie's Id column); ``snapshot`` is True for
    snapshots; ``clone`` for a working VDI cloned from a snapshot; ``vid``
    the VDI id; ``parent_vid`` the vid it was snapshotted or cloned from
    (0: none); ``created`` the creation time in UNIX seconds."""

    name: str
    size: int
    id: int
    vid: int
    snapshot: bool
    clone: bool
    tag: str
    parent_vid: int
    copies: int
    copy_policy: int
    block_size_shift: int
    created: int


def _bits(bitmap: bytes):
    for m in _NONZERO.finditer(bitmap):
        b = bitmap[m.start()]
        for bit in range(8):
            if b & (1 << bit):
                yield m.start() * 8 + bit


def _info(vid: int, h: proto.InodeHeader) -> VdiInfo:
    return VdiInfo(name=h.name_str, size=h.vdi_size,
                   id=h.snap_id if h.is_snapshot else 0, vid=vid,
                   snapshot=h.is_snapshot,
                   clone=not h.is_snapshot and h.snap_id == 1 and h.parent_vdi_id != 0,
                   tag=h.tag_str, parent_vid=h.parent_vdi_id, copies=h.nr_copies,
                   copy_policy=h.copy_policy, block_size_shift=h.block_size_shift,
                   created=h.create_time >> 32)


async def list_vdis(host: str = "127.0.0.1", port: int = proto.SD_PORT) -> list[VdiInfo]:
    """Every live VDI of the cluster reached through the sheep at host:port.

    Raises the typed :mod:`sheep.proto.errors` exception of a failed request (e.g.
    ``WaitForFormatError`` on an unformatted cluster) and ``ConnectionError``
    when the sheep cannot be reached.  A VDI deleted between the bitmap read
    and its header read is left out."""
    conn = Connection(host, port, failover=False)
    await conn.connect()
    try:
        _, inuse = await conn.call(proto.Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE)
        _, deleted = await conn.call(proto.Op.READ_DEL_VDIS,
                                     data_length=proto.VDI_BITMAP_SIZE)
        deleted = deleted.ljust(proto.VDI_BITMAP_SIZE, b"\0")
        vids = [v for v in _bits(inuse) if not deleted[v >> 3] & (1 << (v & 7))]

        async def header(vid):
            try:
                _, raw = await conn.call(proto.Op.READ_OBJ,
                                         proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid)),
                                         data_length=proto.SD_INODE_HEADER_SIZE)
            except SdError as e:
                if e.code == CODES["NO_OBJ"]:
                    return None
                raise
            return proto.InodeHeader.unpack(raw)
        headers = await asyncio.gather(*(header(v) for v in vids))
        return [_info(v, h) for v, h in zip(vids, headers)
                if h is not None and h.name[0] != 0]
    finally:
        conn.close()
