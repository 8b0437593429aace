"""The I/O-free framer of sheep.proto.framer: bytes in, (header, payload) frames out."""

import random

from sheep import proto
from sheep.proto.connection import Framer


def _frames(n, size=100):
    out = []
    for i in range(n):
        req = proto.Request(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=i), id=i + 1,
                            flags=proto.SD_FLAG_CMD_WRITE, data_length=size)
        out.append((req.pack(), bytes([i % 256]) * size))
    return out


def _dlen(hdr):
    return proto.Request.unpack(hdr).data_length


def test_any_chunking_gives_the_same_frames():
    frames = _frames(20)
    stream = b"".join(h + p for h, p in frames)
    rnd = random.Random(3)
    for _ in range(20):
        got = []
        f = Framer(_dlen, lambda h, p: got.append((h, bytes(p))))
        pos = 0
        while pos < len(stream):
            step = rnd.randint(1, 300)
            f.feed(stream[pos:pos + step])
            pos += step
        assert got == frames


def test_consumer_that_stops_gets_no_more_frames_until_resume():
    """One chunk carrying many frames: a consumer that has paused reading
    (returns True) is not handed the rest until it resumes."""
    frames = _frames(10)
    stream = b"".join(h + p for h, p in frames)
    got = []
    budget = [3]

    def on_frame(h, p):
        got.append((h, bytes(p)))
        budget[0] -= 1
        return budget[0] <= 0

    f = Framer(_dlen, on_frame)
    f.feed(stream)
    assert got == frames[:3] and f.holding
    f.feed(b"")  # more bytes while held only append
    assert len(got) == 3
    budget[0] = 4
    f.resume()
    assert got == frames[:7] and f.holding
    budget[0] = 100
    f.resume()
    assert got == frames and not f.holding
