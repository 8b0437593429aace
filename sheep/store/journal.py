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

* **Failures are final**: once a write, sync or checkpoint of the journal
  failed, every later call fails (EIO): Linux reports a failed write-back
  once and may drop the pages, so nothing after it may be acknowledged.
  The node leaves the cluster as for a failed disk; its restart replays
  the prefix that is durable.
* **A full disk is not a failure**: the file's space (``LIMIT`` plus one
  ``GROW`` step) is reserved when it opens (``fallocate`` keeping its size,
  so the zeros written ahead still turn reserved blocks into written ones 4
  MiB at a time), unless that would take more than half the free space.
  Without it, a growth step that finds no space raises :class:`NoRoom` and
  changes nothing: the writer checkpoints (the zeros already written are
  then free again) and appends again, and only if the journal is empty and
  still too small goes the store's own way (record, sync, data, sync: an
  overwrite in place needs no new block).  The journal stays usable.  (No
  space for an entry *inside* the zeros, possible only on copy-on-write
  file systems, remains a failure like any other.)
* **Entries cannot be forged**: each generation has a random 64-bit key,
  kept in the header and in every entry; client data that looks like an
  entry (in the file past the tail) never matches it.

Layout: a 4 KiB header area holding two copies of the header, at 0 and at
2048 (``SDJH``, format 2, generation u64, key u64, CRC32C of the first 24
bytes), written one after the other with a sync each: the valid copy with
the greater generation counts.  If neither is valid and the file holds
anything past the header area, it refuses to open (EIO) rather than drop
entries.  Then entries, back to back::

    off   size  field
      0      4  magic b"SDJE"
      4      4  entry length, header to trailing CRC inclusive
      8      8  the generation's key
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

import ctypes
import errno
import os
import struct
import threading
from typing import Callable, NamedTuple

from sheep.store import meta as M

HDR = struct.Struct("<4sIQQI")  # magic, format, generation, key, crc of the first 24 bytes
HDR_COPIES = (0, 2048)
HDR_SPACE = 4096
ENT = struct.Struct("<4sIQQQQII")  # magic, length, key, seq, oid, version, b0, n
MAGIC_H, MAGIC_E, FORMAT = b"SDJH", b"SDJE", 2
LIMIT = 64 << 20  # a checkpoint once the journal would grow past this
MAX_PENDING = 1024  # ... or once this many objects have entries
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


