"""Recovery: after every epoch change, objects follow the ring.

Theory of operation
-------------------
Invariant: a *live* copy (``obj/<oid>``) on a node that holds the object at
the current epoch has every acknowledged write.  Everything else is kept only
as a *stale* copy (``obj/.stale/<oid>.<epoch>``).  Every copy carries a
version (``sheep.store.meta``), so copies can always be told old from new.

* **Epoch change** (:meth:`Recovery.on_epoch`, in the membership event that
  changed the epoch): a store job (``sheep.cluster.jobs``, off the event loop, in
  delivery order) turns every live copy this node does not hold at the new
  epoch into a stale copy tagged with the previous epoch.  Writes of the new
  epoch never reach it (peers refuse requests of another epoch), so the copy
  is frozen.  Requests wait for that job, so none sees a live copy the node
  should no longer trust.
* **Rejoining with an older epoch** (:meth:`Recovery.demote_all`): the node
  missed writes while it was away, so all its live copies become stale
  copies of the epoch it last knew.
* **Background recovery** (one task per epoch; a new epoch replaces it): the
  oids of every member (live and stale) and this node's own stale ones, as
  numpy arrays; those this node holds and lacks are recovered by a fixed pool
  of workers (memory: a few arrays of oids, not a task per object).  A member
  whose list cannot be read makes the pass incomplete: it is redone.
* **One object** (:meth:`Recovery.recover_object`, also called on access when
  a read or write reaches a holder that lacks the object): the rule of
  ``sheep.cluster.fetch`` — current holders' live copies first, stale copies only when
  every current holder answered "no such object", the greatest version wins,
  never from a copy older than one a missing former holder may have, and a
  fetch that spans an epoch change is redone.  Concurrent requests for one
  object share one attempt, which runs in its own task (a cancelled requester
  never cancels it).  A gateway's read that finds its local copy missing
  does not wait for it when other holders may serve it
  (:meth:`Recovery.recover_soon` starts it; the read goes on to them).
* **Completion**: a node announces an epoch recovered only when every object
  it must hold is there; once every member announced it, stale copies are
  purged on every node.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from sheep import proto
from sheep.cluster import events as ev
from sheep.cluster.fetch import LIVE, Fetcher, Outcome  # noqa: F401  (LIVE: peer reads)
from sheep.proto.errors import CODES, SdError
from sheep.vdi import recycle

log = logging.getLogger("sheep.cluster.recovery")

DEFAULT_MAX_EXEC = 8
RETRY_DELAY = 1.0  # s before an incomplete pass is redone
ON_ACCESS_WAIT = 5.0  # s a request waits for the object it needs
MAX_SOON = 16  # background recoveries started by reads at once (recover_soon)


class Recovery:
    def __init__(self, *, me, group, store, vdis, throttle, peers, io, io_thread):
        """``me`` this node (its address names it in "recovered" messages);
        ``group`` the membership; ``store`` this node's
        objects; ``vdis`` the VDI table; ``throttle`` the recovery throttling
        record to start with (``collie cluster recover`` sets :attr:`throttle`); ``peers`` the
        connection pool for recovery traffic; ``io`` / ``io_thread`` run store
        calls off the event loop."""
        self._me_key = f"{me.host}:{me.port}"  # (the address only: space and vnodes change)
        self.group, self.store, self.vdis = group, store, vdis
        self.throttle, self.peers, self.io = throttle, peers, io
        self.fetcher = Fetcher(group=group, store=store, vdis=vdis, peers=peers, io=io,
                               io_thread=io_thread)
        self.state = proto.RecoveryState()
        self._inflight: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self._kick = asyncio.Event()
        self.completed: dict[int, set[str]] = {}
        self._repairing: set[int] = set()
        self._soon: set[int] = set()  # recover_soon: started, not finished
        self.handled_total = 0  # objects handled by recovery passes since start (metrics)

    def holds(self, oid: int, ring=None) -> bool:
        """Does this node hold ``oid`` under ``ring`` (default: the current one)?"""
        return self.fetcher.holds(oid, ring)

    def owned_mask(self, oids: np.ndarray, ring) -> np.ndarray:
        """For each oid: does this node hold it under ``ring``?  (bulk, numpy;
        safe to call from an I/O thread)"""
        g = self.group
        me = next((i for i, n in enumerate(ring.nodes) if g.is_me(n)), None)
        oids = np.asarray(oids, dtype=np.uint64)
        if me is None or not len(oids) or not ring.nr_zones:
            return np.zeros(len(oids), dtype=bool)
        vids = ((oids >> np.uint64(32)) & np.uint64(0xFFFFFF)).astype(np.int64)
        uniq, inv = np.unique(vids, return_inverse=True)
        per_vid = np.array([ring.nr_copies(self.vdis.copies_of(int(v))) for v in uniq])
        copies = per_vid[inv]
        table = ring.bulk_placement(oids, int(copies.max()))
        cols = np.arange(table.shape[1])[None, :]
        return ((table == me) & (cols < copies[:, None])).any(axis=1)

    # ------------------------------------------------------------------
    # epoch changes (events of the group layer, in delivery order)

    def subscribe(self, events: ev.Events) -> None:
        """Follow the cluster (:mod:`sheep.cluster.events`)."""
        events.subscribe(ev.EPOCH_CHANGED, self.on_epoch)
        events.subscribe(ev.RESUMED, self.start)
        events.subscribe(ev.DATA_STALE, self.demote_all)
        events.subscribe(ev.RECOVERED, self.on_recovered)

    def on_epoch(self, old_epoch: int) -> None:
        """The epoch moved on from ``old_epoch``: demote what we no longer hold
        (a store job), then recover what we now hold."""
        g = self.group
        ring, epoch = g.ring, g.epoch
        g.jobs.submit(f"epoch {epoch}: moving unheld objects to .stale",
                      self._demote_unheld, ring, old_epoch, epoch)
        self.start()

    def _demote_unheld(self, ring, old_epoch: int, epoch: int) -> int:
        store = self.store
        oids = store.oid_array()
        if not len(oids):
            return 0
        unheld = oids[~self.owned_mask(oids, ring)]
        n = store.move_many_to_stale(unheld.tolist(), old_epoch)
        if n:
            log.info("epoch %d: %d objects this node no longer holds moved to .stale", epoch, n)
        return n

    def demote_all(self, my_epoch: int) -> None:
        """This node missed writes while away: keep its objects only as stale."""
        store = self.store

        def demote():
            n = store.move_many_to_stale(store.oid_array().tolist(), my_epoch)
            if n:
                log.info("rejoined from epoch %d: %d local objects kept only as stale "
                         "copies", my_epoch, n)
        self.group.jobs.submit(f"demoting the objects of epoch {my_epoch}", demote)

    def start(self) -> None:
        """(Re)start background recovery for the current epoch."""
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run(self.group.epoch))

    def kick(self) -> None:
        """Recovery was enabled, or the throttle changed (a pass that already
        ended for this epoch is started again: nothing is left behind)."""
        self._kick.set()
        if self._task is None or self._task.done():
            self.start()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # ------------------------------------------------------------------
    # background recovery

    async def _run(self, epoch: int) -> None:
        g = self.group
        try:
            await g.settled()
            while g.status != "ok" or g.disable_recovery:
                self._kick.clear()
                if g.epoch != epoch:
                    return
                try:
                    await asyncio.wait_for(self._kick.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            while g.epoch == epoch:
                if await self._pass(epoch):
                    return
                await asyncio.sleep(RETRY_DELAY)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recovery of epoch %d failed", epoch)
        finally:
            if g.epoch == epoch:
                self.state.in_recovery = 0

    async def _pass(self, epoch: int) -> bool:
        """One pass over the objects to recover; True once complete (announced)."""
        g = self.group
        self.state = st = proto.RecoveryState(in_recovery=1, state=0)
        todo, complete = await self._list_missing(epoch)
        st.state, st.nr_total = 1, len(todo)
        if len(todo):
            log.info("epoch %d: recovering %d objects", epoch, len(todo))
        thr = self.throttle
        nxt = iter(range(len(todo)))
        failed: list[int] = []

        async def worker():
            for i in nxt:
                if g.epoch != epoch:
                    return
                oid = int(todo[i])
                outcome = await self.recover_object(oid, wait=0.0)
                if outcome is Outcome.UNAVAILABLE:
                    failed.append(oid)
                st.nr_finished += 1
                self.handled_total += 1
                if thr.queue_work_interval:
                    await asyncio.sleep(thr.queue_work_interval / 1000)
        await asyncio.gather(*(worker() for _ in range(thr.max_exec_count or DEFAULT_MAX_EXEC)))
        if g.epoch != epoch:
            return True
        if failed or not complete:
            # announcing now would let every node purge stale copies that may
            # be the only ones left: redo the pass a little later
            log.warning("epoch %d: recovery incomplete (%d objects not recovered yet%s); "
                        "retrying", epoch, len(failed),
                        "; a member's object list was unavailable" if not complete else "")
            return False
        st.state = 2
        await g.driver.notify(json.dumps(
            {"t": "recovered", "epoch": epoch, "node": self._me_key}).encode())
        if len(todo):
            log.info("epoch %d: recovery finished (%d objects)", epoch, len(todo))
        return True

    async def _list_missing(self, epoch: int) -> tuple[np.ndarray, bool]:
        """Objects this node must hold at ``epoch`` but lacks; and whether
        every member's list could be read."""
        g, store, io = self.group, self.store, self.io
        parts = [await io(store.stale_oid_array)]
        complete = True
        for node in list(g.nodes):
            if g.is_me(node):
                continue
            try:
                body = await self._peer_list(node, epoch)
            except SdError as e:
                log.info("cannot list the objects of %s: %s", node, e)
                complete = False
                continue
            parts.append(np.frombuffer(body, dtype="<u8").astype(np.uint64))
        everything = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
        live = await io(store.oid_array)
        cand = np.setdiff1d(everything, live, assume_unique=True)
        if not len(cand):
            return cand, complete
        mask = await io(self.owned_mask, cand, g.ring)
        if self.vdis.tombs:  # objects of collected VDIs stay gone (-R)
            mask &= ~recycle.collected_mask(self.vdis, cand)
        return cand[mask], complete

    async def _peer_list(self, node, epoch: int) -> bytes:
        size = 1 << 20
        while True:
            req = proto.Request(proto.Op.GET_OBJ_LIST, flags=proto.SD_FLAG_CMD_RECOVERY,
                                epoch=epoch, data_length=size)
            try:
                _rsp, body = await self.peers.request(node, req)
                return body
            except SdError as e:
                if e.code != CODES["BUFFER_SMALL"] or size >= 1 << 30:
                    raise
                size *= 4

    def on_recovered(self, epoch: int, node: str) -> None:
        """Membership event: ``node`` finished recovering ``epoch``."""
        g = self.group
        done = self.completed.setdefault(epoch, set())
        done.add(node)
        for e in [e for e in self.completed if e < g.epoch]:
            del self.completed[e]
        if epoch == g.epoch and {f"{n.host}:{n.port}" for n in g.nodes} <= done:
            store = self.store

            def purge():
                n = store.purge_stale()
                if n:
                    log.info("epoch %d: recovery complete on every node; %d stale copies "
                             "purged", epoch, n)
            g.jobs.submit(f"epoch {epoch}: purging stale copies", purge)

    # ------------------------------------------------------------------
    # one object

    async def recover_object(self, oid: int, wait: float = ON_ACCESS_WAIT) -> Outcome:
        """Make the local live copy of ``oid`` exist if this node holds it.

        Retries an undecided attempt for up to ``wait`` seconds.  PRESENT: it
        exists now; NOT_HOLDER; ABSENT: no copy exists anywhere; UNAVAILABLE:
        not now (the caller answers something retryable, never NO_OBJ)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        delay = 0.05
        while True:
            if self.store.exists(oid):
                return Outcome.PRESENT
            fut = self._inflight.get(oid)
            if fut is None:
                fut = self._inflight[oid] = loop.create_task(self.fetcher.recover(oid))
                fut.add_done_callback(lambda f, oid=oid: self._inflight.pop(oid, None))
            try:
                outcome = await asyncio.shield(fut)
            except SdError as e:
                log.warning("recovering %016x: %s", oid, e)
                outcome = Outcome.UNAVAILABLE
            except Exception:
                log.exception("recovering %016x", oid)
                outcome = Outcome.UNAVAILABLE
            if outcome is not Outcome.UNAVAILABLE or loop.time() + delay > deadline:
                return outcome
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def recover_soon(self, oid: int) -> None:
        """Start recovering ``oid`` in the background, ahead of the pass (a
        read that found it missing here is served by another holder
        meanwhile); at most one such start per object at a time, and at most
        ``MAX_SOON`` at once (beyond that the pass, or a read that must wait,
        gets there)."""
        if oid in self._soon or oid in self._inflight or len(self._soon) >= MAX_SOON:
            return
        self._soon.add(oid)
        task = asyncio.get_running_loop().create_task(self.recover_object(oid, wait=0.0))
        task.add_done_callback(lambda _t, oid=oid: self._soon.discard(oid))

    def repair_later(self, oid: int) -> None:
        """The live copy here failed its checksum: fetch a good one from
        another holder in the background (best effort)."""
        if oid in self._repairing:
            return
        self._repairing.add(oid)

        async def repair():
            try:
                await self.fetcher.repair(oid)
            except Exception as e:  # noqa: BLE001 - best effort; check tools remain
                log.warning("repairing the damaged copy of %016x failed: %s", oid, e)
            finally:
                self._repairing.discard(oid)
        asyncio.get_running_loop().create_task(repair())
