"""The epoch history: every epoch's member list, in memory and on disk.

Each membership change of a formatted, running cluster is a new epoch
(docs/protocol.md §15); its node list is logged in ``epoch/NNNNNNNN``.  The history
is read once at start-up and then kept in memory (the master sends it to
every joiner, recovery looks up who held an object at a past epoch); writes
and removals change the memory at once and the disk in delivery order, as
store jobs (``sheep.cluster.jobs``), so membership callbacks never wait on a disk.
"""

from __future__ import annotations

import threading
import time

from sheep import proto
from sheep.proto.placement import Ring

RING_CACHE = 256  # rings of past epochs kept built


class EpochHistory:
    def __init__(self, store, jobs):
        self.store, self.jobs = store, jobs
        self.logs: dict[int, tuple[bytes, int]] = {
            e: rec for e in store.epochs() if (rec := store.read_epoch(e))}
        self._rings: dict[bytes, Ring] = {}  # member list -> its ring
        self._ring_lock = threading.Lock()

    def nodes(self, epoch: int) -> list[proto.SdNode]:
        """The members of ``epoch`` ([] if it is not in the history)."""
        rec = self.logs.get(epoch)
        return proto.unpack_nodes(rec[0]) if rec else []

    def ring(self, epoch: int) -> Ring | None:
        """The ring of ``epoch``, None if it is not in the history.  Rings
        are cached by member list: a long history repeats the same few lists
        (nodes leaving and coming back), so few rings are ever built."""
        rec = self.logs.get(epoch)
        if rec is None:
            return None
        with self._ring_lock:  # recovery asks from I/O threads
            ring = self._rings.get(rec[0])
            if ring is None:
                ring = Ring(proto.unpack_nodes(rec[0]))
                if len(self._rings) >= RING_CACHE:
                    self._rings.pop(next(iter(self._rings)))
                self._rings[rec[0]] = ring
            return ring

    def write(self, epoch: int, nodes: bytes, ts: int | None = None) -> None:
        """Record an epoch: in memory now, on disk in delivery order."""
        ts = int(time.time()) if ts is None else ts
        self.logs[epoch] = (nodes, ts)
        self.jobs.submit(f"writing the log of epoch {epoch}", self.store.write_epoch,
                         epoch, nodes, ts)

    def remove(self, epoch: int) -> None:
        self.logs.pop(epoch, None)
        self.jobs.submit(f"removing the log of epoch {epoch}", self.store.remove_epoch, epoch)

    def forget_all(self) -> None:
        """Format: the store job that deletes the logs is the caller's."""
        self.logs.clear()

    def records(self) -> list:
        """The history as ``[epoch, nodes hex, timestamp]`` records (join data)."""
        return [[e, rec[0].hex(), rec[1]] for e, rec in sorted(self.logs.items())]
