"""Malformed traffic for the Sheepdog port and the NBD port.

:class:`SheepFuzzer` sends frames built from random 48-byte headers: random
protocol versions, opcodes (known and unknown), flags, epochs, ids, data
lengths (also past the daemon's limit, and payloads announced but cut
short), random argument bytes, garbage between frames, headers cut in half,
connections reset with requests in flight.  It never sends what a legitimate
administrator could use to destroy data or stop the cluster (format,
shutdown, kill, delete, unlock, copies/vnode/recovery changes: see
``DESTRUCTIVE``); object operations are pointed at the scratch VDI's
objects, so a well-formed random write is a legitimate write to scratch
data, never to the probe writer's VDI.

:class:`NbdFuzzer` does the same on the NBD port: garbage before and during
negotiation, random client flags, random options with wrong or huge
lengths, then for some connections a real NBD_OPT_GO of a scratch export
followed by random transmission-phase requests (wrong magic, random
commands, flags, handles, offsets past the end, huge lengths, writes whose
data never comes).

Both record what happened per connection (``stats``: reply result names,
closes by the daemon, timeouts) and never raise on anything the daemon does.
"""

from __future__ import annotations

import random
import socket
import struct
import time

from sheep import proto
from sheep.proto.errors import result_name

Op = proto.Op
DESTRUCTIVE = {Op.MAKE_FS, Op.SHUTDOWN, Op.KILL_NODE, Op.DEL_VDI, Op.FORCE_RECOVER,
               Op.RELEASE_VDI, Op.ALTER_CLUSTER_COPY, Op.ALTER_VDI_COPY, Op.SET_VNODES,
               Op.REWEIGHT, Op.DISABLE_RECOVER, Op.ENABLE_RECOVER, Op.SET_RECOVERY,
               Op.SET_LOGLEVEL}
OBJECT_OPS = {Op.CREATE_AND_WRITE_OBJ, Op.READ_OBJ, Op.WRITE_OBJ, Op.REMOVE_OBJ,
              Op.DISCARD_OBJ, Op.CREATE_AND_WRITE_PEER, Op.READ_PEER, Op.WRITE_PEER,
              Op.REMOVE_PEER, Op.GET_HASH, Op.EXIST, Op.REPAIR_REPLICA, Op.OIDS_EXIST}
SAFE = [op for op in range(256) if op not in {int(d) for d in DESTRUCTIVE}]
KNOWN_SAFE = [int(op) for op in Op if op not in DESTRUCTIVE]
MAX_SEND = 256 << 10  # bytes of payload we actually send per frame


