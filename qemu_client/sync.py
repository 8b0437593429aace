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
    def __init__(self, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"qemu_client:{name}")
        self._thread.start()
        try:
            self._vdi = self._run(AsyncVdi.open(name, host, port))
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


def open(name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT) -> Vdi:  # noqa: A001
    """Open VDI ``name`` through the sheep at host:port (blocking API)."""
    return Vdi(name, host, port)


def create(name: str, size: int = 0, host: str = "127.0.0.1", port: int = proto.SD_PORT,
           backing: str | None = None, snapshot: str | int | None = None) -> int:
    """Blocking :func:`qemu_client.block.create` (a clone needs a snapshot as backing)."""
    return asyncio.run(_create(name, size, host, port, backing, snapshot))
