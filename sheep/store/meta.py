"""Object metadata: the version and the block checksums of one stored copy.

Pure data (no I/O): the record format, its codec and the checksum helpers;
:mod:`sheep.store.plain` decides where the records live and when they are
written.

Record (little-endian), one file per object copy::

    off  size  field
      0     4  magic b"SDMD"
      4     2  format version, u16 = 2
      6     2  header length, u16 = 32
      8     4  block size, u32 = 4096
     12     4  block count n, u32 = ceil(object size / block size)
     16     8  object version, u64 (see below)
     24     4  reserved, 0
     28     4  CRC32C of bytes 0..27
     32   8*n  per block: u32 CRC32C of the current content ("cur"),
               u32 CRC32C of the content before the last change ("prev")

The last block may be shorter than 4 KiB; its CRCs cover only the bytes that
exist.  A block is intact when its data matches ``cur`` or ``prev``.

Why two CRCs: a write updates the record (new ``cur``, old ``cur`` kept as
``prev``, new version) and makes it durable *before* it writes the data.  A
crash between the two leaves data that matches ``prev``: still readable, and
the version claims at least what the data holds, never less.  So a copy that
lacks an acknowledged write can never look newer than one that has it.

Object version: ``epoch << 32 | seq``.  Every write or create of a copy bumps
it (:func:`bump`): to ``(E, 1)`` if its epoch part is older than the epoch
``E`` the write was admitted at, else by one.  Writes are acknowledged only
once every replica of the epoch applied them, so a copy whose version is
greater holds every acknowledged write that one with a smaller version holds;
equal versions may differ only in writes that were never acknowledged.
Recovery and check therefore keep the copy with the greatest version.
Version 0 means "unknown" (a copy found without metadata, e.g. moved in by an
operator): it loses against every versioned copy.
"""

from __future__ import annotations

import struct

import crcmod.predefined
import numpy as np

BLOCK = 4096
MAGIC = b"SDMD"
FORMAT = 2
HDR = struct.Struct("<4sHHIIQII")
HDR_LEN = HDR.size  # 32
ENTRY = 8  # bytes per block: cur, prev
VERSION_OFF = 16

# CRC32C (Castagnoli).  crcmod is the reference implementation and the
# fallback; the ``crc32c`` package computes the same function with the CPU's
# CRC32 instruction (~20x faster).  tests/unit/store checks that both agree.
crcmod_crc32c = crcmod.predefined.mkCrcFun("crc-32c")
try:
    from crc32c import crc32c as crc32c
except ImportError:  # pragma: no cover - the package is a declared dependency
    crc32c = crcmod_crc32c
ZERO_CRC = crc32c(bytes(BLOCK))
_SMALL = 4 * BLOCK  # Meta.first_bad: up to this many bytes, checked without numpy


class MetaError(ValueError):
    """A record that does not parse or does not fit its object."""


class SizeMismatch(MetaError):
    """An intact record that describes an object of another size: the object
    file was replaced behind the store's back (e.g. copied in by hand)."""


