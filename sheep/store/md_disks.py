"""The disk set of a multi-disk plain store: plug, unplug, lost disks (1.0's md).

This is a mixin of :class:`sheep.store.plain.PlainStore`; the placement
itself is the pure :mod:`sheep.store.md`.

State: ``obj_dirs`` / ``meta_dirs`` list the disks; the first ``_nplace`` of
them are the *placement* disks (the ones ``md plug`` added, ``md info``
shows and placement uses), the others are disks being *drained* by an
unplug (still searched, never a home).  Every change of these lists is made
holding every object lock and the stale-index lock, and drops the record
cache and the stale index, so an operation sees one disk set from start to
end.

Guarantees
----------
* **Plug** (``md_plug``): like 1.0 the new directory is purged first (a
  disk plugged back may hold copies older than the live ones); then objects
  whose home moved to it are moved there by :meth:`MdDisks.md_rebalance`,
  each under its object lock: the copy with its record is written on the
  new disk (record renamed first, then the object, then both directories
  synced) and only then is the old copy deleted.  Until moved, an object is
  found on its old disk (lookups try the home disk, then the others).
* **Unplug** (``md_unplug``): stronger than 1.0, which just forgets the
  disk and lets recovery fetch its objects from peers: the disk is drained
  first (live and stale copies moved to their new homes as above), then
  dropped.  The last disk cannot be unplugged.  A crash during the drain
  leaves the disk off the dropped list (its copies are current: written in
  place until moved), so given again at start-up it keeps what was not
  moved yet.
* **Lost disk** (``drop_lost_disks``): a disk whose directory vanished (or
  lost its ``.stale`` / ``.meta`` layout: an unmounted disk leaves an empty
  mountpoint) or that fails a write probe is dropped at once (1.0's ``md_handle_eio``);
  its objects are then simply absent here, so recovery and the on-access
  fetch of ``sheep.cluster.fetch`` bring them back from peers (never an older copy:
  those rules decide).  If every disk is lost, nothing is dropped and the
  caller takes the node out of the cluster.
* **A dropped disk never comes back with its old copies**: lost and
  unplugged disks are listed in ``BASE/md_dropped`` (written before the
  disk leaves the set); a listed disk given again at start-up, or plugged,
  is purged first and taken off the list (its copies may miss writes made
  while it was away, and a live copy must have every acknowledged write).
  So is a disk of the set last in use (``BASE/md_set``) that a start
  leaves out — a plugged disk is not on the command line (as in 1.0).
* At start-up, an object found on two disks keeps only its newest copy
  (greatest version; equal copies, what a crash in the middle of a move
  leaves: the one found first, home first); the others are deleted.  An
  older one is what a disk left out of the set for a while still holds
  when it escaped the purge (a store from before ``md_set``).
* A plug refuses a directory inside this store (the epoch logs, records,
  a disk's own ``.meta`` / ``.stale``) or another name (a symlink) of one
  of its disks: plugging purges it.
* A disk that is only full passes the write probe: full is not failed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from collections.abc import Sequence

from sheep.proto.errors import SdError
from sheep.store import md
from sheep.store import meta as M
from sheep.store.basedir import err, fsync_dir, pread_full, unlink

log = logging.getLogger("sheep.store")
DROPPED = "md_dropped"  # BASE/md_dropped: disks dropped from the set, one a line
DISK_SET = "md_set"  # BASE/md_set: the disk set last in use, one a line


def _is_meta_store(path: str) -> bool:
    """A base directory of some sheep (1.0's ``is_meta_store``)."""
    return os.path.exists(os.path.join(path, "config")) and \
        os.path.exists(os.path.join(path, "epoch"))


class MdDisks:
    # -- set-up ---------------------------------------------------------------

    def _md_init(self, extra_dirs: Sequence[str]) -> None:
        extras = [md.norm_path(os.path.abspath(d)) for d in extra_dirs]
        if len(set(extras)) != len(extras) or self.base_dir in extras:
            raise ValueError(f"duplicate store directories: {[self.base_dir] + extras}")
        self.obj_dirs = extras or [os.path.join(self.base_dir, "obj")]
        self.meta_dirs = [self._meta_dir_of(d) for d in self.obj_dirs]
        self._md_mode = bool(extras)  # capacity() = recorded disk spaces
        self._nplace = len(self.obj_dirs)
        self._spaces = [0] * self._nplace
        self._placement: md.Placement | None = None
        self._md_lock = threading.Lock()  # one disk-set change at a time

    def _meta_dir_of(self, disk: str) -> str:
        """Records of ``BASE/obj`` live in ``BASE/meta``, those of an extra
        disk in ``DISK/.meta`` (a dot name: 1.0's scans skip it)."""
        if disk == os.path.join(self.base_dir, "obj"):
            return os.path.join(self.base_dir, "meta")
        return os.path.join(disk, ".meta")

    def _md_open(self) -> None:
        """Measure the disks, build the placement, drop duplicate copies."""
        if len(self.obj_dirs) > 1:
            for d in self.obj_dirs:
                if _is_meta_store(d):
                    raise err("INVALID_PARMS", f"{d} is a meta-store (a sheep base "
                                               "directory), not an object disk")
        dropped = self._dropped()
        for d in self.obj_dirs:
            if d in dropped:
                log.warning("%s was dropped from the disk set earlier: purged", d)
                self._purge(d)
        if dropped & set(self.obj_dirs):
            self._set_dropped(dropped - set(self.obj_dirs))
        self._spaces = [self._measure(d) for d in self.obj_dirs]
        self._placement = md.Placement(list(zip(self.obj_dirs, self._spaces)))
        # a disk of the last set left out now: its copies miss what is written
        # without it (marked only once this start is sure to use its disks)
        left_out = (self._last_set() or set()) - set(self.obj_dirs)
        if left_out:
            log.warning("%s left out of the disk set: purged if given again",
                        ", ".join(sorted(left_out)))
            self._set_dropped(self._dropped() | left_out)
        self._record_set()
        if len(self.obj_dirs) > 1:
            self._drop_duplicates()

    def _measure(self, path: str) -> int:
        try:
            return md.disk_space(path) or 1
        except OSError as e:
            if len(self.obj_dirs) == 1:  # a single disk needs no placement
                log.warning("cannot record the space of %s: %s", path, e)
                return 1
            raise

    def _copy_version(self, i: int, name: str) -> int:
        """Version of the live copy ``name`` on disk ``i``: 0 without a usable
        record (unknown), -1 if its record is damaged or unreadable."""
        p, mp = self._paths(i, name)
        try:
            meta = self._load_meta(mp, os.stat(p).st_size)
        except (OSError, SdError):
            return -1
        return 0 if meta is None else meta.version

    def _drop_duplicates(self) -> None:
        """An object found on several disks keeps its newest copy (the
        greatest version; among equal ones the first in search order, home
        first).  Equal copies are what an interrupted move leaves; an older
        one is what a disk that was left out of the set for a while (a
        plugged disk not given at the next start, given again later) still
        holds if it escaped the purge — keeping it would replace
        acknowledged writes."""
        seen: set[str] = set()
        for name in sorted({n for d in self.obj_dirs for n in os.listdir(d)
                            if len(n) == 16 and not n.startswith(".")}):
            if name in seen:
                continue
            seen.add(name)
            try:
                oid = int(name, 16)
            except ValueError:
                continue
            order = self._search_order(oid)
            have = [i for i in order if os.path.exists(os.path.join(self.obj_dirs[i], name))]
            if len(have) < 2:
                continue
            vers = {i: self._copy_version(i, name) for i in have}
            keep = max(have, key=lambda i: (vers[i], -have.index(i)))
            for i in have:
                if i == keep:
                    continue
                p, mp = self._paths(i, name)
                unlink(p)
                unlink(mp)
                log.warning("%s: a second copy of %s (version %#x; kept: %s, version %#x) "
                            "deleted", self.obj_dirs[i], name, vers[i],
                            self.obj_dirs[keep], vers[keep])

    # -- queries ------------------------------------------------------------------

    @property
    def multi_disk(self) -> bool:
        return len(self.obj_dirs) > 1

    def md_disks(self) -> list[tuple[str, int]]:
        """``[(path, recorded space), ...]`` of the placement disks, in order."""
        return list(zip(self.obj_dirs[:self._nplace], self._spaces[:self._nplace]))

    def md_space(self) -> int:
        """Sum of the placement disks' recorded spaces (1.0's ``md.space``)."""
        return sum(self._spaces[:self._nplace])

    def md_home(self, oid: int) -> str:
        """The directory that is (or will be) home of ``oid``."""
        return self.obj_dirs[self._home(oid)]

    def md_info(self) -> list[tuple[str, int, int]]:
        """``[(path, free bytes, used bytes), ...]`` like 1.0's ``md_get_info``:
        in path order (1.0 walks its disk tree, sorted by ``strcmp``), free
        from statvfs, used = allocated bytes of the object files."""
        out = []
        for path in sorted(self.obj_dirs[:self._nplace], key=os.fsencode):
            free = used = 0
            with contextlib.suppress(OSError):
                vfs = os.statvfs(path)
                free = vfs.f_frsize * vfs.f_bavail
                with os.scandir(path) as it:
                    for ent in it:
                        if not ent.name.startswith(".") and ent.is_file(follow_symlinks=False):
                            used += ent.stat(follow_symlinks=False).st_blocks * 512
            out.append((path, free, used))
        return out

    # -- changing the set -----------------------------------------------------------

    def _swap(self, dirs: list[str], spaces: list[int], nplace: int) -> None:
        placement = md.Placement(list(zip(dirs[:nplace], spaces[:nplace])))
        for lk in self._locks:
            lk.acquire()
        try:
            # with several disks writes are not journaled: none may replay over them
            self._checkpoint()
            with self._stale_lock:
                self.obj_dirs = list(dirs)
                self.meta_dirs = [self._meta_dir_of(d) for d in dirs]
                self._spaces = list(spaces)
                self._nplace = nplace
                self._placement = placement
                self._stale = None
                with self._cache_lock:
                    self._cache.clear()
        finally:
            for lk in self._locks:
                lk.release()
        with contextlib.suppress(OSError):  # the base dir may be failing (a lost disk)
            self._record_set()

    def _last_set(self) -> set[str] | None:
        raw = self.read_file(DISK_SET)
        if raw is None:
            return None
        return {p for p in raw.decode(errors="replace").split("\n") if p}

    def _record_set(self) -> None:
        """Keep the disk set in use (draining disks included: their copies
        are current) in ``BASE/md_set``; a disk of it that a later start
        leaves out is listed as dropped then."""
        self.write_file(DISK_SET, "".join(p + "\n" for p in self.obj_dirs).encode())

    def _dropped(self) -> set[str]:
        raw = self.read_file(DROPPED) or b""
        return {p for p in raw.decode(errors="replace").split("\n") if p}

    def _set_dropped(self, paths: set[str]) -> None:
        self.write_file(DROPPED, "".join(p + "\n" for p in sorted(paths)).encode())

    def _prepare_disk(self, path: str) -> int:
        """Create and purge a directory about to be plugged; its space."""
        self._purge(path)
        dropped = self._dropped()
        if path in dropped:
            self._set_dropped(dropped - {path})
        return md.disk_space(path)

    def _purge(self, path: str) -> None:
        """Delete every object, stale copy and record of a disk directory."""
        mdir = self._meta_dir_of(path)
        for sub in (path, os.path.join(path, ".stale"), mdir, os.path.join(mdir, "stale")):
            os.makedirs(sub, exist_ok=True)
            with os.scandir(sub) as it:
                for ent in it:
                    if ent.name not in (".stale", ".meta", "stale", md.SIZE_FILE) \
                            and ent.is_file(follow_symlinks=False):
                        unlink(ent.path)

    def _inside_store(self, path: str) -> str | None:
        """The directory of this store that ``path`` is in (it would be purged
        by a plug): the epoch logs, the base directory's records and objects,
        or a disk's own objects, records and stale copies; None if none."""
        real = os.path.realpath(path)
        base = [os.path.join(self.base_dir, s) for s in ("epoch", "meta", "obj")]
        for d in base + list(self.obj_dirs) + list(self.meta_dirs):
            rd = os.path.realpath(d)
            if real.startswith(rd.rstrip("/") + "/"):
                return d
            if real == rd and (d in base[:2] or d in self.obj_dirs):  # another name of it
                return d
        return None

    def md_plug(self, paths: Sequence[str]) -> list[str]:
        """Add disks (purged first); returns the paths added.  Call
        :meth:`md_rebalance` afterwards to move objects to their new homes."""
        with self._md_lock:
            dirs, spaces, n = list(self.obj_dirs), list(self._spaces), self._nplace
            added = []
            for p in paths:
                p = md.norm_path(os.path.abspath(p))
                if p in dirs[:n] or p in added or p == self.base_dir \
                        or p == os.path.join(self.base_dir, "meta"):
                    log.error("md plug: duplicate path %s", p)
                    continue
                if p in dirs[n:]:
                    log.error("md plug: %s is still being unplugged", p)
                    continue
                if _is_meta_store(p):
                    log.error("md plug: %s is a meta-store, not an object disk", p)
                    continue
                inside = self._inside_store(p)
                if inside:
                    log.error("md plug: %s is inside %s, a directory of this store", p, inside)
                    continue
                try:
                    space = self._prepare_disk(p)
                except OSError as e:
                    log.error("md plug: cannot use %s: %s", p, e)
                    continue
                if not md.vdisk_count(space):
                    log.error("md plug: %s has no space", p)
                    continue
                dirs.insert(n, p)
                spaces.insert(n, space)
                n += 1
                added.append(p)
            if added:
                self._md_mode = True
                self._swap(dirs, spaces, n)
                log.info("md plug: %s; %d disks", ", ".join(added), n)
            return added

    def md_unplug(self, paths: Sequence[str]) -> list[str]:
        """Drain then remove placement disks; returns the paths removed."""
        with self._md_lock:
            dirs, spaces, n = list(self.obj_dirs), list(self._spaces), self._nplace
            gone = []
            for p in paths:
                p = md.norm_path(os.path.abspath(p))
                if p not in dirs[:n]:
                    log.error("md unplug: invalid path %s", p)
                    continue
                if n == 1:
                    log.error("md unplug: %s is the last disk", p)
                    continue
                i = dirs.index(p)
                dirs.append(dirs.pop(i))
                spaces.append(spaces.pop(i))
                n -= 1
                gone.append(p)
            if not gone:
                return []
            # While draining, a disk is still searched and written in place
            # (never a home): its copies stay current, so a crash in the
            # middle leaves a disk that may come back as it is.  It is listed
            # as dropped only once drained, right before it leaves the set.
            self._swap(dirs, spaces, n)
            left = self.md_rebalance()
            if left:
                log.warning("md unplug: %d objects could not be moved off %s (damaged?); "
                            "they are recovered from peers", left, ", ".join(gone))
            self._set_dropped(self._dropped() | set(gone))
            self._swap(dirs[:n], spaces[:n], n)
            log.info("md unplug: %s; %d disks", ", ".join(gone), n)
            return gone

    def drop_lost_disks(self, deep: bool = False) -> tuple[list[str], bool]:
        """Drop the placement disks that vanished (``deep``: or fail a write
        probe).  Returns (dropped paths, every disk is lost)."""
        with self._md_lock:
            dirs, spaces, n = self.obj_dirs, self._spaces, self._nplace
            bad = [i for i, d in enumerate(dirs) if not self._disk_there(i)
                   or (deep and not self._probe(d))]
            if len(dirs) == 1:
                return [], bool(bad)
            if not bad:
                return [], False
            keep = [i for i in range(n) if i not in bad]
            if not keep:
                return [], True
            lost = [dirs[i] for i in bad if i < n]
            rest = [i for i in range(n, len(dirs)) if i not in bad]
            order = keep + rest
            with contextlib.suppress(Exception):  # the base dir may be failing too
                self._set_dropped(self._dropped() | {dirs[i] for i in bad})
            self._swap([dirs[i] for i in order], [spaces[i] for i in order], len(keep))
            for p in lost:
                log.error("disk %s is lost: dropped from the multi-disk set; its objects "
                          "are recovered from peers", p)
            return lost, False

    def _disk_there(self, i: int) -> bool:
        """Disk ``i`` is usable and still has its layout: a failed disk that
        was unmounted leaves its mountpoint behind, an empty (and, on the
        parent filesystem, writable) directory — without ``.stale`` and
        ``.meta``, which every disk in the set has."""
        d, mdir = self.obj_dirs[i], self.meta_dirs[i]
        return md.disk_ok(d) and all(os.path.isdir(p) for p in (
            os.path.join(d, ".stale"), mdir, os.path.join(mdir, "stale")))

    @staticmethod
    def _probe(path: str) -> bool:
        probe = os.path.join(path, ".md.probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
            return True
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # full, not failing
                with contextlib.suppress(OSError):
                    os.unlink(probe)
                return True
            return False

    # -- moving objects home ------------------------------------------------------

    def md_rebalance(self) -> int:
        """Move every live copy not on its home disk there, and the stale
        copies off disks being drained; returns how many could not move."""
        failed = 0
        for oid in self.list_oids():
            try:
                self._relocate(oid)
            except Exception as e:  # noqa: BLE001 - one object must not stop the rest
                failed += 1
                log.warning("cannot move %016x to its home disk: %s", oid, e)
        for oid, eps in list(self._stale_index().items()):
            for ep, d in list(eps.items()):
                if d >= self._nplace:
                    try:
                        self._relocate_stale(oid, ep)
                    except OSError as e:
                        failed += 1
                        log.warning("cannot move stale %016x.%d: %s", oid, ep, e)
        return failed

    def _relocate(self, oid: int) -> bool:
        name = self._check_oid(oid)
        with self._lock_for(oid):
            found = self._find(oid)
            if found is None:
                return False
            d, st = found
            home = self._home(oid)
            if d == home:
                return False
            fd = os.open(self._paths(d, name)[0], os.O_RDONLY)
            try:
                ent = self._entry_locked(oid, d, name, fd, st)
                data = pread_full(fd, st.st_size, 0)
            finally:
                os.close(fd)
            self._verify(ent.meta, M.block_crcs(data), 0, f"object {name}")
            sparse = st.st_blocks * 512 < st.st_size
            self._put_files(oid, home, name, st.st_size, memoryview(data), 0, sparse,
                            ent.meta, record_first=True)
            return True

    def _relocate_stale(self, oid: int, epoch: int) -> None:
        name = self._check_oid(oid)
        with self._lock_for(oid):
            idx = self._stale_index()
            d = idx.get(oid, {}).get(epoch)
            if d is None or d < self._nplace:
                return
            home = self._home(oid)
            src, msrc = self._paths(d, name, epoch)
            dst, mdst = self._paths(home, name, epoch)
            for a, b in ((msrc, mdst), (src, dst)):  # record first, as in a create
                if os.path.exists(a):
                    shutil.copyfile(a, b + ".tmp")
                    if not self.nosync:
                        fd = os.open(b + ".tmp", os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                    os.rename(b + ".tmp", b)
            if not self.nosync:
                fsync_dir(os.path.dirname(dst))
                fsync_dir(os.path.dirname(mdst))
            with self._stale_lock:
                idx.setdefault(oid, {})[epoch] = home
            unlink(src)
            unlink(msrc)
