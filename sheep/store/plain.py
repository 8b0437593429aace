"""The "plain" store: one file per object (docs/protocol.md §16,
docs/data-safety.md "Versions").

Layout (``sheep.store.basedir`` holds config, epoch logs and the lock)::

    ROOT/obj/<oid>                  object data, raw, always at full size
    ROOT/obj/.stale/<oid>.<epoch>   stale copies (Sheepdog 1.0's layout)
    ROOT/meta/<oid>                 version + block checksums (sheep.store.meta)
    ROOT/meta/stale/<oid>.<epoch>   the same for a stale copy

``obj/`` holds only object files and ``.stale/``, as in 1.0.  With extra
directories (``sheep BASE,DIR1,DIR2``, multi-disk) the objects go straight
into each ``DIRn/`` (1.0's layout: ``DIRn/<oid>``, ``DIRn/.stale/``) and
their records into ``DIRn/.meta/``; ``BASE/obj`` then stays empty.  Which
disk holds an object is 1.0's md placement (``sheep.store.md``); the disk
set can change at run time (``sheep.store.md_disks``).  An object is looked
up on its home disk first, then on the others (a copy not moved yet); a new
copy goes home and a copy on another disk is then deleted.  Data objects are
pre-allocated, inode and ledger objects are sparse.

Theory of operation
-------------------
* **Journal first** (without ``nosync``, one object directory): a write's
  blocks, CRC pairs and version are made durable in the write-ahead journal
  (:mod:`sheep.store.journaled`), then applied in the page cache; replayed
  after a crash.
* **Record before data** (other writes: several disks, or a large write to
  an object without journal entries).  A write makes the record durable (new
  CRCs of the touched blocks, old ones kept as ``prev``, bumped version),
  then writes and syncs the data: after a crash in between every block
  still reads, and the version never claims less than the data holds.  A
  create writes
  ``<meta>.tmp`` and ``<obj>.tmp``, renames the record first, the object
  second, then syncs both directories.
* **Installing a fetched copy** (:meth:`install`) renames the object first:
  a crash in between leaves new data under the old record (EIO, repairable
  from the source) or no record (version unknown) — never a copy claiming
  more than it holds.  A copy with a greater version is never replaced.
* **Checks under the object lock**: every mutating call runs the caller's
  ``check()`` under the object's (striped) lock first; the daemon checks
  epoch and fencing there, atomically with the change.
* **Reads** take no lock: pread of the touched blocks, CRC check (``cur`` or
  ``prev``) against the cached record; on a mismatch the read is retried once
  under the lock, then EIO.  Files are opened per call, so objects replaced
  behind our back are noticed.
* **Copies without a record**, or whose record describes another size (the
  file was replaced by hand), get one rebuilt from their data (version 0)
  the first time they are used; a damaged record makes the copy EIO.
* Record cache: an LRU keyed by oid, validated by (st_dev, st_ino, st_size,
  directory), loaded and changed only under the object's lock.  Removals,
  renames and moves are followed by directory fsyncs unless ``nosync``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import numpy as np

from sheep.proto.errors import CODES, SdError
from sheep.store import meta as M
from sheep.store.base import Store
from sheep.store.basedir import (
    BaseDir,
    err,
    fsync_dir,
    oserror,
    pread_full,
    pwrite_full,
    unlink,
)
from sheep.store.inventory import Inventory
from sheep.store.journaled import JournaledWrites
from sheep.store.md_disks import MdDisks
from sheep.store.reads import ObjectReads
from sheep.store.stale import StaleCopies

log = logging.getLogger("sheep.store")

BLOCK = M.BLOCK
HDR_LEN = M.HDR_LEN
_crc32c = M.crc32c
crcmod_crc32c = M.crcmod_crc32c
_NSTRIPES = 512
_CACHE_MAX = 4096
Check = Callable[[], None] | None


class _Entry:
    __slots__ = ("key", "meta")

    def __init__(self, key: tuple, meta: M.Meta):
        self.key = key  # (st_dev, st_ino, st_size, dir index)
        self.meta = meta


class PlainStore(Inventory, MdDisks, StaleCopies, ObjectReads, JournaledWrites, BaseDir,
                 Store):
    """File-per-object store; see the module docstring for the format."""

    def __init__(self, base_dir: str, extra_dirs: Sequence[str] = (), nosync: bool = False):
        super().__init__(base_dir, nosync)
        self._md_init(extra_dirs)
        self._locks = [threading.Lock() for _ in range(_NSTRIPES)]
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        self._cache_lock = threading.Lock()
        # reads do not touch the access time (dropped if the files are not ours: EPERM)
        self._noatime = getattr(os, "O_NOATIME", 0)
        self._stale: dict[int, dict[int, int]] | None = None  # oid -> {epoch: dir}
        self._stale_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------

    def open(self) -> None:
        """Create the layout, take the daemon lock and tidy up after a crash
        (see :meth:`sheep.store.stale.StaleCopies._tidy`)."""
        if not self._lock_base():
            return
        try:
            os.makedirs(os.path.join(self.base_dir, "obj"), exist_ok=True)
            for d in range(len(self.obj_dirs)):
                os.makedirs(os.path.join(self.obj_dirs[d], ".stale"), exist_ok=True)
                os.makedirs(os.path.join(self.meta_dirs[d], "stale"), exist_ok=True)
                self._tidy(d)
            self._md_open()
            self._journal_open()  # replays what a crash left before anything reads
        except OSError as e:
            raise oserror(e, f"cannot set up store in {self.base_dir}") from e

    def close(self) -> None:
        """Checkpoint the journal, release the daemon lock and drop the record cache."""
        self._journal_close()
        with self._cache_lock:
            self._cache.clear()
        self._unlock_base()

    # -- helpers --------------------------------------------------------------

    def _lock_for(self, oid: int) -> threading.Lock:
        return self._locks[(oid ^ (oid >> 32)) % _NSTRIPES]

    def _home(self, oid: int) -> int:
        return 0 if len(self.obj_dirs) == 1 else self._placement.disk_of(oid)

    def _search_order(self, oid: int) -> list[int]:
        home = self._home(oid)
        return [home] + [i for i in range(len(self.obj_dirs)) if i != home]

    @staticmethod
    def _check_oid(oid: int) -> str:
        if not 0 < oid < 1 << 64:
            raise err("INVALID_PARMS", f"invalid object id {oid:#x}")
        return "%016x" % oid

    def _paths(self, d: int, name: str, epoch: int | None = None) -> tuple[str, str]:
        """(object path, record path) of a live copy, or of a stale one."""
        if epoch is None:
            return os.path.join(self.obj_dirs[d], name), os.path.join(self.meta_dirs[d], name)
        return (os.path.join(self.obj_dirs[d], ".stale", f"{name}.{epoch}"),
                os.path.join(self.meta_dirs[d], "stale", f"{name}.{epoch}"))

    def _sync_dirs(self, dirs: Iterable[str]) -> None:
        if not self.nosync:
            for path in set(dirs):
                fsync_dir(path)

    def _open_obj(self, oid: int, flags: int) -> tuple[int, int, str]:
        """Open the object file: (fd, dir index, name). NO_OBJ if absent."""
        name = self._check_oid(oid)
        for i in self._search_order(oid):
            path = os.path.join(self.obj_dirs[i], name)
            try:
                return os.open(path, flags), i, name
            except FileNotFoundError:
                continue
            except PermissionError as e:
                if not flags & self._noatime:
                    raise oserror(e, f"cannot open object {name}") from e
                self._noatime = 0  # not the files' owner: no O_NOATIME
                return self._open_obj(oid, flags & ~getattr(os, "O_NOATIME", 0))
            except OSError as e:
                raise oserror(e, f"cannot open object {name}") from e
        raise err("NO_OBJ", f"object {name} not found")

    def _find(self, oid: int) -> tuple[int, os.stat_result] | None:
        name = self._check_oid(oid)
        for i in self._search_order(oid):
            try:
                return i, os.stat(os.path.join(self.obj_dirs[i], name))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise oserror(e, f"cannot stat object {name}") from e
        return None

    @staticmethod
    def _load_meta(path: str, size: int) -> M.Meta | None:
        """The record at ``path``; None if absent or if it describes another
        size (the copy was replaced by hand: it is then rebuilt, version 0);
        EIO if damaged."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise oserror(e, f"cannot read record {path}") from e
        try:
            return M.Meta.unpack(raw, size)
        except M.SizeMismatch as e:
            log.warning("%s: %s; the copy was replaced: rebuilding its record", path, e)
            return None
        except M.MetaError as e:
            raise err("EIO", f"record {path}: {e}") from None

    def _rebuild_meta(self, fd: int, size: int, path: str) -> M.Meta:
        """A copy without a record: checksum its data, version 0 (unknown)."""
        crcs = np.empty(0, dtype="<u4")
        parts = []
        step = 256 * BLOCK
        for off in range(0, size, step):
            parts.append(M.block_crcs(pread_full(fd, min(step, size - off), off)))
        if parts:
            crcs = np.concatenate(parts)
        meta = M.Meta.fresh(0, crcs)
        with contextlib.suppress(OSError):  # a read-only disk still serves the copy
            self._write_file(path, meta.pack())
        log.warning("%s: no record for this copy; rebuilt from its data (version unknown)", path)
        return meta

    def _write_file(self, path: str, data: bytes) -> None:
        self._write_tmp(path + ".tmp", data)
        os.rename(path + ".tmp", path)

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

    def _entry_locked(self, oid: int, d: int, name: str, fd: int,
                      st: os.stat_result) -> _Entry:
        """The record of the open live copy (caller holds the object's lock)."""
        key = (st.st_dev, st.st_ino, st.st_size, d)
        ent = self._cached(oid, key)
        if ent is None:
            path = self._paths(d, name)[1]
            meta = self._load_meta(path, st.st_size) or self._rebuild_meta(fd, st.st_size, path)
            ent = _Entry(key, meta)
            self._cache_put(oid, ent)
        return ent

    @staticmethod
    def _check_range(name: str, offset: int, length: int, size: int) -> None:
        if offset < 0 or length < 0 or offset + length > size:
            raise err("INVALID_PARMS", f"object {name}: range {offset}+{length} "
                                       f"outside its {size} bytes")

    @staticmethod
    def _verify(meta: M.Meta, got: np.ndarray, b0: int, what: str) -> None:
        bad = meta.bad_blocks(got, b0)
        if len(bad):
            blk = b0 + int(bad[0])
            raise err("EIO", f"{what}: checksum mismatch in block {blk} (offset "
                             f"{blk * BLOCK}); {len(bad)} bad block(s) in the range")

    # -- objects: writes ----------------------------------------------------

    def create_and_write(self, oid: int, size: int, data=b"", offset: int = 0,
                         sparse: bool = False, epoch: int = 0, check: Check = None) -> int:
        """Atomically create (or replace) an object of ``size`` zero bytes with
        ``data`` at ``offset``; returns its new version (see module docstring)."""
        name = self._check_oid(oid)
        mv = memoryview(data).cast("B")
        end = offset + len(mv)
        if size < 0 or size >= 1 << 32 or offset < 0 or end > size:
            raise err("INVALID_PARMS", f"object {name}: {len(mv)} bytes at {offset} "
                                       f"do not fit in {size}")
        cur = M.zero_crcs(size)
        if mv:
            a = offset - offset % BLOCK
            e = min(M.nblocks(end) * BLOCK, size)
            buf = mv
            if a != offset or e != end:
                buf = bytearray(e - a)
                buf[offset - a:end - a] = mv
            cur[a // BLOCK:a // BLOCK + M.nblocks(e - a)] = M.block_crcs(buf)
        with self._lock_for(oid):
            if check is not None:
                check()
            old = self._old_meta(oid)
            prev = old.crcs[:, 0] if old is not None and old.nblocks == len(cur) else None
            meta = M.Meta.fresh(M.bump(old.version if old else 0, epoch), cur, prev)
            d = self._home(oid)
            self._put_files(oid, d, name, size, mv, offset, sparse, meta, record_first=True)
            return meta.version

    def install(self, oid: int, size: int, data, version: int, sparse: bool = False,
                check: Check = None, replace_damaged: bool = False) -> bool:
        """Store a whole copy fetched from elsewhere with its ``version``.

        Replaces a live copy only if that copy's version is not greater (equal
        versions are replaced: copies converge).  ``replace_damaged``: the
        caller found the live copy damaged or missing — replace it if it is
        missing or still damaged, unless its record says it is newer.
        Returns whether it stored."""
        name = self._check_oid(oid)
        mv = memoryview(data).cast("B")
        if len(mv) != size:
            raise err("INVALID_PARMS", f"object {name}: a copy of {len(mv)} bytes for "
                                       f"an object of {size}")
        with self._lock_for(oid):
            if check is not None:
                check()
            if replace_damaged:
                if not self._damaged_locked(oid, version):
                    return False
            else:
                old = self._old_meta(oid)  # EIO if its record is damaged
                if old is not None and old.version > version:
                    return False
            meta = M.Meta.fresh(version, M.block_crcs(mv))
            self._put_files(oid, self._home(oid), name, size, mv, 0, sparse, meta,
                            record_first=False)
            return True

    def _old_meta(self, oid: int) -> M.Meta | None:
        """Record of the current live copy (object lock held); None if absent."""
        try:
            fd, d, name = self._open_obj(oid, os.O_RDONLY)
        except SdError as e:
            if e.code == CODES["NO_OBJ"]:
                return None
            raise
        try:
            return self._entry_locked(oid, d, name, fd, os.fstat(fd)).meta
        finally:
            os.close(fd)

    def _put_files(self, oid: int, d: int, name: str, size: int, mv, offset: int,
                   sparse: bool, meta: M.Meta, record_first: bool) -> None:
        self._settle(oid)  # no journaled write may replay over this copy
        path, mpath = self._paths(d, name)
        tmp, mtmp = path + ".tmp", mpath + ".tmp"
        try:
            unlink(tmp)  # a leftover of a failed create: we hold the object's lock
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if sparse or not size:
                    os.ftruncate(fd, size)
                else:
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as e:
                        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                            raise
                        os.ftruncate(fd, size)
                if len(mv):
                    pwrite_full(fd, mv, offset)
                if not self.nosync:
                    os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._write_tmp(mtmp, meta.pack())
            if record_first:
                os.rename(mtmp, mpath)
                os.rename(tmp, path)
            else:
                os.rename(tmp, path)
                os.rename(mtmp, mpath)
            self._sync_dirs((self.obj_dirs[d], self.meta_dirs[d]))
        except OSError as e:
            unlink(tmp)
            unlink(mtmp)
            self._cache_drop(oid)
            raise oserror(e, f"cannot create object {name}") from e
        except BaseException:
            unlink(tmp)
            unlink(mtmp)
            self._cache_drop(oid)
            raise
        self._cache_put(oid, _Entry((st.st_dev, st.st_ino, st.st_size, d), meta))
        for i in range(len(self.obj_dirs)):  # drop copies shadowed by this one
            if i != d:
                p, mp = self._paths(i, name)
                if unlink(p):
                    unlink(mp)

    def _write_tmp(self, tmp: str, data: bytes) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            pwrite_full(fd, data, 0)
            if not self.nosync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, oid: int, data, offset: int, epoch: int = 0, check: Check = None) -> int:
        """Overwrite a range of an existing object; returns its new version.
        Durable on return unless nosync: in the journal, or record then data
        (see the module docstring)."""
        mv = memoryview(data).cast("B")
        end = offset + len(mv)
        with self._lock_for(oid):
            if check is not None:
                check()
            fd, d, name = self._open_obj(oid, os.O_RDWR)
            try:
                st = os.fstat(fd)
                size = st.st_size
                self._check_range(name, offset, len(mv), size)
                ent = self._entry_locked(oid, d, name, fd, st)
                if not mv:
                    return ent.meta.version
                b0 = offset // BLOCK
                a = b0 * BLOCK
                e = min(M.nblocks(end) * BLOCK, size)
                prev = ent.meta.crcs[b0:b0 + M.nblocks(e - a), 0].copy()
                if a == offset and e == end:
                    buf = mv
                else:  # read-modify of the partly overwritten edge blocks
                    buf = bytearray(e - a)
                    edges = {a} if a < offset else set()
                    if end < e:
                        edges.add(e - 1 - (e - 1) % BLOCK)
                    for s in edges:
                        blk = pread_full(fd, min(BLOCK, size - s), s)
                        bi = s // BLOCK
                        got = M.block_crcs(blk)
                        self._verify(ent.meta, got, bi, f"object {name}")
                        prev[bi - b0] = got[0]
                        buf[s - a:s - a + len(blk)] = blk
                    buf[offset - a:end - a] = mv
                new = M.block_crcs(buf)
                version = M.bump(ent.meta.version, epoch)
                j = self._journal_for_write(oid, len(mv))
                if j is not None and self._write_journaled(  # one shared sync, not two
                        j, oid, fd, self._paths(d, name), ent, b0, buf, new, prev, version,
                        mv, offset):
                    return version
                ent.meta.update(b0, new, prev, version)
                mfd = os.open(self._paths(d, name)[1], os.O_WRONLY)
                try:
                    pwrite_full(mfd, ent.meta.entries(b0, b0 + len(new)),
                                M.Meta.entries_offset(b0))
                    pwrite_full(mfd, ent.meta.header(), 0)
                    if not self.nosync:
                        os.fdatasync(mfd)
                finally:
                    os.close(mfd)
                pwrite_full(fd, mv, offset)
                if not self.nosync:
                    os.fdatasync(fd)
                return version
            except OSError as e:
                self._cache_drop(oid)
                raise oserror(e, f"cannot write object {name}") from e
            except BaseException:
                self._cache_drop(oid)
                raise
            finally:
                os.close(fd)

    def remove(self, oid: int, check: Check = None) -> None:
        """Delete the object (every copy), its record and its stale copies
        (they are older versions of what is deleted); NO_OBJ if absent."""
        name = self._check_oid(oid)
        found = False
        with self._lock_for(oid):
            if check is not None:
                check()
            self._cache_drop(oid)
            try:
                self._settle(oid)
                for i in range(len(self.obj_dirs)):
                    path, mpath = self._paths(i, name)
                    if unlink(path):
                        found = True
                    unlink(mpath)
                self._drop_stale_locked(oid, name)
                self._sync_dirs(self.obj_dirs + self.meta_dirs)
            except OSError as e:
                raise oserror(e, f"cannot remove object {name}") from e
        if not found:
            raise err("NO_OBJ", f"object {name} not found")

    def exists(self, oid: int) -> bool:
        """Whether the object file exists in any object directory."""
        return self._find(oid) is not None

    def object_size(self, oid: int) -> int | None:
        """File size of the object, None if absent."""
        found = self._find(oid)
        return None if found is None else found[1].st_size
