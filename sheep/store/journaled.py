"""Journaled writes of the plain store (:class:`sheep.store.plain.PlainStore`
mixes this in): a durable write goes through :mod:`sheep.store.journal`
and its entries are replayed at start-up.

Used for the overwrites of a store with one object directory, without
``-n``, except a write of more than 128 KiB to an object that has no entry
in the journal.  Those, and every write with several disks (``md``), take
the store's own path: record, sync, data, sync (a disk set change
checkpoints first, so no entry ever replays over such a write).

Guarantees (with the journal's own):
* a write returns once its entry is durable; the object's record and data
  are then updated in the page cache, under the object's lock, exactly as
  the entry says (whole blocks, their CRC pairs, the version);
* any other change of an object with entries in the journal — create,
  install, remove, a move to ``.stale`` or to another disk, a disk set
  change — checkpoints first (:meth:`JournaledWrites._settle`, object lock
  held): an entry never replays over something newer;
* start-up replays the valid entries in order before anything reads an
  object, syncs what they changed, then starts an empty journal; a clean
  close checkpoints.
"""

from __future__ import annotations

import logging
import os
import time

from sheep.proto.errors import CODES, SdError
from sheep.store import meta as M
from sheep.store.basedir import oserror, pwrite_full
from sheep.store.journal import Entry, Full, Journal, NoRoom, syncfs

log = logging.getLogger("sheep.store")

BLOCK = M.BLOCK
DIRECT_MIN = 128 * 1024  # writes larger than this skip the journal when they may


