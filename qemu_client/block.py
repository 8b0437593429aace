"""VDI access in the style of QEMU's block driver (asyncio).

:func:`bdrv_open` (or :meth:`AsyncVdi.open`) opens a VDI by name, reads its
inode, and the ``bdrv_*`` methods read, write, discard, resize and snapshot
it, as QEMU's sheepdog driver does.  :func:`create` makes a VDI, or a clone
when given a backing image, which must be a snapshot (as QEMU's driver
checks); :func:`delete` removes a VDI or one of its snapshots.

The work is done by the VDI I/O engine the daemon's NBD export shares
(:mod:`sheep.proto.vdi_io`, :mod:`sheep.proto.vdi_snapshots`); its
guarantees hold here: a write returns only when every replica has it, a
read-write open holds the VDI's exclusive lock and every request carries
its fencing generation, gateway failover resends nothing twice.
"""

from __future__ import annotations

from sheep import proto
from sheep.proto.errors import CODES, error_for, sd_error
from sheep.proto.failover import Connection
from sheep.proto.vdi_io import parse_snapshot
from sheep.proto.vdi_snapshots import SnapshotInfo, SnapshotVdi

# open flags (QEMU's values)
BDRV_O_RDONLY = 0x0000
BDRV_O_RDWR = 0x0002
BDRV_O_NOCACHE = 0x0020  # accepted and ignored: writes are always write-through
BDRV_O_INACTIVE = 0x0800
# request flags of bdrv_pwrite_zeroes (QEMU's values)
BDRV_REQ_MAY_UNMAP = 0x4
BDRV_SECTOR_SIZE = 512


class AsyncVdi(SnapshotVdi):
    """An open VDI (asyncio) with QEMU's block-driver names.  Use
    :func:`bdrv_open` or :meth:`open`."""

    async def bdrv_pread(self, offset: int, count: int) -> bytes:
        """Read ``count`` bytes at byte ``offset``."""
        return await self.pread(offset, count)

    async def bdrv_pwrite(self, offset: int, buf) -> int:
        """Write ``buf`` at byte ``offset``; returns the number of bytes written."""
        await self.pwrite(offset, buf)
        return len(buf)

    async def bdrv_read(self, sector_num: int, nb_sectors: int) -> bytes:
        """Read ``nb_sectors`` 512-byte sectors from sector ``sector_num``."""
        return await self.pread(sector_num * BDRV_SECTOR_SIZE, nb_sectors * BDRV_SECTOR_SIZE)

    async def bdrv_write(self, sector_num: int, nb_sectors, buf=None) -> int:
        """Write ``nb_sectors`` sectors of ``buf`` at sector ``sector_num``.

        QEMU's argument order ``bdrv_write(sector_num, buf, nb_sectors)`` is
        accepted too.  ``buf`` must hold exactly ``nb_sectors * 512`` bytes."""
        if not isinstance(nb_sectors, int):
            nb_sectors, buf = buf, nb_sectors
        if nb_sectors is None:
            nb_sectors = len(buf) // BDRV_SECTOR_SIZE
        if len(buf) != nb_sectors * BDRV_SECTOR_SIZE:
            raise sd_error("INVALID_PARMS", f"{len(buf)} bytes are not {nb_sectors} sectors")
        await self.pwrite(sector_num * BDRV_SECTOR_SIZE, buf)
        return nb_sectors

    async def bdrv_flush(self) -> None:
        """Wait for the writes in progress (they are on every replica then)."""
        await self.flush()

    async def bdrv_getlength(self) -> int:
        """The VDI size in bytes."""
        return self.size

    async def bdrv_truncate(self, offset: int) -> None:
        """Resize to ``offset`` bytes: grow only (shrinking raises InvalidParmsError)."""
        await self.truncate(offset)

    async def bdrv_pdiscard(self, offset: int, count: int) -> None:
        """Discard (TRIM) a byte range; it reads back as zeros."""
        await self.pdiscard(offset, count)

    async def bdrv_pwrite_zeroes(self, offset: int, count: int, flags: int = 0) -> None:
        """Write zeros; with ``BDRV_REQ_MAY_UNMAP`` in ``flags`` whole objects are discarded."""
        await self.pwrite_zeroes(offset, count, unmap=bool(flags & BDRV_REQ_MAY_UNMAP))

    async def bdrv_snapshot_create(self, name: str = "", vm_state_size: int = 0,
                                   vm_clock_nsec: int = 0) -> SnapshotInfo:
        """Snapshot the VDI with tag ``name`` (see :meth:`snapshot_create`)."""
        return await self.snapshot_create(name, vm_state_size, vm_clock_nsec)

    async def bdrv_snapshot_goto(self, snapshot_id: str | int) -> None:
        """Revert to a snapshot given by id or tag (see :meth:`snapshot_goto`)."""
        await self.snapshot_goto(snapshot_id)

    async def bdrv_snapshot_delete(self, snapshot_id: str | int | None = None,
                                   name: str | None = None) -> None:
        """Delete a snapshot given by id and/or tag."""
        await self.snapshot_delete(snapshot_id, name)

    async def bdrv_snapshot_list(self) -> list[SnapshotInfo]:
        """The snapshots of this VDI, by id."""
        return await self.snapshot_list()

    async def bdrv_get_info(self) -> dict:
        """Facts about the open image (for ``qemu_client.io``'s ``info``)."""
        return {"name": self.name, "vid": self.vid, "size": self.size,
                "object_size": self.object_size, "copies": self.inode.nr_copies,
                "snapshot": self.is_snapshot, "readonly": self.readonly,
                "generation": self.generation,
                "gateway": "{}:{}".format(*self.conn.gateway) if self._failover else "in-process",
                "failovers": self.conn.failovers if self._failover else 0}

    async def bdrv_close(self) -> None:
        """Release the lock and close."""
        await self.close()


