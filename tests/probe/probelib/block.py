"""Self-describing 4 KiB blocks and the per-block model of what a read may return.

Every block a probe writer writes is 128 copies of one 32-byte record::

    off size  field
      0    4  magic b"PRB1"
      4    4  writer id, u32 LE (1..; 0 is never used)
      8    4  block number in the VDI (offset / 4096), u32 LE
     12    4  run tag, u32 LE (random per probe run: data of an older run is foreign)
     16    8  sequence number, u64 LE (per writer, starts at 1, never reused)
     24    4  CRC32 of bytes 0..23
     28    4  zero

so any read tells exactly which write it sees, a torn or mixed block (two
writes interleaved inside 4 KiB) is detected, and a block written to the
wrong place is recognised by its block field.

:class:`BlockModel` is the writer's knowledge of one block: the newest
value known to be visible (``floor``: the last acknowledged write, or a
later in-doubt write a read has observed since) and the writes in doubt
(sent, not acknowledged) newer than it.  With at most one write in flight
per block, a correct read returns ``floor`` or one of the in-doubt writes,
never anything older, and never zeros once something was acknowledged.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

BLOCK = 4096
MAGIC = b"PRB1"
_REC = struct.Struct("<4sIIIQII")
REC_SIZE = _REC.size  # 32
PER_BLOCK = BLOCK // REC_SIZE
ZERO_BLOCK = bytes(BLOCK)


def encode(writer: int, block: int, seq: int, run: int) -> bytes:
    """The 4096 bytes of write ``seq`` of ``writer`` to ``block``."""
    head = struct.pack("<4sIIIQ", MAGIC, writer, block, run, seq)
    rec = _REC.pack(MAGIC, writer, block, run, seq, zlib.crc32(head), 0)
    return rec * PER_BLOCK


@dataclass(frozen=True)
class Seen:
    """What one 4 KiB block read back holds.

    ``kind``: ``"zero"`` (never written), ``"data"`` (one intact write:
    ``writer``, ``block``, ``seq``, ``run``), ``"torn"`` (intact records
    of more than one write, or intact records mixed with other bytes:
    ``parts`` lists the distinct (writer, block, seq) found) or
    ``"garbage"`` (no intact record at all)."""

    kind: str
    writer: int = 0
    block: int = 0
    seq: int = 0
    run: int = 0
    parts: tuple = ()

    def short(self) -> str:
        if self.kind == "data":
            return f"w{self.writer}#{self.seq}" + (f"@b{self.block}" if self.block else "")
        if self.kind == "torn":
            return "torn(" + ",".join(f"w{w}#{s}@b{b}" for w, b, s in self.parts) + ")"
        return self.kind


def _record(rec: bytes):
    magic, writer, block, run, seq, crc, pad = _REC.unpack(rec)
    if magic != MAGIC or pad or zlib.crc32(rec[:24]) != crc:
        return None
    return writer, block, run, seq


def decode(data: bytes) -> Seen:
    """Classify one 4096-byte block (see :class:`Seen`)."""
    if data == ZERO_BLOCK:
        return Seen("zero")
    first = data[:REC_SIZE]
    if first * PER_BLOCK == data:
        r = _record(first)
        if r is not None:
            return Seen("data", r[0], r[1], r[3], r[2])
    parts, intact = set(), 0
    for i in range(0, BLOCK, REC_SIZE):
        r = _record(data[i:i + REC_SIZE])
        if r is not None:
            intact += 1
            parts.add((r[0], r[1], r[3]))
    if not parts:
        return Seen("garbage")
    return Seen("torn", parts=tuple(sorted(parts)))


@dataclass
class BlockModel:
    """One block of one writer (see the module docstring).

    ``floor`` 0 means zeros are still allowed (nothing acknowledged, nothing
    observed); ``acked`` is the last acknowledged seq (0: none) and
    ``acked_t`` its wall-clock time; ``history`` is every write sent, as
    ``[seq, outcome, t_sent, t_done]`` (outcome ``"ok"`` or the error kind)."""

    floor: int = 0
    acked: int = 0
    acked_t: float = 0.0
    doubt: list = field(default_factory=list)
    history: list = field(default_factory=list)

    def allowed(self) -> list[int]:
        return [self.floor, *self.doubt]

    def on_ack(self, seq: int, t_sent: float, t_done: float) -> None:
        self.floor = self.acked = seq
        self.acked_t = t_done
        self.doubt = [d for d in self.doubt if d > seq]
        self.history.append([seq, "ok", round(t_sent, 4), round(t_done, 4)])

    def on_error(self, seq: int, kind: str, t_sent: float, t_done: float) -> None:
        self.doubt.append(seq)
        self.history.append([seq, kind, round(t_sent, 4), round(t_done, 4)])

    def classify(self, seen: Seen, writer: int, block: int, run: int) -> str | None:
        """None if ``seen`` is a value this block may show now, else the kind
        of violation: ``zeros-after-ack``, ``zeros-after-seen``, ``older``
        (an acknowledged or observed write was replaced by an older one: a
        lost write or a stale read), ``unknown-seq``, ``foreign`` (another
        writer's or run's data), ``misplaced`` (data of another block),
        ``torn``, ``garbage``."""
        if seen.kind == "zero":
            if self.floor == 0:
                return None
            return "zeros-after-ack" if self.acked else "zeros-after-seen"
        if seen.kind in ("torn", "garbage"):
            return seen.kind
        if seen.writer != writer or seen.run != run:
            return "foreign"
        if seen.block != block:
            return "misplaced"
        if seen.seq == self.floor or seen.seq in self.doubt:
            return None
        if seen.seq < self.floor:
            return "older"
        return "unknown-seq"

    def observe(self, seen: Seen) -> None:
        """A read saw ``seen`` (allowed): from now on nothing older may appear."""
        if seen.kind == "data" and seen.seq in self.doubt:
            self.floor = seen.seq
            self.doubt = [d for d in self.doubt if d > seen.seq]

    def to_json(self) -> dict:
        return {"floor": self.floor, "acked": self.acked, "acked_t": round(self.acked_t, 4),
                "doubt": list(self.doubt), "history": self.history}

    @classmethod
    def from_json(cls, d: dict) -> BlockModel:
        return cls(d["floor"], d["acked"], d["acked_t"], list(d["doubt"]), d["history"])


def describe(model: BlockModel | None, seen: Seen) -> str:
    """One line for a report: what was read against what the model says."""
    if model is None:
        return f"read {seen.short()}, nothing was ever written there"
    last = model.history[-4:]
    return (f"read {seen.short()}; model: floor #{model.floor}, last ack #{model.acked}, "
            f"in doubt {model.doubt}; last writes {last}")