def nblocks(size: int) -> int:
    return -(-size // BLOCK)


def version_epoch(version: int) -> int:
    return version >> 32


def make_version(epoch: int, seq: int) -> int:
    return (epoch & 0xFFFFFFFF) << 32 | (seq & 0xFFFFFFFF)


def bump(version: int, epoch: int) -> int:
    """The version after one more write admitted at ``epoch``."""
    if version >> 32 < epoch:
        return make_version(epoch, 1)
    return version + 1


def fmt_version(version: int) -> str:
    return f"{version >> 32}.{version & 0xFFFFFFFF}"


def block_crcs(buf) -> np.ndarray:
    """CRC32C of each 4 KiB block of ``buf`` (last block may be short)."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    full, rem = divmod(n, BLOCK)
    out = np.empty(full + (1 if rem else 0), dtype="<u4")
    if full >= 4 and crc32c is crcmod_crc32c:
        # Without the hardware CRC, skip the CRC of all-zero blocks (sparse
        # objects, fresh data); with it, checking for zeros costs more.
        words = np.frombuffer(mv, dtype=np.uint64, count=full * (BLOCK // 8))
        nonzero = words.reshape(full, BLOCK // 8).any(axis=1)
        out[:full] = ZERO_CRC
        for i in np.flatnonzero(nonzero).tolist():
            out[i] = crc32c(mv[i * BLOCK:(i + 1) * BLOCK])
    else:
        for i in range(full):
            out[i] = crc32c(mv[i * BLOCK:(i + 1) * BLOCK])
    if rem:
        out[full] = crc32c(mv[full * BLOCK:])
    return out


def zero_crcs(size: int) -> np.ndarray:
    """The CRCs of an all-zero object of ``size`` bytes."""
    n = nblocks(size)
    out = np.full(n, ZERO_CRC, dtype="<u4")
    if size % BLOCK:
        out[-1] = crc32c(bytes(size % BLOCK))
    return out


def header(count: int, version: int) -> bytes:
    """The 32-byte record header of a copy of ``count`` blocks at ``version``."""
    head = HDR.pack(MAGIC, FORMAT, HDR_LEN, BLOCK, count, version, 0, 0)
    return head[:28] + struct.pack("<I", crc32c(head[:28]))


def pairs(cur: np.ndarray, prev: np.ndarray) -> bytes:
    """Raw (cur, prev) entries of consecutive blocks, as a record holds them."""
    out = np.empty((len(cur), 2), dtype="<u4")
    out[:, 0] = cur
    out[:, 1] = prev
    return out.tobytes()


class Meta:
    """One copy's version and checksums; ``crcs`` is an (n, 2) uint32 array
    of (cur, prev) per block."""

    __slots__ = ("version", "crcs")

    def __init__(self, version: int, crcs: np.ndarray):
        self.version = version
        self.crcs = crcs

    @classmethod
    def fresh(cls, version: int, cur: np.ndarray, prev: np.ndarray | None = None) -> "Meta":
        crcs = np.empty((len(cur), 2), dtype="<u4")
        crcs[:, 0] = cur
        crcs[:, 1] = cur if prev is None else prev
        return cls(version, crcs)

    @property
    def nblocks(self) -> int:
        return len(self.crcs)

    def header(self) -> bytes:
        return header(len(self.crcs), self.version)

    def pack(self) -> bytes:
        return self.header() + np.ascontiguousarray(self.crcs, dtype="<u4").tobytes()

    def entries(self, b0: int, b1: int) -> bytes:
        """The raw entries of blocks ``b0..b1-1`` (for an in-place update)."""
        return np.ascontiguousarray(self.crcs[b0:b1], dtype="<u4").tobytes()

    @staticmethod
    def entries_offset(b0: int) -> int:
        return HDR_LEN + ENTRY * b0

    @classmethod
    def unpack(cls, raw: bytes, size: int) -> "Meta":
        """Parse a record for an object of ``size`` bytes; MetaError if it is
        damaged or describes another size."""
        if len(raw) < HDR_LEN:
            raise MetaError(f"record truncated ({len(raw)} bytes)")
        magic, fmt, hlen, bsize, count, version, _res, hcrc = HDR.unpack_from(raw)
        if magic != MAGIC or fmt != FORMAT or hlen != HDR_LEN or bsize != BLOCK:
            raise MetaError("bad record header")
        if crc32c(raw[:28]) != hcrc:
            raise MetaError("record header fails its checksum")
        n = nblocks(size)
        if len(raw) != HDR_LEN + ENTRY * count:
            raise MetaError(f"record of {count} blocks is {len(raw)} bytes long")
        if count != n:
            raise SizeMismatch(f"record covers {count} blocks, object has {n}")
        crcs = np.frombuffer(raw, dtype="<u4", offset=HDR_LEN).reshape(n, 2).copy()
        return cls(version, crcs)

    def bad_blocks(self, got: np.ndarray, b0: int) -> np.ndarray:
        """Indices (relative to ``b0``) of blocks whose CRC ``got`` matches
        neither ``cur`` nor ``prev``."""
        ref = self.crcs[b0:b0 + len(got)]
        return np.flatnonzero((got != ref[:, 0]) & (got != ref[:, 1]))

    def first_bad(self, buf, b0: int) -> int:
        """Index (relative to ``b0``) of the first block of ``buf`` (blocks
        ``b0..``, the last one possibly short) that matches neither ``cur``
        nor ``prev``; -1 if every block matches.  The same verdict as
        :meth:`bad_blocks` on :func:`block_crcs`; a read of a few blocks is
        checked with plain integers (numpy costs more than the CRCs there)
        against one copy of the entries taken up front."""
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if n > _SMALL:
            bad = self.bad_blocks(block_crcs(mv), b0)
            return int(bad[0]) if len(bad) else -1
        k = nblocks(n)
        ents = self.crcs[b0:b0 + k].tolist()
        if len(ents) != k:  # blocks without an entry: bad (fail closed)
            return len(ents)
        for i, (cur, prev) in enumerate(ents):
            c = crc32c(mv[i * BLOCK:(i + 1) * BLOCK])
            if c != cur and c != prev:
                return i
        return -1

    def update(self, b0: int, new: np.ndarray, prev: np.ndarray, version: int) -> None:
        """Record new content ``new`` of blocks ``b0..``; ``prev`` are the CRCs
        of what the disk holds there until the data is written."""
        seg = self.crcs[b0:b0 + len(new)]
        seg[:, 1] = prev
        seg[:, 0] = new
        self.version = version