async def bdrv_open(name: str, snapshot: str | int | None = None, flags: int = BDRV_O_RDWR,
                    host: str = "127.0.0.1", port: int = proto.SD_PORT, **options) -> AsyncVdi:
    """Open VDI ``name`` like QEMU's ``bdrv_open`` (asyncio).

    ``flags``: ``BDRV_O_RDWR`` (read-write, takes the lock; the default),
    ``BDRV_O_RDONLY`` (read-only), ``BDRV_O_INACTIVE`` (migration destination).
    ``snapshot``: a snapshot id or tag (opens it read-only).  ``options`` as
    :meth:`AsyncVdi.open` (``session_id``, ``renew_interval``, ``nodes``,
    ``failover``)."""
    return await AsyncVdi.open(name, host, port, readonly=not flags & BDRV_O_RDWR,
                               inactive=bool(flags & BDRV_O_INACTIVE), snapshot=snapshot,
                               **options)


async def create(name: str, size: int | None, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                 backing: str | None = None, snapshot: str | int | None = None) -> int:
    """Create VDI ``name`` of ``size`` bytes (required; ``qemu-img create``); returns its vid.

    With ``backing`` the new VDI is a clone of the snapshot ``snapshot`` (a tag
    or a snapshot id) of that VDI, of the backing size when ``size`` is 0 or
    None.  A backing image that is not a snapshot is refused (INVALID_PARMS)."""
    size = size or 0
    conn = Connection(host, port, failover=False)
    await conn.connect()
    try:
        args = proto.VdiArgs(vdi_size=size)
        if backing is not None:
            if snapshot is None or snapshot == "" or snapshot == 0:
                raise error_for(CODES["INVALID_PARMS"],
                                f"cannot clone from a non snapshot vdi ({backing})")
            snapid, tag = parse_snapshot(snapshot, digits=False)
            rsp, _ = await conn.call(proto.Op.GET_VDI_INFO, proto.VdiArgs(snapid=snapid),
                                     payload=proto.vdi_name_payload(backing, tag))
            base = rsp.args.vdi_id
            _, hdr = await conn.call(proto.Op.READ_OBJ,
                                     proto.ObjArgs(oid=proto.vid_to_vdi_oid(base)),
                                     data_length=proto.SD_INODE_HEADER_SIZE)
            bino = proto.InodeHeader.unpack(hdr)
            if not bino.is_snapshot:
                raise error_for(CODES["INVALID_PARMS"],
                                f"cannot clone from a non snapshot vdi ({backing})")
            args = proto.VdiArgs(vdi_size=size or bino.vdi_size, base_vdi_id=base,
                                 copies=bino.nr_copies, block_size_shift=bino.block_size_shift)
        elif not size:
            raise error_for(CODES["INVALID_PARMS"], "a VDI without backing image needs a size")
        rsp, _ = await conn.call(proto.Op.NEW_VDI, args, payload=proto.vdi_name_payload(name))
        return rsp.args.vdi_id
    finally:
        conn.close()


async def delete(name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                 snapshot: str | int | None = None) -> None:
    """Delete VDI ``name`` (or its snapshot ``snapshot``, an id or a tag)."""
    conn = Connection(host, port, failover=False)
    await conn.connect()
    try:
        snapid, tag = parse_snapshot(snapshot)
        await conn.call(proto.Op.DEL_VDI, proto.VdiArgs(snapid=snapid),
                        payload=proto.vdi_name_payload(name, tag if snapshot else None))
    finally:
        conn.close()
