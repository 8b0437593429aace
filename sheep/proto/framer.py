"""Bytes in, frames out: the Sheepdog stream split into (header, payload) frames.

No sockets, no asyncio (h11's idea): the server and the client connection feed
it whatever chunks the transport delivers and receive whole frames, one copy
per payload.
"""

from __future__ import annotations

from sheep.proto.constants import HDR_SIZE


class Framer:
    """Split a byte stream into (48-byte header, payload) frames.

    ``payload_len(header) -> int`` says how many payload bytes follow a
    header.  Each payload is assembled in a buffer of exactly its size (one
    copy, however the stream is chunked); ``on_frame(header, payload)`` gets
    ``bytes`` for the header and a ``bytearray`` (or ``b""``) for the payload.

    Backpressure: if ``on_frame`` returns a true value the framer stops
    dispatching and holds the rest of the bytes it was fed (one chunk read
    from a socket may carry many frames; a consumer that has paused reading
    must not still be handed all of them); :meth:`resume` dispatches them.
    While held, further :meth:`feed` calls only append.
    """

    __slots__ = ("payload_len", "on_frame", "_hdr", "_hbuf", "_payload", "_got", "_held",
                 "_running")

    def __init__(self, payload_len, on_frame):
        self.payload_len = payload_len
        self.on_frame = on_frame
        self._hdr: bytes | None = None
        self._hbuf = bytearray()
        self._payload: bytearray | None = None
        self._got = 0
        self._held: bytearray | None = None
        self._running = False

    @property
    def holding(self) -> bool:
        """True while bytes fed are held back (the consumer asked to stop)."""
        return self._held is not None

    def feed(self, data) -> None:
        if self._held is not None:
            self._held += data
            return
        self._running = True
        try:
            self._run(data)
        finally:
            self._running = False

    def resume(self) -> None:
        """Dispatch the held bytes (until the consumer asks to stop again)."""
        if self._running or self._held is None:
            return
        held, self._held = self._held, None
        self.feed(held)

    def _run(self, data) -> None:
        mv = memoryview(data)
        pos, end = 0, len(mv)
        HDR = HDR_SIZE
        while pos < end:
            if self._hdr is None:
                if not self._hbuf and end - pos >= HDR:
                    hdr = bytes(mv[pos:pos + HDR])
                    pos += HDR
                else:
                    take = min(HDR - len(self._hbuf), end - pos)
                    self._hbuf += mv[pos:pos + take]
                    pos += take
                    if len(self._hbuf) < HDR:
                        return
                    hdr = bytes(self._hbuf)
                    self._hbuf.clear()
                need = self.payload_len(hdr)
                if need is None:  # the consumer refused the frame and stops reading
                    return
                if need == 0:
                    if self.on_frame(hdr, b"") and pos < end:
                        self._held = bytearray(mv[pos:])
                        return
                    continue
                self._hdr, self._payload, self._got = hdr, bytearray(need), 0
            take = min(len(self._payload) - self._got, end - pos)
            self._payload[self._got:self._got + take] = mv[pos:pos + take]
            self._got += take
            pos += take
            if self._got == len(self._payload):
                hdr, payload = self._hdr, self._payload
                self._hdr, self._payload = None, None
                if self.on_frame(hdr, payload) and pos < end:
                    self._held = bytearray(mv[pos:])
                    return
