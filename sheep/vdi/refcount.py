"""Reclaiming data objects that no VDI references any more (docs/protocol.md §11.5).

Design choice: reachability under the cluster block, not ``gref`` ledgers
-----------------------------------------------------------------------
Sheepdog 1.0 counts references with per-entry ``gref`` generations and
per-object ledgers (DECREF_OBJ/DECREF_PEER).  Those counters are only right
if every read-modify-write of an inode's ``gref`` array is serialised with
every index write of that inode, which 1.0 does not guarantee (a clone that
bumps the base's counts can interleave with a client zeroing the base's
entries, and the bump is lost).  We use an equivalent that needs no counters:

* References only flow *down* the family tree.  A new reference to the data
  object ``X = vid_to_data_oid(o, i)`` appears only when an inode is derived
  (snapshot, clone, rebase/rollback) from one that holds it, i.e. every
  holder of X is ``o`` itself or a descendant of ``o`` (states carry
  ``parent``).  Clients only ever write their *own* vid into an entry.
* Derivations run in cluster-op work steps, which are exclusive cluster-wide
  (``sheep.cluster.group``), and their main step (registering the child and its
  parent) is applied on this node before any later work step starts.
* When an index write drops an entry ``i`` whose old value ``o`` differs from
  the new one, the gateway first completes the write, then asks: is X still
  held?  The authoritative answer (:meth:`Refs.reclaim_locked`) runs inside a
  cluster op: it reads entry ``i`` of ``o`` and of every live descendant of
  ``o``; if none still says ``o``, X is removed on all replicas.  Because the
  check is exclusive with derivations and runs after the dropping write
  landed, a derivation either happened before (the child is checked and keeps
  X alive) or after (it copied the already-dropped entry).
* Fast path without a cluster op (:meth:`Refs.release`): if ``o`` is alive
  and its own entry ``i`` still says ``o``, X is certainly held and nothing
  is done.  This only ever decides *keep*, so it cannot delete live data;
  two concurrent droppers each read the other's entry after their own write
  landed, so at least one of them sees both drops and takes the slow path.
* DEL_VDI (already a cluster op) zeroes the whole index first and then runs
  the same check in-line for every entry it dropped, so a VDI deleted
  without clearing its entries (QEMU's revert path) leaks nothing either.

``gref`` pairs in inodes are left zero and DECREF_OBJ/DECREF_PEER are not
served (INVALID_PARMS); no client of Sheepdog 1.0 sends or reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from sheep import proto
from sheep.proto.errors import CODES, SdError

log = logging.getLogger("sheep.vdi.refcount")


def _entry(raw: bytes, k: int) -> int:
    return int.from_bytes(raw[4 * k:4 * k + 4], "little")


class Refs:
    """The references of ``table`` (a :class:`sheep.vdi.table.VdiTable`): its
    states, its object I/O and its group."""

    def __init__(self, table):
        self.table = table

    # ------------------------------------------------------------------
    # family tree

    def referrers(self, vid: int) -> list[int]:
        """``vid`` and all its descendants that are not deleted (who may hold vid's objects)."""
        states = self.table.states
        children: dict[int, list[int]] = defaultdict(list)
        for s in states.values():
            if s.parent:
                children[s.parent].append(s.vid)
        out, todo, seen = [], [vid], {vid}
        while todo:
            v = todo.pop()
            st = states.get(v)
            if st is not None and not st.deleted:
                out.append(v)
            for c in children.get(v, ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return sorted(out)

    def has_relatives(self, vid: int) -> bool:
        """True if ``vid`` has a parent or any child (it shares objects)."""
        states = self.table.states
        st = states.get(vid)
        if st is not None and st.parent:
            return True
        return any(s.parent == vid for s in states.values())

    async def _entries(self, vid: int, idxs: list[int]) -> dict[int, int]:
        """data_vdi_id[i] of inode ``vid`` for every i in idxs (one read)."""
        lo, hi = min(idxs), max(idxs)
        raw = await self.table.gateway.read(proto.vid_to_vdi_oid(vid),
                                            proto.data_vdi_id_offset(lo), 4 * (hi - lo + 1),
                                            copies=self.table.copies_of(vid))
        return {i: _entry(raw, i - lo) for i in idxs}

    # ------------------------------------------------------------------
    # entry points

    async def release(self, dropped: list[tuple[int, int]]) -> None:
        """Called after an index write landed that dropped entries ``(o, i)``."""
        if not dropped:
            return
        vdis = self.table
        slow = []
        by_owner: dict[int, list[int]] = defaultdict(list)
        for o, i in dropped:
            by_owner[o].append(i)
        for o, idxs in by_owner.items():
            st = vdis.state(o)
            if st is None or st.deleted:
                slow += [(o, i) for i in idxs]
                continue
            try:
                now = await self._entries(o, idxs)
            except SdError:
                now = {}
            slow += [(o, i) for i in idxs if now.get(i) != o]
        if not slow:
            return

        async def work():
            removed = await self.reclaim_locked(slow)
            return {"op": "reclaim", "removed": removed}
        await self.table.group.cluster_op(work)

    async def reclaim_locked(self, dropped: list[tuple[int, int]]) -> int:
        """Remove every X = (o, i) that no live holder references.  Must run in a
        cluster-op work step (exclusive with snapshot/clone/delete)."""
        by_owner: dict[int, list[int]] = defaultdict(list)
        for o, i in dropped:
            if o:
                by_owner[o].append(i)
        garbage: list[int] = []
        for o, idxs in by_owner.items():
            idxs = sorted(set(idxs))
            held: set[int] = set()
            referrers = self.referrers(o)
            for v in referrers:
                try:
                    ent = await self._entries(v, idxs)
                except SdError as e:
                    # cannot prove it is unreferenced: keep (a leak, never a loss)
                    log.warning("reclaim: cannot read the index of %#x: %s", v, e)
                    held.update(idxs)
                    break
                held.update(i for i in idxs if ent[i] == o)
            garbage += [proto.vid_to_data_oid(o, i) for i in idxs if i not in held]
        if garbage:
            await asyncio.gather(*(self._remove(oid) for oid in garbage))
            log.info("reclaimed %d unreferenced data objects", len(garbage))
        return len(garbage)

    async def _remove(self, oid: int) -> None:
        try:
            await self.table.gateway.remove(oid)
        except SdError as e:
            if e.code != CODES["NO_OBJ"]:
                log.warning("reclaiming %016x: %s", oid, e)
