"""VDI access in the style of QEMU's block driver (asyncio).

:func:`bdrv_open` (or :meth:`AsyncVdi.open`) opens a VDI by name, reads its
inode, and the ``bdrv_*`` methods turn byte ranges into object I/O, sending
what QEMU's sheepdog driver sends (docs/protocol.md §8.1):

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
* resize grows ``vdi_size`` in the inode header (shrinking is refused);
* snapshots: create (tag + vm state fields into the header, then NEW_VDI
  snapid 1: our VDI becomes the snapshot, we continue on the new working
  VDI, the lock follows), goto (DEL_VDI of the working VDI, NEW_VDI of a
  clone of the snapshot, then the lock is taken on it), delete (DEL_VDI with
  name + tag/snapid), list (READ_VDIS, inode headers from the name's hash on);
* :func:`create` makes a VDI, or a clone when given a backing image, which
  must be a snapshot (as QEMU's driver checks).

Locking (:mod:`qemu_client.session`): a read-write open holds the VDI's
exclusive lock for its lifetime; every write — and every read — carries the
lock's generation so that the cluster can fence us if the lock was taken
away (FencedError).  Reads of objects our cached inode shows as never
written are answered from that cache only while our lock is confirmed
(a request that proved it succeeded less than ``CONFIRM_WINDOW`` seconds
ago); otherwise the gateway is asked first — so a writer whose lock was
taken over (its gateway cut off, an operator's unlock) never reads zeros
where the new holder wrote.

Gateway failover (:mod:`qemu_client.connection`): when the gateway dies the
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
from dataclasses import dataclass

from qemu_client.connection import Connection, GatewayLost
from qemu_client.session import InactiveError, LockSession
from sheep import proto
from sheep.proto.errors import CODES, FencedError, SdError, error_for, sd_error

log = logging.getLogger("qemu_client.block")

# open flags (QEMU's values)
BDRV_O_RDONLY = 0x0000
BDRV_O_RDWR = 0x0002
BDRV_O_NOCACHE = 0x0020  # accepted and ignored: writes are always write-through
BDRV_O_INACTIVE = 0x0800
# request flags of bdrv_pwrite_zeroes (QEMU's values)
BDRV_REQ_MAY_UNMAP = 0x4
BDRV_SECTOR_SIZE = 512

NODE_REFRESH = 30.0  # seconds between node list refreshes (for failover)
# How long a proof that we hold the lock is trusted for reads answered from
# the cached inode alone.  Below the time the cluster needs to take a lock
# away from a live writer: its gateway stops serving ~0.5 s after losing the
# cluster (membership lease) and is removed only later (zmq: 1 s; ZooKeeper:
# the session timeout).
CONFIRM_WINDOW = 0.25



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


def _parse_snapshot(snapshot, digits: bool = True) -> tuple[int, str]:
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


class AsyncVdi:
    """An open VDI (asyncio).  Use :func:`bdrv_open` or :meth:`open`."""

    def __init__(self, conn, name: str):
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
        # metadata operations (snapshots, resize) run with no I/O in progress
        self._ops = 0
        self._ops_idle: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._meta: asyncio.Lock | None = None
        self._refresher: asyncio.Task | None = None
        self._confirmed_at = float("-inf")  # loop time a request proving our lock was sent
        self._confirming: asyncio.Future | None = None
        self._taking_back: asyncio.Future | None = None
        self.closed = False

    @property
    def _failover(self) -> bool:
        return isinstance(self.conn, Connection) and self.conn.failover_enabled

    # ------------------------------------------------------------------
    # open / close

    @classmethod
    async def open(cls, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                   readonly: bool = False, inactive: bool = False,
                   snapshot: str | int | None = None, session_id: int | None = None,
                   renew_interval: float | None = None, conn=None,
                   nodes: list[tuple[str, int]] | None = None,
                   failover: bool = True) -> AsyncVdi:
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
            self.snapid, self.tag = _parse_snapshot(snapshot, digits=False)
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
    # failover support

    async def _reattach(self) -> None:
        """Run by the connection after a failover, before anything is resent."""
        s = self.session
        if self.generation and s.supported and s.enforced:
            # Re-attach our hold through the new gateway.  If our old gateway's
            # departure dropped it, the cluster gives it back (new generation)
            # only if nobody was granted the VDI meanwhile; otherwise FENCED
            # reaches the caller — never silently re-take a lock someone else
            # may have used (their data would be overwritten).
            grant = await s.lock(self.name, "", 0, proto.LOCK_MODE_REATTACH,
                                 generation=self.generation)
            if grant.generation != self.generation:
                log.warning("VDI %s: lock taken back after failover, generation %d -> %d",
                            self.name, self.generation, grant.generation)
            else:
                log.info("VDI %s: lock of generation %d re-attached", self.name,
                         grant.generation)
            self.generation = grant.generation
        elif s.supported and s.enforced and self.mode in (proto.LOCK_MODE_READ,
                                                          proto.LOCK_MODE_INACTIVE):
            await s.lock(self.name, self.tag, self.snapid, self.mode)

    async def _refresh_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_REFRESH)
            try:
                await self.conn.refresh_nodes()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next time
                log.debug("node list refresh failed: %s", e)

    def _fence_flags(self, args: proto.ObjArgs) -> int:
        if self.generation:
            proto.set_fence(args, self.generation)
            return proto.SD_FLAG_CMD_SESSION
        proto.set_fence(args, 0)
        return 0

    async def _call(self, op: int, args=None, payload=b"", data_length: int = 0,
                    flags: int = 0, fenced: bool = False, retry: bool = True):
        try:
            return await self._call_once(op, args, payload, data_length, flags, fenced, retry)
        except FencedError:
            if not (fenced and self.generation):
                raise
            sent = getattr(args, "pad", 0)  # the generation this request carried
            # Sent with a generation we have replaced since (a failover, a take
            # back by another request): just send it again with the new one.
            # Else our gateway may have dropped out of the cluster for a moment
            # (and its locks with it) while our connection to it stayed up:
            # take the lock back if nobody was granted the VDI since.  Anything
            # else (a takeover, an operator's unlock) stays FENCED.
            if sent == self.generation and not await self._take_back(sent):
                raise
            return await self._call_once(op, args, payload, data_length, flags, fenced, retry)

    async def _call_once(self, op, args, payload, data_length, flags, fenced, retry):
        sent = asyncio.get_running_loop().time()
        if not self._failover:  # e.g. sheep.nbd's in-process connection
            if fenced:
                flags |= self._fence_flags(args)
            out = await self.conn.call(op, args, payload, data_length, flags)
        else:
            prepare = (lambda: self._fence_flags(args)) if fenced else None
            out = await self.conn.call(op, args, payload, data_length, flags,
                                       retry=retry, prepare=prepare)
        if fenced and self.generation:  # the cluster accepted our generation
            self._confirmed_at = max(self._confirmed_at, sent)
        return out

    async def _take_back(self, gen: int) -> bool:
        """Re-attach our lock of generation ``gen`` through the current gateway
        (one attempt shared by every request that was fenced meanwhile); True
        if we hold it again."""
        s = self.session
        if not (s.supported and s.enforced):
            return False
        if self._taking_back is None:
            self._taking_back = asyncio.get_running_loop().create_task(self._take_back_once(gen))
        fut = self._taking_back
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._taking_back is fut:
                self._taking_back = None

    async def _take_back_once(self, gen: int) -> bool:
        if self.generation != gen:  # somebody took it back already
            return True
        try:
            grant = await self.session.lock(self.name, "", 0, proto.LOCK_MODE_REATTACH,
                                            generation=gen)
        except FencedError:
            return False
        log.warning("VDI %s: lock taken back through the same gateway, generation %d -> %d",
                    self.name, gen, grant.generation)
        self.generation = grant.generation
        return True

    def _needs_confirmation(self) -> bool:
        s = self.session
        return (s.supported and s.enforced and not self.is_snapshot
                and (self.generation or self.mode == proto.LOCK_MODE_READ))

    async def _confirm_lock(self) -> None:
        """Before answering a read from the cached inode alone: make sure our
        lock still stands (FencedError if not).  Concurrent readers share one
        confirmation."""
        loop = asyncio.get_running_loop()
        if not self._needs_confirmation() or loop.time() - self._confirmed_at < CONFIRM_WINDOW:
            return
        if self._confirming is None:
            self._confirming = loop.create_task(self._confirm_once())
        fut = self._confirming
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done() and self._confirming is fut:
                self._confirming = None

    async def _confirm_once(self) -> None:
        sent = asyncio.get_running_loop().time()
        gen = self.generation
        if not await self.session.confirm(self.vid, gen):
            if not (gen and await self._take_back(gen)):
                raise error_for(CODES["FENCED"], f"VDI {self.name}: our lock (generation "
                                                 f"{gen}) is gone; the VDI may have another writer")
        self._confirmed_at = max(self._confirmed_at, sent)

    async def _wcall(self, op: int, args: proto.ObjArgs, payload: bytes, flags: int = 0):
        """A write carrying our lock generation, so that the cluster can fence it."""
        return await self._call(op, args, payload, flags=flags, fenced=True)

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

    @property
    def is_snapshot(self) -> bool:
        return bool(self.inode.is_snapshot)

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

    @contextlib.asynccontextmanager
    async def _io(self, write: bool):
        if self.closed:
            raise ConnectionError(f"VDI {self.name} is closed")
        if not self.active:
            raise InactiveError(message=f"VDI {self.name} is inactive: no I/O before activate()")
        if write and self.readonly:
            raise error_for(CODES["READONLY"], f"VDI {self.name} is open read-only")
        while not self._gate.is_set():
            await self._gate.wait()
        self._ops += 1
        self._ops_idle.clear()
        if write:
            self._writes += 1
            self._idle.clear()
        try:
            yield
        finally:
            self._ops -= 1
            if not self._ops:
                self._ops_idle.set()
            if write:
                self._writes -= 1
                if not self._writes:
                    self._idle.set()

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
            out = bytearray(length)

            async def part(idx, o, pos, n):
                owner = self.index[idx]
                if owner:
                    _, data = await self._call(
                        proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(owner, idx),
                                                         offset=o, copies=self.inode.nr_copies),
                        data_length=n, fenced=True)
                    out[pos:pos + n] = data
                else:  # never written, says our cache: true only while we hold the lock
                    await self._confirm_lock()
            await asyncio.gather(*(part(*p) for p in self._split(offset, length)))
            return bytes(out)

    async def pwrite(self, offset: int, data) -> None:
        """Write ``data`` at ``offset``; returns once every replica has it."""
        async with self._io(True):
            data = bytes(data)
            self._check(offset, len(data))
            await asyncio.gather(*(self._write_retry(idx, o, data[pos:pos + n])
                                   for idx, o, pos, n in self._split(offset, len(data))))

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
    # snapshots

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
            try:
                rsp, _ = await self._call(proto.Op.NEW_VDI, args,
                                          payload=proto.vdi_name_payload(self.name),
                                          retry=False)
                new = rsp.args.vdi_id
            except GatewayLost:
                new = await self._resent_new_vdi(args, old)
            await self._load(new)
            return await self._snapshot_info(old)

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
        snapid, tag = _parse_snapshot(snapshot)
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
            try:
                rsp, _ = await self._call(proto.Op.NEW_VDI, args,
                                          payload=proto.vdi_name_payload(self.name),
                                          retry=False)
                new = rsp.args.vdi_id
            except GatewayLost:
                new = await self._resent_new_vdi(args, base)
            if deleted and self.session.enforced:
                # the old working VDI (and its lock) is gone: lock the new one
                # (a rebase moved our lock to the new working VDI already)
                grant = await self.session.lock(self.name, "", 0, proto.LOCK_MODE_WRITE)
                self.generation = grant.generation
            await self._load(new)

    async def snapshot_delete(self, snapshot_id: str | int | None = None,
                              name: str | None = None) -> None:
        """Delete a snapshot of this VDI, given by id or tag (``name``)."""
        snapid, tag = _parse_snapshot(snapshot_id)
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

    # ------------------------------------------------------------------
    # QEMU block-driver names

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
            snapid, tag = _parse_snapshot(snapshot, digits=False)
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
        snapid, tag = _parse_snapshot(snapshot)
        await conn.call(proto.Op.DEL_VDI, proto.VdiArgs(snapid=snapid),
                        payload=proto.vdi_name_payload(name, tag if snapshot else None))
    finally:
        conn.close()
