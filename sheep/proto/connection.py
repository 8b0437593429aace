"""Client connections speaking the Sheepdog protocol.

Two flavours over the same codec (``sheep.proto``):

* :class:`AsyncConnection` — asyncio, many requests in flight on one TCP
  connection, replies matched to requests by ``id`` (replies may arrive in any
  order).  Used by the gateway to talk to peers, by qemu_client and the bench.
* :class:`BlockingConnection` — a plain socket, one request at a time.  Used
  by collie.

Guarantees: a request's payload is sent iff the WRITE flag is set (docs/protocol.md
§1); the reply payload returned is exactly ``rsp.data_length`` bytes; if the
connection breaks, every outstanding request fails with
:class:`ConnectionError` (never hangs, never gets another request's reply).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct

from sheep import proto
from sheep.proto.framer import Framer

_RSP_DLEN = struct.Struct("<I")  # data_length at offset 12
_RSP_ID = struct.Struct("<I")  # id at offset 8

# a connection whose peer does not read (a stopped sheep) buffers at most this
# much before senders wait: memory stays bounded however long the peer stalls
SEND_HIGH_WATER = 8 << 20


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, conn: "AsyncConnection"):
        self.conn = conn
        self.framer = Framer(lambda hdr: _RSP_DLEN.unpack_from(hdr, 12)[0], self._frame)
        self.transport: asyncio.Transport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=SEND_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data):
        self.framer.feed(data)

    def _frame(self, hdr: bytes, body) -> None:
        fut = self.conn._pending.pop(_RSP_ID.unpack_from(hdr, 8)[0], None)
        if fut is not None and not fut.done():
            fut.set_result((hdr, body))

    def connection_lost(self, exc):
        self.can_write.set()
        self.conn._fail_all(exc or ConnectionError("connection closed by peer"))


class AsyncConnection:
    """One pipelined connection to a sheep (see module docstring)."""

    def __init__(self, host: str, port: int, stall_timeout: float | None = None):
        self.host, self.port = host, port
        self._pending: dict[int, asyncio.Future] = {}
        self._sent: dict[int, float] = {}  # id -> loop time sent (only with a stall timeout)
        self._ids = itertools.count(1)
        self._proto: _ClientProtocol | None = None
        self.closed = False
        self.stall_timeout = stall_timeout
        self._watchdog: asyncio.TimerHandle | None = None

    def _watch(self) -> None:
        """Every second: if the oldest request waited longer than
        ``stall_timeout``, the peer is hung — close the connection, which
        fails every request in flight (one timer per connection, not per
        request)."""
        self._watchdog = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._sent and now - min(self._sent.values()) > self.stall_timeout:
            self._fail_all(ConnectionError(f"no reply for {self.stall_timeout:.0f}s"))
            if self._proto is not None and self._proto.transport is not None:
                self._proto.transport.abort()
            return
        self._watchdog = loop.call_later(1.0, self._watch)

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0,
                   stall_timeout: float | None = None) -> "AsyncConnection":
        """Connect; with ``stall_timeout`` a request unanswered for that long
        breaks the connection (ConnectionError for everything in flight)."""
        self = cls(host, port, stall_timeout)
        loop = asyncio.get_running_loop()
        _t, self._proto = await asyncio.wait_for(
            loop.create_connection(lambda: _ClientProtocol(self), host, port), timeout)
        if stall_timeout:
            self._watchdog = loop.call_later(1.0, self._watch)
        return self

    def _fail_all(self, exc: BaseException) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.host}:{self.port}: {exc}"))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(self, req: proto.Request, payload=b"",
                      timeout: float | None = None) -> tuple[proto.Response, bytes]:
        """Send ``req`` (+ payload when WRITE) and wait for its reply.

        ``req.id`` is overwritten with a connection-unique id.
        """
        if self.closed or self._proto is None or self._proto.transport is None:
            raise ConnectionError(f"{self.host}:{self.port}: connection closed")
        rid = next(self._ids) & 0xFFFFFFFF
        req.id = rid
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if self.stall_timeout:
            self._sent[rid] = fut.get_loop().time()
        tr = self._proto.transport
        try:
            if not self._proto.can_write.is_set():  # the peer reads too slowly: wait
                await self._proto.can_write.wait()
                if self.closed:
                    raise ConnectionError(f"{self.host}:{self.port}: connection closed")
            if req.flags & proto.SD_FLAG_CMD_WRITE and payload:
                tr.writelines((req.pack(), payload))
            else:
                tr.write(req.pack())
            if timeout is None:
                hdr, body = await fut
            else:
                hdr, body = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
            self._sent.pop(rid, None)
        return proto.Response.unpack(hdr), body

    def close(self) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._fail_all(ConnectionError("connection closed"))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by peer")
        got += k
    return bytes(buf)


class BlockingConnection:
    """A simple blocking connection: one request, then its reply."""

    def __init__(self, host: str, port: int, timeout: float | None = 30.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._ids = itertools.count(1)

    def request(self, req: proto.Request, payload=b"") -> tuple[proto.Response, bytes]:
        req.id = next(self._ids) & 0xFFFFFFFF
        data = req.pack()
        if req.flags & proto.SD_FLAG_CMD_WRITE:
            data += bytes(payload)
        self.sock.sendall(data)
        rsp = proto.Response.unpack(_recv_exact(self.sock, proto.HDR_SIZE))
        body = _recv_exact(self.sock, rsp.data_length) if rsp.data_length else b""
        return rsp, body

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
