"""Blocking wrapper: the same calls as :mod:`qemu_client.block`, without asyncio.

Each :class:`Vdi` runs its own event loop in a private thread; calls block
the caller until the operation finished (a write returns once every replica
has it).  Thread-safe: several threads may call one Vdi at once, and their
requests are in flight together on the one connection.  Errors are the same
typed exceptions (``sheep.proto.errors``) as in the asyncio API.
"""

from __future__ import annotations

import asyncio
import functools
import threading

from qemu_client import block, vdis
from qemu_client.block import (  # noqa: F401
    BDRV_O_INACTIVE,
    BDRV_O_RDONLY,
    BDRV_O_RDWR,
    BDRV_REQ_MAY_UNMAP,
    BDRV_SECTOR_SIZE,
    AsyncVdi,
    SnapshotInfo,
)
from sheep import proto


def _blocking(name: str):
    """A method running ``AsyncVdi.<name>`` on the Vdi's loop."""
    target = getattr(AsyncVdi, name)

    @functools.wraps(target)
    def method(self, *args, **kw):
        return self._run(getattr(self._vdi, name)(*args, **kw))
    return method


class Vdi:
    """An open VDI (blocking).  Use :func:`bdrv_open` or :func:`open`."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                 **options):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"qemu_client:{name}")
        self._thread.start()
        try:
            self._vdi = self._run(AsyncVdi.open(name, host, port, **options))
        except BaseException:
            self._stop()
            raise

    def _run(self, coro):
        if self._loop.is_closed():
            coro.close()
            raise ConnectionError("the VDI is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def name(self) -> str:
        return self._vdi.name

    @property
    def size(self) -> int:
        return self._vdi.size

    @property
    def object_size(self) -> int:
        return self._vdi.object_size

    @property
    def vid(self) -> int:
        return self._vdi.vid

    @property
    def readonly(self) -> bool:
        return self._vdi.readonly

    @property
    def session_id(self) -> int:
        """The lock session of this open (give it to :meth:`inactivate` of a migration source)."""
        return self._vdi.session_id

    @property
    def generation(self) -> int:
        """Generation of our exclusive lock (0: none)."""
        return self._vdi.generation

    @property
    def gateway(self) -> tuple[str, int]:
        """The ``(host, port)`` of the sheep we talk to now (changes on failover)."""
        return self._vdi.conn.gateway

    @property
    def failovers(self) -> int:
        """How many times the connection moved to another gateway."""
        return self._vdi.conn.failovers

    # the asyncio API, call for call
    pread = _blocking("pread")
    pwrite = _blocking("pwrite")
    flush = _blocking("flush")
    pdiscard = _blocking("pdiscard")
    pwrite_zeroes = _blocking("pwrite_zeroes")
    truncate = _blocking("truncate")
    snapshot_create = _blocking("snapshot_create")
    snapshot_goto = _blocking("snapshot_goto")
    snapshot_delete = _blocking("snapshot_delete")
    snapshot_list = _blocking("snapshot_list")
    inactivate = _blocking("inactivate")
    activate = _blocking("activate")
    bdrv_pread = _blocking("bdrv_pread")
    bdrv_pwrite = _blocking("bdrv_pwrite")
    bdrv_read = _blocking("bdrv_read")
    bdrv_write = _blocking("bdrv_write")
    bdrv_flush = _blocking("bdrv_flush")
    bdrv_getlength = _blocking("bdrv_getlength")
    bdrv_truncate = _blocking("bdrv_truncate")
    bdrv_pdiscard = _blocking("bdrv_pdiscard")
    bdrv_pwrite_zeroes = _blocking("bdrv_pwrite_zeroes")
    bdrv_snapshot_create = _blocking("bdrv_snapshot_create")
    bdrv_snapshot_goto = _blocking("bdrv_snapshot_goto")
    bdrv_snapshot_delete = _blocking("bdrv_snapshot_delete")
    bdrv_snapshot_list = _blocking("bdrv_snapshot_list")
    bdrv_get_info = _blocking("bdrv_get_info")

    def close(self) -> None:
        """Release the lock and close (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._vdi.close())
        finally:
            self._stop()

    bdrv_close = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
         **options) -> Vdi:
    """Open VDI ``name`` through the sheep at host:port (blocking API).

    Options as :meth:`qemu_client.block.AsyncVdi.open`: ``readonly``, ``inactive``,
    ``snapshot`` (tag or id), ``session_id``, ``renew_interval``, ``nodes``,
    ``failover``."""
    return Vdi(name, host, port, **options)


def bdrv_open(name: str, snapshot: str | int | None = None, flags: int = BDRV_O_RDWR,
              host: str = "127.0.0.1", port: int = proto.SD_PORT, **options) -> Vdi:
    """Open VDI ``name`` like QEMU's ``bdrv_open`` (blocking).

    ``flags``: ``BDRV_O_RDWR`` (read-write, takes the lock; the default),
    ``BDRV_O_RDONLY`` (read-only), ``BDRV_O_INACTIVE`` (migration
    destination).  ``snapshot``: a snapshot id (int) or tag (str), read-only."""
    return Vdi(name, host, port, readonly=not flags & BDRV_O_RDWR,
               inactive=bool(flags & BDRV_O_INACTIVE), snapshot=snapshot, **options)


def create(name: str, size: int | None, host: str = "127.0.0.1", port: int = proto.SD_PORT,
           backing: str | None = None, snapshot: str | int | None = None) -> int:
    """Create VDI ``name`` of ``size`` bytes (required) and return its vid (blocking).

    ``backing`` + ``snapshot``: a clone of that snapshot (a tag or an id), of
    the snapshot's size when ``size`` is 0 or None.  A VDI of that name
    existing already raises ``VdiExistError``, a size of 0 without backing
    ``InvalidParmsError``."""
    return asyncio.run(block.create(name, size, host, port, backing, snapshot))


def list_vdis(host: str = "127.0.0.1", port: int = proto.SD_PORT) -> list[vdis.VdiInfo]:
    """Every live VDI of the cluster (working VDIs, snapshots, clones) as
    :class:`qemu_client.VdiInfo` records, ordered by vid (blocking)."""
    return asyncio.run(vdis.list_vdis(host, port))


def delete(name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,
           snapshot: str | int | None = None) -> None:
    """Blocking :func:`qemu_client.block.delete`."""
    asyncio.run(block.delete(name, host, port, snapshot))
