"""VDI access in the style of QEMU's block driver (asyncio).

:class:`AsyncVdi` opens a VDI by name, reads its inode, and turns byte-range
reads and writes into object I/O:

* reads of objects the VDI has never written return zeros without asking
  the cluster; other reads go to ``vid_to_data_oid(data_vdi_id[i], i)``;
* the first write to an object creates it (CREATE_AND_WRITE_OBJ, with
  copy-on-write from the ancestor's object when the index points elsewhere)
  and then records it in the inode's ``data_vdi_id`` entry (WRITE_OBJ), as
  QEMU does; later writes are WRITE_OBJ in place;
* concurrent writes to an object that is still being created wait for the
  creation, so no write is lost to a second creation;
* I/O of any size and alignment is split across objects and issued in
  parallel; a write returns only when every replica acknowledged every part;
* a write answered READONLY (the VDI was snapshotted under us, §8.1) re-reads
  the inode of the name's new working VDI and is resent as a copy-on-write;
* :func:`create` makes a VDI, or a clone when given a backing image, which
  must be a snapshot (as QEMU's driver checks): a writable VDI is never
  used as a backing image.
"""

from __future__ import annotations

import asyncio

from sheep import proto
from sheep.errors import CODES, SdError, error_for

from qemu_client.connection import Connection
from qemu_client.session import InactiveError, LockSession


