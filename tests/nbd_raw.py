"""A hand-driven NBD client on a plain socket, for tests that send what no
real client would (malformed traffic, requests that are never answered)."""

from __future__ import annotations

import socket
import struct

from sheep.nbd import codec


class RawNbd:
    """A hand-driven NBD client on a plain socket (for malformed traffic)."""

    def __init__(self, node, timeout=10.0):
        self.s = socket.create_connection(("127.0.0.1", node.nbd_port), timeout=timeout)

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def greet(self, cflags: int = codec.FLAG_FIXED_NEWSTYLE | codec.FLAG_NO_ZEROES) -> None:
        hello = self.recv(18)
        assert hello[:8] == b"NBDMAGIC"
        assert struct.unpack(">QH", hello[8:]) == (codec.IHAVEOPT, 3)
        self.s.sendall(struct.pack(">I", cflags))

    def option(self, opt: int, data: bytes = b"", magic: int = codec.IHAVEOPT) -> None:
        self.s.sendall(struct.pack(">QII", magic, opt, len(data)) + data)

    def rep(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == codec.REP_MAGIC
        return opt, rtype, self.recv(length)

    def go(self, name: str, opt: int = codec.OPT_GO) -> tuple[int, int]:
        b = name.encode()
        self.option(opt, struct.pack(">I", len(b)) + b + struct.pack(">H", 0))
        size = flags = None
        while True:
            o, rtype, data = self.rep()
            assert o == opt
            if rtype == codec.REP_ACK:
                return size, flags
            assert rtype == codec.REP_INFO, (hex(rtype), data)
            if struct.unpack(">H", data[:2])[0] == codec.INFO_EXPORT:
                size, flags = struct.unpack(">QH", data[2:])

    def request(self, cmd, handle, offset, length, flags=0, data=b"",
                magic=codec.REQUEST_MAGIC) -> None:
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, cmd, handle, offset, length) + data)

    def reply(self) -> tuple[int, int]:
        magic, err, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == codec.SIMPLE_REPLY_MAGIC
        return err, handle

    def structured(self) -> None:
        """Negotiate structured replies (NBD_OPT_STRUCTURED_REPLY)."""
        self.option(codec.OPT_STRUCTURED_REPLY)
        assert self.rep()[:2] == (codec.OPT_STRUCTURED_REPLY, codec.REP_ACK)

    def meta_context(self, opt: int, name: str, *queries: str) -> list[tuple[int, str]]:
        """NBD_OPT_LIST/SET_META_CONTEXT: the (context id, name) replies
        before the ACK (an error reply raises AssertionError)."""
        b = name.encode()
        data = struct.pack(">I", len(b)) + b + struct.pack(">I", len(queries))
        data += b"".join(struct.pack(">I", len(q.encode())) + q.encode() for q in queries)
        self.option(opt, data)
        out = []
        while True:
            o, rtype, body = self.rep()
            assert o == opt
            if rtype == codec.REP_ACK:
                return out
            assert rtype == codec.REP_META_CONTEXT, (hex(rtype), body)
            out.append((struct.unpack(">I", body[:4])[0], body[4:].decode()))

    def chunk(self) -> tuple[int, int, int, bytes]:
        """One structured reply chunk: (flags, type, handle, payload)."""
        magic, flags, rtype, handle, length = struct.unpack(">IHHQI", self.recv(20))
        assert magic == codec.STRUCTURED_REPLY_MAGIC, hex(magic)
        return flags, rtype, handle, self.recv(length)

    def is_closed(self) -> bool:
        """True once the server has closed the connection (EOF or reset)."""
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self):
        self.s.close()
