"""The "plain" store: one file per object (PROTOCOL §16, DESIGN §6).

On-disk layout under ``base_dir``::

    config          40-byte sheepdog_config, replaced via config.tmp + rename
    epoch/NNNNNNNN  epoch logs: sd_node records + 8-byte LE time_t (§15)
    obj/            object files, named by 16 lowercase hex digits of the oid
    obj/.stale/     stale copies (<oid hex>.<epoch>)
    obj/.crc/       checksum sidecars, one per object, same name
    lock            lockf()ed on its first byte while a daemon runs

Each directory in ``extra_dirs`` is another object directory with the same
structure (``<dir>/obj/``, ``.stale/``, ``.crc/``). Object directories are
numbered in the given order, base first; a new object is created in directory
``fnv1a64(oid.to_bytes(8, 'little')) % ndirs`` (any copy in another
directory is then deleted) and an object is looked up there first, then in
the others in order.

Object files hold the raw object bytes, no header, always at full size:
data objects are pre-allocated (posix_fallocate, or ftruncate where the
filesystem cannot), inode and ledger objects are sparse (ftruncate).

Integrity: every object has a sidecar ``<objdir>/.crc/<name>`` with a CRC32C
per 4 KiB block (the last block may be shorter; its CRC covers only the bytes
that exist)::

    off size  field
      0    4  magic b"SDCK"
      4    2  version, u16 LE = 1
      6    2  header length, u16 LE = 16
      8    4  block size, u32 LE = 4096
     12    4  block count, u32 LE = ceil(object size / block size)
     16  4*n  CRC32C of each block, u32 LE

A sidecar whose header does not match the object (magic, version, block size,
block count, length) or that is missing makes every read of the object fail
with EIO.

Theory of operation:

* Create: ``<name>.tmp`` (O_EXCL) gets the full size and the data, the
  sidecar is built in memory (CRCs of zero blocks are a constant) and written
  to ``.crc/<name>.tmp``; both are fsynced, the sidecar is renamed into place,
  then the object, then the directories are fsynced. A crash leaves either
  the old object or the new one; in the worst case an old object with the new
  sidecar, which reads report as EIO (recovery re-fetches it). Per §16 an
  existing ``<name>.tmp`` means a create is already in progress and the call
  reports success; leftovers are deleted by open().
* Write: under a per-object lock (striped), the blocks at the edges of the
  range that are only partly overwritten are read and verified, the CRCs of
  every touched block are computed, the data is pwritten, then only the
  touched sidecar entries; both are fdatasynced unless nosync. A crash between
  the two is detected (EIO) rather than served.
* Read: without any lock, open, fstat, pread of the touched blocks, CRC check
  against the in-memory copy of the sidecar. On any mismatch or sidecar
  problem the read is retried once under the object's lock (a concurrent
  writer may have been between data and CRC update); a second failure is EIO.
  Data always comes from disk; files are opened per call, so objects deleted
  or replaced behind the store's back are noticed.
* CRC cache: an LRU of numpy uint32 arrays, keyed by oid and validated by
  (st_dev, st_ino, st_size, directory) of the object file. Entries are only
  loaded and modified under the object's lock, so the cache always equals the
  sidecar on disk for files this process wrote.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from typing import Sequence

import crcmod.predefined
import numpy as np

from sheep.errors import CODES, error_for
from sheep.proto import fnv1a64
from sheep.store.base import Store, StoreLockedError

BLOCK = 4096
# CRC32C (Castagnoli).  crcmod is the reference implementation and the
# fallback; the ``crc32c`` package computes the same function with the CPU's
# CRC32 instruction (~20x faster), which the 250 MiB/s write budget needs —
# every replica checksums every byte it stores.  tests/unit/store checks that
# both agree.
crcmod_crc32c = crcmod.predefined.mkCrcFun("crc-32c")
try:
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - the package is a declared dependency
    _crc32c = crcmod_crc32c
ZERO_CRC = _crc32c(bytes(BLOCK))
SIDECAR_MAGIC = b"SDCK"
SIDECAR_VERSION = 1
_HDR = struct.Struct("<4sHHII")
HDR_LEN = _HDR.size  # 16
_TS = struct.Struct("<q")
_EPOCH_RE = re.compile(r"[0-9]{8}")
_OID_RE = re.compile(r"[0-9a-f]{16}")
_NSTRIPES = 512
_CACHE_MAX = 4096
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _err(name: str, msg: str):
    return error_for(CODES[name], msg)


# errors that mean the disk (not one object) is failing or gone
_DISK_FAILURE = {errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.ENOTDIR,
                 errno.ESTALE}


def _oserror(exc: OSError, what: str):
    """Map an OSError to NO_SPACE (disk full) or EIO.  An EIO caused by the
    device (not by a checksum mismatch) carries ``disk_failure = True``."""
    if exc.errno in _NO_SPACE:
        return _err("NO_SPACE", f"{what}: {exc.strerror}")
    err = _err("EIO", f"{what}: {exc}")
    err.disk_failure = exc.errno in _DISK_FAILURE
    return err


def _nblocks(size: int) -> int:
    return -(-size // BLOCK)


def _block_crcs(buf) -> np.ndarray:
    """CRC32C of each 4 KiB block of ``buf`` (last block may be short)."""
    mv = memoryview(buf)
    n = len(mv)
    full, rem = divmod(n, BLOCK)
    out = np.empty(full + (1 if rem else 0), dtype="<u4")
    if full >= 4 and _crc32c is crcmod_crc32c:
        # Without the hardware CRC, skip the CRC of all-zero blocks (sparse
        # objects, fresh data); with it, checking for zeros costs more.
        words = np.frombuffer(mv, dtype=np.uint64, count=full * (BLOCK // 8))
        nonzero = words.reshape(full, BLOCK // 8).any(axis=1)
        out[:full] = ZERO_CRC
        for i in np.flatnonzero(nonzero).tolist():
            out[i] = _crc32c(mv[i * BLOCK:(i + 1) * BLOCK])
    else:
        for i in range(full):
            out[i] = _crc32c(mv[i * BLOCK:(i + 1) * BLOCK])
    if rem:
        out[full] = _crc32c(mv[full * BLOCK:])
    return out


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise OSError(errno.EIO, "short read (file truncated?)")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _pwrite_full(fd: int, data, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class _Retry(Exception):
    """Lockless read attempt failed; redo it under the object's lock."""


