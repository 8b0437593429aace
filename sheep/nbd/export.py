"""NBD export: every VDI by name over the NBD fixed-newstyle protocol.

``sheep --nbd [HOST:]PORT`` (default 10809) lets ``qemu-img``, ``qemu-io``,
``qemu-system-*``, ``nbd-client`` and fio's nbd engine use the cluster
directly, without a Sheepdog driver in QEMU.

Theory of operation
-------------------
* **Negotiation** (fixed newstyle only; no TLS, no structured replies, no
  metadata contexts — those options are answered NBD_REP_ERR_UNSUP):
  ``NBD_OPT_LIST`` lists the VDIs (working VDIs by name, snapshots as
  ``name:tag`` or ``name@snapid``), ``NBD_OPT_INFO`` describes an export
  without opening it, ``NBD_OPT_GO`` and ``NBD_OPT_EXPORT_NAME`` open it and
  start transmission, ``NBD_OPT_ABORT`` ends the session.  Export name =
  VDI name; ``name:tag`` or ``name@snapid`` opens a snapshot, read-only
  (``NBD_FLAG_READ_ONLY``).  Export size = VDI size.
* **The wire format** is :mod:`sheep.nbd.codec` (pure functions of bytes);
  this module does the sockets, the VDIs and the locks.
* **Opening** goes through the VDI I/O engine
  (:meth:`sheep.proto.vdi_io.VdiIo.open`) over an in-process connection
  (:class:`LocalConnection`: requests run through ``sheep.server.ops.dispatch``
  on this node, exactly as if a client had sent them over TCP).  So the
  byte-range to object mapping, first-write object creation, copy-on-write
  for clones, the inode ``data_vdi_id`` update, the retry after a snapshot
  was taken under us, and the lock session (LOCK_VDI with a session id,
  lease renewal, fencing generation on every write, RELEASE_VDI) are the
  same code ``qemu_client`` runs, not a second copy of them.
* **Locking.**  A read-write export holds the VDI's exclusive lock for the
  lifetime of the connection (refused with NBD_REP_ERR_POLICY, or a closed
  connection after NBD_OPT_EXPORT_NAME, while somebody else holds it for
  longer than ``LOCK_WAIT``, the time a just-closed session needs to let go).  The
  connection is the lock session's "client connection" (``CURRENT_CONN`` of
  ``sheep.vdi.locks``); however the connection ends (NBD_CMD_DISC, EOF, the client
  killed, a protocol error, daemon shutdown), in-flight requests are finished
  and then the lock is released; if even that fails, the lease lapses after
  the grace time because nobody renews it.  Snapshots take no lock.
* **Transmission**: each request is served in its own task (many in flight,
  up to ``MAX_IN_FLIGHT`` and ``MAX_BUFFERED`` bytes of payloads and read
  buffers; past either, the next request is not read — its slot and bytes
  are taken before its payload is), replies are simple
  replies matched by handle, queued whole (so they never interleave) and
  written together once per loop iteration (one send for many).  WRITE and CREATE are acknowledged only when every replica has
  the data, so FLUSH has nothing left to do and FUA needs no extra work.
  TRIM and WRITE_ZEROES unlink whole objects from the inode (DISCARD_OBJ)
  and write zeros over partial ones (WRITE_ZEROES with NO_HOLE writes zeros
  everywhere).
* **Malformed traffic**: option errors get the protocol's error replies
  (NBD_REP_ERR_INVALID, ..._UNSUP, ..._UNKNOWN); bad requests get EINVAL,
  EPERM, ENOSPC or EOVERFLOW; a bad magic, unknown client flags, an option or
  write larger than we accept, or a stall during negotiation close the
  connection.  Nothing a client sends can take the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket

from sheep import proto
from sheep.nbd import codec as nbd
from sheep.proto.errors import CODES, SdError, error_for
from sheep.proto.failover import TRANSIENT  # HALT, AGAIN: nothing was done
from sheep.proto.vdi_io import VdiIo
from sheep.server import ops
from sheep.vdi import locks

log = logging.getLogger("sheep.nbd.export")

# ---- limits ----------------------------------------------------------------
TRANSIENT_WAIT = 30.0  # s a request retries HALT/AGAIN before the client sees EIO
MAX_IN_FLIGHT = 128  # requests in progress per connection before we stop reading
MAX_BUFFERED = 64 << 20  # bytes of payloads + read buffers in progress per connection
NEGOTIATION_TIMEOUT = 60.0
WRITE_HIGH_WATER = 64 << 20  # unsent reply bytes before we stop reading requests
RELEASE_TIMEOUT = 10.0
# A client that just disconnected does not wait for its lock to be released
# (NBD_CMD_DISC has no reply): a new open of a locked VDI retries this long
# before it is refused, so that scripts running qemu-img/qemu-io one after
# the other do not trip over the previous command's lock.
LOCK_WAIT = 2.0

_ids = itertools.count(1)


# ---------------------------------------------------------------------------
# the in-process connection the VDI I/O engine runs over


class LocalConnection:
    """The failover connection's interface, served by this sheep in-process
    (keep it in step with :class:`sheep.proto.failover.Connection`).

    Every call is a real Sheepdog request run through ``ops.dispatch`` (the
    same admission checks, handlers and error codes as over TCP); non-zero
    results raise the typed :class:`SdError`.  ``owner`` is what the lock
    module sees as the client connection (it binds lock sessions to it).
    """

    def __init__(self, sheep, owner=None):
        self.sheep = sheep
        self.owner = owner
        self.on_reconnect: list = []  # never called: an in-process gateway does not fail over

    async def connect(self) -> None:
        pass

    async def refresh_nodes(self) -> list:
        return []

    async def call(self, op: int, args=None, payload=b"", data_length: int = 0,
                   flags: int = 0, retry: bool = True, **_) -> tuple[proto.Response, bytes]:
        """One request, run here; ``retry`` (failover resends) means nothing in-process."""
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            data_length = len(payload)
        if self.owner is not None:
            locks.CURRENT_CONN.set(self.owner)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRANSIENT_WAIT
        pause = 0.05
        while True:
            req = proto.Request(op, args, flags=flags, data_length=data_length,
                                epoch=self.sheep.group.epoch)
            rsp, body = await ops.dispatch(self.sheep, req, payload)
            # HALT / AGAIN: this node briefly cut off, an object being recovered:
            # nothing was done; try again, as the failover connection does over TCP
            if rsp.result in TRANSIENT and loop.time() + pause < deadline:
                if pause == 0.05:
                    log.info("op %#x: %s; trying again for up to %.0fs", op,
                             error_for(rsp.result), TRANSIENT_WAIT)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            if rsp.result:
                raise error_for(rsp.result)
            return rsp, body

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# export names


def _snapshot_args(snapshot) -> tuple[str, int]:
    if snapshot is None:
        return "", 0
    return ("", snapshot) if isinstance(snapshot, int) else (snapshot, 0)


async def _lookup(sheep, name: str, snapshot) -> int:
    if not name or len(name.encode()) >= proto.SD_MAX_VDI_LEN:
        raise error_for(CODES["NO_VDI"])
    tag, snapid = _snapshot_args(snapshot)
    if len(tag.encode()) >= proto.SD_MAX_VDI_TAG_LEN:
        raise error_for(CODES["NO_TAG"])
    return await sheep.vdis.find(name.encode(), tag.encode(), snapid)


async def resolve(sheep, export: str) -> tuple[str, str | int | None, int]:
    """(VDI name, snapshot or None, vid) of an export; NO_VDI/NO_TAG if none."""
    last: SdError | None = None
    for name, snap in nbd.parse_export(export):
        try:
            return name, snap, await _lookup(sheep, name, snap)
        except SdError as e:
            if e.code not in (CODES["NO_VDI"], CODES["NO_TAG"]):
                raise
            last = e
    raise last


async def list_exports(sheep) -> list[str]:
    """Every live VDI as an export name (snapshots as name:tag or name@snapid)."""
    vdis = sheep.vdis
    vids = sorted(v for v, st in vdis.states.items() if not st.deleted)

    async def one(vid):
        try:
            return await vdis.read_header(vid)
        except SdError:
            return None
    out = []
    for ino in await asyncio.gather(*(one(v) for v in vids)):
        if ino is None:
            continue
        name = ino.name.rstrip(b"\0").decode(errors="replace")
        if name:
            tag = ino.tag.rstrip(b"\0").decode(errors="replace")
            out.append(nbd.export_label(name, tag, ino.snap_id, bool(ino.is_snapshot)))
    return sorted(set(out))


# ---------------------------------------------------------------------------
# one client connection


class NbdConnection:
    """One NBD client: negotiation, then transmission until it ends."""

    def __init__(self, sheep, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.sheep = sheep
        self.reader, self.writer = reader, writer
        self.id = next(_ids)
        self.peer = writer.get_extra_info("peername")
        self.vdi: VdiIo | None = None  # the open VDI during transmission
        self.export = ""
        self.readonly = False
        self.structured = False  # NBD_OPT_STRUCTURED_REPLY negotiated
        self.meta_export: str | None = None  # base:allocation selected for this export
        self.tasks: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.buffered = 0  # bytes taken by requests in progress
        self._room = asyncio.Event()
        self.closed = False
        self._out: list[bytes] = []  # replies not written yet (see _send)
        self._out_bytes = 0
        self._flush_soon = False

    def __repr__(self) -> str:
        return f"<NBD connection {self.id} from {self.peer} export {self.export!r}>"

    def close(self) -> None:
        """Drop the connection (daemon shutdown); the serve loop then cleans up."""
        self.closed = True
        self.writer.close()

    # -- life cycle ----------------------------------------------------------

    async def serve(self) -> None:
        self.sheep.connections.add(self)
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if await asyncio.wait_for(self._negotiate(), NEGOTIATION_TIMEOUT):
                await self._transmit()
        except TimeoutError:
            log.info("%s: negotiation timed out", self)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the client went away
        except RuntimeError:
            if not self.writer.is_closing():
                raise
            # uvloop: a reply written after the client closed (e.g. the end
            # of a lock wait): the client went away
        except nbd.ProtocolViolation as e:
            log.warning("%s: closing: %s", self, e)
        except Exception:  # a bug costs this connection, never the daemon
            log.exception("%s failed", self)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self.tasks:  # in-flight writes land before the lock goes
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        if self.vdi is not None:
            vdi, self.vdi = self.vdi, None
            try:
                await asyncio.wait_for(vdi.close(), RELEASE_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - the lease lapses after the grace
                log.warning("%s: releasing VDI %s failed: %s", self, vdi.name, e)
            lock_table = getattr(self.sheep, "locks", None)
            if lock_table is not None and getattr(self, "lock_sessions", None):
                with contextlib.suppress(Exception):
                    lock_table.conn_closed(self)
            log.info("%s closed", self)
        self.sheep.connections.discard(self)
        self._flush()
        self.writer.close()

    # -- negotiation -----------------------------------------------------------

    async def _negotiate(self) -> bool:
        """Option haggling; True when transmission starts, False to hang up."""
        r, w = self.reader, self.writer
        w.write(nbd.handshake())
        no_zeroes = nbd.client_flags(await r.readexactly(nbd.CLIENT_FLAGS_SIZE))
        while True:
            opt, length = nbd.option_header(await r.readexactly(nbd.OPTION_HEADER_SIZE))
            data = await r.readexactly(length) if length else b""
            if opt == nbd.OPT_EXPORT_NAME:
                try:
                    await self._open(nbd.export_name(data))
                except (nbd.Refused, SdError) as e:
                    log.info("%s: NBD_OPT_EXPORT_NAME %r refused: %s", self, data[:256], e)
                    return False  # no way to report an error here: hang up
                w.write(nbd.export_name_reply(self.vdi.size, self._tflags(), no_zeroes))
                return True
            if opt == nbd.OPT_ABORT:
                w.write(nbd.option_reply(opt, nbd.REP_ACK))
                await w.drain()
                return False
            try:
                if opt == nbd.OPT_LIST:
                    if length:
                        raise nbd.Refused(nbd.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
                    w.write(b"".join(nbd.list_reply(n) for n in await list_exports(self.sheep))
                            + nbd.option_reply(opt, nbd.REP_ACK))
                elif opt in (nbd.OPT_INFO, nbd.OPT_GO):
                    if await self._info_go(opt, data):
                        return True
                elif opt == nbd.OPT_STRUCTURED_REPLY:
                    if length:
                        raise nbd.Refused(nbd.REP_ERR_INVALID,
                                          "NBD_OPT_STRUCTURED_REPLY takes no data")
                    self.structured = True
                    w.write(nbd.option_reply(opt, nbd.REP_ACK))
                elif opt in (nbd.OPT_LIST_META_CONTEXT, nbd.OPT_SET_META_CONTEXT):
                    w.write(await self._meta_context(opt, data))
                elif opt == nbd.OPT_STARTTLS:
                    raise nbd.Refused(nbd.REP_ERR_POLICY, "TLS is not supported by this server")
                else:  # extended headers, ...
                    raise nbd.Refused(nbd.REP_ERR_UNSUP, f"option {opt} is not supported")
            except nbd.Refused as e:
                w.write(nbd.option_reply(opt, e.code, e.message.encode()))
            except SdError as e:  # cluster not ready, I/O error reading inodes, ...
                w.write(nbd.option_reply(opt, nbd.REP_ERR_UNKNOWN, f"{e}".encode()))
            await w.drain()

    async def _meta_context(self, opt: int, data: bytes) -> bytes:
        """NBD_OPT_LIST/SET_META_CONTEXT: which of our contexts (``base:allocation``)
        the queries select, for an export that exists; SET remembers it for
        that export (another export opened later has none selected)."""
        if opt == nbd.OPT_SET_META_CONTEXT:  # replaces the selection, even when it fails
            self.meta_export = None
        if not self.structured:
            raise nbd.Refused(nbd.REP_ERR_INVALID, "negotiate structured replies first")
        name, queries = nbd.meta_context_request(data)
        await self._resolve(name)
        contexts = nbd.meta_contexts(opt, queries)
        if opt == nbd.OPT_SET_META_CONTEXT:
            self.meta_export = name if contexts else None
        return nbd.meta_context_replies(opt, contexts)

    async def _info_go(self, opt: int, data: bytes) -> bool:
        name, requested = nbd.info_request(data)
        if opt == nbd.OPT_GO:
            await self._open(name)
            size, ro, desc = self.vdi.size, self.readonly, self._description()
        else:
            vname, _snap, vid = await self._resolve(name)
            ino = await self.sheep.vdis.read_header(vid)
            size, ro = ino.vdi_size, ino.is_snapshot
            desc = f"sheepdog VDI {vname} (vid {vid:#x})"
        self.writer.write(nbd.info_replies(opt, name, size, self._tflags(ro), desc, requested))
        return opt == nbd.OPT_GO

    async def _resolve(self, export: str):
        try:
            return await resolve(self.sheep, export)
        except SdError as e:
            if e.code in (CODES["NO_VDI"], CODES["NO_TAG"]):
                raise nbd.Refused(nbd.REP_ERR_UNKNOWN, f"no VDI or snapshot named {export!r}") from None
            raise

    async def _open(self, export: str) -> None:
        """Open the export for transmission, taking the lock of a writable VDI."""
        name, snap, _vid = await self._resolve(export)
        deadline = asyncio.get_running_loop().time() + LOCK_WAIT
        waited = False
        try:
            while True:
                try:
                    self.vdi = await VdiIo.open(name, snapshot=snap,
                                              conn=LocalConnection(self.sheep, owner=self))
                    break
                except SdError as e:
                    if e.code != CODES["VDI_LOCKED"] or \
                            asyncio.get_running_loop().time() > deadline:
                        raise
                    if not waited:
                        log.info("%s waits for the lock of %s: %s", self, name, e)
                    waited = True
                await asyncio.sleep(0.05)
        except SdError as e:
            if e.code == CODES["VDI_LOCKED"]:
                raise nbd.Refused(nbd.REP_ERR_POLICY, f"VDI {name} is locked: {e}") from None
            if e.code in (CODES["NO_VDI"], CODES["NO_TAG"]):
                raise nbd.Refused(nbd.REP_ERR_UNKNOWN, f"no VDI or snapshot named {export!r}") from None
            raise
        self.export = export
        self.readonly = snap is not None or bool(self.vdi.inode.is_snapshot)
        log.info("%s opened VDI %s (vid %#x, %d bytes, %s, lock generation %d)", self, name,
                 self.vdi.vid, self.vdi.size, "read-only" if self.readonly else "read-write",
                 getattr(self.vdi, "generation", 0))

    @property
    def block_status(self) -> bool:
        """``base:allocation`` was selected for the export in use."""
        return self.meta_export is not None and self.meta_export == self.export

    def _description(self) -> str:
        return f"sheepdog VDI {self.vdi.name} (vid {self.vdi.vid:#x})"

    def _tflags(self, readonly: bool | None = None) -> int:
        return nbd.transmission_flags(self.readonly if readonly is None else readonly,
                                      self.structured)

    # -- transmission ------------------------------------------------------------

    async def _transmit(self) -> None:
        r, w = self.reader, self.writer
        transport = w.transport
        loop = asyncio.get_running_loop()
        while not self.closed:
            req = nbd.request(await r.readexactly(nbd.REQUEST_SIZE))
            cmd, length = req.cmd, req.length
            if cmd == nbd.CMD_DISC:
                return
            payload = b""
            if cmd == nbd.CMD_WRITE and length > nbd.MAX_REQUEST:
                # we cannot buffer it and cannot resynchronise without it
                self._send(req.handle, nbd.EOVERFLOW)
                raise nbd.ProtocolViolation(f"write of {length} bytes")
            charge = min(length, nbd.MAX_REQUEST) if cmd in (nbd.CMD_WRITE, nbd.CMD_READ) else 0
            await self.slots.acquire()
            while self.buffered and self.buffered + charge > MAX_BUFFERED:
                self._room.clear()
                await self._room.wait()
            self.buffered += charge
            if cmd == nbd.CMD_WRITE:
                try:
                    payload = await r.readexactly(length)
                except BaseException:
                    self.buffered -= charge
                    self.slots.release()
                    raise
            task = loop.create_task(self._serve(req, payload))
            task.charge = charge
            self.tasks.add(task)
            task.add_done_callback(self._done)
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await w.drain()

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.buffered -= task.charge
        self._room.set()
        self.slots.release()

    def _send(self, handle: int, err: int, data=None) -> None:
        """Queue a simple reply; the replies of one loop iteration go out in one write."""
        self._out.append(nbd.simple_reply(err, handle))
        if data and not err:
            self._out.append(data)
            self._out_bytes += len(data)
        self._queued()

    def _send_read(self, req: nbd.Request, data) -> None:
        """Queue the data of a read: a simple reply, or with structured
        replies one final chunk (``NONE`` for a read of no bytes)."""
        if not self.structured:
            self._send(req.handle, 0, data)
            return
        if data:
            self._out.append(nbd.structured_read(req.handle, req.offset, len(data)))
            self._out.append(data)
            self._out_bytes += len(data)
        else:
            self._out.append(nbd.structured_done(req.handle))
        self._queued()

    def _send_error(self, req: nbd.Request, err: int, why: str) -> None:
        """Queue an error reply: with structured replies an ``ERROR`` chunk
        carrying ``why`` (a read must never get a simple reply then), else a
        simple reply."""
        if not self.structured:
            self._send(req.handle, err)
            return
        self._out.append(nbd.structured_error(req.handle, err, why))
        self._queued()

    def _queued(self) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        out, self._out = self._out, []
        big, self._out_bytes = self._out_bytes, 0
        if not out or self.writer.is_closing():
            return
        if len(out) == 1:
            self.writer.write(out[0])
        elif big <= 256 * 1024:  # one copy is cheaper than one more send
            self.writer.write(b"".join(out))
        else:
            self.writer.writelines(out)

    async def _serve(self, req: nbd.Request, payload: bytes) -> None:
        vdi = self.vdi
        cmd, offset, length = req.cmd, req.offset, req.length
        try:
            err = nbd.request_errno(req, vdi.size, self.readonly, self.structured,
                                    self.block_status)
            if err:
                self._send_error(req, err, "request refused")
                return
            if cmd == nbd.CMD_READ:
                data = await vdi.pread(offset, length) if length else b""
                self._send_read(req, data)
                return
            if cmd == nbd.CMD_BLOCK_STATUS:
                index = await vdi.allocation_index(offset, length)
                extents = nbd.allocation(index, vdi.object_size, offset, length,
                                         one=bool(req.flags & nbd.CMD_FLAG_REQ_ONE))
                self._out.append(nbd.block_status_reply(req.handle, extents))
                self._queued()
                return
            if cmd == nbd.CMD_WRITE and length:
                await vdi.pwrite(offset, payload)
            elif cmd in (nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES) and length:
                unmap = cmd == nbd.CMD_TRIM or not req.flags & nbd.CMD_FLAG_NO_HOLE
                await vdi.pwrite_zeroes(offset, length, unmap)
            # CMD_FLUSH: every acknowledged write is already on every replica
            self._send(req.handle, 0)
        except Exception as e:  # noqa: BLE001 - one failed request, not the connection
            err = nbd.errno_for(e)
            if err == nbd.EIO:
                log.warning("%s: command %d at %d+%d failed: %r", self, cmd, offset, length, e)
            self._send_error(req, err, str(e))


# ---------------------------------------------------------------------------


async def start_server(sheep) -> asyncio.base_events.Server:
    """Listen on ``cfg.nbd`` (host, port); raise OSError if taken."""
    host, port = sheep.cfg.nbd

    async def on_client(reader, writer):
        await NbdConnection(sheep, reader, writer).serve()

    server = await asyncio.start_server(on_client, host, port, reuse_address=True,
                                        backlog=256, limit=1 << 20)
    log.info("exporting VDIs over NBD on %s:%d", host, port)
    return server
