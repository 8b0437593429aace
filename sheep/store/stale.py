"""Stale copies of the plain store, and tidying its layout after a crash.

A stale copy is a former live copy kept, frozen, as ``obj/.stale/<oid>.<epoch>``
with its record in ``meta/stale/<oid>.<epoch>`` (docs/protocol.md §15/§16): the node
no longer holds the object at a new epoch, or it rejoined after missing
writes.  Recovery may fetch a stale copy (by its version, see
``sheep.cluster.recovery``); once every node finished recovering, they are purged.

Moves rename the object first and the record second; a crash in between
leaves a stale object without a record and a live record without an object,
which :meth:`StaleCopies._tidy` puts back together at the next start.

This is a mixin of :class:`sheep.store.plain.PlainStore` (it uses the
store's paths, object locks and record helpers).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from sheep.store import meta as M
from sheep.store.basedir import err, fsync_dir, oserror, pread_full, unlink

log = logging.getLogger("sheep.store")


class StaleCopies:
    # -- the index ------------------------------------------------------------

    def _stale_index(self) -> dict[int, dict[int, int]]:
        """oid -> {epoch: dir index} of every stale copy (built on first use)."""
        with self._stale_lock:
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
                        if len(oid_s) == 16 and ep.isdigit():
                            try:
                                idx.setdefault(int(oid_s, 16), {})[int(ep)] = d
                            except ValueError:
                                continue
                self._stale = idx
            return idx

    def _index_add(self, oid: int, epoch: int, d: int) -> None:
        idx = self._stale_index()
        with self._stale_lock:
            idx.setdefault(oid, {})[epoch] = d

    # -- moves ------------------------------------------------------------------

    def move_to_stale(self, oid: int, epoch: int) -> bool:
        """Move the live copy (and its record) to ``.stale/<oid>.<epoch>``.

        Afterwards the object is absent for ``read``/``write``; the copy stays
        readable with :meth:`read_stale` until :meth:`purge_stale`.  False if
        there was no live copy.  Durable on return unless nosync."""
        dirs: set[str] = set()
        moved = self._move_locked(oid, epoch, dirs)
        self._sync_dirs(dirs)
        return moved

    def move_many_to_stale(self, oids, epoch: int) -> int:
        """:meth:`move_to_stale` for many objects, with one sync of the
        directories at the end; returns how many were moved."""
        dirs: set[str] = set()
        n = sum(self._move_locked(int(oid), epoch, dirs) for oid in oids)
        self._sync_dirs(dirs)
        return n

    def _move_locked(self, oid: int, epoch: int, dirs: set[str]) -> bool:
        name = self._check_oid(oid)
        with self._lock_for(oid):
            found = self._find(oid)
            if found is None:
                return False
            self._settle(oid)  # the stale copy holds every journaled write, synced
            d = found[0]
            self._cache_drop(oid)
            path, mpath = self._paths(d, name)
            spath, smpath = self._paths(d, name, epoch)
            # indexed first: a listing of live then stale copies never misses it
            had = self._stale_index().get(oid, {}).get(epoch)
            self._index_add(oid, epoch, d)
            try:
                if unlink(smpath) and not self.nosync:
                    # an older stale copy of this epoch: its record goes first,
                    # so a crash between the renames never pairs the new copy
                    # with it (a copy without a record gets the live one back)
                    fsync_dir(os.path.dirname(smpath))
                os.replace(path, spath)
                if os.path.exists(mpath):
                    os.replace(mpath, smpath)
                else:
                    unlink(smpath)  # never pair the copy with an older record
            except OSError as e:
                if had is None and not os.path.exists(spath):
                    idx = self._stale_index()
                    with self._stale_lock:
                        idx.get(oid, {}).pop(epoch, None)
                raise oserror(e, f"cannot move object {name} to .stale") from e
            dirs.update((self.obj_dirs[d], os.path.dirname(spath),
                         self.meta_dirs[d], os.path.dirname(smpath)))
            return True

    # -- queries ------------------------------------------------------------------

    def stale_epochs(self, oid: int) -> list[int]:
        """Epochs of the stale copies of ``oid``, newest first."""
        idx = self._stale_index()
        with self._stale_lock:
            eps = list(idx.get(oid, {}))
        return sorted(eps, reverse=True)

    def stale_copies(self, oid: int) -> dict[int, int]:
        """epoch tag -> version of every stale copy of ``oid`` (version 0 for a
        copy without a record, or whose record describes another size — a
        copy put there by hand —, as :meth:`read_stale` then rebuilds it; a
        copy whose record is damaged is left out)."""
        name = self._check_oid(oid)
        out = {}
        with self._lock_for(oid):
            for ep, d in list(self._stale_index().get(oid, {}).items()):
                spath, smpath = self._paths(d, name, ep)
                try:
                    size = os.stat(spath).st_size
                except OSError:  # gone meanwhile, or unreadable: not a candidate
                    continue
                try:
                    with open(smpath, "rb") as f:
                        raw = f.read(M.HDR_LEN)
                except FileNotFoundError:
                    out[ep] = 0
                    continue
                except OSError:
                    continue
                if len(raw) < M.HDR_LEN or raw[:4] != M.MAGIC:
                    continue
                count = int.from_bytes(raw[12:16], "little")
                out[ep] = (int.from_bytes(raw[M.VERSION_OFF:M.VERSION_OFF + 8], "little")
                           if count == M.nblocks(size) else 0)
        return out

    def list_stale(self) -> dict[int, list[int]]:
        """oid -> epochs (newest first) of every stale copy."""
        idx = self._stale_index()
        with self._stale_lock:
            return {o: sorted(e, reverse=True) for o, e in idx.items()}

    def stale_oid_array(self) -> np.ndarray:
        """The oids that have a stale copy, as a sorted uint64 array."""
        idx = self._stale_index()
        with self._stale_lock:
            return np.array(sorted(idx), dtype=np.uint64)

    def read_stale(self, oid: int, epoch: int) -> tuple[int, bytes]:
        """``(version, data)`` of the stale copy of ``oid`` from ``epoch``,
        checksum-verified (NO_OBJ if absent, EIO if damaged)."""
        name = self._check_oid(oid)
        with self._lock_for(oid):
            d = self._stale_index().get(oid, {}).get(epoch)
            if d is None:
                raise err("NO_OBJ", f"no stale copy of {name} from epoch {epoch}")
            spath, smpath = self._paths(d, name, epoch)
            try:
                fd = os.open(spath, os.O_RDONLY)
            except FileNotFoundError:
                raise err("NO_OBJ", f"no stale copy of {name} from epoch {epoch}") from None
            except OSError as e:
                raise oserror(e, f"cannot read stale copy {name}.{epoch}") from e
            try:
                size = os.fstat(fd).st_size
                meta = self._load_meta(smpath, size) or self._rebuild_meta(fd, size, smpath)
                data = pread_full(fd, size, 0)
            except OSError as e:
                raise oserror(e, f"cannot read stale copy {name}.{epoch}") from e
            finally:
                os.close(fd)
        self._verify(meta, M.block_crcs(data), 0, f"stale copy {name}.{epoch}")
        return meta.version, data

    # -- removal ------------------------------------------------------------------

    def _drop_stale_locked(self, oid: int, name: str) -> None:
        """Delete every stale copy of ``oid`` (its lock held)."""
        idx = self._stale_index()
        with self._stale_lock:
            eps = idx.pop(oid, {})
        for ep, d in eps.items():
            for path in self._paths(d, name, ep):
                unlink(path)

    def purge_stale(self) -> int:
        """Delete every stale copy; returns how many were deleted."""
        n = 0
        for oid in list(self._stale_index()):
            with self._lock_for(oid):
                n += len(self._stale_index().get(oid, {}))
                self._drop_stale_locked(oid, "%016x" % oid)
        self._sync_dirs([os.path.join(d, ".stale") for d in self.obj_dirs]
                        + [os.path.join(d, "stale") for d in self.meta_dirs])
        return n

    # -- tidying at start-up --------------------------------------------------------

    def _tidy(self, d: int) -> None:
        """Delete ``*.tmp`` leftovers; give a record left behind by an
        interrupted move to ``.stale`` to its copy; drop other orphan records."""
        od, md = self.obj_dirs[d], self.meta_dirs[d]
        sod, smd = os.path.join(od, ".stale"), os.path.join(md, "stale")
        self._migrate_v1(d)
        for dirpath in (od, md, sod, smd):
            for name in os.listdir(dirpath):
                if name.endswith(".tmp"):
                    unlink(os.path.join(dirpath, name))
        stale = set(os.listdir(sod))
        smeta = set(os.listdir(smd))
        lacking: dict[str, list[int]] = {}  # stale copies without a record
        for name in stale - smeta:
            oid_s, _, ep = name.partition(".")
            if ep.isdigit():
                lacking.setdefault(oid_s, []).append(int(ep))
        for name in smeta - stale:
            unlink(os.path.join(smd, name))
        live = set(os.listdir(od))
        for name in os.listdir(md):
            if name in live or name == "stale":
                continue
            if lacking.get(name):  # a move to .stale stopped between its renames
                ep = max(lacking.pop(name))
                os.replace(os.path.join(md, name), os.path.join(smd, f"{name}.{ep}"))
                log.info("record of %s given back to its stale copy of epoch %d", name, ep)
            else:
                unlink(os.path.join(md, name))

    def _migrate_v1(self, d: int) -> None:
        """Format 1 kept CRC sidecars in obj/.crc and obj/.stale/.crc: convert
        them to records (version 0) and remove the directories."""
        od, md = self.obj_dirs[d], self.meta_dirs[d]
        for old, new in ((os.path.join(od, ".crc"), md),
                         (os.path.join(od, ".stale", ".crc"), os.path.join(md, "stale"))):
            if not os.path.isdir(old):
                continue
            for name in os.listdir(old):
                path = os.path.join(old, name)
                try:
                    with open(path, "rb") as f:
                        raw = f.read()
                    if raw[:4] == b"SDCK" and len(raw) >= 16 and not name.endswith(".tmp"):
                        crcs = np.frombuffer(raw, dtype="<u4", offset=16)
                        with open(os.path.join(new, name), "wb") as f:
                            f.write(M.Meta.fresh(0, crcs).pack())
                finally:
                    unlink(path)
            os.rmdir(old)
            log.info("converted the checksum files of %s to %s", old, new)