class JournaledWrites:
    """Needs the plain store's ``base_dir``, ``nosync``, ``obj_dirs``,
    ``_open_obj``, ``_paths`` and ``_cache_drop``."""

    _journal: Journal | None = None
    _noroom_logged = -1e9  # when "no space to grow" was last logged (once a minute)

    # -- life cycle -----------------------------------------------------------------

    def _journal_open(self) -> None:
        """Replay what a crash left, sync it, start an empty generation.  A
        ``-n`` store replays a journal left by a durable run too, then
        writes without one."""
        path = os.path.join(self.base_dir, "journal")
        if self.nosync and not os.path.exists(path):
            return
        j = Journal(path)
        try:
            entries = j.open()
            if entries:
                self._replay(entries)
            j.reset()
        except BaseException:
            j.close()
            raise
        if self.nosync:
            j.close()
        else:
            self._journal = j

    def _journal_close(self) -> None:
        j, self._journal = self._journal, None
        if j is not None:
            try:
                j.checkpoint(self._sync_files)
            finally:
                j.close()

    def _replay(self, entries: list[Entry]) -> None:
        touched: set[str] = set()
        for e in entries:
            try:
                fd, d, name = self._open_obj(e.oid, os.O_RDWR)
            except SdError as ex:
                if ex.code != CODES["NO_OBJ"]:
                    raise
                log.warning("journal: object %016x of entry %d is gone; skipped", e.oid, e.seq)
                continue
            try:
                size = os.fstat(fd).st_size
                n = len(e.pairs) // 8
                count = M.nblocks(size)
                if e.b0 + n > count or e.b0 * BLOCK + len(e.data) > size:
                    log.warning("journal: entry %d does not fit object %s; skipped", e.seq, name)
                    continue
                path, mpath = self._paths(d, name)
                pwrite_full(fd, e.data, e.b0 * BLOCK)
                touched.add(path)
                self._replay_record(mpath, count, e)
                touched.add(mpath)
            finally:
                os.close(fd)
        self._sync_files(touched, -1)
        log.info("journal: replayed %d write(s) on %d file(s)", len(entries), len(touched))

    @staticmethod
    def _replay_record(mpath: str, count: int, e: Entry) -> None:
        """The entry's CRC pairs and version into the record; a record that is
        missing or of another size is left alone (rebuilt or found damaged
        on first use, as such a record always is)."""
        try:
            mfd = os.open(mpath, os.O_RDWR)
        except FileNotFoundError:
            log.warning("journal: record %s is missing; left to be rebuilt", mpath)
            return
        try:
            if os.fstat(mfd).st_size != M.HDR_LEN + M.ENTRY * count:
                log.warning("journal: record %s has another size; left alone", mpath)
                return
            pwrite_full(mfd, e.pairs, M.Meta.entries_offset(e.b0))
            pwrite_full(mfd, M.header(count, e.version), 0)
        finally:
            os.close(mfd)

    # -- writes -------------------------------------------------------------------

    def _journal_for_write(self, oid: int, length: int) -> Journal | None:
        """The journal a write of ``length`` bytes to ``oid`` goes through
        (object lock held), or None: with several disks, or for a large
        write to an object without entries (its own two syncs cost less
        than writing it twice; with entries it must follow them)."""
        j = self._journal
        if j is None or len(self.obj_dirs) != 1:
            return None
        if length > DIRECT_MIN and not j.pending(oid):
            return None
        return j

    def _settle(self, oid: int) -> None:
        """Before any change of ``oid`` other than a journaled write (object
        lock held): checkpoint if it has entries in the journal."""
        j = self._journal
        if j is not None and j.pending(oid):
            try:
                j.checkpoint(self._sync_files)
            except OSError as e:
                raise oserror(e, "journal checkpoint") from e

    def _checkpoint(self) -> None:
        """Sync every object written since the last checkpoint; empty the
        journal.  The caller may hold object locks (a disk set change holds
        them all): only writers that appended are waited for, and those
        already hold theirs."""
        j = self._journal
        if j is not None:
            try:
                j.checkpoint(self._sync_files)
            except OSError as e:
                raise oserror(e, "journal checkpoint") from e

    def _write_journaled(self, j: Journal, oid: int, fd: int, paths: tuple[str, str],
                         ent, b0: int, buf, new, prev, version: int, mv, offset: int) -> bool:
        """Journal, wait for it to be durable, then apply (object lock held);
        True once done.  False, with nothing changed, if the journal cannot
        grow (disk full): the object's own entries are then checkpointed and
        the caller writes without the journal (record, sync, data, sync)."""
        pairs = M.pairs(new, prev)
        tries = 0
        while True:
            try:
                seq = j.append(oid, version, b0, pairs, buf, paths)
                break
            except Full:
                j.checkpoint(self._sync_files)
            except NoRoom as e:
                tries += 1
                if j.entries_since_checkpoint() and tries <= 2:
                    j.checkpoint(self._sync_files)  # its zeros are reusable then
                    continue
                now = time.monotonic()
                if now - self._noroom_logged > 60:
                    self._noroom_logged = now
                    log.warning("journal: no space to grow (%s); writes that do not fit "
                                "go without it (record, sync, data, sync)", e)
                self._settle(oid)
                return False
        try:
            j.commit(seq)
            ent.meta.update(b0, new, prev, version)
            mfd = os.open(paths[1], os.O_WRONLY)
            try:
                pwrite_full(mfd, pairs, M.Meta.entries_offset(b0))
                pwrite_full(mfd, ent.meta.header(), 0)
            finally:
                os.close(mfd)
            pwrite_full(fd, mv, offset)
        finally:
            j.applied()
        return True

    @staticmethod
    def _sync_files(paths: set[str], journal_fd: int) -> None:
        """Make ``paths`` durable: one ``syncfs`` of the journal's file system
        when they are many and all on it (one call instead of thousands),
        else an ``fdatasync`` each.  A file removed by hand is skipped."""
        if len(paths) > 64 and journal_fd >= 0:
            dev = os.fstat(journal_fd).st_dev
            try:
                same = all(os.stat(p).st_dev == dev for p in paths)
            except FileNotFoundError:
                same = False
            if same and syncfs(journal_fd):
                return
        for path in sorted(paths):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
