"""The VDI I/O engine: byte ranges of a VDI turned into object requests.

One engine serves every VDI client of the project: the ``qemu_client``
library (over TCP to a gateway, with failover) and the daemon's NBD export
(over an in-process connection that runs each request through the node's
own op table).  It imports only the wire package, so it is the same code on
both sides, and it sends exactly what QEMU's sheepdog driver sends
(docs/protocol.md §8.1):

* reads of objects the VDI has never written return zeros without asking
  the cluster; other reads go to ``vid_to_data_oid(data_vdi_id[i], i)``;
* the first write to an object creates it (CREATE_AND_WRITE_OBJ, with
  copy-on-write from the ancestor's object when the index points elsewhere)
  and then records it in the inode's ``data_vdi_id`` entry (WRITE_OBJ), as
  QEMU does; later writes are WRITE_OBJ in place;
* concurrent writes to an object that is still being created wait for the
  creation, so no write is lost to a second creation;
* I/O of any size and alignment is split across objects and issued in
  parallel (many requests in flight on one connection); a write returns only
  when every replica acknowledged every part;
* a write answered READONLY (the VDI was snapshotted under us, §8.1) re-reads
  the inode of the name's new working VDI and is resent as a copy-on-write;
* discard unlinks whole objects from the inode (DISCARD_OBJ, fenced like a
  write) and zeroes partial ones, so discarded ranges read back as zeros;
  write-zeroes does the same (or only writes zeros, without ``unmap``);
* resize grows ``vdi_size`` in the inode header (shrinking is refused).

Snapshot operations are :mod:`sheep.proto.vdi_snapshots`, on top of this.

Locking (:mod:`sheep.proto.lock_client`, :mod:`sheep.proto.fenced_calls`): a read-write open holds the VDI's
exclusive lock for its lifetime; every write — and every read — carries the
lock's generation so that the cluster can fence us if the lock was taken
away (FencedError).  Reads of objects our cached inode shows as never
written are answered from that cache only while our lock is confirmed
(a request that proved it succeeded less than ``CONFIRM_WINDOW`` seconds
ago; the constant is :mod:`sheep.proto.fenced_calls`'); otherwise the gateway is asked first — so a writer whose lock was
taken over (its gateway cut off, an operator's unlock) never reads zeros
where the new holder wrote.

Gateway failover (:mod:`sheep.proto.failover`): when the gateway dies the
connection moves to another node; before anything is resent the lock
session is re-attached there (LOCK_MODE_REATTACH with our generation; if the
old gateway's departure already dropped the lock, it is taken again with a
new generation, which fails only if somebody else took the VDI meanwhile).
Reads, WRITE_OBJ and index updates are resent as they are (idempotent); an
interrupted CREATE_AND_WRITE_OBJ re-reads our inode entry: if the object is
recorded as ours already it becomes a WRITE_OBJ, otherwise the creation is
sent again (it replaces any partial object with the same content: nobody
else writes that object while it is being created).  So the caller sees
neither an error nor a lost or duplicated write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sheep import proto
from sheep.proto.errors import CODES, SdError, error_for, sd_error
from sheep.proto.failover import Connection, GatewayLost
from sheep.proto.fenced_calls import FencedCalls
from sheep.proto.lock_client import InactiveError, LockSession

log = logging.getLogger("sheep.proto.vdi_io")


def parse_snapshot(snapshot, digits: bool = True) -> tuple[int, str]:
    """(snapid, tag) of a snapshot given as an id or a tag.  With ``digits`` a
    string of digits is an id too (QEMU's snapshot_id strings)."""
    if snapshot is None or snapshot == "" or snapshot == 0:
        return 0, ""
    if isinstance(snapshot, int):
        return snapshot, ""
    s = str(snapshot)
    if digits and s.isdigit() and int(s) > 0:
        return int(s), ""
    return 0, s


class _Admitted:
    """One read or write of a :class:`VdiIo` in progress (see ``VdiIo._io``)."""

    __slots__ = ("vdi", "write")

    def __init__(self, vdi: "VdiIo", write: bool):
        self.vdi, self.write = vdi, write

    async def __aenter__(self) -> None:
        v = self.vdi
        if v.closed:
            raise ConnectionError(f"VDI {v.name} is closed")
        if not v.active:
            raise InactiveError(message=f"VDI {v.name} is inactive: no I/O before activate()")
        if self.write and v.readonly:
            raise error_for(CODES["READONLY"], f"VDI {v.name} is open read-only")
        while not v._gate.is_set():
            await v._gate.wait()
        v._ops += 1
        v._ops_idle.clear()
        if self.write:
            v._writes += 1
            v._idle.clear()

    async def __aexit__(self, *exc) -> bool:
        v = self.vdi
        v._ops -= 1
        if not v._ops:
            v._ops_idle.set()
        if self.write:
            v._writes -= 1
            if not v._writes:
                v._idle.set()
        return False


class VdiIo(FencedCalls):
    """An open VDI (asyncio): reads, writes, discard, resize, lock handover.

    Open one with :meth:`open`; ``qemu_client.block.AsyncVdi`` is this plus
    snapshots and QEMU's ``bdrv_*`` names."""

    def __init__(self, conn, name: str):
        super().__init__(conn, name)
        self.index: list[int] = []
        self._creating: dict[int, asyncio.Future] = {}
        self.readonly = False
        self.active = True
        self._writes = 0
        self._idle: asyncio.Event | None = None
        # metadata operations (snapshots, resize) run with no I/O in progress
        self._ops = 0
        self._ops_idle: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._meta: asyncio.Lock | None = None
        self.closed = False

    # ------------------------------------------------------------------
    # open / close

    @classmethod
    async def open(cls, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                   readonly: bool = False, inactive: bool = False,
                   snapshot: str | int | None = None, session_id: int | None = None,
                   renew_interval: float | None = None, conn=None,
                   nodes: list[tuple[str, int]] | None = None,
                   failover: bool = True) -> VdiIo:
        """Open ``name`` (or its ``snapshot``, a tag or an id).

        Read-write opens of a working VDI take its exclusive lock (VdiLockedError
        if somebody holds it); ``readonly`` opens are refused while a writer holds
        it; snapshots are always read-only and shared; ``inactive`` opens (a
        migration destination) take no lock and allow no I/O until
        :meth:`activate`.  The lock's lease is renewed in the background.
        ``conn`` replaces the connection to ``host:port`` (anything with
        ``connect``/``call``/``close``, e.g. ``sheep.nbd.export``'s in-process one).
        ``nodes`` are extra gateways to try; ``failover=False`` sticks to
        ``host:port``.
        """
        conn = conn or Connection(host, port, nodes=nodes, failover=failover)
        await conn.connect()
        self = cls(conn, name)
        self.session = LockSession(conn, session_id, renew_interval)
        if snapshot not in (None, "", 0):
            self.snapid, self.tag = parse_snapshot(snapshot, digits=False)
            readonly = True
        self.readonly = readonly
        self.mode = (proto.LOCK_MODE_INACTIVE if inactive else
                     proto.LOCK_MODE_READ if readonly else proto.LOCK_MODE_WRITE)
        self.active = not inactive
        self._idle = asyncio.Event()
        self._idle.set()
        self._ops_idle = asyncio.Event()
        self._ops_idle.set()
        self._gate = asyncio.Event()
        self._gate.set()
        self._meta = asyncio.Lock()
        try:
            grant = await self.session.lock(name, self.tag, self.snapid, self.mode)
            self.generation = grant.generation
            await self._load(grant.vid)
            self.session.start()
        except BaseException:
            await self.session.stop()
            conn.close()
            raise
        if self._failover:
            conn.on_reconnect.append(self._reattach)
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_nodes())
        return self

    @property
    def session_id(self) -> int:
        return self.session.id

    async def close(self) -> None:
        """Release the lock and close the connection (waits for writes in progress)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._idle is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._idle.wait(), 60)
            if self._refresher is not None:
                self._refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._refresher
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

    # ------------------------------------------------------------------
    # inode

    async def _load(self, vid: int | None = None) -> None:
        if vid is None:  # the name's working VDI now (e.g. after a snapshot)
            rsp, _ = await self._call(proto.Op.GET_VDI_INFO,
                                      payload=proto.vdi_name_payload(self.name, ""))
            vid = rsp.args.vdi_id
        _, hdr = await self._call(proto.Op.READ_OBJ,
                                  proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid)),
                                  data_length=proto.SD_INODE_HEADER_SIZE)
        inode = proto.InodeHeader.unpack(hdr)
        n = inode.nr_objects
        index = [0] * n
        if n:
            _, raw = await self._call(
                proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid),
                                                 offset=proto.SD_INODE_HEADER_SIZE),
                data_length=4 * n)
            index = list(memoryview(raw).cast("I"))
        self.vid, self.inode, self.index = vid, inode, index

    async def _read_header(self, vid: int) -> proto.InodeHeader:
        _, hdr = await self._call(proto.Op.READ_OBJ,
                                  proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid)),
                                  data_length=proto.SD_INODE_HEADER_SIZE)
        return proto.InodeHeader.unpack(hdr)

    async def _lookup(self, name: str, snapid: int = 0, tag: str = "") -> int:
        rsp, _ = await self._call(proto.Op.GET_VDI_INFO, proto.VdiArgs(snapid=snapid),
                                  payload=proto.vdi_name_payload(name, tag))
        return rsp.args.vdi_id

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

    # ------------------------------------------------------------------
    # I/O admission: metadata operations run alone

    def _io(self, write: bool) -> "_Admitted":
        """``async with``: one read or write, admitted once no metadata
        operation holds the gate, counted until it ends."""
        return _Admitted(self, write)

    @contextlib.asynccontextmanager
    async def _exclusive(self):
        """No I/O while a snapshot/resize changes which inode we use."""
        async with self._meta:
            self._gate.clear()
            try:
                await self._ops_idle.wait()
                yield
            finally:
                self._gate.set()

    # ------------------------------------------------------------------
    # reads and writes (byte offsets)

    async def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; never-written ranges read as zeros."""
        async with self._io(False):
            self._check(offset, length)
            parts = list(self._split(offset, length))
            if len(parts) == 1 and self.index[parts[0][0]]:  # one written object
                idx, o, _pos, n = parts[0]
                _, data = await self._call(
                    proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(self.index[idx], idx),
                                                     offset=o, copies=self.inode.nr_copies),
                    data_length=n, fenced=True)
                if len(data) != n:
                    raise error_for(CODES["EIO"], f"read of {n} bytes at {o} answered with "
                                                  f"{len(data)}")
                return data if type(data) is bytes else bytes(data)
            out = bytearray(length)

            async def part(idx, o, pos, n):
                owner = self.index[idx]
                if owner:
                    _, data = await self._call(
                        proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(owner, idx),
                                                         offset=o, copies=self.inode.nr_copies),
                        data_length=n, fenced=True)
                    if len(data) != n:
                        raise error_for(CODES["EIO"], f"read of {n} bytes at {o} answered "
                                                      f"with {len(data)}")
                    out[pos:pos + n] = data
                else:  # never written, says our cache: true only while we hold the lock
                    await self._confirm_lock()
            await asyncio.gather(*(part(*p) for p in parts))
            return bytes(out)

    async def allocation_index(self, offset: int, length: int) -> list[int]:
        """The ``data_vdi_id`` entries to report the allocation of ``length``
        bytes at ``offset`` from (0: never written, reads as zeros; anything
        else: data, ours or a parent's).  As for reads, a 0 entry of our cache
        is trusted only while our lock stands (confirmed; FencedError if not):
        a writer whose lock was taken must never report zeros where the new
        one wrote."""
        async with self._io(False):
            self._check(offset, length)
            if length:
                first, last = offset // self.object_size, (offset + length - 1) // self.object_size
                if not all(self.index[first:last + 1]):
                    await self._confirm_lock()
            return self.index

    async def pwrite(self, offset: int, data) -> None:
        """Write ``data`` at ``offset``; returns once every replica has it."""
        async with self._io(True):
            data = bytes(data)
            self._check(offset, len(data))
            parts = list(self._split(offset, len(data)))
            if len(parts) == 1:  # within one object: no gather
                idx, o, _pos, _n = parts[0]
                await self._write_retry(idx, o, data)
                return
            await asyncio.gather(*(self._write_retry(idx, o, data[pos:pos + n])
                                   for idx, o, pos, n in parts))

    async def flush(self) -> None:
        """Wait until every write in progress has been acknowledged.

        Writes are acknowledged only once every replica has them (QEMU's
        write-through mode), so there is nothing else to flush; QEMU's
        FLUSH_VDI is answered INVALID_PARMS by Sheepdog anyway."""
        await self._idle.wait()

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
            await self._create(idx, oid, o, chunk, copies)
            await self._wcall(proto.Op.WRITE_OBJ,
                              proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                            offset=proto.data_vdi_id_offset(idx)),
                              self.vid.to_bytes(4, "little"))
            self.index[idx] = self.vid
        finally:
            del self._creating[idx]
            fut.set_result(None)

    async def _create(self, idx: int, oid: int, o: int, chunk: bytes, copies: int) -> None:
        """CREATE_AND_WRITE_OBJ (copy-on-write from the parent's object if any),
        resent carefully after a failover (see the module docstring)."""
        parent = self.index[idx]
        while True:
            args = proto.ObjArgs(oid=oid, offset=o, copies=copies)
            flags = 0
            if parent:
                flags = proto.SD_FLAG_CMD_COW
                args.cow_oid = proto.vid_to_data_oid(parent, idx)
            try:
                await self._call(proto.Op.CREATE_AND_WRITE_OBJ, args, chunk, flags=flags,
                                 fenced=True, retry=False)
                return
            except GatewayLost:
                pass
            # the gateway died with our creation in flight; we are on a new one now
            _, raw = await self._call(
                proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                                 offset=proto.data_vdi_id_offset(idx)),
                data_length=4)
            if int.from_bytes(raw, "little") == self.vid:  # created and recorded
                await self._wcall(proto.Op.WRITE_OBJ,
                                  proto.ObjArgs(oid=oid, offset=o, copies=copies), chunk)
                return
            # not recorded: nobody else wrote the object since, so creating it
            # again (it replaces a partial one) gives the same result

    # ------------------------------------------------------------------
    # discard and write-zeroes

    async def pdiscard(self, offset: int, length: int) -> None:
        """Discard a range: whole objects are unlinked from the inode (the cluster
        frees them once unreferenced), partial ones get zeros written where
        allocated.  The range reads back as zeros afterwards."""
        await self._zero(offset, length, unmap=True)

    async def pwrite_zeroes(self, offset: int, length: int, unmap: bool = True) -> None:
        """Make a range read as zeros.  With ``unmap`` whole objects are discarded;
        without it, zeros are written over every allocated part (never-written
        parts read as zeros already)."""
        await self._zero(offset, length, unmap)

    async def _zero(self, offset: int, length: int, unmap: bool) -> None:
        async with self._io(True):
            self._check(offset, length)
            size = self.object_size
            jobs = []
            for idx, o, _pos, n in self._split(offset, length):
                if unmap and n == size:
                    jobs.append(self._discard_retry(idx))
                else:
                    jobs.append(self._zero_part(idx, o, n))
            await asyncio.gather(*jobs)

    async def _zero_part(self, idx: int, o: int, n: int) -> None:
        while idx in self._creating:
            await asyncio.shield(self._creating[idx])
        if not self.index[idx]:
            return  # never written: reads as zeros already
        await self._write_retry(idx, o, bytes(n))

    async def _discard_retry(self, idx: int) -> None:
        for attempt in range(3):
            vid = self.vid
            try:
                return await self._discard_part(idx)
            except SdError as e:
                if e.code != CODES["READONLY"] or attempt == 2:
                    raise
            if self.vid == vid:
                await self._load()

    async def _discard_part(self, idx: int) -> None:
        while idx in self._creating:
            await asyncio.shield(self._creating[idx])
        if not self.index[idx]:
            return
        fut = self._creating[idx] = asyncio.get_running_loop().create_future()
        try:  # unlink the object from our inode; the cluster drops unused objects
            await self._call(proto.Op.DISCARD_OBJ,
                             proto.ObjArgs(oid=proto.vid_to_data_oid(self.vid, idx)),
                             fenced=True)
            self.index[idx] = 0
        finally:
            del self._creating[idx]
            fut.set_result(None)

    # ------------------------------------------------------------------
    # resize

    async def truncate(self, size: int) -> None:
        """Grow the VDI to ``size`` bytes (shrinking is refused: INVALID_PARMS)."""
        if self.readonly or self.is_snapshot:
            raise sd_error("READONLY", f"VDI {self.name} is open read-only: cannot resize it")
        async with self._exclusive():
            if size < self.size:
                raise sd_error("INVALID_PARMS", f"VDI {self.name}: shrinking from {self.size} to "
                                            f"{size} bytes is not supported")
            limit = self.object_size * proto.MAX_DATA_OBJS
            if size > limit:
                raise sd_error("INVALID_PARMS", f"VDI {self.name}: {size} bytes is more than the "
                                            f"maximum {limit}")
            if size == self.size:
                return
            for attempt in range(3):
                try:
                    await self._wcall(proto.Op.WRITE_OBJ,
                                      proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                                    offset=proto.INODE_VDI_SIZE_OFF,
                                                    copies=self.inode.nr_copies),
                                      size.to_bytes(8, "little"))
                    break
                except SdError as e:  # READONLY: snapshotted under us; follow the name
                    if e.code != CODES["READONLY"] or attempt == 2:
                        raise
                    await self._load()
            self.inode.vdi_size = size
            self.index.extend([0] * (self.inode.nr_objects - len(self.index)))

    # ------------------------------------------------------------------
    # migration (lock handover)

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
