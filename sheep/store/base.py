"""The object store interface used by the sheep daemon.

A store owns one node's base directory (docs/protocol.md §16): the cluster config,
the epoch logs (§15) and the object files. Every method is synchronous,
blocking and thread-safe: the daemon calls them from an executor and
sometimes inline. Failures that have a Sheepdog result code are raised as
:class:`sheep.proto.errors.SdError` subclasses (NO_OBJ, EIO, INVALID_PARMS,
NO_SPACE, ...), so the code can go straight into a reply header.
"""

from __future__ import annotations

import abc


class StoreLockedError(Exception):
    """Another process (a second sheep daemon) holds the base directory lock."""


class WouldBlock(Exception):
    """A ``*_cached`` call cannot complete without waiting on the disk or on
    an object's lock: do the blocking call instead (on an I/O thread)."""


class Store(abc.ABC):
    """One node's persistent state: config, epoch log and objects.

    Object ids are 64-bit unsigned integers. Objects have a fixed size set at
    creation; a range never written reads as zeros.
    """

    # -- life cycle ---------------------------------------------------------

    @abc.abstractmethod
    def open(self) -> None:
        """Create missing directories, take the daemon lock and clean up.

        Raises :class:`StoreLockedError` if another process holds the lock.
        Leftovers of interrupted creates (``*.tmp``) are deleted. Must be
        called before any other method.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the daemon lock and every cached resource. Idempotent."""

    # -- cluster config -----------------------------------------------------

    @abc.abstractmethod
    def load_config(self) -> bytes | None:
        """The raw ``sheepdog_config`` bytes, or None if never saved."""

    @abc.abstractmethod
    def save_config(self, raw: bytes) -> None:
        """Replace the config atomically: a reader sees the old or the new
        content, never a mix; durable on return unless the store is nosync."""

    # -- epoch log ----------------------------------------------------------

    @abc.abstractmethod
    def write_epoch(self, epoch: int, nodes: bytes, timestamp: int | None = None) -> None:
        """Write the log of ``epoch`` (node records + LE time_t, default now)
        atomically, replacing an existing one; durable unless nosync."""

    @abc.abstractmethod
    def read_epoch(self, epoch: int) -> tuple[bytes, int] | None:
        """``(nodes, timestamp)`` of an epoch log, None if there is none.
        EIO if the file is too short to hold the timestamp."""

    @abc.abstractmethod
    def epochs(self) -> list[int]:
        """Epoch numbers that have a log, ascending."""

    @abc.abstractmethod
    def latest_epoch(self) -> int:
        """The largest epoch with a log, 0 if there is none."""

    @abc.abstractmethod
    def remove_epoch(self, epoch: int) -> None:
        """Delete the log of one epoch (absent is fine)."""

    @abc.abstractmethod
    def remove_epochs(self) -> None:
        """Delete every epoch log (format)."""

    # -- objects ------------------------------------------------------------
    #
    # Every copy carries a version (``sheep.store.meta``: epoch << 32 | seq).
    # Mutating calls take ``epoch`` (the epoch the request was admitted at, for
    # the version bump) and ``check``: a callable run under the object's lock
    # before anything changes; it raises SdError to refuse (the daemon checks
    # epoch and fencing there, atomically with the write).

    @abc.abstractmethod
    def create_and_write(self, oid: int, size: int, data=b"", offset: int = 0,
                         sparse: bool = False, epoch: int = 0, check=None) -> int:
        """Create object ``oid`` of ``size`` bytes, zero filled, with ``data``
        at ``offset``, replacing an existing copy; returns the new version.

        Atomic: readers see either the previous state (absent or the old
        object) or the complete new object. Durable on return unless nosync.
        INVALID_PARMS if the data does not fit, NO_SPACE if the disk is full,
        EIO on other I/O failures.
        """

    @abc.abstractmethod
    def write(self, oid: int, data, offset: int, epoch: int = 0, check=None) -> int:
        """Overwrite ``data`` at ``offset`` of an existing object; returns the
        new version.  NO_OBJ if absent, INVALID_PARMS if the range exceeds the
        object.  Durable on return unless nosync; a crash part-way leaves each
        block with its old or its new content, both readable."""

    @abc.abstractmethod
    def install(self, oid: int, size: int, data, version: int, sparse: bool = False,
                check=None, replace_damaged: bool = False) -> bool:
        """Store a whole copy with the ``version`` it had where it was fetched
        from, unless the live copy here has a greater version; True if stored."""

    @abc.abstractmethod
    def read(self, oid: int, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` of the object.

        NO_OBJ if absent, INVALID_PARMS if the range exceeds the object, EIO
        if the stored data fails its integrity check. Corrupt data is never
        returned.
        """

    def read_cached(self, oid: int, offset: int, length: int) -> bytes:
        """:meth:`read`, if it can be answered without waiting: from the page
        cache, with no object lock taken, so it may run on the event loop.
        Raises :class:`WouldBlock` otherwise (the default: never possible);
        the same errors as :meth:`read` when it can answer."""
        raise WouldBlock

    @abc.abstractmethod
    def read_object(self, oid: int) -> tuple[int, bytes]:
        """``(version, whole data)`` of the live copy, consistent with each other."""

    @abc.abstractmethod
    def version(self, oid: int) -> int | None:
        """Version of the live copy, None if there is none."""

    @abc.abstractmethod
    def remove(self, oid: int, check=None) -> None:
        """Delete an object, its metadata and its stale copies. NO_OBJ if absent."""

    @abc.abstractmethod
    def exists(self, oid: int) -> bool:
        """Whether the object exists."""

    @abc.abstractmethod
    def object_size(self, oid: int) -> int | None:
        """Size of the object in bytes, None if absent."""

    @abc.abstractmethod
    def list_oids(self) -> list[int]:
        """Every stored object id, ascending, without duplicates."""

    @abc.abstractmethod
    def wipe(self) -> None:
        """Delete every object, its metadata and every stale copy (format)."""

    @abc.abstractmethod
    def verify(self, oid: int) -> list[int]:
        """Check the whole object against its integrity data from disk.

        Returns the indices of bad blocks ([] if all good); NO_OBJ if absent.
        """

    # -- stale copies (docs/protocol.md §15) -----------------------------------------

    @abc.abstractmethod
    def move_many_to_stale(self, oids, epoch: int) -> int:
        """Make the live copies of ``oids`` stale copies tagged ``epoch``."""

    @abc.abstractmethod
    def stale_copies(self, oid: int) -> dict[int, int]:
        """epoch tag -> version of each stale copy of ``oid``."""

    @abc.abstractmethod
    def read_stale(self, oid: int, epoch: int) -> tuple[int, bytes]:
        """``(version, data)`` of one stale copy."""

    @abc.abstractmethod
    def purge_stale(self) -> int:
        """Delete every stale copy; returns how many."""

    # -- space ----------------------------------------------------------------

    @abc.abstractmethod
    def capacity(self) -> int:
        """Total bytes of the filesystems holding the objects (each once)."""

    @abc.abstractmethod
    def used(self) -> int:
        """Sum of the object sizes in bytes."""
