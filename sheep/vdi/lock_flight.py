"""Writes in flight at the gateway: draining ended grants and freezing a VDI
for a snapshot (the daemon side of ``sheep.vdi.lock_table``'s draining and
freezing; mixed into ``sheep.vdi.locks.Locks``).

Guarantees: a fenced fan-out is counted from the moment it is admitted
(``begin_write``, with no await between the fence check and the count) to
its end (``end_write``, always, in a ``finally``); ``drained`` and ``quiet``
are sent only once the count of the grant is zero and no new fan-out of it
can be admitted, and are sent again until delivered; waiters are woken by
the delivery (``sheep.cluster.group`` wakes them on every lock message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid

from sheep import proto
from sheep.proto.errors import sd_error

log = logging.getLogger("sheep.vdi.locks")

DRAIN_WAIT = 35.0  # s a new lock waits for a former holder's writes (> RETRY_WINDOW)
FREEZE_WAIT = 15.0  # s a snapshot waits for the writes in flight (the rest of its work
# step may take a while too: clients retry AGAIN for 30 s)



class WritesInFlight:
    """Needs ``group``, ``table``, ``me``, ``enforced``, ``_changed`` and the
    dicts made by :meth:`_init_flight` (called by ``Locks.__init__``)."""

    def _init_flight(self) -> None:
        self._inflight: dict[tuple[int, int], int] = {}  # (vid, gen) -> fan-outs here
        self._idle: dict[tuple[int, int], asyncio.Event] = {}
        self._drains: dict[tuple[int, int], asyncio.Task] = {}
        self._quiets: dict[str, asyncio.Task] = {}  # by freeze id
        self._freezes_seen: set[str] = set()  # our freezes delivered here

    # -- draining (sheep.vdi.lock_table): writes of grants that ended ------------

    def begin_write(self, vid: int, gen: int) -> None:
        """A fan-out of a fenced write starts here (the gateway)."""
        key = (vid, gen)
        self._inflight[key] = self._inflight.get(key, 0) + 1

    def end_write(self, vid: int, gen: int) -> None:
        key = (vid, gen)
        n = self._inflight.get(key, 0) - 1
        if n > 0:
            self._inflight[key] = n
            return
        self._inflight.pop(key, None)
        ev = self._idle.pop(key, None)
        if ev is not None:
            ev.set()

    async def _drain(self, vid: int, gen: int) -> None:
        """Our grant ``gen`` of ``vid`` ended: once our writes of it in flight
        are done (no new one is admitted), tell everybody (``drained``)."""
        try:
            await self._announce(vid, gen, "drained",
                                 lambda: self.table.draining.get(vid) == (gen, self.me))
        finally:
            self._drains.pop((vid, gen), None)

    async def _quiesce(self, vid: int, gen: int, fid: str) -> None:
        """A snapshot froze our grant ``gen`` of ``vid`` (freeze ``fid``): once
        our writes of it in flight are done (no new one is admitted), say
        ``quiet`` (naming that freeze: a late one cannot end a later freeze)."""
        def pending():
            f = self.table.frozen.get(vid)
            return f is not None and f.fid == fid and not f.quiet
        try:
            await self._announce(vid, gen, "quiet", pending, fid=fid)
        finally:
            self._quiets.pop(fid, None)

    async def _announce(self, vid: int, gen: int, action: str, pending, **extra) -> None:
        """Wait until no write of ``(vid, gen)`` is in flight here, then send
        ``action`` in the total order until ``pending()`` no longer holds."""
        key = (vid, gen)
        while self._inflight.get(key):
            ev = self._idle.setdefault(key, asyncio.Event())
            await ev.wait()
        msg = {"t": "lock", "a": action, "vid": vid, "gen": gen, "node": self.me, **extra}
        while pending():
            try:
                await self.group.driver.notify(json.dumps(msg).encode())
                await self.group.wait_until(lambda: not pending(), 5.0)
            except RuntimeError:  # not a member: the others drop our entries
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — the VDI stays blocked until we say it
                log.warning("vid %#x: telling the cluster generation %d is %s failed (%s); "
                            "trying again", vid, gen, action, e)
                await asyncio.sleep(1.0)

    # -- freezing (sheep.vdi.lock_table): a snapshot's work step ------------------

    def _delivered(self, msg: dict) -> None:
        """A lock message was applied (or refused) here, in total order."""
        if msg.get("a") == "freeze" and msg.get("node") == self.me:
            self._freezes_seen.add(msg.get("fid"))  # our freeze came: judge it now

    def check_not_frozen(self, vid: int) -> None:
        """A new fan-out of ``vid`` waits while a snapshot copies its index."""
        if vid in self.table.frozen:
            raise sd_error("AGAIN", f"VDI {vid:#x} is being snapshotted; try again")

    async def freeze(self, vid: int, timeout: float = FREEZE_WAIT) -> str:
        """From a snapshot's work step: stop new writes of ``vid`` and wait
        until the ones admitted are done (see LockTable.freeze).  Raises
        AGAIN (after thawing) if they are not done within ``timeout``.

        Only writes that carry a lock generation are counted: with locks not
        enforced, Sheepdog 1.0 clients (session 0) and shared writers, a
        write may still land in W only while the index is copied."""
        if not self.enforced:
            return ""  # Sheepdog 1.0 mode: no generations, nothing to count
        self.group.check_op_token()  # a work step that lost its turn freezes nothing
        fid = uuid.uuid4().hex
        msg = {"t": "lock", "a": "freeze", "vid": vid, "node": self.me, "fid": fid}
        try:
            await self.group.driver.notify(json.dumps(msg).encode())
        except RuntimeError as e:  # not a member (cut off): nothing was frozen
            raise sd_error("HALT", f"cannot freeze VDI {vid:#x} for the snapshot: {e}") from None
        mine = lambda: getattr(self.table.frozen.get(vid), "fid", None) == fid  # noqa: E731
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # one bound for all the waits
        try:
            ok = await self.group.wait_until(lambda: fid in self._freezes_seen, timeout)
        finally:
            self._freezes_seen.discard(fid)
        ok = ok and mine()  # else refused: another snapshot froze it
        if ok:
            ok = await self.group.wait_until(
                lambda: not mine() or self.table.is_quiet(vid), max(0.0, deadline - loop.time()))
            ok = ok and mine()
        if ok:
            ok = await self.group.wait_until(lambda: vid not in self.table.draining,
                                                   max(0.0, deadline - loop.time()))
        if not ok:
            await self.thaw(vid, fid)
            raise sd_error("AGAIN", f"VDI {vid:#x}: writes in flight did not finish within "
                                f"{timeout:.0f}s (or another snapshot froze it); the snapshot "
                                f"was not taken")
        return fid

    def op_ended(self, node: proto.SdNode) -> None:
        """A cluster op of ``node`` ended (its UNBLOCK, in total order)."""
        if self.table.frozen and self.table.thaw_all(f"{node.host}:{node.port}"):
            self._changed()

    async def thaw(self, vid: int, fid: str) -> None:
        """The snapshot's work step failed: writes of ``vid`` go on (freeze ``fid``)."""
        if not self.enforced or not fid:
            return
        msg = {"t": "lock", "a": "thaw", "vid": vid, "node": self.me, "fid": fid}
        with contextlib.suppress(RuntimeError):  # not a member: dropped with our leave
            await self.group.driver.notify(json.dumps(msg).encode())

    async def wait_drained(self, vid: int, timeout: float = DRAIN_WAIT,
                           code: str = "VDI_LOCKED") -> None:
        """Wait until no former holder's writes to ``vid`` are still landing;
        raises ``code`` if they still are after ``timeout``."""
        if vid in self.table.draining:
            if not await self.group.wait_until(lambda: vid not in self.table.draining,
                                                     timeout):
                g, n = self.table.draining.get(vid, (0, "?"))
                raise sd_error(code, f"VDI {vid:#x}: writes of the former holder (generation "
                                 f"{g} through {n}) are still landing after {timeout:.0f}s")
