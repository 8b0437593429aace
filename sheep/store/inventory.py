"""The whole of a plain store: listing its objects, wiping it, its health
and its sizes (a part of :class:`sheep.store.plain.PlainStore`).

Guarantees: listings see only object files (16 hex digits, non-zero) of
every object directory, never temporary files, records or stale copies; a
listing error of the only disk is an error (the node's disk failed), a
lost disk among several is skipped (``sheep.store.md_disks`` drops it);
:meth:`Inventory.wipe` holds every object lock, so no write runs while the
store is emptied, and syncs the directories it emptied.
"""

from __future__ import annotations

import contextlib
import os
import re

import numpy as np

from sheep.store.basedir import oserror, unlink
from sheep.store.space import free_space

_OID_RE = re.compile(r"[0-9a-f]{16}")


class Inventory:
    """Whole-store operations over the object directories of a PlainStore
    (``obj_dirs``, ``meta_dirs``, its object locks, record cache and stale
    index)."""

    def _scan(self):
        dirs = self.obj_dirs
        for d in dirs:
            try:
                it = os.scandir(d)
            except FileNotFoundError as e:
                if len(dirs) == 1:  # (a vanished directory: see Sheep.disk_failed)
                    raise oserror(e, f"cannot list {d}") from e
                continue  # a lost disk: sheep.store.md_disks drops it
            except OSError as e:
                raise oserror(e, f"cannot list {d}") from e
            with it:
                try:
                    for ent in it:
                        if _OID_RE.fullmatch(ent.name) and int(ent.name, 16):
                            yield ent
                except OSError as e:
                    raise oserror(e, f"cannot list {d}") from e

    def list_oids(self) -> list[int]:
        """All object ids (16 hex digit, non-zero names), ascending, unique."""
        return sorted({int(ent.name, 16) for ent in self._scan()})

    def oid_array(self) -> np.ndarray:
        """The live oids as a sorted unique uint64 array (bulk use)."""
        return np.unique(np.array([int(ent.name, 16) for ent in self._scan()], dtype=np.uint64))

    def wipe(self) -> None:
        """Delete every object, record, temporary file and stale copy."""
        for lk in self._locks:
            lk.acquire()
        try:
            with self._cache_lock:
                self._cache.clear()
            with self._stale_lock:
                self._stale = {}
            for d in range(len(self.obj_dirs)):
                subs = (self.obj_dirs[d], os.path.join(self.obj_dirs[d], ".stale"),
                        self.meta_dirs[d], os.path.join(self.meta_dirs[d], "stale"))
                for sub in subs:
                    with os.scandir(sub) as it:
                        for ent in it:
                            if not ent.name.startswith(".") and ent.is_file(follow_symlinks=False):
                                unlink(ent.path)
                self._sync_dirs(subs)
        finally:
            for lk in self._locks:
                lk.release()

    def healthy(self) -> str | None:
        """None if the base directory and every object directory are still
        there; else what is wrong (with several disks, a lost one is dropped
        by :meth:`drop_lost_disks` instead)."""
        dirs = self.obj_dirs + self.meta_dirs if len(self.obj_dirs) == 1 else []
        # with their .stale/ and stale/: a disk unmounted after a failure
        # leaves its mountpoint, an empty directory on the parent filesystem
        dirs = [p for d in dirs for p in (d, os.path.join(d, ".stale" if d in self.obj_dirs
                                                          else "stale"))]
        for d in [self._epoch_dir] + dirs:
            if not os.path.isdir(d):
                return f"object directory {d} has vanished"
        return None

    def capacity(self) -> int:
        """Single disk (``BASE/obj``): total size of its filesystem.  Once
        extra disks are given or plugged: the sum of their recorded spaces
        (1.0's ``md_init_space``), so that losing, plugging or unplugging one
        re-weights the node."""
        if self._md_mode:
            return self.md_space()
        return free_space(self.obj_dirs, total=True)

    def used(self) -> int:
        """Sum of the object file sizes (apparent sizes)."""
        total = 0
        for ent in self._scan():
            with contextlib.suppress(FileNotFoundError):
                total += ent.stat(follow_symlinks=False).st_size
        return total
