"""Snapshots of an open VDI: create (savevm), goto (loadvm), delete, list.

:class:`SnapshotVdi` is :class:`sheep.proto.vdi_io.VdiIo` plus what QEMU's
sheepdog driver does for snapshots (docs/protocol.md §8.1):

* create: tag + vm state fields into the header, then NEW_VDI snapid 1: our
  VDI becomes the snapshot, we continue on the new working VDI, the lock
  follows;
* goto: DEL_VDI of the working VDI, NEW_VDI of a clone of the snapshot, then
  the lock is taken on it;
* delete: DEL_VDI with name + tag/snapid;
* list: READ_VDIS, then the inode headers from the name's hash on.

Each runs with no I/O of the open in progress (``VdiIo._exclusive``).  A
NEW_VDI or DEL_VDI in flight when the gateway died is checked before it is
sent again, so a failover never makes two snapshots or deletes the wrong VDI.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from sheep import proto
from sheep.proto.errors import CODES, SdError, sd_error
from sheep.proto.failover import GatewayLost
from sheep.proto.vdi_io import VdiIo, parse_snapshot


@dataclass
class SnapshotInfo:
    """One snapshot of a VDI (QEMU's ``QEMUSnapshotInfo`` plus the vid).

    ``id`` and ``name`` are what ``collie vdi list`` shows as Id and Tag."""

    id: int  # snap_id
    name: str  # the tag
    vid: int
    size: int  # vdi_size
    vm_state_size: int
    date_sec: int  # snapshot time (snap_ctime)
    date_nsec: int
    vm_clock_nsec: int
    create_time: int  # creation time of the VDI (collie's "Creation time"), sd time

    @property
    def id_str(self) -> str:
        return str(self.id)



class SnapshotVdi(VdiIo):
    """An open VDI with snapshot operations."""

    def _need_writable(self, what: str) -> None:
        if self.is_snapshot or self.snapid or self.tag:
            raise sd_error("INVALID_PARMS", f"VDI {self.name}: cannot {what} a snapshot VDI "
                                        f"(open the VDI itself)")
        if self.readonly or not self.active:
            raise sd_error("READONLY", f"VDI {self.name} is not open read-write: cannot {what}")

    async def snapshot_create(self, name: str = "", vm_state_size: int = 0,
                              vm_clock_nsec: int = 0) -> SnapshotInfo:
        """Take a snapshot tagged ``name`` (QEMU's savevm): the current inode becomes
        the snapshot, the open continues on the new working VDI (the lock follows).
        VDI_EXIST if a snapshot of this VDI has that tag already."""
        self._need_writable("snapshot")
        if name:
            if len(name.encode()) >= proto.SD_MAX_VDI_TAG_LEN:
                raise sd_error("INVALID_PARMS", f"snapshot tag {name!r} is too long")
            try:
                await self._lookup(self.name, 0, name)
            except SdError as e:
                if e.code not in (CODES["NO_TAG"], CODES["NO_VDI"]):
                    raise
            else:
                raise sd_error("VDI_EXIST", f"VDI {self.name} has a snapshot tagged {name!r} already")
        async with self._exclusive():
            old = self.vid
            hdr = await self._read_header(old)
            if hdr.is_snapshot:  # somebody snapshotted under us: follow the name first
                await self._load()
                old, hdr = self.vid, await self._read_header(self.vid)
            # tag, vm_clock_nsec, vdi_size and vm_state_size of the header, in one write
            hdr.tag = proto.pad(name, proto.SD_MAX_VDI_TAG_LEN)
            hdr.vm_clock_nsec = vm_clock_nsec
            hdr.vm_state_size = vm_state_size
            raw = hdr.pack()
            lo, hi = proto.INODE_TAG_OFF, proto.INODE_VDI_SIZE_OFF + 16
            await self._wcall(proto.Op.WRITE_OBJ,
                              proto.ObjArgs(oid=proto.vid_to_vdi_oid(old), offset=lo,
                                            copies=hdr.nr_copies), raw[lo:hi])
            args = proto.VdiArgs(vdi_size=hdr.vdi_size, base_vdi_id=old, snapid=1,
                                 copies=hdr.nr_copies, block_size_shift=hdr.block_size_shift)
            await self._load(await self._new_vdi(args, old))
            return await self._snapshot_info(old)

    async def _new_vdi(self, args: proto.VdiArgs, parent: int) -> int:
        """NEW_VDI of this name's new working VDI (child of ``parent``), sent
        once; if the gateway died with it in flight, checked before it is sent
        again.  Returns the new vid."""
        try:
            rsp, _ = await self._call(proto.Op.NEW_VDI, args,
                                      payload=proto.vdi_name_payload(self.name), retry=False)
            return rsp.args.vdi_id
        except GatewayLost:
            return await self._resent_new_vdi(args, parent)

    async def _resent_new_vdi(self, args: proto.VdiArgs, parent: int) -> int:
        """NEW_VDI was in flight when the gateway died: did it happen?"""
        try:
            vid = await self._lookup(self.name)
        except SdError as e:
            if e.code != CODES["NO_VDI"]:
                raise
            vid = 0
        if vid and vid != parent and (await self._read_header(vid)).parent_vdi_id == parent:
            return vid  # it did
        rsp, _ = await self._call(proto.Op.NEW_VDI, args,
                                  payload=proto.vdi_name_payload(self.name))
        return rsp.args.vdi_id

    async def _snapshot_info(self, vid: int, hdr: proto.InodeHeader | None = None) -> SnapshotInfo:
        hdr = hdr or await self._read_header(vid)
        return SnapshotInfo(id=hdr.snap_id, name=hdr.tag_str, vid=vid, size=hdr.vdi_size,
                            vm_state_size=hdr.vm_state_size, date_sec=hdr.snap_ctime >> 32,
                            date_nsec=hdr.snap_ctime & 0xFFFFFFFF,
                            vm_clock_nsec=hdr.vm_clock_nsec, create_time=hdr.create_time)

    async def snapshot_goto(self, snapshot: str | int) -> None:
        """Revert to a snapshot (QEMU's loadvm): the working VDI is deleted and
        replaced by a fresh clone of the snapshot; the open continues on it,
        holding its lock.  Changes since the snapshot are discarded."""
        self._need_writable("revert")
        snapid, tag = parse_snapshot(snapshot)
        if not snapid and not tag:
            raise sd_error("INVALID_PARMS", "which snapshot? give an id or a tag")
        async with self._exclusive():
            base = await self._lookup(self.name, snapid, tag)
            bhdr = await self._read_header(base)
            # DEL_VDI of the working VDI (256-byte name, no tag)
            working = proto.vdi_name_payload(self.name)
            try:
                await self._call(proto.Op.DEL_VDI, proto.VdiArgs(), payload=working,
                                 retry=False)
                deleted = True
            except GatewayLost:  # did the delete happen before the gateway died?
                try:
                    deleted = await self._lookup(self.name) != self.vid
                except SdError as e:
                    if e.code != CODES["NO_VDI"]:
                        raise
                    deleted = True
                if not deleted:
                    await self._call(proto.Op.DEL_VDI, proto.VdiArgs(), payload=working)
                    deleted = True
            except SdError as e:  # QEMU: NO_VDI counts as deleted, else rebase
                deleted = e.code == CODES["NO_VDI"]
            args = proto.VdiArgs(vdi_size=bhdr.vdi_size, base_vdi_id=base,
                                 snapid=0 if deleted else 1, copies=bhdr.nr_copies,
                                 block_size_shift=bhdr.block_size_shift)
            new = await self._new_vdi(args, base)
            if deleted and self.session.enforced:
                # the old working VDI (and its lock) is gone: lock the new one
                # (a rebase moved our lock to the new working VDI already)
                grant = await self.session.lock(self.name, "", 0, proto.LOCK_MODE_WRITE)
                self.generation = grant.generation
            await self._load(new)

    async def snapshot_delete(self, snapshot_id: str | int | None = None,
                              name: str | None = None) -> None:
        """Delete a snapshot of this VDI, given by id or tag (``name``)."""
        snapid, tag = parse_snapshot(snapshot_id)
        if name:
            tag = name if not snapid else tag
        if not snapid and not tag:
            raise sd_error("INVALID_PARMS", "which snapshot? give an id or a tag")
        vid = await self._lookup(self.name, snapid, tag)
        if vid == self.vid:
            raise sd_error("INVALID_PARMS", f"snapshot {snapshot_id or name} is the image in use")
        if snapid and name and (await self._read_header(vid)).tag_str != name:
            raise sd_error("NO_TAG", f"snapshot {snapid} of {self.name} is not tagged {name!r}")
        payload = proto.vdi_name_payload(self.name, tag)
        try:
            await self._call(proto.Op.DEL_VDI, proto.VdiArgs(snapid=snapid), payload=payload,
                             retry=False)
        except GatewayLost:
            with contextlib.suppress(SdError):
                if await self._lookup(self.name, snapid, tag) == vid:  # not deleted yet
                    await self._call(proto.Op.DEL_VDI, proto.VdiArgs(snapid=snapid),
                                     payload=payload)

    async def snapshot_list(self) -> list[SnapshotInfo]:
        """The snapshots of this VDI (what ``collie vdi list NAME`` marks ``s``),
        by snapshot id: READ_VDIS, then the inode headers from the name's hash
        on while the bits are set, as QEMU does (deleted ones skipped)."""
        _, inuse = await self._call(proto.Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE)
        _, deleted = await self._call(proto.Op.READ_DEL_VDIS,
                                      data_length=proto.VDI_BITMAP_SIZE)

        def bit(bm, v):
            return bool(bm[v >> 3] & (1 << (v & 7)))
        vids = []
        start = proto.vdi_name_hash(self.name) or 1
        v = start
        while bit(inuse, v):
            if not bit(deleted, v):
                vids.append(v)
            v = (v + 1) % proto.SD_NR_VDIS or 1
            if v == start:
                break
        headers = await asyncio.gather(*(self._read_header(v) for v in vids))
        want = proto.pad(self.name, proto.SD_MAX_VDI_LEN)
        out = [await self._snapshot_info(v, h) for v, h in zip(vids, headers)
               if h.name == want and h.is_snapshot]
        return sorted(out, key=lambda s: s.id)
