"""The ``local`` membership driver: many sheep processes on one machine.

``-c local[:PATH]``; PATH is a directory (default
``/tmp/sheepdog-local-cluster``, created if missing).  Each PATH is one
independent cluster.

Theory of operation
-------------------
``PATH/log`` is an append-only event log, the single source of total order.
Appends happen only while holding an exclusive ``flock`` on ``PATH/lock``,
and only after the appender has read (caught up with) the whole log, so
every decision is taken on the latest view.  A record is framed
``[u32 length][u32 crc32][u64 seq][u8 kind][fields]`` and written with one
``write`` on an ``O_APPEND`` fd; readers never consume a record that is
incomplete, fails its checksum or has an unexpected seq (it may still be
being written).  Under the lock such a tail can only be left by a writer
killed mid-write, so the next appender truncates it away.

Kinds: JOIN_REQ(ident, node, opaque); JOIN_ACK(ident, accept, reply,
members of the new view); LEAVE(ident); NOTIFY(ident, msg).  Replaying
the log from its start yields the current view and the pending join
requests; a member delivers every record after its own accepting JOIN_ACK.

Liveness: every process (member or joiner) holds an exclusive flock on
``PATH/members/<stem>.alive`` for its whole life.  If a non-blocking flock
on that file succeeds, or the file is gone, its owner is dead: the kernel
drops flocks when a process dies, however it dies, with no pid reuse issue.
Every ~200 ms each process tests the members of its view; a dead one is
removed by appending LEAVE (under the lock, so exactly one LEAVE).

Duties (re-checked under the lock before acting):
* the master (``view[0]``) answers JOIN_REQs in log order: it calls its own
  ``check_join`` for a live joiner, and rejects a dead joiner silently;
* when the view is empty, the oldest live pending joiner answers itself and
  becomes master (dead members are LEAVEd first, by anyone who notices);
* a joiner that finds nobody alive (no live member, no live pending joiner)
  truncates the log first: nobody alive reads it, so the cluster restarts
  from an empty log and the log does not grow forever.

Wake-ups: after appending, a process sends a 1-byte datagram to every
process that has an ``.alive`` file (Linux abstract UNIX socket named from
PATH and the stem; a socket file on other systems), whose loop reads the
log at once.  A 100 ms poll (one ``fstat`` when idle) is the fallback.

Durability is against process death, not host crash: no fsync (when the
host dies every member dies with it).  A hung-but-alive process is not
detected as failed.

Serving (``may_serve``): a member serves while it is joined and its driver
is not closed.  Membership ends only when the process dies (its flock goes
with it), leaves, or fails: a process that is alive, even frozen, is never
removed, so there is no lease to run out.

Failure: a callback that raises makes the driver close itself at once (its
``.alive`` file goes, so every peer removes it at its next liveness test)
and call ``on_driver_failure`` (base.py, "Callbacks must not raise").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import struct
import sys
import time
import zlib

from .base import ClusterDriver, ClusterEvents, JoinRejected, Member

log = logging.getLogger(__name__)

DEFAULT_PATH = "/tmp/sheepdog-local-cluster"
POLL_INTERVAL = 0.1      # seconds between log polls without a wake-up
LIVENESS_INTERVAL = 0.2  # seconds between liveness tests of the view

JOIN_REQ, JOIN_ACK, LEAVE, NOTIFY = 1, 2, 3, 4
_FRAME = struct.Struct("<II")   # payload length, crc32(payload)
_HEAD = struct.Struct("<QB")    # seq, kind
_FIELD = struct.Struct("<I")    # field length


def encode_record(seq: int, kind: int, fields: list[bytes]) -> bytes:
    """One framed log record."""
    parts = [_HEAD.pack(seq, kind)]
    for f in fields:
        parts += [_FIELD.pack(len(f)), f]
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(buf: bytes, seq: int) -> tuple[list[tuple[int, list[bytes]]], int]:
    """Parse the valid records at the start of ``buf`` (the first must carry
    ``seq``); returns ``([(kind, fields)], bytes consumed)``."""
    out: list[tuple[int, list[bytes]]] = []
    pos = 0
    while len(buf) - pos >= _FRAME.size:
        length, crc = _FRAME.unpack_from(buf, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if end > len(buf) or length < _HEAD.size:
            break
        payload = buf[start:end]
        if zlib.crc32(payload) != crc:
            break
        rseq, kind = _HEAD.unpack_from(payload)
        if rseq != seq:
            break
        fields, p = [], _HEAD.size
        while p + _FIELD.size <= length:
            (n,) = _FIELD.unpack_from(payload, p)
            fields.append(payload[p + _FIELD.size:p + _FIELD.size + n])
            p += _FIELD.size + n
        out.append((kind, fields))
        seq += 1
        pos = end
    return out, pos


def _stem(ident: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ident)[:40]
    return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


class LocalDriver(ClusterDriver):
    """Membership among processes sharing the directory ``option`` (or
    :data:`DEFAULT_PATH`).  See the module docstring for the protocol."""

    name = "local"

    def __init__(self, option: str, events: ClusterEvents) -> None:
        super().__init__(option, events)
        self.dir = os.path.abspath(option or DEFAULT_PATH)
        self.members_dir = os.path.join(self.dir, "members")
        self._cluster_tag = hashlib.sha1(self.dir.encode()).hexdigest()[:12]
        self.me: Member | None = None
        self.view: list[Member] = []                         # oldest first
        self.pending: dict[str, tuple[Member, bytes]] = {}   # log order
        self.joined = False
        self._closed = False
        self._log_fd = self._lock_fd = self._alive_fd = -1
        self._offset = 0   # end of the last consumed record
        self._seq = 0      # seq of the next record
        self._sock: socket.socket | None = None
        self._sock_path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._join_fut: asyncio.Future | None = None
        self._last_liveness = 0.0
        self._release_task: asyncio.Task | None = None
        self._fail_task: asyncio.Task | None = None

    # ---- public API -------------------------------------------------------

    async def join(self, me: Member, opaque: bytes) -> None:
        if self.me is not None:
            raise RuntimeError("join() may be called only once per driver")
        self.me = me
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._join_fut = self._loop.create_future()
        try:
            os.makedirs(self.members_dir, exist_ok=True)
            await self._create_alive()
            self._open_socket()
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
            self._log_fd = os.open(os.path.join(self.dir, "log"), flags | os.O_APPEND, 0o644)
            self._lock_fd = os.open(os.path.join(self.dir, "lock"), flags, 0o644)
            with self._locked():
                self._catch_up()
                others = [m.ident for m in self.view] + list(self.pending)
                if not any(self._is_alive(i) for i in others):
                    self._reset()
                self._append(JOIN_REQ, [me.ident.encode(), me.node, opaque])
                self._catch_up()
                self._duties_locked()
            self._broadcast()
            self._task = self._loop.create_task(self._run(), name=f"local-cluster {me.ident}")
            await self._join_fut
        except BaseException:
            await self._shutdown()
            raise

    async def leave(self) -> None:
        if not self.joined or self._closed:
            raise RuntimeError("leave() needs a joined member")
        with self._locked():
            self._catch_up()
            if self.joined:
                self._append(LEAVE, [self.me.ident.encode()])
        self.joined = False
        self._broadcast()
        await self._shutdown()

    async def notify(self, msg: bytes) -> None:
        if not self.joined or self._closed:
            raise RuntimeError("notify() needs a joined member")
        with self._locked():
            self._catch_up()
            if not self.joined:
                raise RuntimeError("this process is no longer a member")
            self._append(NOTIFY, [self.me.ident.encode(), msg])
        self._wake.set()
        self._broadcast()

    async def close(self) -> None:
        await self._shutdown()

    def may_serve(self) -> bool:
        return self.joined and not self._closed

    # ---- files, locks and sockets -----------------------------------------

    def _alive_path(self, ident: str) -> str:
        return os.path.join(self.members_dir, _stem(ident) + ".alive")

    async def _create_alive(self) -> None:
        """Create and lock our .alive file; guards against a liveness tester
        unlinking it between our open and our flock."""
        path = self._alive_path(self.me.ident)
        for _ in range(200):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                st = os.stat(path)
                if os.path.samestat(st, os.fstat(fd)):
                    os.ftruncate(fd, 0)
                    os.write(fd, self.me.ident.encode() + b"\n")
                    self._alive_fd = fd
                    return
            except (BlockingIOError, FileNotFoundError):
                pass  # a tester holds it for an instant, or just unlinked it
            os.close(fd)
            await asyncio.sleep(0.01)
        raise RuntimeError(f"cannot lock {path}: ident {self.me.ident!r} in use?")

    def _is_alive(self, ident: str) -> bool:
        """True when the process owning ``ident`` still runs (or may run)."""
        if ident == self.me.ident:
            return not self._closed
        try:
            fd = os.open(self._alive_path(ident), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _reap(self, path: str) -> None:
        """Remove a dead process's .alive (and socket) file."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path[: -len(".alive")] + ".sock")
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)

    def _sock_addr(self, stem: str) -> str:
        if sys.platform.startswith("linux"):
            return f"\0sheepdog-local-{self._cluster_tag}-{stem}"
        return os.path.join(self.members_dir, stem + ".sock")

    def _open_socket(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        addr = self._sock_addr(_stem(self.me.ident))
        try:
            if not addr.startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr)
                self._sock_path = addr
            sock.bind(addr)
        except OSError as e:   # e.g. path too long: rely on polling
            log.warning("local cluster: no wake-up socket (%s); polling only", e)
            sock.close()
            return
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._on_datagram)

    def _on_datagram(self) -> None:
        with contextlib.suppress(OSError):
            while self._sock.recv(64):
                pass
        self._wake.set()

    def _broadcast(self) -> None:
        """Wake every process that has an .alive file (best effort)."""
        if self._sock is None:
            return
        mine = _stem(self.me.ident)
        try:
            names = os.listdir(self.members_dir)
        except OSError:
            return
        for name in names:
            if name.endswith(".alive") and name[:-6] != mine:
                with contextlib.suppress(OSError):
                    self._sock.sendto(b"!", self._sock_addr(name[:-6]))

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ---- the log ----------------------------------------------------------

    def _append(self, kind: int, fields: list[bytes]) -> None:
        """Append one record; the lock is held and the log fully consumed."""
        size = os.fstat(self._log_fd).st_size
        if size > self._offset:   # left by a writer killed mid-write
            log.warning("local cluster: dropping %d bytes of torn log tail", size - self._offset)
            os.ftruncate(self._log_fd, self._offset)
        view = memoryview(encode_record(self._seq, kind, fields))
        while view:
            view = view[os.write(self._log_fd, view):]

    def _reset(self) -> None:
        """Restart the cluster from an empty log (lock held, nobody alive)."""
        os.ftruncate(self._log_fd, 0)
        self._offset = self._seq = 0
        self.view, self.pending = [], {}
        mine = self._alive_path(self.me.ident)
        for name in os.listdir(self.members_dir):
            path = os.path.join(self.members_dir, name)
            if name.endswith(".alive") and path != mine:
                self._reap(path)

    def _catch_up(self) -> None:
        """Consume (and deliver) every complete record after our offset."""
        size = os.fstat(self._log_fd).st_size
        if size < self._offset:
            log.error("local cluster: log %s shrank under a live reader", self.dir)
            return
        if size == self._offset:
            return
        buf = os.pread(self._log_fd, size - self._offset, self._offset)
        records, used = decode_records(buf, self._seq)
        self._offset += used
        self._seq += len(records)
        for kind, fields in records:
            self._apply(kind, fields)

    def _apply(self, kind: int, f: list[bytes]) -> None:
        me = self.me.ident
        ident = f[0].decode()
        if kind == JOIN_REQ:
            self.pending[ident] = (Member(f[1], ident), f[2])
        elif kind == JOIN_ACK:
            self.pending.pop(ident, None)
            accepted, reply = f[1] == b"\1", f[2]
            if accepted:
                self.view = [Member(f[i + 1], f[i].decode()) for i in range(3, len(f), 2)]
                joined = next(m for m in self.view if m.ident == ident)
                if ident == me and not self.joined:
                    self.joined = True
                    self._deliver("on_join", joined, list(self.view), reply)
                    if not self._join_fut.done():
                        self._join_fut.set_result(None)
                elif self.joined:
                    self._deliver("on_join", joined, list(self.view), reply)
            elif ident == me and not self.joined and not self._join_fut.done():
                self._join_fut.set_exception(JoinRejected(reply))
        elif kind == LEAVE:
            left = next((m for m in self.view if m.ident == ident), None)
            if left is not None:
                self.view.remove(left)
                if ident == me:
                    self.joined = False
                elif self.joined:
                    self._deliver("on_leave", left, list(self.view))
        elif kind == NOTIFY:
            if self.joined and any(m.ident == ident for m in self.view):
                sender = next(m for m in self.view if m.ident == ident)
                self._deliver("on_notify", sender, f[1])

    def _deliver(self, name: str, *args) -> None:
        if self._closed:
            return
        try:
            getattr(self.events, name)(*args)
        except Exception as exc:  # noqa: BLE001 - the member is failed, see base.py
            self._fail(name, exc)

    def _fail(self, name: str, exc: BaseException) -> None:
        """A callback raised: from now on deliver nothing, close abruptly (peers
        see a failure), then tell the events object."""
        if self._closed:
            return
        log.error("local cluster: %s: %s raised %r; the member is failed: closing the driver",
                  self.me.ident, name, exc, exc_info=exc)
        self._closed, self.joined = True, False
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(exc)
            self._join_fut.exception()   # join() re-raises it when it awaits
        self._fail_task = self._loop.create_task(self._died(exc))

    # ---- duties -----------------------------------------------------------

    def _check_join(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        try:
            accept, reply = self.events.check_join(joiner, opaque)
            return bool(accept), bytes(reply)
        except Exception:
            log.exception("local cluster: check_join raised; rejecting %s", joiner.ident)
            return False, b""

    def _ack(self, joiner: Member, accept: bool, reply: bytes, members: list[Member]) -> None:
        fields = [joiner.ident.encode(), b"\1" if accept else b"\0", reply]
        for m in members if accept else []:
            fields += [m.ident.encode(), m.node]
        self._append(JOIN_ACK, fields)
        self._catch_up()

    def _first_live_pending(self) -> str | None:
        return next((i for i in self.pending if self._is_alive(i)), None)

    def _duty_due(self, check_liveness: bool) -> bool:
        """Cheap test (no lock) whether ``_duties_locked`` has work."""
        me = self.me.ident
        if self.joined and self.view and self.view[0].ident == me and self.pending:
            return True
        if not self.view and not self.joined and me in self.pending:
            return self._first_live_pending() == me
        return check_liveness and any(
            m.ident != me and not self._is_alive(m.ident) for m in self.view)

    def _duties_locked(self) -> None:
        """Remove dead members, then answer join requests if it is our turn.
        Lock held and log consumed."""
        me = self.me.ident
        while not self._closed:
            dead = [m for m in self.view if m.ident != me and not self._is_alive(m.ident)]
            if dead:
                for m in dead:
                    if self._closed:   # a callback failed in the previous round
                        return
                    self._append(LEAVE, [m.ident.encode()])
                    self._catch_up()
                    self._reap(self._alive_path(m.ident))
                continue
            if self.joined and self.view[0].ident == me and self.pending:
                ident, (joiner, opaque) = next(iter(self.pending.items()))
                if any(m.ident == ident for m in self.view):
                    self._ack(joiner, False, b"ident already a member", [])
                elif not self._is_alive(ident):
                    self._ack(joiner, False, b"joiner died", [])
                    self._reap(self._alive_path(ident))
                else:
                    accept, reply = self._check_join(joiner, opaque)
                    self._ack(joiner, accept, reply, self.view + [joiner])
                continue
            if not self.view and not self.joined and me in self.pending \
                    and self._first_live_pending() == me:
                joiner, opaque = self.pending[me]
                accept, reply = self._check_join(joiner, opaque)
                self._ack(joiner, accept, reply, [joiner])
                continue
            return

    # ---- background loop --------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self._tick()
            except Exception:
                log.exception("local cluster: tick failed")

    def _tick(self) -> None:
        if self._closed or not (self.joined or not self._join_fut.done()):
            return
        self._catch_up()
        now = time.monotonic()
        check = now - self._last_liveness >= LIVENESS_INTERVAL
        if check:
            self._last_liveness = now
        if self._duty_due(check):
            with self._locked():
                self._catch_up()
                self._duties_locked()
            self._broadcast()

    async def _shutdown(self) -> None:
        """Stop and release everything (once; concurrent callers all wait)."""
        self._closed = True
        self.joined = False
        if self._release_task is None:
            loop = self._loop or asyncio.get_running_loop()
            self._release_task = loop.create_task(self._release())
        await asyncio.shield(self._release_task)

    async def _release(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(ConnectionError("cluster driver closed"))
            self._join_fut.exception()   # mark retrieved
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            if self._sock_path:
                with contextlib.suppress(OSError):
                    os.unlink(self._sock_path)
        if self._alive_fd >= 0:   # unlink while locked: peers see ENOENT = dead
            with contextlib.suppress(OSError):
                os.unlink(self._alive_path(self.me.ident))
        for name in ("_log_fd", "_lock_fd", "_alive_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
