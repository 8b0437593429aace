"""Reading objects of the plain store (:class:`sheep.store.plain.PlainStore`
mixes this in): verified reads, with and without the object's lock, the read
that never waits (``read_cached``, run on the event loop), whole copies with
their version, and the checks behind repairs.

Guarantees: no read returns data that fails its record's block CRCs (EIO
instead, decided under the object's lock); a read without the lock checks
each block once against the cached record and hands any doubt to the locked
read; a damaged copy is replaced only while it is still damaged and never
by an older version.
"""

from __future__ import annotations

import os

from sheep.proto.errors import CODES, SdError
from sheep.store import meta as M
from sheep.store.base import WouldBlock
from sheep.store.basedir import oserror, pread_full, pread_nowait

BLOCK = M.BLOCK


class _Retry(Exception):
    """Lockless read attempt failed; redo it under the object's lock."""


class ObjectReads:
    """Needs the plain store's ``_open_obj``, ``_lock_for``, ``_paths``,
    record cache (``_cache``, ``_cached``, ``_entry_locked``,
    ``_load_meta``), ``_check_range``, ``_verify`` and ``_noatime``."""

    def _read_once(self, oid: int, offset: int, length: int, locked: bool,
                   nowait: bool = False) -> bytes:
        """One read.  Unlocked, every block is checked once against the cached
        record, which writers change in place: any mismatch is a _Retry (the
        locked read decides), never an EIO — checking again later could see
        a record two writes newer than the data just read."""
        fd, d, name = self._open_obj(oid, os.O_RDONLY | self._noatime)
        try:
            st = os.fstat(fd)
            size = st.st_size
            self._check_range(name, offset, length, size)
            if not length:
                return b""
            if locked:
                ent = self._entry_locked(oid, d, name, fd, st)
            else:
                ent = self._cached(oid, (st.st_dev, st.st_ino, size, d))
                if ent is None:
                    raise _Retry
            b0 = offset // BLOCK
            a = b0 * BLOCK
            end = offset + length
            e = min(M.nblocks(end) * BLOCK, size)
            buf = pread_nowait(fd, e - a, a) if nowait else pread_full(fd, e - a, a)
        except OSError as ex:
            raise oserror(ex, f"cannot read object {name}") from ex
        finally:
            os.close(fd)
        if locked:
            self._verify(ent.meta, M.block_crcs(buf), b0, f"object {name}")
        elif ent.meta.first_bad(buf, b0) >= 0:
            raise _Retry
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

    def read_cached(self, oid: int, offset: int, length: int) -> bytes:
        """:meth:`read` from the page cache with the object's record cached,
        no object lock taken; :class:`WouldBlock` when that is not enough
        (data not cached, record not cached, or a block that does not match
        its record, as while a write is landing: the locked read decides).
        An object whose record is not cached is not even opened (its
        directory entry may not be cached either); reads do not update the
        access time (``O_NOATIME``: an atime update can wait on the journal)."""
        if oid not in self._cache:  # a hint, read without the lock: _cached decides
            raise WouldBlock
        try:
            return self._read_once(oid, offset, length, locked=False, nowait=True)
        except _Retry:
            raise WouldBlock from None

    def read_object(self, oid: int) -> tuple[int, bytes]:
        """``(version, data)`` of the whole live copy, consistent with each
        other (read under the object's lock); NO_OBJ, EIO."""
        with self._lock_for(oid):
            fd, d, name = self._open_obj(oid, os.O_RDONLY)
            try:
                st = os.fstat(fd)
                ent = self._entry_locked(oid, d, name, fd, st)
                data = pread_full(fd, st.st_size, 0)
            except OSError as e:
                raise oserror(e, f"cannot read object {name}") from e
            finally:
                os.close(fd)
            self._verify(ent.meta, M.block_crcs(data), 0, f"object {name}")
            return ent.meta.version, data

    def version(self, oid: int) -> int | None:
        """Version of the live copy, None if absent; EIO if its record is damaged."""
        with self._lock_for(oid):
            meta = self._old_meta(oid)
            return None if meta is None else meta.version

    def _damaged_locked(self, oid: int, version: int) -> bool:
        """May a copy of ``version`` replace the live copy, found damaged or
        missing by the caller (object lock held)?  Missing, or its record
        unreadable: yes.  Every block matching its record (repaired or
        rewritten since the damage was seen, or the damage was never there),
        or a version greater than ``version`` (the fetched copy would roll
        back a write this copy has): no."""
        try:
            fd, d, name = self._open_obj(oid, os.O_RDONLY)
        except SdError as e:
            if e.code == CODES["NO_OBJ"]:
                return True
            raise
        try:
            st = os.fstat(fd)
            try:
                ent = self._entry_locked(oid, d, name, fd, st)
            except SdError as e:
                if e.code == CODES["EIO"]:
                    return True
                raise
            if ent.meta.version > version:
                return False
            try:
                data = pread_full(fd, st.st_size, 0)
            except OSError:
                return True
        finally:
            os.close(fd)
        return bool(len(ent.meta.bad_blocks(M.block_crcs(data), 0)))

    def verify(self, oid: int) -> list[int]:
        """Indices of blocks whose data matches neither CRC of the record on
        disk (every block if the record is damaged)."""
        with self._lock_for(oid):
            fd, d, name = self._open_obj(oid, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                n = M.nblocks(size)
                try:
                    meta = self._load_meta(self._paths(d, name)[1], size)
                except SdError:
                    return list(range(n))
                if meta is None:
                    return []  # no record: it is rebuilt from the data on first use
                bad: list[int] = []
                step = 256 * BLOCK
                for off in range(0, size, step):
                    got = M.block_crcs(pread_full(fd, min(step, size - off), off))
                    bad.extend((meta.bad_blocks(got, off // BLOCK) + off // BLOCK).tolist())
                return bad
            except OSError as e:
                raise oserror(e, f"cannot verify object {name}") from e
            finally:
                os.close(fd)
