"""The parts of a node's base directory that are not objects (docs/protocol.md §15, §16).

Layout under ``base_dir``::

    config          40-byte sheepdog_config, replaced via config.tmp + rename
    epoch/NNNNNNNN  epoch logs: sd_node records + 8-byte LE time_t
    lock            lockf()ed on its first byte while a daemon runs

Guarantees: every replacement is atomic (``.tmp`` + rename) and, unless the
store is ``nosync``, durable on return — the file and its directory are
fsynced, so neither a new file nor a removal can be undone by a power loss.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import threading
import time

from sheep.proto.errors import CODES, error_for
from sheep.store.base import StoreLockedError, WouldBlock

_TS = struct.Struct("<q")
_EPOCH_RE = re.compile(r"[0-9]{8}")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# errors that mean the disk (not one object) is failing or gone
_DISK_FAILURE = {errno.EIO, errno.EROFS, errno.ENODEV, errno.ENXIO, errno.ENOTDIR,
                 errno.ESTALE}


def err(name: str, msg: str):
    return error_for(CODES[name], msg)


def oserror(exc: OSError, what: str):
    """Map an OSError to NO_SPACE (disk full) or EIO.  An EIO caused by the
    device (not by a checksum mismatch) carries ``disk_failure = True``."""
    if exc.errno in _NO_SPACE:
        return err("NO_SPACE", f"{what}: {exc.strerror}")
    e = err("EIO", f"{what}: {exc}")
    e.disk_failure = exc.errno in _DISK_FAILURE
    return e


def pread_full(fd: int, length: int, offset: int) -> bytes:
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


def pread_nowait(fd: int, length: int, offset: int) -> bytearray:
    """``length`` bytes at ``offset``, only if all are in the page cache
    (``preadv2`` with ``RWF_NOWAIT``); :class:`WouldBlock` if any is not, or
    where the kernel or file system cannot tell (EOPNOTSUPP, EINVAL)."""
    buf = bytearray(length)
    try:
        n = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except (BlockingIOError, AttributeError):  # (no os.RWF_NOWAIT: not Linux)
        raise WouldBlock from None
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            raise WouldBlock from None
        raise
    if n != length:  # partly cached, or a short file (the blocking read tells which)
        raise WouldBlock
    return buf


def pwrite_full(fd: int, data, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def write_atomic(path: str, data: bytes, nosync: bool) -> None:
    """Replace ``path`` by ``data`` via ``path.tmp`` + rename; durable unless nosync."""
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pwrite_full(fd, data, 0)
            if not nosync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if not nosync:
            fsync_dir(os.path.dirname(path))
    except OSError as e:
        unlink(tmp)
        raise oserror(e, f"cannot write {path}") from e


class BaseDir:
    """Config, epoch log and the daemon lock of one base directory."""

    def __init__(self, base_dir: str, nosync: bool = False):
        self.base_dir = os.path.abspath(base_dir)
        self.nosync = nosync
        self._epoch_dir = os.path.join(self.base_dir, "epoch")
        self._config = os.path.join(self.base_dir, "config")
        self._lock_path = os.path.join(self.base_dir, "lock")
        self._lock_fd: int | None = None
        self._meta_lock = threading.Lock()  # config and epoch files

    def _lock_base(self) -> bool:
        """Create the base layout and take the daemon lock; False if we hold it already."""
        if self._lock_fd is not None:
            return False
        try:
            os.makedirs(self._epoch_dir, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise oserror(e, f"cannot set up store in {self.base_dir}") from e
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StoreLockedError(f"cannot lock {self._lock_path}: another sheep "
                                       f"daemon is using {self.base_dir}") from None
            raise oserror(e, f"cannot lock {self._lock_path}") from e
        self._lock_fd = fd
        return True

    def _unlock_base(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lockf lock
            self._lock_fd = None

    # -- config -------------------------------------------------------------

    def load_config(self) -> bytes | None:
        """Raw config bytes, None if absent."""
        try:
            with open(self._config, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise oserror(e, f"cannot read {self._config}") from e

    def save_config(self, raw: bytes) -> None:
        """Atomically replace the config (must be 40 bytes)."""
        if len(raw) != 40:
            raise err("INVALID_PARMS", f"sheepdog_config must be 40 bytes, not {len(raw)}")
        with self._meta_lock:
            write_atomic(self._config, bytes(raw), self.nosync)

    # -- epochs -------------------------------------------------------------

    def _epoch_path(self, epoch: int) -> str:
        if not 0 < epoch <= 99_999_999:
            raise err("INVALID_PARMS", f"epoch {epoch} out of range")
        return os.path.join(self._epoch_dir, "%08d" % epoch)

    def write_epoch(self, epoch: int, nodes: bytes, timestamp: int | None = None) -> None:
        """Atomically write ``epoch/%08d`` = nodes + LE time_t (default now)."""
        ts = int(time.time()) if timestamp is None else int(timestamp)
        with self._meta_lock:
            write_atomic(self._epoch_path(epoch), bytes(nodes) + _TS.pack(ts), self.nosync)

    def read_epoch(self, epoch: int) -> tuple[bytes, int] | None:
        """(nodes, timestamp) of the epoch log, None if absent."""
        path = self._epoch_path(epoch)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise oserror(e, f"cannot read {path}") from e
        if len(data) < _TS.size:
            raise err("EIO", f"epoch log {path} is truncated ({len(data)} bytes)")
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
            unlink(os.path.join(self._epoch_dir, "%08d" % epoch))
            if not self.nosync:
                fsync_dir(self._epoch_dir)

    def remove_epochs(self) -> None:
        """Delete every epoch log (and leftover temporaries)."""
        with self._meta_lock:
            for name in os.listdir(self._epoch_dir):
                if _EPOCH_RE.fullmatch(name) or name.endswith(".tmp"):
                    unlink(os.path.join(self._epoch_dir, name))
            if not self.nosync:
                fsync_dir(self._epoch_dir)

    def write_file(self, name: str, data: bytes) -> None:
        """Atomically replace ``BASE/name`` (small state files of other layers)."""
        with self._meta_lock:
            write_atomic(os.path.join(self.base_dir, name), data, self.nosync)

    def read_file(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.base_dir, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
