"""A read prober: READ_OBJ of probe blocks, straight to one sheep, all the time.

:class:`ReadProber` runs a thread that reads the given blocks of a VDI
round-robin through one node (that node is the gateway: it serves from its
own copy when it holds one) with a short socket timeout, and keeps every
attempt as ``(t_start, t_end, block, outcome, seen)`` — outcome ``ok``, a
result name (``HALT``, ...) or ``timeout``/``conn``; ``seen`` the
:class:`probelib.block.Seen` of a successful read.  It tells exactly when a
node answered reads and what it returned, independently of any client's
failover or retry logic.
"""

from __future__ import annotations

import threading
import time

from probelib.block import BLOCK, decode
from sheep import proto
from sheep.proto.connection import BlockingConnection
from sheep.proto.errors import result_name

OBJ_BLOCKS = proto.SD_DATA_OBJ_SIZE // BLOCK


class ReadProber:
    def __init__(self, host: str, port: int, vid: int, blocks: list[int],
                 timeout: float = 1.0, pause: float = 0.005):
        self.host, self.port, self.vid, self.blocks = host, port, vid, list(blocks)
        self.timeout, self.pause = timeout, pause
        self.log: list[tuple] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name=f"prober:{port}")

    def start(self) -> ReadProber:
        self._t.start()
        return self

    def stop(self) -> list[tuple]:
        self._stop.set()
        self._t.join(30)
        return self.log

    def _run(self) -> None:
        conn = None
        i = 0
        while not self._stop.is_set():
            b = self.blocks[i % len(self.blocks)]
            i += 1
            t0 = time.time()
            try:
                if conn is None:
                    conn = BlockingConnection(self.host, self.port, timeout=self.timeout)
                oid = proto.vid_to_data_oid(self.vid, b // OBJ_BLOCKS)
                rsp, body = conn.request(proto.Request(
                    proto.Op.READ_OBJ, proto.ObjArgs(oid=oid, offset=(b % OBJ_BLOCKS) * BLOCK),
                    data_length=BLOCK))
                if rsp.result:
                    self.log.append((t0, time.time(), b, result_name(rsp.result), None))
                else:
                    self.log.append((t0, time.time(), b, "ok", decode(body)))
            except TimeoutError:
                self.log.append((t0, time.time(), b, "timeout", None))
                conn.close()
                conn = None
            except (OSError, ConnectionError):
                self.log.append((t0, time.time(), b, "conn", None))
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.1)
            self._stop.wait(self.pause)
        if conn is not None:
            conn.close()


def stale_reads(reads, acks: dict[int, list[tuple[float, int]]], writer: int) -> list[tuple]:
    """Reads that returned something older than what ``writer`` had already
    acknowledged for that block when the read started.

    ``reads``: ``(t_start, t_end, block, outcome, seen)``; ``acks``: per block
    the ``(t_ack, seq)`` of the writer's acknowledged writes.  A read judged
    stale returned another writer's data, zeros, or an older seq."""
    out = []
    for t0, t1, b, outcome, seen in reads:
        if outcome != "ok":
            continue
        before = [seq for t, seq in acks.get(b, ()) if t < t0]
        if not before:
            continue
        want = max(before)
        if seen.kind != "data" or seen.writer != writer or seen.seq < want:
            out.append((t0, t1, b, seen.short(), f"w{writer}#{want} acked before the read"))
    return out


def acks_of(report: dict) -> dict[int, list[tuple[float, int]]]:
    """Per block, ``(t_ack, seq)`` of every acknowledged write in a writer model."""
    return {int(b): [(h[3], h[0]) for h in m["history"] if h[1] == "ok"]
            for b, m in report["blocks"].items()}


def op_reads(report: dict):
    """A ``--log-ops`` writer's reads in the prober's tuple form (seen as text)."""
    from probelib.block import Seen

    out = []
    for t0, t1, kind, b, outcome, value in report["ops"]:
        if kind != "r":
            continue
        seen = None
        if outcome == "ok":
            seen = _parse_short(value) or Seen("garbage")
        out.append((t0, t1, b, outcome, seen))
    return out


def _parse_short(text: str):
    from probelib.block import Seen

    if text == "zero":
        return Seen("zero")
    if text.startswith("w") and "#" in text:
        w, rest = text[1:].split("#", 1)
        seq = rest.split("@", 1)[0]
        return Seen("data", int(w), 0, int(seq))
    return None