class AsyncVdi:
    def __init__(self, conn: Connection, name: str):
        self.conn = conn
        self.name = name
        self.vid = 0
        self.inode: proto.InodeHeader | None = None
        self.index: list[int] = []
        self._creating: dict[int, asyncio.Future] = {}
        # locking (qemu_client.session): mode of the open, generation of our grant
        self.session = LockSession(conn)
        self.tag, self.snapid = "", 0
        self.mode = proto.LOCK_MODE_WRITE
        self.readonly = False
        self.active = True
        self.generation = 0
        self._writes = 0
        self._idle: asyncio.Event | None = None

    @classmethod
    async def open(cls, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                   readonly: bool = False, inactive: bool = False,
                   snapshot: str | int | None = None, session_id: int | None = None,
                   renew_interval: float | None = None, conn=None) -> "AsyncVdi":
        """Open ``name`` (or its ``snapshot``, a tag or an id).

        Read-write opens of a working VDI take its exclusive lock (VdiLockedError
        if somebody holds it); ``readonly`` opens are refused while a writer holds
        it; snapshots are always read-only and shared; ``inactive`` opens (a
        migration destination) take no lock and allow no I/O until
        :meth:`activate`.  The lock's lease is renewed in the background.
        ``conn`` replaces the connection to ``host:port`` (anything with
        ``connect``/``call``/``close``, e.g. ``sheep.nbd``'s in-process one).
        """
        conn = conn or Connection(host, port)
        await conn.connect()
        self = cls(conn, name)
        self.session = LockSession(conn, session_id, renew_interval)
        if snapshot not in (None, "", 0):
            self.snapid, self.tag = (snapshot, "") if isinstance(snapshot, int) else (0, snapshot)
            readonly = True
        self.readonly = readonly
        self.mode = (proto.LOCK_MODE_INACTIVE if inactive else
                     proto.LOCK_MODE_READ if readonly else proto.LOCK_MODE_WRITE)
        self.active = not inactive
        self._idle = asyncio.Event()
        self._idle.set()
        try:
            grant = await self.session.lock(name, self.tag, self.snapid, self.mode)
            self.generation = grant.generation
            await self._load(grant.vid)
            self.session.start()
        except BaseException:
            await self.session.stop()
            conn.close()
            raise
        return self

    @property
    def session_id(self) -> int:
        return self.session.id

    async def _load(self, vid: int | None = None) -> None:
        if vid is None:  # the name's working VDI now (e.g. after a snapshot)
            rsp, _ = await self.conn.call(proto.Op.GET_VDI_INFO,
                                          payload=proto.vdi_name_payload(self.name, ""))
            vid = rsp.args.vdi_id
        self.vid = vid
        _, hdr = await self.conn.call(proto.Op.READ_OBJ,
                                      proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid)),
                                      data_length=proto.SD_INODE_HEADER_SIZE)
        self.inode = proto.InodeHeader.unpack(hdr)
        n = self.inode.nr_objects
        self.index = [0] * n
        if n:
            _, raw = await self.conn.call(
                proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                                 offset=proto.SD_INODE_HEADER_SIZE),
                data_length=4 * n)
            self.index = list(memoryview(raw).cast("I"))

    @property
    def size(self) -> int:
        return self.inode.vdi_size

    @property
    def object_size(self) -> int:
        return self.inode.object_size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise error_for(CODES["INVALID_PARMS"],
                            f"range {offset}+{length} is outside VDI {self.name} "
                            f"of {self.size} bytes")

    def _split(self, offset: int, length: int):
        s = self.object_size
        pos = 0
        while pos < length:
            idx, o = divmod(offset + pos, s)
            n = min(length - pos, s - o)
            yield idx, o, pos, n
            pos += n

    async def pread(self, offset: int, length: int) -> bytes:
        if not self.active:
            raise InactiveError(message=f"VDI {self.name} is inactive: no I/O before activate()")
        self._check(offset, length)
        out = bytearray(length)

        async def part(idx, o, pos, n):
            owner = self.index[idx]
            if owner:
                _, data = await self.conn.call(
                    proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(owner, idx),
                                                     offset=o, copies=self.inode.nr_copies),
                    data_length=n)
                out[pos:pos + n] = data
        await asyncio.gather(*(part(*p) for p in self._split(offset, length)))
        return bytes(out)

    async def pwrite(self, offset: int, data) -> None:
        if not self.active:
            raise InactiveError(message=f"VDI {self.name} is inactive: no I/O before activate()")
        if self.readonly:
            raise error_for(CODES["READONLY"], f"VDI {self.name} is open read-only")
        data = bytes(data)
        self._check(offset, len(data))
        self._writes += 1
        self._idle.clear()
        try:
            await asyncio.gather(*(self._write_retry(idx, o, data[pos:pos + n])
                                   for idx, o, pos, n in self._split(offset, len(data))))
        finally:
            self._writes -= 1
            if not self._writes:
                self._idle.set()

    async def _wcall(self, op: int, args: proto.ObjArgs, payload: bytes, flags: int = 0):
        """A write carrying our lock generation, so that the cluster can fence it."""
        if self.generation:
            flags |= proto.SD_FLAG_CMD_SESSION
            proto.set_fence(args, self.generation)
        return await self.conn.call(op, args, payload, flags=flags)

    async def flush(self) -> None:
        """Wait until every write in progress has been acknowledged."""
        await self._idle.wait()

    async def inactivate(self, handover_to: int | None = None) -> None:
        """Migration source: stop I/O, flush, then hand the lock to the destination's
        session ``handover_to`` in one cluster operation (or just release it)."""
        self.active = False
        await self.flush()
        try:
            if handover_to:
                await self.session.release(self.vid, handover_to)
            elif self.generation:
                await self.session.release(self.vid)
        except BaseException:
            self.active = True
            raise
        self.generation = 0

    async def activate(self) -> None:
        """Take the lock handed over to this session (or a free one); then I/O may start."""
        grant = await self.session.lock(self.name, self.tag, self.snapid,
                                        proto.LOCK_MODE_ACTIVATE)
        self.generation = grant.generation
        self.mode = proto.LOCK_MODE_WRITE
        await self._load(grant.vid)  # the source wrote until the handover
        self.active = True
        self.session.start()

    async def _write_retry(self, idx: int, o: int, chunk: bytes) -> None:
        for attempt in range(3):
            vid = self.vid
            try:
                return await self._write_part(idx, o, chunk)
            except SdError as e:
                if e.code != CODES["READONLY"] or attempt == 2:
                    raise
            if self.vid == vid:  # the first part to see READONLY reloads for all
                await self._load()

    async def _write_part(self, idx: int, o: int, chunk: bytes) -> None:
        while idx in self._creating:
            await asyncio.shield(self._creating[idx])
        oid = proto.vid_to_data_oid(self.vid, idx)
        copies = self.inode.nr_copies
        if self.index[idx] == self.vid:
            await self._wcall(proto.Op.WRITE_OBJ,
                              proto.ObjArgs(oid=oid, offset=o, copies=copies), chunk)
            return
        fut = self._creating[idx] = asyncio.get_running_loop().create_future()
        try:
            parent = self.index[idx]
            flags = 0
            args = proto.ObjArgs(oid=oid, offset=o, copies=copies)
            if parent:
                flags = proto.SD_FLAG_CMD_COW
                args.cow_oid = proto.vid_to_data_oid(parent, idx)
            await self._wcall(proto.Op.CREATE_AND_WRITE_OBJ, args, chunk, flags=flags)
            await self._wcall(proto.Op.WRITE_OBJ,
                              proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                            offset=proto.data_vdi_id_offset(idx)),
                              self.vid.to_bytes(4, "little"))
            self.index[idx] = self.vid
        finally:
            del self._creating[idx]
            fut.set_result(None)

    async def close(self) -> None:
        try:
            await self.session.stop()
            try:
                await self.session.release(self.vid)
            except (ConnectionError, OSError):  # gateway gone: the lease ends anyway
                pass
        finally:
            self.conn.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def create(name: str, size: int = 0, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                 backing: str | None = None, snapshot: str | int | None = None) -> int:
    """Create VDI ``name`` (``qemu-img create``); returns its vid.

    With ``backing`` the new VDI is a clone of the snapshot ``snapshot`` (a tag
    or a snapshot id) of that VDI, of the backing size unless ``size`` is
    given.  A backing image that is not a snapshot is refused (INVALID_PARMS).
    """
    conn = Connection(host, port)
    await conn.connect()
    try:
        args = proto.VdiArgs(vdi_size=size)
        if backing is not None:
            if snapshot is None or snapshot == "" or snapshot == 0:
                raise error_for(CODES["INVALID_PARMS"],
                                f"cannot clone from a non snapshot vdi ({backing})")
            snapid, tag = (snapshot, "") if isinstance(snapshot, int) else (0, snapshot)
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
