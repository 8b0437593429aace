"""TCP (and UNIX socket) server: framing of the Sheepdog protocol.

Guarantees: requests on one connection are processed concurrently (many in
flight) and each reply is written as one unit, so replies never interleave;
the payload of a request is read iff its WRITE flag is set; a request that
announces a payload larger than ``MAX_PAYLOAD`` gets INVALID_PARMS and the
connection is closed (the stream cannot be resynchronised); a connection that
closes mid-request just ends — nothing half-received is executed.

Memory: a connection stops being read while it has ``MAX_IN_FLIGHT``
requests in progress, while its replies are not being read, or while the
payloads and reply buffers of its requests in progress add up to
``MAX_BUFFERED`` bytes — so one connection holds at most about
``MAX_BUFFERED`` plus one request, however fast its client sends.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from sheep import proto
from sheep.proto.connection import Framer
from sheep.proto.errors import CODES
from sheep.server import ops
from sheep.vdi import locks

log = logging.getLogger("sheep.server.listener")

MAX_PAYLOAD = max(proto.SD_INODE_SIZE, 1 << proto.SD_MAX_BLOCK_SIZE_SHIFT) + (1 << 20)
MAX_IN_FLIGHT = 128  # requests in progress per connection before we stop reading
MAX_BUFFERED = 64 << 20  # bytes of payloads + reply buffers in progress per connection
_FLAGS = struct.Struct("<H")
_DLEN = struct.Struct("<I")


class SheepProtocol(asyncio.Protocol):
    def __init__(self, sheep):
        self.sheep = sheep
        self.framer = Framer(self._payload_len, self._frame)
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.buffered = 0  # bytes charged to requests in progress (see module docstring)

    def connection_made(self, transport):
        self.transport = transport
        self.sheep.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc):
        self.closed = True
        self.sheep.connections.discard(self)
        if getattr(self, "lock_sessions", None):
            self.sheep.locks.conn_closed(self)  # lock sessions: the grace period starts

    def data_received(self, data):
        if not self.closed:
            self.framer.feed(data)

    def _payload_len(self, hdr: bytes) -> int | None:
        flags = _FLAGS.unpack_from(hdr, 2)[0]
        need = _DLEN.unpack_from(hdr, 12)[0]
        if not flags & proto.SD_FLAG_CMD_WRITE:
            return 0
        if need > MAX_PAYLOAD:
            self._refuse(hdr, need)
            return None
        return need

    def _frame(self, hdr: bytes, payload) -> None:
        req = proto.Request.unpack(hdr)
        # payload, or the reply buffer the client announced (capped: it is what
        # a reply may hold at most, not what it will hold)
        charge = len(payload) or min(req.data_length, MAX_PAYLOAD)
        if req.opcode == proto.Op.CREATE_AND_WRITE_OBJ and req.flags & proto.SD_FLAG_CMD_COW:
            # a copy-on-write create reads the whole parent object (two copies
            # of it at times) and sends it to every replica
            charge = max(charge, 2 * self.sheep.vdis.obj_size(req.args.oid))
        self.buffered += charge
        task = asyncio.get_running_loop().create_task(self._serve(req, payload))
        task.charge = charge
        self.tasks.add(task)
        task.add_done_callback(self._done)
        self._throttle()
        return self.read_paused  # the framer holds the rest of this chunk

    # Backpressure: a client may keep MAX_IN_FLIGHT requests in progress; past
    # that, or while its replies are not being read, we stop reading from it.
    def _throttle(self) -> None:
        blocked = (len(self.tasks) >= MAX_IN_FLIGHT or self.write_paused
                   or self.buffered >= MAX_BUFFERED)
        if blocked != self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = blocked
            if blocked:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
                self.framer.resume()  # frames of a chunk read before we paused

    def _done(self, task) -> None:
        self.tasks.discard(task)
        self.buffered -= task.charge
        self._throttle()

    def pause_writing(self):
        self.write_paused = True
        self._throttle()

    def resume_writing(self):
        self.write_paused = False
        self._throttle()

    def _refuse(self, hdr: bytes, need: int) -> None:
        req = proto.Request.unpack(hdr)
        log.warning("closing connection: request %#x announces a %d-byte payload", req.opcode, need)
        rsp = proto.Response(req.opcode, result=CODES["INVALID_PARMS"], id=req.id,
                             epoch=self.sheep.group.epoch)
        self.transport.write(rsp.pack())
        self.transport.close()
        self.closed = True

    async def _serve(self, req: proto.Request, payload: bytes) -> None:
        locks.CURRENT_CONN.set(self)  # this task's context only
        if getattr(self, "lock_sessions", None):
            self.sheep.locks.touch(self)
        rsp, body = await ops.dispatch(self.sheep, req, payload)
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if body:
            self.transport.writelines((rsp.pack(), body))
        else:
            self.transport.write(rsp.pack())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_servers(sheep) -> list[asyncio.base_events.Server]:
    """Listen on TCP ``bindaddr:port`` and on ``BASE/sock``; raise OSError if taken."""
    loop = asyncio.get_running_loop()
    cfg = sheep.cfg
    tcp = await loop.create_server(lambda: SheepProtocol(sheep), cfg.bindaddr, cfg.port,
                                   reuse_address=True, backlog=1024)
    servers = [tcp]
    path = f"{cfg.base_dir}/sock"
    try:
        import os

        if os.path.exists(path):
            os.unlink(path)
        servers.append(await loop.create_unix_server(lambda: SheepProtocol(sheep), path))
    except OSError as e:  # the UNIX socket is a convenience; TCP is what matters
        log.warning("cannot listen on %s: %s", path, e)
    return servers