class NoRoom(Exception):
    """The file could not grow for this entry (disk full): nothing was
    appended and the journal is intact; write without it."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _header(gen: int, key: int) -> bytes:
    head = HDR.pack(MAGIC_H, FORMAT, gen, key, 0)[:24]
    return head + struct.pack("<I", M.crc32c(head))


def read_header(buf: bytes) -> tuple[int, int] | None:
    """(generation, key) of the valid header copy with the greater
    generation; None if neither copy is valid."""
    best = None
    for off in HDR_COPIES:
        if len(buf) < off + HDR.size:
            continue
        magic, fmt, gen, key, crc = HDR.unpack_from(buf, off)
        if magic == MAGIC_H and fmt == FORMAT and M.crc32c(buf[off:off + 24]) == crc:
            if best is None or gen > best[0]:
                best = (gen, key)
    return best


def encode(key: int, seq: int, oid: int, version: int, b0: int, pairs: bytes, data) -> bytes:
    n = len(pairs) // 8
    length = ENT.size + len(pairs) + len(data) + 4
    head = ENT.pack(MAGIC_E, length, key, seq, oid, version, b0, n)
    body = b"".join((head, pairs, data))
    return body + struct.pack("<I", M.crc32c(body))


def decode(buf: bytes, off: int, key: int, seq: int) -> tuple[Entry, int] | None:
    """The entry at ``off`` if it is whole and is number ``seq`` of the
    generation of ``key``, with the offset after it; else None (the end)."""
    if off + ENT.size > len(buf):
        return None
    magic, length, k, s, oid, version, b0, n = ENT.unpack_from(buf, off)
    if magic != MAGIC_E or k != key or s != seq or n == 0 or off + length > len(buf):
        return None
    dlen = length - ENT.size - 8 * n - 4
    if dlen <= (n - 1) * M.BLOCK or dlen > n * M.BLOCK:
        return None
    end = off + length
    if M.crc32c(buf[off:end - 4]) != struct.unpack_from("<I", buf, end - 4)[0]:
        return None
    p0 = off + ENT.size
    return Entry(s, oid, version, b0, bytes(buf[p0:p0 + 8 * n]),
                 bytes(buf[p0 + 8 * n:end - 4])), end


def _syncfs_call():
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    return fn


_SYNCFS = _syncfs_call()


def _fallocate_call():
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return fn


_FALLOCATE = _fallocate_call()
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def reserve(fd: int, length: int) -> bool:
    """Reserve the blocks of ``fd``'s first ``length`` bytes without changing
    its size (Linux ``fallocate`` with ``FALLOC_FL_KEEP_SIZE``); True if
    they are.  Only when the missing part is at most half the space free to
    unprivileged users: a journal never takes a nearly full disk's last
    blocks (nor root's reserve).  A reservation that fails half-way (ext4
    keeps what it allocated) is given back: nothing past the file's end
    stays allocated.  False if the system, the file system or the free
    space does not allow it."""
    if _FALLOCATE is None:
        return False
    st = os.fstat(fd)
    missing = length - st.st_blocks * 512
    if missing <= 0:
        return True
    vfs = os.fstatvfs(fd)
    if missing * 2 > vfs.f_bavail * vfs.f_frsize:
        return False
    if _FALLOCATE(fd, FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    if st.st_size < length:  # give back whatever it allocated past the end
        _FALLOCATE(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, st.st_size,
                   length - st.st_size)
    return False


def syncfs(fd: int) -> bool:
    """Sync the whole file system of ``fd`` (Linux ``syncfs``); False where
    it is not available.  An error (reported since Linux 5.8) is OSError."""
    if _SYNCFS is None:
        return False
    if _SYNCFS(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return True


class Journal:
    """One store's journal file; thread-safe.  ``append`` then ``commit``
    (durable on return) then apply, then ``applied``; ``checkpoint`` runs
    alone, new appends waiting."""

    def __init__(self, path: str, limit: int | None = None):
        self.path = path
        self.limit = LIMIT if limit is None else limit
        self._fd = -1
        self._gen = 0
        self._key = 0
        self._broken: str | None = None  # why the journal failed, if it did
        self._allocated = 0    # zeros written up to here: overwritten by entries
        self.reserved = False  # the file's blocks up to limit + GROW are reserved
        self._tail = HDR_SPACE
        self._seq = 0          # entries appended (pwrite done) in this generation
        self._synced = 0       # of those, durable
        self._syncing = False
        self._inflight = 0     # appended, not yet applied
        self._draining = False  # a checkpoint waits for the writers in flight
        self._pending: dict[int, tuple[str, ...]] = {}  # oid -> files its entries changed
        self._lock = threading.Lock()              # appends, the counters, the pending set
        self._idle = threading.Condition(self._lock)  # _inflight reached 0
        self._resumed = threading.Condition(self._lock)  # _draining cleared
        self._sync = threading.Condition()          # group commit
        self._checkpointing = threading.Lock()

    # -- start-up -----------------------------------------------------------------

    def open(self) -> list[Entry]:
        """Open (create) the file; the valid entries of its generation, in
        order, for the caller to apply before it :meth:`reset` s.  EIO if
        both headers are damaged and entries may follow."""
        existed = os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        buf = os.pread(self._fd, size, 0) if size else b""
        got = read_header(buf)
        if got is None:
            if buf[HDR_SPACE:].strip(b"\0"):
                os.close(self._fd)
                self._fd = -1
                raise OSError(errno.EIO, f"journal {self.path}: both headers are damaged "
                                         "and it holds entries; refusing to drop them")
            # new, or its first header never written whole: nothing was acknowledged
            os.ftruncate(self._fd, 0)
            size = 0
            existed = False
        if not existed:
            _sync_dir(os.path.dirname(self.path) or ".")
        self._allocated = size
        # (not reserved on a nearly full disk: growth steps may then meet NoRoom)
        self.reserved = reserve(self._fd, max(self.limit, HDR_SPACE) + GROW)
        if got is None:
            return []
        self._gen, self._key = got
        out, off = [], HDR_SPACE
        while True:
            e = decode(buf, off, self._key, len(out) + 1)
            if e is None:
                return out
            out.append(e[0])
            off = e[1]

    def reset(self) -> None:
        """Start a new, empty generation with a new key (durable on return);
        the caller made every change the old one describes durable."""
        self._check()
        gen, key = self._gen + 1, int.from_bytes(os.urandom(8), "little")
        try:
            if self._allocated < HDR_SPACE:  # a new file: the header area, zeros
                _pwrite_all(self._fd, bytes(HDR_SPACE - self._allocated), self._allocated)
                self._allocated = HDR_SPACE
            for off in HDR_COPIES:  # one copy durable before the other is touched
                _pwrite_all(self._fd, _header(gen, key), off)
                os.fdatasync(self._fd)
        except OSError as e:
            self._fail(e)
        self._gen, self._key, self._tail, self._seq, self._synced = gen, key, HDR_SPACE, 0, 0
        self._pending.clear()

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if self._broken is None:
                self._broken = "closed"
        if fd >= 0:
            os.close(fd)

    # -- failures -----------------------------------------------------------------

    def _fail(self, e: OSError):
        if self._broken is None:
            self._broken = f"{e.strerror or e}"
        raise OSError(errno.EIO, f"journal {self.path} failed: {self._broken}") from e

    def _check(self) -> None:
        if self._broken is not None:
            raise OSError(errno.EIO, f"journal {self.path} failed earlier: {self._broken}")

    # -- writes -------------------------------------------------------------------

    def pending(self, oid: int) -> bool:
        """Whether ``oid`` has entries in the current generation (reliable
        under the object's lock: only a writer holding it adds them)."""
        return oid in self._pending

    def append(self, oid: int, version: int, b0: int, pairs: bytes, data,
               files: tuple[str, ...]) -> int:
        """Write an entry (not durable yet); its sequence number.  ``files``:
        what applying it changes (synced by the next checkpoint).  Full if
        the journal is at its size or object limit and not empty; NoRoom
        if the file must grow and the disk is full (nothing appended)."""
        with self._lock:
            while self._draining:
                self._resumed.wait()
            self._check()
            raw = encode(self._key, self._seq + 1, oid, version, b0, pairs, data)
            end = self._tail + len(raw)
            if self._seq and (end > self.limit or (oid not in self._pending
                                                   and len(self._pending) >= MAX_PENDING)):
                raise Full
            if end > self._allocated:
                # Entries overwrite zeros written ahead: an append that grows
                # the file would make every commit a file-system journal
                # commit (and, in ext4's ordered mode, a flush of other files).
                grow = max(GROW, end - self._allocated)
                try:
                    _pwrite_all(self._fd, bytes(grow), self._allocated)
                except OSError as e:
                    if e.errno in _NO_SPACE:  # zeros past the tail: nothing changed
                        raise NoRoom(str(e)) from e
                    self._fail(e)
                self._allocated += grow
            try:
                _pwrite_all(self._fd, raw, self._tail)
            except OSError as e:
                self._fail(e)
            self._tail += len(raw)
            self._seq += 1
            self._inflight += 1
            self._pending[oid] = files
            return self._seq

    def commit(self, seq: int) -> None:
        """Return once entry ``seq`` (and every one before) is durable; one
        ``fdatasync`` serves every writer waiting meanwhile.  EIO once any
        sync failed."""
        with self._sync:
            while True:
                self._check()
                if self._synced >= seq:
                    return
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                target = self._seq  # every entry up to here is written
                self._sync.release()
                try:
                    os.fdatasync(self._fd)
                except OSError as e:
                    try:
                        self._fail(e)
                    finally:
                        self._sync.acquire()
                        self._syncing = False
                        self._sync.notify_all()
                self._sync.acquire()
                self._syncing = False
                self._synced = max(self._synced, target)
                self._sync.notify_all()

    def applied(self) -> None:
        """The entry this writer appended is applied (or abandoned)."""
        with self._lock:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def checkpoint(self, sync_files: Callable[[set[str], int], None]) -> None:
        """Make every file changed in this generation durable
        (``sync_files(files, journal_fd)``), then start a new generation.
        New appends wait from the start; the writers in flight apply
        their entries first."""
        with self._checkpointing, self._lock:
            self._draining = True
            try:
                while self._inflight:
                    self._idle.wait()
                self._check()
                if not self._seq:
                    return
                files: set[str] = set()
                for fs in self._pending.values():
                    files.update(fs)
                try:
                    sync_files(files, self._fd)
                except OSError as e:
                    self._fail(e)
                self.reset()
            finally:
                self._draining = False
                self._resumed.notify_all()

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


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
