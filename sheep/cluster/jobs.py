"""Ordered disk work for membership events, off the event loop.

Membership callbacks run on the event loop, where the cluster driver also
sends and reads its heartbeats, so they must not block.  The disk work an
event implies (writing the epoch log, moving objects to ``.stale``, a format,
persisting lock generations) is queued here instead and runs on an I/O
thread, one job at a time, in the order the events were delivered.

Guarantees:

* jobs run in submission order, never two at once;
* :meth:`Jobs.settled` returns once every job submitted before the call has
  finished — requests that touch the store wait for it, so no request is
  served on a state whose disk work has not been done;
* a job that raises calls ``on_failure`` (the daemon leaves the cluster: a
  node whose disk state is behind its in-memory state must not serve), and
  every later ``settled`` raises KILLED.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from sheep.proto.errors import CODES, error_for

log = logging.getLogger("sheep.cluster.jobs")


class Jobs:
    def __init__(self, run_blocking, on_failure):
        """``run_blocking(fn, *args)`` awaits ``fn(*args)`` on an I/O thread;
        ``on_failure(message)`` is called once if a job fails."""
        self._run = run_blocking
        self._on_failure = on_failure
        self._queue: collections.deque = collections.deque()
        self._tail: asyncio.Future | None = None
        self._worker: asyncio.Task | None = None
        self.failed: str | None = None

    @property
    def pending(self) -> int:
        return len(self._queue) + (1 if self._worker is not None and not self._worker.done() else 0)

    def submit(self, what: str, fn, *args) -> asyncio.Future:
        """Queue ``fn(*args)``; the future resolves with its result."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((what, fn, args, fut))
        self._tail = fut
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        while self._queue:
            what, fn, args, fut = self._queue.popleft()
            if self.failed is not None:
                fut.set_exception(error_for(CODES["KILLED"], self.failed))
                fut.exception()
                continue
            try:
                result = await self._run(fn, *args)
            except BaseException as e:  # noqa: BLE001 - the node must stop
                self.failed = f"{what} failed: {e!r}"
                log.critical("%s", self.failed)
                fut.set_exception(error_for(CODES["KILLED"], self.failed))
                fut.exception()
                self._on_failure(self.failed)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            fut.set_result(result)

    async def settled(self) -> None:
        """Wait for every job submitted so far; KILLED if one failed."""
        tail = self._tail
        if tail is not None and not tail.done():
            await asyncio.shield(tail)
        if self.failed is not None:
            raise error_for(CODES["KILLED"], self.failed)

    def is_settled(self) -> bool:
        return (self._tail is None or self._tail.done()) and self.failed is None