class _Entry:
    __slots__ = ("key", "crcs")

    def __init__(self, key: tuple, crcs: np.ndarray):
        self.key = key  # (st_dev, st_ino, st_size, dir index)
        self.crcs = crcs


class PlainStore(Store):
    """File-per-object store; see the module docstring for the format."""

    def __init__(self, base_dir: str, extra_dirs: Sequence[str] = (), nosync: bool = False):
        self.base_dir = os.path.abspath(base_dir)
        roots = [self.base_dir] + [os.path.abspath(d) for d in extra_dirs]
        if len(set(roots)) != len(roots):
            raise ValueError(f"duplicate store directories: {roots}")
        self.obj_dirs = [os.path.join(r, "obj") for r in roots]
        self.nosync = nosync
        self._epoch_dir = os.path.join(self.base_dir, "epoch")
        self._config = os.path.join(self.base_dir, "config")
        self._lock_path = os.path.join(self.base_dir, "lock")
        self._lock_fd: int | None = None
        self._locks = [threading.Lock() for _ in range(_NSTRIPES)]
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._meta_lock = threading.Lock()  # config and epoch files
        self._stale: dict[int, dict[int, int]] | None = None  # see _stale_index

    # -- life cycle ---------------------------------------------------------

    def open(self) -> None:
        """Create the layout, take the daemon lock, delete ``*.tmp`` leftovers
        and orphan sidecars. StoreLockedError if another process holds it."""
        if self._lock_fd is not None:
            return
        try:
            os.makedirs(self._epoch_dir, exist_ok=True)
            for d in self.obj_dirs:
                os.makedirs(os.path.join(d, ".stale", ".crc"), exist_ok=True)
                os.makedirs(os.path.join(d, ".crc"), exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _oserror(e, f"cannot set up store in {self.base_dir}") from e
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StoreLockedError(f"cannot lock {self._lock_path}: another sheep "
                                       f"daemon is using {self.base_dir}") from None
            raise _oserror(e, f"cannot lock {self._lock_path}") from e
        self._lock_fd = fd
        for d in self.obj_dirs:
            crc_dir = os.path.join(d, ".crc")
            for name in os.listdir(d):
                if name.endswith(".tmp"):
                    _unlink(os.path.join(d, name))
            for name in os.listdir(crc_dir):
                if name.endswith(".tmp") or not os.path.exists(os.path.join(d, name)):
                    _unlink(os.path.join(crc_dir, name))

    def close(self) -> None:
        """Release the daemon lock and drop the checksum cache."""
        with self._cache_lock:
            self._cache.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lockf lock
            self._lock_fd = None

    # -- small helpers ------------------------------------------------------

    def _write_atomic(self, path: str, data: bytes) -> None:
        """Write ``path`` via ``path.tmp`` + rename (+ fsyncs unless nosync)."""
        tmp = path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _pwrite_full(fd, data, 0)
                if not self.nosync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            if not self.nosync:
                _fsync_dir(os.path.dirname(path))
        except OSError as e:
            _unlink(tmp)
            raise _oserror(e, f"cannot write {path}") from e

    # -- config -------------------------------------------------------------

    def load_config(self) -> bytes | None:
        """Raw config bytes, None if absent."""
        try:
            with open(self._config, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _oserror(e, f"cannot read {self._config}") from e

    def save_config(self, raw: bytes) -> None:
        """Atomically replace the config (must be 40 bytes)."""
        if len(raw) != 40:
            raise _err("INVALID_PARMS", f"sheepdog_config must be 40 bytes, not {len(raw)}")
        with self._meta_lock:
            self._write_atomic(self._config, bytes(raw))

    # -- epochs -------------------------------------------------------------

    def _epoch_path(self, epoch: int) -> str:
        if not 0 < epoch <= 99_999_999:
            raise _err("INVALID_PARMS", f"epoch {epoch} out of range")
        return os.path.join(self._epoch_dir, "%08d" % epoch)

    def write_epoch(self, epoch: int, nodes: bytes, timestamp: int | None = None) -> None:
        """Atomically write ``epoch/%08d`` = nodes + LE time_t (default now)."""
        ts = int(time.time()) if timestamp is None else int(timestamp)
        with self._meta_lock:
            self._write_atomic(self._epoch_path(epoch), bytes(nodes) + _TS.pack(ts))

    def read_epoch(self, epoch: int) -> tuple[bytes, int] | None:
        """(nodes, timestamp) of the epoch log, None if absent."""
        path = self._epoch_path(epoch)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _oserror(e, f"cannot read {path}") from e
        if len(data) < _TS.size:
            raise _err("EIO", f"epoch log {path} is truncated ({len(data)} bytes)")
        return data[:-_TS.size], _TS.unpack_from(data, len(data) - _TS.size)[0]

    def epochs(self) -> list[int]:
        """Epochs having a log (names of exactly 8 decimal digits), ascending."""
        try:
            names = os.listdir(self._epoch_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _EPOCH_RE.fullmatch(n))

    def latest_epoch(self) -> int:
        """Largest logged epoch, 0 if none."""
        eps = self.epochs()
        return eps[-1] if eps else 0

    def remove_epoch(self, epoch: int) -> None:
        """Delete the log of one epoch (absent is fine)."""
        with self._meta_lock:
            _unlink(os.path.join(self._epoch_dir, "%08d" % epoch))
            if not self.nosync:
                _fsync_dir(self._epoch_dir)

    def remove_epochs(self) -> None:
        """Delete every epoch log (and leftover temporaries)."""
        with self._meta_lock:
            for name in os.listdir(self._epoch_dir):
                if _EPOCH_RE.fullmatch(name) or name.endswith(".tmp"):
                    _unlink(os.path.join(self._epoch_dir, name))
            if not self.nosync:
                _fsync_dir(self._epoch_dir)

    # -- object helpers -----------------------------------------------------

    def _lock_for(self, oid: int) -> threading.Lock:
        return self._locks[(oid ^ (oid >> 32)) % _NSTRIPES]

    def _home(self, oid: int) -> int:
        n = len(self.obj_dirs)
        return 0 if n == 1 else fnv1a64(oid.to_bytes(8, "little")) % n

    def _search_order(self, oid: int) -> list[int]:
        home = self._home(oid)
        return [home] + [i for i in range(len(self.obj_dirs)) if i != home]

    @staticmethod
    def _check_oid(oid: int) -> str:
        if not 0 < oid < 1 << 64:
            raise _err("INVALID_PARMS", f"invalid object id {oid:#x}")
        return "%016x" % oid

    def _open_obj(self, oid: int, flags: int) -> tuple[int, int, str]:
        """Open the object file: (fd, dir index, name). NO_OBJ if absent."""
        name = self._check_oid(oid)
        for i in self._search_order(oid):
            try:
                return os.open(os.path.join(self.obj_dirs[i], name), flags), i, name
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _oserror(e, f"cannot open object {name}") from e
        raise _err("NO_OBJ", f"object {name} not found")

    def _find(self, oid: int) -> tuple[int, os.stat_result] | None:
        name = self._check_oid(oid)
        for i in self._search_order(oid):
            try:
                return i, os.stat(os.path.join(self.obj_dirs[i], name))
            except FileNotFoundError:
                continue
        return None

    def _sidecar(self, d: int, name: str) -> str:
        return os.path.join(self.obj_dirs[d], ".crc", name)

    def _load_sidecar(self, d: int, name: str, size: int) -> np.ndarray:
        """Read and validate a sidecar from disk; EIO if missing or bad."""
        path = self._sidecar(d, name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise _err("EIO", f"object {name}: checksum file {path} is missing") from None
        except OSError as e:
            raise _oserror(e, f"object {name}: cannot read checksum file") from e
        n = _nblocks(size)
        if len(raw) < HDR_LEN:
            raise _err("EIO", f"object {name}: checksum file {path} is truncated")
        magic, ver, hlen, bsize, count = _HDR.unpack_from(raw)
        if (magic, ver, hlen, bsize) != (SIDECAR_MAGIC, SIDECAR_VERSION, HDR_LEN, BLOCK):
            raise _err("EIO", f"object {name}: bad checksum file header in {path}")
        if count != n or len(raw) != HDR_LEN + 4 * n:
            raise _err("EIO", f"object {name}: checksum file {path} covers {count} blocks, "
                              f"object has {n}")
        return np.frombuffer(raw, dtype="<u4", offset=HDR_LEN).copy()

    def _cached(self, oid: int, key: tuple) -> _Entry | None:
        with self._cache_lock:
            ent = self._cache.get(oid)
            if ent is None or ent.key != key:
                return None
            self._cache.move_to_end(oid)
            return ent

    def _cache_put(self, oid: int, ent: _Entry) -> None:
        with self._cache_lock:
            self._cache[oid] = ent
            self._cache.move_to_end(oid)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)

    def _cache_drop(self, oid: int) -> None:
        with self._cache_lock:
            self._cache.pop(oid, None)

    def _entry_locked(self, oid: int, d: int, name: str, st: os.stat_result) -> _Entry:
        """Checksums of the open object (caller holds the object's lock)."""
        key = (st.st_dev, st.st_ino, st.st_size, d)
        ent = self._cached(oid, key)
        if ent is None:
            ent = _Entry(key, self._load_sidecar(d, name, st.st_size))
            self._cache_put(oid, ent)
        return ent

    @staticmethod
    def _check_range(name: str, offset: int, length: int, size: int) -> None:
        if offset < 0 or length < 0 or offset + length > size:
            raise _err("INVALID_PARMS", f"object {name}: range {offset}+{length} "
                                        f"outside its {size} bytes")

    # -- objects ------------------------------------------------------------

    def create_and_write(self, oid: int, size: int, data=b"", offset: int = 0,
                         sparse: bool = False) -> None:
        """Atomically create (or replace) an object of ``size`` zero bytes
        with ``data`` at ``offset``; see the module docstring."""
        name = self._check_oid(oid)
        mv = memoryview(data).cast("B")
        end = offset + len(mv)
        if size < 0 or size >= 1 << 32 or offset < 0 or end > size:
            raise _err("INVALID_PARMS", f"object {name}: {len(mv)} bytes at {offset} "
                                        f"do not fit in {size}")
        d = self._home(oid)
        odir = self.obj_dirs[d]
        path = os.path.join(odir, name)
        tmp = path + ".tmp"
        side = self._sidecar(d, name)
        side_tmp = side + ".tmp"
        # Checksums: constant for zero blocks, computed for the touched ones.
        n = _nblocks(size)
        crcs = np.full(n, ZERO_CRC, dtype="<u4")
        if size % BLOCK:
            crcs[-1] = _crc32c(bytes(size % BLOCK))
        if mv:
            a = offset - offset % BLOCK
            e = min(_nblocks(end) * BLOCK, size)
            if a == offset and e == end:
                buf = mv
            else:
                buf = bytearray(e - a)
                buf[offset - a:end - a] = mv
            crcs[a // BLOCK:a // BLOCK + _nblocks(e - a)] = _block_crcs(buf)
        with self._lock_for(oid):
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return  # §16: a create of this object is already in progress
            except OSError as e:
                raise _oserror(e, f"cannot create object {name}") from e
            try:
                try:
                    if sparse:
                        os.ftruncate(fd, size)
                    else:
                        try:
                            if size:
                                os.posix_fallocate(fd, 0, size)
                        except OSError as e:
                            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                                raise
                            os.ftruncate(fd, size)
                    if mv:
                        _pwrite_full(fd, mv, offset)
                    if not self.nosync:
                        os.fsync(fd)
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                self._write_atomic(side, _HDR.pack(SIDECAR_MAGIC, SIDECAR_VERSION, HDR_LEN,
                                                   BLOCK, n) + crcs.tobytes())
                os.rename(tmp, path)
                if not self.nosync:
                    _fsync_dir(odir)
            except OSError as e:
                _unlink(tmp)
                raise _oserror(e, f"cannot create object {name}") from e
            except BaseException:
                _unlink(tmp)
                _unlink(side_tmp)
                raise
            self._cache_put(oid, _Entry((st.st_dev, st.st_ino, st.st_size, d), crcs))
            for i in range(len(self.obj_dirs)):  # drop copies shadowed by this one
                if i != d and _unlink(os.path.join(self.obj_dirs[i], name)):
                    _unlink(self._sidecar(i, name))

    def write(self, oid: int, data, offset: int) -> None:
        """Overwrite a range of an existing object; durable unless nosync."""
        mv = memoryview(data).cast("B")
        end = offset + len(mv)
        with self._lock_for(oid):
            fd, d, name = self._open_obj(oid, os.O_RDWR)
            try:
                st = os.fstat(fd)
                size = st.st_size
                self._check_range(name, offset, len(mv), size)
                if not mv:
                    return
                ent = self._entry_locked(oid, d, name, st)
                b0 = offset // BLOCK
                a = b0 * BLOCK
                e = min(_nblocks(end) * BLOCK, size)
                if a == offset and e == end:
                    buf = mv
                else:  # read-modify of the partly overwritten edge blocks
                    buf = bytearray(e - a)
                    edges = {a} if a < offset else set()
                    if end < e:
                        edges.add(e - 1 - (e - 1) % BLOCK)
                    for s in edges:
                        blk = _pread_full(fd, min(BLOCK, size - s), s)
                        bi = s // BLOCK
                        if _crc32c(blk) != int(ent.crcs[bi]):
                            raise _err("EIO", f"object {name}: checksum mismatch in "
                                              f"block {bi} (offset {s})")
                        buf[s - a:s - a + len(blk)] = blk
                    buf[offset - a:end - a] = mv
                new = _block_crcs(buf)
                _pwrite_full(fd, mv, offset)
                ent.crcs[b0:b0 + len(new)] = new
                sfd = os.open(self._sidecar(d, name), os.O_WRONLY)
                try:
                    _pwrite_full(sfd, new.tobytes(), HDR_LEN + 4 * b0)
                    if not self.nosync:
                        os.fdatasync(fd)
                        os.fdatasync(sfd)
                finally:
                    os.close(sfd)
            except OSError as e:
                self._cache_drop(oid)
                raise _oserror(e, f"cannot write object {name}") from e
            finally:
                os.close(fd)

    def _read_once(self, oid: int, offset: int, length: int, locked: bool) -> bytes:
        fd, d, name = self._open_obj(oid, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            size = st.st_size
            self._check_range(name, offset, length, size)
            if not length:
                return b""
            if locked:
                ent = self._entry_locked(oid, d, name, st)
            else:
                ent = self._cached(oid, (st.st_dev, st.st_ino, size, d))
                if ent is None:
                    raise _Retry
            b0 = offset // BLOCK
            a = b0 * BLOCK
            end = offset + length
            e = min(_nblocks(end) * BLOCK, size)
            buf = _pread_full(fd, e - a, a)
        except OSError as e:
            raise _oserror(e, f"cannot read object {name}") from e
        finally:
            os.close(fd)
        got = _block_crcs(buf)
        bad = np.flatnonzero(got != ent.crcs[b0:b0 + len(got)])
        if len(bad):
            if not locked:
                raise _Retry
            blk = b0 + int(bad[0])
            raise _err("EIO", f"object {name}: checksum mismatch in block {blk} "
                              f"(offset {blk * BLOCK}); {len(bad)} bad block(s) in the range")
        if a == offset and e == end:
            return buf
        return bytes(memoryview(buf)[offset - a:end - a])

    def read(self, oid: int, offset: int, length: int) -> bytes:
        """Exactly ``length`` verified bytes; EIO rather than bad data."""
        try:
            return self._read_once(oid, offset, length, locked=False)
        except _Retry:
            pass
        with self._lock_for(oid):
            return self._read_once(oid, offset, length, locked=True)

    def remove(self, oid: int) -> None:
        """Delete the object (every copy) and its sidecar; NO_OBJ if absent."""
        name = self._check_oid(oid)
        found = False
        with self._lock_for(oid):
            self._cache_drop(oid)
            for i in range(len(self.obj_dirs)):
                try:
                    if _unlink(os.path.join(self.obj_dirs[i], name)):
                        found = True
                        _unlink(self._sidecar(i, name))
                except OSError as e:
                    raise _oserror(e, f"cannot remove object {name}") from e
        if not found:
            raise _err("NO_OBJ", f"object {name} not found")

    def exists(self, oid: int) -> bool:
        """Whether the object file exists in any object directory."""
        return self._find(oid) is not None

    def object_size(self, oid: int) -> int | None:
        """File size of the object, None if absent."""
        found = self._find(oid)
        return None if found is None else found[1].st_size

    def _scan(self):
        for d in self.obj_dirs:
            with os.scandir(d) as it:
                for ent in it:
                    if _OID_RE.fullmatch(ent.name) and int(ent.name, 16):
                        yield ent

    def list_oids(self) -> list[int]:
        """All object ids (16 hex digit, non-zero names), ascending, unique."""
        return sorted({int(ent.name, 16) for ent in self._scan()})

    def wipe(self) -> None:
        """Delete every object, sidecar, temporary file and stale copy."""
        for lk in self._locks:
            lk.acquire()
        try:
            with self._cache_lock:
                self._cache.clear()
            self._stale = {}
            for d in self.obj_dirs:
                for sub in (d, os.path.join(d, ".crc"), os.path.join(d, ".stale"),
                            os.path.join(d, ".stale", ".crc")):
                    with os.scandir(sub) as it:
                        for ent in it:
                            if not ent.name.startswith(".") and ent.is_file(follow_symlinks=False):
                                _unlink(ent.path)
                if not self.nosync:
                    _fsync_dir(d)
        finally:
            for lk in self._locks:
                lk.release()

    # -- stale copies (PROTOCOL §15/§16: .stale/<oid>.<epoch>) --------------

    def _stale_paths(self, d: int, name: str, epoch: int) -> tuple[str, str]:
        stale = os.path.join(self.obj_dirs[d], ".stale")
        return (os.path.join(stale, f"{name}.{epoch}"),
                os.path.join(stale, ".crc", f"{name}.{epoch}"))

    def _stale_index(self) -> dict[int, dict[int, int]]:
        """oid -> {epoch: dir index} of every stale copy (built on first use)."""
        idx = self._stale
        if idx is None:
            idx = {}
            for d, od in enumerate(self.obj_dirs):
                try:
                    names = os.listdir(os.path.join(od, ".stale"))
                except FileNotFoundError:
                    continue
                for n in names:
                    oid_s, _, ep = n.partition(".")
                    if _OID_RE.fullmatch(oid_s) and ep.isdigit():
                        idx.setdefault(int(oid_s, 16), {})[int(ep)] = d
            self._stale = idx
        return idx

    def move_to_stale(self, oid: int, epoch: int) -> bool:
        """Move the live object (and its checksums) to ``.stale/<oid>.<epoch>``.

        Afterwards the object is absent for ``read``/``write``; the copy stays
        readable with :meth:`read_stale` until :meth:`purge_stale`.  False if
        there was no live object."""
        name = self._check_oid(oid)
        with self._lock_for(oid):
            found = self._find(oid)
            if found is None:
                return False
            d = found[0]
            self._cache_drop(oid)
            obj_path, crc_path = self._stale_paths(d, name, epoch)
            try:
                os.makedirs(os.path.dirname(crc_path), exist_ok=True)
                os.replace(self._sidecar(d, name), crc_path)
                os.replace(os.path.join(self.obj_dirs[d], name), obj_path)
            except OSError as e:
                raise _oserror(e, f"cannot move object {name} to .stale") from e
            self._stale_index().setdefault(oid, {})[epoch] = d
            return True

    def stale_epochs(self, oid: int) -> list[int]:
        """Epochs of the stale copies of ``oid``, newest first."""
        return sorted(self._stale_index().get(oid, {}), reverse=True)

    def list_stale(self) -> dict[int, list[int]]:
        """oid -> epochs (newest first) of every stale copy."""
        return {o: sorted(e, reverse=True) for o, e in self._stale_index().items()}

    def read_stale(self, oid: int, epoch: int) -> bytes:
        """The whole stale copy of ``oid`` from ``epoch``, checksum-verified
        (NO_OBJ if absent, EIO if damaged)."""
        name = self._check_oid(oid)
        d = self._stale_index().get(oid, {}).get(epoch)
        if d is None:
            raise _err("NO_OBJ", f"no stale copy of {name} from epoch {epoch}")
        obj_path, crc_path = self._stale_paths(d, name, epoch)
        try:
            with open(obj_path, "rb") as f:
                data = f.read()
            with open(crc_path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise _oserror(e, f"cannot read stale copy {name}.{epoch}") from e
        want = np.frombuffer(raw, dtype="<u4", offset=HDR_LEN) if len(raw) >= HDR_LEN else None
        got = _block_crcs(data)
        if want is None or len(want) != len(got) or not np.array_equal(want, got):
            raise _err("EIO", f"stale copy {name}.{epoch} fails its checksum")
        return data

    def purge_stale(self) -> int:
        """Delete every stale copy; returns how many were deleted."""
        idx = self._stale_index()
        n = 0
        for oid, eps in list(idx.items()):
            name = "%016x" % oid
            with self._lock_for(oid):
                for ep, d in list(eps.items()):
                    for path in self._stale_paths(d, name, ep):
                        _unlink(path)
                    n += 1
                idx.pop(oid, None)
        return n

    def verify(self, oid: int) -> list[int]:
        """Indices of blocks whose data does not match the sidecar on disk
        (every block if the sidecar is missing or unusable)."""
        with self._lock_for(oid):
            fd, d, name = self._open_obj(oid, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                n = _nblocks(size)
                try:
                    want = self._load_sidecar(d, name, size)
                except Exception:
                    return list(range(n))
                bad: list[int] = []
                step = 256 * BLOCK
                for off in range(0, size, step):
                    got = _block_crcs(_pread_full(fd, min(step, size - off), off))
                    b0 = off // BLOCK
                    bad.extend((np.flatnonzero(got != want[b0:b0 + len(got)]) + b0).tolist())
                return bad
            except OSError as e:
                raise _oserror(e, f"cannot verify object {name}") from e
            finally:
                os.close(fd)

    def healthy(self) -> str | None:
        """None if every object directory is still there; else what is wrong."""
        for d in self.obj_dirs:
            if not os.path.isdir(d):
                return f"object directory {d} has vanished"
        return None

    def capacity(self) -> int:
        """Total size of the distinct filesystems holding object dirs."""
        seen: set[int] = set()
        total = 0
        for d in self.obj_dirs:
            dev = os.stat(d).st_dev
            if dev in seen:
                continue
            seen.add(dev)
            vfs = os.statvfs(d)
            total += vfs.f_blocks * vfs.f_frsize
        return total

    def used(self) -> int:
        """Sum of the object file sizes (apparent sizes)."""
        total = 0
        for ent in self._scan():
            with contextlib.suppress(FileNotFoundError):
                total += ent.stat(follow_symlinks=False).st_size
        return total
