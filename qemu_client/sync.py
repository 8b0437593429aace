"""Blocking wrapper: the same calls as :mod:`qemu_client.block`, without asyncio.

Each :class:`Vdi` runs its own event loop in a private thread; calls block
the caller until the operation finished (a write returns once every replica
has it).  Thread-safe: several threads may call one Vdi at once.
"""

from __future__ import annotations

import asyncio
import threading

from sheep import proto

from qemu_client.block import AsyncVdi
from qemu_client.block import create as _create


class Vdi:
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
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def size(self) -> int:
        return self._vdi.size

    @property
    def vid(self) -> int:
        return self._vdi.vid

    @property
    def session_id(self) -> int:
        """The lock session of this open (give it to :meth:`inactivate` of a migration source)."""
        return self._vdi.session_id

    @property
    def generation(self) -> int:
        """Generation of our exclusive lock (0: none)."""
        return self._vdi.generation

    def inactivate(self, handover_to: int | None = None) -> None:
        """Stop I/O, flush, hand the lock to session ``handover_to`` (or release it)."""
        self._run(self._vdi.inactivate(handover_to))

    def activate(self) -> None:
        """Take the lock handed over to us (or a free one) and allow I/O."""
        self._run(self._vdi.activate())

    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; never-written ranges read as zeros."""
        return self._run(self._vdi.pread(offset, length))

    def pwrite(self, offset: int, data) -> None:
        """Write ``data`` at ``offset``; returns once stored on every replica."""
        self._run(self._vdi.pwrite(offset, data))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._vdi.close())
        finally:
            self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT,  # noqa: A001
         **options) -> Vdi:
    """Open VDI ``name`` through the sheep at host:port (blocking API).

    Options as :meth:`qemu_client.block.AsyncVdi.open`: ``readonly``, ``inactive``,
    ``snapshot`` (tag or id), ``session_id``, ``renew_interval``."""
    return Vdi(name, host, port, **options)


def create(name: str, size: int = 0, host: str = "127.0.0.1", port: int = proto.SD_PORT,
           backing: str | None = None, snapshot: str | int | None = None) -> int:
    """Blocking :func:`qemu_client.block.create` (a clone needs a snapshot as backing)."""
    return asyncio.run(_create(name, size, host, port, backing, snapshot))
