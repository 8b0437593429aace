"""The write-ahead journal of a durable plain store (``BASE/journal``).

Without ``-n`` a write must be on disk before it is acknowledged, and a
crash at any moment must leave every block reading as its old or its new
content (docs/data-safety.md).  Writing the record, syncing it, then
writing and syncing the data costs two ``fdatasync`` per write, each on its
own file.  With the journal a write costs a share of one: the write (its
blocks, whole, and their new CRC pairs and version) is appended to this one
file, the writers waiting at the same moment share one ``fdatasync`` (group
commit), and only then are the object and its record updated, in the page
cache.  A checkpoint later syncs the objects written since the last one and
starts an empty journal.

Guarantees
----------
* **Write-ahead**: an object or record file is changed by a journaled write
  only after its entry is durable, so whatever a crash leaves of those
  changes on disk, replaying the durable entries in order rewrites every
  changed block and CRC pair and the version: each block then matches its
  record, and holds every write acknowledged before the crash.
* **Torn tail**: an entry is valid only whole (length, generation, sequence
  number and a CRC32C over it all); replay stops at the first one that is
  not.  A write is acknowledged only after its entry and all before it are
  durable, so the valid prefix holds every acknowledged write.
* **Checkpoint**: no entry is in flight (appended, not yet applied) while a
  checkpoint syncs the objects and records written in the current
  generation; only then does it make a new, empty generation durable.
  Entries of an older generation left behind in the file never replay.
* **Other changes of an object** (create, install, remove, moves) are made
  durable on their own; the store checkpoints first if the object has
  entries in the journal (:meth:`Journal.pending`), so that no replay ever
  applies an older write over what such a change left.

Layout: a 4 KiB header (``SDJH``, format 1, generation u64, CRC32C of the
first 16 bytes), then entries back to back::

    off   size  field
      0      4  magic b"SDJE"
      4      4  entry length, header to trailing CRC inclusive
      8      8  generation
     16      8  sequence number (1, 2, ... within the generation)
     24      8  oid
     32      8  object version after the write
     40      4  first block b0
     44      4  block count n
     48     8n  (cur, prev) CRC32C pairs of blocks b0..b0+n-1 after the write
  48+8n      L  the blocks' new content (the object's last block may be short)
    end      4  CRC32C of every byte before

Pure file format and synchronisation: :mod:`sheep.store.plain` decides what
is journaled and applies the entries.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Callable, NamedTuple

from sheep.store import meta as M

HDR = struct.Struct("<4sIQI")  # magic, format, generation, crc of the first 16 bytes
HDR_SPACE = 4096
ENT = struct.Struct("<4sIQQQQII")  # magic, length, generation, seq, oid, version, b0, n
MAGIC_H, MAGIC_E, FORMAT = b"SDJH", b"SDJE", 1
LIMIT = 64 << 20  # a checkpoint once the journal would grow past this
GROW = 4 << 20  # the file grows by this much of zeros at a time (see Journal.append)


class Entry(NamedTuple):
    seq: int
    oid: int
    version: int
    b0: int
    pairs: bytes  # 8 bytes per block: cur, prev (little-endian u32)
    data: bytes


class Full(Exception):
    """The entry does not fit: checkpoint, then append again."""


def _header(gen: int) -> bytes:
    head = HDR.pack(MAGIC_H, FORMAT, gen, 0)[:16]
    return (head + struct.pack("<I", M.crc32c(head))).ljust(HDR_SPACE, b"\0")


def encode(gen: int, seq: int, oid: int, version: int, b0: int, pairs: bytes, data) -> bytes:
    n = len(pairs) // 8
    length = ENT.size + len(pairs) + len(data) + 4
    head = ENT.pack(MAGIC_E, length, gen, seq, oid, version, b0, n)
    body = b"".join((head, pairs, data))
    return body + struct.pack("<I", M.crc32c(body))


def decode(buf: bytes, off: int, gen: int, seq: int) -> tuple[Entry, int] | None:
    """The entry at ``off`` if it is whole and is number ``seq`` of
    generation ``gen``, with the offset after it; else None (the end)."""
    if off + ENT.size > len(buf):
        return None
    magic, length, g, s, oid, version, b0, n = ENT.unpack_from(buf, off)
    if magic != MAGIC_E or g != gen or s != seq or off + length > len(buf):
        return None
    dlen = length - ENT.size - 8 * n - 4
    if dlen < 0 or dlen > n * M.BLOCK or (n and dlen <= (n - 1) * M.BLOCK):
        return None
    end = off + length
    if M.crc32c(buf[off:end - 4]) != struct.unpack_from("<I", buf, end - 4)[0]:
        return None
    p0 = off + ENT.size
    return Entry(s, oid, version, b0, bytes(buf[p0:p0 + 8 * n]),
                 bytes(buf[p0 + 8 * n:end - 4])), end


class Journal:
    """One store's journal file; thread-safe.  ``append`` then ``commit``
    (durable on return) then apply, then ``applied``; ``checkpoint`` runs
    alone."""

    def __init__(self, path: str, limit: int | None = None):
        self.path = path
        self.limit = LIMIT if limit is None else limit
        self._fd = -1
        self._gen = 0
        self._allocated = 0    # file size: zeros past the tail, overwritten by entries
        self._tail = HDR_SPACE
        self._seq = 0          # entries appended (pwrite done) in this generation
        self._synced = 0       # of those, durable
        self._syncing = False
        self._inflight = 0     # appended, not yet applied
        self._pending: dict[int, tuple[str, ...]] = {}  # oid -> files its entries changed
        self._lock = threading.Lock()              # appends, the counters, the pending set
        self._idle = threading.Condition(self._lock)  # _inflight reached 0
        self._sync = threading.Condition()          # group commit
        self._checkpointing = threading.Lock()

    # -- start-up -----------------------------------------------------------------

    def open(self) -> list[Entry]:
        """Open (create) the file; the valid entries of its generation, in
        order, for the caller to apply before it :meth:`reset` s."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        size = self._allocated = os.fstat(self._fd).st_size
        buf = os.pread(self._fd, size, 0) if size else b""
        gen = self._read_header(buf)
        if gen is None:  # new, or its header never written whole (see _read_header)
            os.ftruncate(self._fd, 0)  # no older entry may ever match a new generation
            self._gen = self._allocated = 0
            return []
        self._gen = gen
        out, off = [], HDR_SPACE
        while True:
            got = decode(buf, off, gen, len(out) + 1)
            if got is None:
                return out
            out.append(got[0])
            off = got[1]

    @staticmethod
    def _read_header(buf: bytes) -> int | None:
        if len(buf) < HDR.size:
            return None
        magic, fmt, gen, crc = HDR.unpack_from(buf)
        if magic != MAGIC_H or fmt != FORMAT or M.crc32c(buf[:16]) != crc:
            return None  # never written whole: no entry was ever acknowledged with it
        return gen

    def reset(self) -> None:
        """Start a new, empty generation (durable on return); the caller made
        every change the old one describes durable."""
        gen = self._gen + 1
        os.pwrite(self._fd, _header(gen), 0)
        os.fdatasync(self._fd)
        self._gen, self._tail, self._seq, self._synced = gen, HDR_SPACE, 0, 0
        self._allocated = max(self._allocated, HDR_SPACE)
        self._pending.clear()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- writes -------------------------------------------------------------------

    def pending(self, oid: int) -> bool:
        """Whether ``oid`` has entries in the current generation (reliable
        under the object's lock: only a writer holding it adds them)."""
        return oid in self._pending

    def append(self, oid: int, version: int, b0: int, pairs: bytes, data,
               files: tuple[str, ...]) -> int:
        """Write an entry (not durable yet); its sequence number.  ``files``:
        what applying it changes (synced by the next checkpoint).  Full if
        the journal is at its limit and not empty."""
        with self._lock:
            raw = encode(self._gen, self._seq + 1, oid, version, b0, pairs, data)
            end = self._tail + len(raw)
            if self._seq and end > self.limit:
                raise Full
            if end > self._allocated:
                # Entries overwrite zeros written ahead: an append that grows
                # the file would make every commit a file-system journal
                # commit (and, in ext4's ordered mode, a flush of other files).
                grow = max(GROW, end - self._allocated)
                _pwrite_all(self._fd, bytes(grow), self._allocated)
                self._allocated += grow
            _pwrite_all(self._fd, raw, self._tail)
            self._tail += len(raw)
            self._seq += 1
            self._inflight += 1
            self._pending[oid] = files
            return self._seq

    def commit(self, seq: int) -> None:
        """Return once entry ``seq`` (and every one before) is durable; one
        ``fdatasync`` serves every writer waiting meanwhile."""
        with self._sync:
            while self._synced < seq:
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                target = self._seq  # every entry up to here is written
                self._sync.release()
                try:
                    os.fdatasync(self._fd)
                finally:
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                self._synced = max(self._synced, target)

    def applied(self) -> None:
        """The entry this writer appended is applied (or abandoned)."""
        with self._lock:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def checkpoint(self, sync_file: Callable[[str], None]) -> None:
        """Sync every file changed in this generation, then start a new one.
        Waits for the writers in flight to apply their entries; appends wait
        meanwhile."""
        with self._checkpointing, self._lock:
            while self._inflight:
                self._idle.wait()
            if not self._seq:
                return
            files: set[str] = set()
            for fs in self._pending.values():
                files.update(fs)
            for f in sorted(files):
                sync_file(f)
            self.reset()

    @property
    def size(self) -> int:
        return self._tail

    def entries_since_checkpoint(self) -> int:
        return self._seq


def _pwrite_all(fd: int, data: bytes, off: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, off)
        mv, off = mv[n:], off + n