class _Stats:
    def __init__(self):
        self.stats: dict[str, int] = {}

    def count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _reset(s: socket.socket) -> None:
    """Close with an RST (requests in flight are abandoned)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class SheepFuzzer(_Stats):
    def __init__(self, host: str, port: int, scratch_vid: int, rnd: random.Random):
        super().__init__()
        self.host, self.port, self.vid, self.rnd = host, port, scratch_vid, rnd

    def _scratch_oid(self) -> int:
        r = self.rnd
        idx = r.choice([0, 1, 2, 3, r.randrange(1 << 32)])
        top = r.choice([0, proto.VDI_BIT, proto.VMSTATE_BIT, proto.VDI_ATTR_BIT, 0])
        return top | (self.vid << 32) | idx

    def header(self) -> tuple[bytes, int]:
        """One random header (with a safe opcode) and how many payload bytes to send."""
        r = self.rnd
        h = bytearray(r.randbytes(48))
        h[1] = r.choice(KNOWN_SAFE) if r.random() < 0.7 else r.choice(SAFE)
        if r.random() < 0.7:
            h[0] = proto.proto_ver_for(h[1]) if h[1] in set(Op) else r.choice((2, 0x0A))
        flags = r.choice([0, proto.SD_FLAG_CMD_WRITE, r.randrange(1 << 16)])
        struct.pack_into("<H", h, 2, flags)
        dlen = r.choice([0, r.randrange(1 << 12), r.randrange(1 << 23), r.randrange(1 << 32),
                         proto.SD_DATA_OBJ_SIZE, (64 << 20) + r.randrange(4 << 20)])
        struct.pack_into("<I", h, 12, dlen)
        if h[1] in OBJECT_OPS:
            struct.pack_into("<QQ", h, 16, self._scratch_oid(), self._scratch_oid())
            if r.random() < 0.5:  # plausible offsets / copies
                struct.pack_into("<BI", h, 32, r.randrange(0, 8), 0)
                struct.pack_into("<I", h, 40, r.choice([0, 4096, r.randrange(1 << 23)]))
        send = 0
        if flags & proto.SD_FLAG_CMD_WRITE:
            send = dlen if dlen <= MAX_SEND else 0
            if r.random() < 0.2:
                send = r.randrange(0, min(dlen, MAX_SEND) + 1)  # cut short
        return bytes(h), send

    def one_connection(self, timeout: float = 2.0) -> None:
        r = self.rnd
        try:
            s = _connect(self.host, self.port, timeout)
        except OSError:
            self.count("connect-failed")
            return
        try:
            kind = r.random()
            if kind < 0.1:
                s.sendall(r.randbytes(r.randrange(1, 4096)))
                self.count("garbage")
            elif kind < 0.15:
                s.sendall(r.randbytes(r.randrange(1, 48)))
                self.count("half-header")
            else:
                for _ in range(r.randrange(1, 12)):
                    h, n = self.header()
                    s.sendall(h + r.randbytes(n))
                    self.count("frames")
                    if r.random() < 0.05:
                        s.sendall(r.randbytes(r.randrange(1, 100)))  # garbage in between
            if r.random() < 0.3:
                _reset(s)
                self.count("reset")
                return
            self._drain(s, timeout)
        except (OSError, ConnectionError):
            self.count("closed-by-daemon")
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _drain(self, s: socket.socket, timeout: float) -> None:
        """Read replies until the daemon closes or goes quiet."""
        s.settimeout(0.3)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                self.count("quiet")
                return
            if not chunk:
                self.count("closed-by-daemon")
                return
            buf += chunk
            while len(buf) >= 48:
                dlen, res = struct.unpack_from("<II", buf, 12)
                if len(buf) < 48 + dlen:
                    break
                self.count("reply:" + result_name(res))
                buf = buf[48 + dlen:]


# ---- NBD --------------------------------------------------------------------

NBDMAGIC, IHAVEOPT = b"NBDMAGIC", 0x49484156454F5054
REQUEST_MAGIC = 0x25609513
OPT_EXPORT_NAME, OPT_GO = 1, 7


class NbdFuzzer(_Stats):
    def __init__(self, host: str, port: int, exports: list[str], rnd: random.Random):
        super().__init__()
        self.host, self.port, self.exports, self.rnd = host, port, exports, rnd

    def _option(self) -> bytes:
        r = self.rnd
        opt = r.choice([r.randrange(0, 12), r.randrange(1 << 32), OPT_GO, 3, 6, 8])
        data = r.randbytes(r.randrange(0, 64))
        length = r.choice([len(data), len(data), r.randrange(1 << 32), (64 << 10) + 1,
                           len(data) + r.randrange(1, 32)])
        return struct.pack(">QII", IHAVEOPT if r.random() < 0.9 else r.randrange(1 << 64),
                           opt, length) + data

    def _go(self, name: str) -> bytes:
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">H", 0)
        return struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data

    def _request(self) -> bytes:
        r = self.rnd
        cmd = r.choice([0, 1, 3, 4, 5, 6, r.randrange(1 << 16)])  # never 2 (DISC) on purpose
        flags = r.choice([0, 1, 2, r.randrange(1 << 16)])
        off = r.choice([0, 4096, r.randrange(16 << 20), r.randrange(1 << 64), (16 << 20) - 512])
        length = r.choice([0, 512, 4096, r.randrange(1 << 20), r.randrange(1 << 32),
                           (32 << 20) + 1])
        magic = REQUEST_MAGIC if r.random() < 0.9 else r.randrange(1 << 32)
        req = struct.pack(">IHHQQI", magic, flags, cmd, r.randrange(1 << 64), off, length)
        if cmd == 1 and length <= MAX_SEND:  # a write: its data, or part of it
            req += r.randbytes(length if r.random() < 0.8 else r.randrange(0, length + 1))
        return req

    def one_connection(self, timeout: float = 3.0) -> None:
        r = self.rnd
        try:
            s = _connect(self.host, self.port, timeout)
        except OSError:
            self.count("connect-failed")
            return
        try:
            hello = s.recv(18)
            if not hello.startswith(NBDMAGIC):
                self.count("bad-hello")
            kind = r.random()
            if kind < 0.15:
                s.sendall(r.randbytes(r.randrange(1, 2048)))
                self.count("garbage-at-once")
            elif kind < 0.25:
                s.sendall(struct.pack(">I", r.randrange(1 << 32)) + r.randbytes(r.randrange(64)))
                self.count("random-client-flags")
            else:
                s.sendall(struct.pack(">I", r.choice([1, 3])))  # FIXED_NEWSTYLE (+NO_ZEROES)
                for _ in range(r.randrange(0, 5)):
                    s.sendall(self._option())
                    self.count("options")
                if r.random() < 0.5:
                    s.sendall(self._go(r.choice(self.exports)))
                    self.count("go")
                    self._read_some(s, 0.5)
                    for _ in range(r.randrange(1, 10)):
                        s.sendall(self._request())
                        self.count("requests")
                    if r.random() < 0.3:
                        s.sendall(r.randbytes(r.randrange(1, 512)))
                        self.count("garbage-in-transmission")
            if r.random() < 0.3:
                _reset(s)
                self.count("reset")
                return
            self._read_some(s, timeout)
        except (OSError, ConnectionError):
            self.count("closed-by-daemon")
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _read_some(self, s: socket.socket, timeout: float) -> None:
        s.settimeout(0.3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    self.count("closed-by-daemon")
                    return
            except TimeoutError:
                return
