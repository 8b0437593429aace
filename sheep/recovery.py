"""Recovery: after every epoch change, objects follow the ring.

Theory of operation
-------------------
Invariant: a *live* object file (``obj/<oid>``) on a node that holds the
object under the current ring is up to date — it received every write of the
current epoch.  Everything else is kept only as a *stale* copy
(``obj/.stale/<oid>.<epoch>``, frozen as of the end of that epoch).

* **Epoch change** (``on_epoch``, synchronous, in the membership event that
  changed the epoch): every local object this node no longer holds is moved
  to ``.stale`` tagged with the previous epoch.  Writes of the new epoch never
  reach it (peers refuse requests of an older epoch), so the copy is frozen.
* **Rejoining with an older epoch** (``demote_all``): the node missed writes
  while it was away, so all its objects become stale copies of the epoch it
  last knew.  It never serves them over newer ones.
* **Background recovery** (one task per epoch; a new epoch replaces it): list
  the objects of every member (live and stale), keep those this node must
  hold and lacks, and fetch each one (bounded concurrency, throttle).
* **Fetching one object** (``recover_object``; also called on access, when a
  read or write reaches a holder that lacks the object): first a live copy
  from another current holder; else the newest stale copy anywhere (highest
  epoch tag); else a live copy on a node that no longer holds it.  Concurrent
  requests for one object share one fetch; requests wait for it.
* **Completion**: a node that finished recovering an epoch announces it; once
  every member has, stale copies are purged on every node.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from sheep import proto
from sheep.errors import CODES, SdError

log = logging.getLogger("sheep.recovery")

DEFAULT_MAX_EXEC = 8
RETRY_DELAY = 2.0  # s before an incomplete recovery is tried again
LIVE = 0xFFFFFFFF  # "epoch" reported for a live (non-stale) copy


class Recovery:
    def __init__(self, sheep):
        self.sheep = sheep
        self.state = proto.RecoveryState()
        self._inflight: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self._kick = asyncio.Event()
        self.completed: dict[int, set[str]] = {}
        self._list_incomplete = False

    # ------------------------------------------------------------------
    # helpers

    @property
    def _me_key(self) -> str:
        return f"{self.sheep.me.host}:{self.sheep.me.port}"

    def _my_index(self, ring) -> int | None:
        for i, n in enumerate(ring.nodes):
            if self.sheep.group.is_me(n):
                return i
        return None

    def _copies(self, oid: int) -> int:
        return self.sheep.vdis.copies_of(proto.oid_to_vid(oid))

    def owned_mask(self, oids: list[int], ring) -> np.ndarray:
        """For each oid: does this node hold it under ``ring``?  (bulk, numpy)"""
        me = self._my_index(ring)
        if me is None or not oids or not ring.nr_zones:
            return np.zeros(len(oids), dtype=bool)
        copies = np.array([ring.nr_copies(self._copies(o)) for o in oids])
        table = ring.bulk_placement(np.array(oids, dtype=np.uint64), int(copies.max()))
        cols = np.arange(table.shape[1])[None, :]
        return ((table == me) & (cols < copies[:, None])).any(axis=1)

    def holds(self, oid: int) -> bool:
        ring = self.sheep.group.ring
        return any(self.sheep.group.is_me(n) for n in ring.replicas(oid, self._copies(oid)))

    # ------------------------------------------------------------------
    # epoch changes (called synchronously by the group layer, in order)

    def on_epoch(self, old_epoch: int) -> None:
        store = self.sheep.store
        oids = store.list_oids()
        if oids:
            mask = self.owned_mask(oids, self.sheep.group.ring)
            moved = 0
            for oid, owned in zip(oids, mask.tolist()):
                if not owned and store.move_to_stale(oid, old_epoch):
                    moved += 1
            if moved:
                log.info("epoch %d: %d objects this node no longer holds moved to .stale",
                         self.sheep.group.epoch, moved)
        self.start()

    def demote_all(self, my_epoch: int) -> None:
        """This node missed writes while away: keep its objects only as stale."""
        store = self.sheep.store
        n = sum(store.move_to_stale(oid, my_epoch) for oid in store.list_oids())
        if n:
            log.info("rejoined from epoch %d: %d local objects kept only as stale copies",
                     my_epoch, n)

    def start(self) -> None:
        """(Re)start background recovery for the current epoch."""
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._run(self.sheep.group.epoch))

    def kick(self) -> None:
        """Recovery was enabled, or the throttle changed."""
        self._kick.set()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # ------------------------------------------------------------------
    # background recovery

    async def _run(self, epoch: int) -> None:
        g = self.sheep.group
        try:
            while g.status != "ok" or g.disable_recovery:
                self._kick.clear()
                if g.epoch != epoch:
                    return
                try:
                    await asyncio.wait_for(self._kick.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            self.state = st = proto.RecoveryState(in_recovery=1, state=0)
            todo = await self._list_missing(epoch)
            st.state, st.nr_total = 1, len(todo)
            if todo:
                log.info("epoch %d: recovering %d objects", epoch, len(todo))
            thr = self.sheep.recovery_throttle
            sem = asyncio.Semaphore(thr.max_exec_count or DEFAULT_MAX_EXEC)

            failed = []

            async def one(oid):
                async with sem:
                    if g.epoch != epoch:
                        return
                    if not await self.recover_object(oid):
                        log.warning("epoch %d: could not recover %016x", epoch, oid)
                        failed.append(oid)
                    st.nr_finished += 1
                    if thr.queue_work_interval:
                        await asyncio.sleep(thr.queue_work_interval / 1000)
            await asyncio.gather(*(one(o) for o in todo))
            if g.epoch != epoch:
                return
            if failed or self._list_incomplete:
                # Announcing now would let every node purge the stale copies
                # that may be the only ones left: try again a little later.
                log.warning("epoch %d: recovery incomplete (%d objects failed%s); retrying",
                            epoch, len(failed),
                            ", a node's object list unavailable" if self._list_incomplete else "")
                await asyncio.sleep(RETRY_DELAY)
                self.start()
                return
            st.state = 2
            await g.driver.notify(json.dumps(
                {"t": "recovered", "epoch": epoch, "node": self._me_key}).encode())
            if todo:
                log.info("epoch %d: recovery finished (%d objects)", epoch, len(todo))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recovery of epoch %d failed", epoch)
        finally:
            if g.epoch == epoch:
                self.state.in_recovery = 0

    async def _list_missing(self, epoch: int) -> list[int]:
        """Objects this node must hold at ``epoch`` but lacks (live + stale lists)."""
        g, store = self.sheep.group, self.sheep.store
        everything: set[int] = set(store.list_oids()) | set(store.list_stale())
        req_flags = proto.SD_FLAG_CMD_RECOVERY
        self._list_incomplete = False
        for node in list(g.nodes):
            if g.is_me(node):
                continue
            try:
                body = await self._peer_list(node, req_flags, epoch)
            except SdError as e:
                log.info("cannot list objects of %s: %s", node, e)
                self._list_incomplete = True
                continue
            everything.update(np.frombuffer(body, dtype="<u8").tolist())
        cand = sorted(o for o in everything if not store.exists(o))
        if not cand:
            return []
        mask = self.owned_mask(cand, g.ring)
        return [o for o, m in zip(cand, mask.tolist()) if m]

    async def _peer_list(self, node, flags: int, epoch: int) -> bytes:
        size = 1 << 20
        while True:
            req = proto.Request(proto.Op.GET_OBJ_LIST, flags=flags, epoch=epoch, data_length=size)
            try:
                _rsp, body = await self.sheep.gateway.peers.request(node, req)
                return body
            except SdError as e:
                if e.code != CODES["BUFFER_SMALL"] or size >= 1 << 30:
                    raise
                size *= 4

    def on_recovered(self, epoch: int, node: str) -> None:
        """Membership event: ``node`` finished recovering ``epoch``."""
        g = self.sheep.group
        done = self.completed.setdefault(epoch, set())
        done.add(node)
        for e in [e for e in self.completed if e < g.epoch]:
            del self.completed[e]
        if epoch == g.epoch and {f"{n.host}:{n.port}" for n in g.nodes} <= done:
            n = self.sheep.store.purge_stale()
            if n:
                log.info("epoch %d: recovery complete on every node; %d stale copies purged",
                         epoch, n)

    # ------------------------------------------------------------------
    # one object

    async def recover_object(self, oid: int) -> bool:
        """Make the local live copy of ``oid`` exist if this node holds it.

        Returns True if it exists afterwards; False if this node does not hold
        the object or no copy of it exists anywhere."""
        store = self.sheep.store
        if store.exists(oid):
            return True
        fut = self._inflight.get(oid)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[oid] = fut
        ok = False
        try:
            ok = await self._recover(oid)
        except SdError as e:
            log.warning("recovering %016x: %s", oid, e)
        except Exception:
            log.exception("recovering %016x", oid)
        finally:
            del self._inflight[oid]
            fut.set_result(ok)
        return ok

    async def _recover(self, oid: int) -> bool:
        g, gw, store = self.sheep.group, self.sheep.gateway, self.sheep.store
        if proto.is_data_obj(oid):
            await self.sheep.vdis.await_state(proto.oid_to_vid(oid))
        if not self.holds(oid):
            return False
        epoch = g.epoch
        size = gw.obj_size(oid)
        copies = self._copies(oid)
        holders = [n for n in g.ring.replicas(oid, copies) if not g.is_me(n)]
        data = None
        for node in holders:  # 1. a live copy on a current holder is up to date
            try:
                data = await self._read(node, oid, size, epoch, proto.SD_FLAG_CMD_RECOVERY)
                break
            except SdError:
                continue
        if data is None:  # 2. stale copies anywhere, newest first, 3. orphan live copies
            cands = [(e, None) for e in store.stale_epochs(oid)]
            probes = [n for n in g.nodes if not g.is_me(n)]
            tags = await asyncio.gather(*(self._probe(n, oid, epoch) for n in probes))
            for node, tag in zip(probes, tags):
                if tag is not None:
                    cands.append((0 if tag == LIVE else tag, node))
            cands.sort(key=lambda c: c[0], reverse=True)
            for ep, node in cands:
                try:
                    if node is None:
                        data = store.read_stale(oid, ep)
                    else:
                        data = await self._read(
                            node, oid, size, epoch,
                            proto.SD_FLAG_CMD_RECOVERY | proto.SD_FLAG_CMD_WILDCARD,
                            tgt_epoch=ep or LIVE)
                    break
                except SdError as e:
                    log.warning("recovering %016x: copy of epoch %d on %s unusable: %s",
                                oid, ep, node or "this node", e)
            if data is None:
                return False
        if g.epoch != epoch and not self.holds(oid):
            return False  # the ring moved on while we fetched
        if store.exists(oid):
            return True  # created meanwhile (a client's first write)
        await self.sheep.io(store.create_and_write, oid, size, data, 0, proto.is_sparse_obj(oid))
        if g.epoch != epoch and not self.holds(oid):  # moved on while we wrote: no orphan
            store.move_to_stale(oid, epoch)
            return False
        return True

    async def _read(self, node, oid: int, size: int, epoch: int, flags: int,
                    tgt_epoch: int = 0) -> bytes:
        req = proto.Request(proto.Op.READ_PEER,
                            proto.ObjArgs(oid=oid, tgt_epoch=tgt_epoch), flags=flags,
                            epoch=epoch, data_length=size)
        _rsp, body = await self.sheep.gateway.peers.request(node, req)
        if len(body) != size:
            raise SdError(CODES["EIO"], f"short recovery read of {oid:016x} from {node}")
        return body

    async def _probe(self, node, oid: int, epoch: int) -> int | None:
        """Newest stale epoch (or LIVE) of ``oid`` on ``node``; None if it has none."""
        req = proto.Request(proto.Op.READ_PEER, proto.ObjArgs(oid=oid),
                            flags=proto.SD_FLAG_CMD_RECOVERY | proto.SD_FLAG_CMD_WILDCARD,
                            epoch=epoch, data_length=0)
        try:
            rsp, _ = await self.sheep.gateway.peers.request(node, req)
        except SdError:
            return None
        return rsp.args.offset
