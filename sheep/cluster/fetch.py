"""Recovering one object: which copy is the newest, and when it may be used.

Theory of operation
-------------------
Invariant (kept by the data path): a live copy on a node that holds the
object at the current epoch has every acknowledged write.  Every copy — live
or stale — carries a version (``sheep.store.meta``); of two copies, the one
with the greater version holds every acknowledged write the other holds.

Here a *holder* of an object at an epoch is one of its replica nodes on that
epoch's ring (whether or not it has a copy yet).

The rule, for a node that holds ``oid`` at epoch E and lacks a live copy:

1. **Current holders first.**  Every other holder at E is asked for its live
   copy's version (a probe).  If any has one, the live copies are fetched,
   greatest version first (by the invariant each has every acknowledged
   write).  If none has one, an answer other than "no such object"
   (OLD_NODE_VER after a back-to-back rejoin, NETWORK_ERROR, EIO, a timeout,
   HALT) decides nothing: the attempt is retried — that holder may have the
   only up-to-date copy.
2. **Stale copies only when every other current holder answered "no such
   object".**  Then every member is asked for its best copy (live or stale,
   with versions); every one must answer.  The greatest version wins — but
   only if every epoch from that version's epoch on still has one of its
   holders in the cluster.  Why that is enough: a newer write went to every
   holder of its epoch; a present one still has it, or gave it up only when
   its copy moved on (stale, then purged once every member of a later epoch
   had recovered it) — to the holders of that later epoch, one of which is
   present in turn.  If some epoch has lost all its holders, the newest copy
   may be on them: the object waits for one of them to come back.
3. **No copy anywhere** (every member answered, none has one): the object
   does not exist — unless some epoch of the history has lost all its
   holders of it (they may have it): then not now.
4. **Install**: the fetched copy is stored with its version, under the
   object's lock, only if the epoch is still E (checked under that lock); a
   copy already there with a greater version is never replaced.  A fetch that
   spans an epoch change is redone from step 1 at the new epoch.  Right after
   the install, in the same I/O thread call, the copy becomes stale if the
   epoch moved on meanwhile and this node no longer holds it: a cancelled
   recovery task cannot leave a live orphan behind.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import struct

from sheep import proto
from sheep.proto.errors import CODES, SdError, error_for
from sheep.store import meta as M

log = logging.getLogger("sheep.cluster.recovery")

LIVE = 0xFFFFFFFF  # tgt_epoch of a recovery read for the live copy
PROBE_FLAGS = proto.SD_FLAG_CMD_RECOVERY | proto.SD_FLAG_CMD_WILDCARD
MAX_FETCHES = 16  # objects fetched at once (each up to 64 MiB in memory)
# probe reply (rsp.obj): copies@20 = flags, offset@24 = live version,
# pad1@32 = best stale version (u64) + its epoch tag (u32)
HAS_LIVE, HAS_STALE = 1, 2
_STALE = struct.Struct("<QI4x")


class Outcome(enum.Enum):
    PRESENT = "present"          # a live copy is here now
    NOT_HOLDER = "not holder"    # this node does not hold the object
    ABSENT = "absent"            # no copy anywhere: the object does not exist
    UNAVAILABLE = "unavailable"  # cannot be decided now; try again


class Retry(Exception):
    """This attempt decided nothing (reason in the message)."""


def probe_reply(live: int | None, stale: tuple[int, int] | None) -> proto.ObjRsp:
    """The probe answer for a live version and a (version, epoch) stale copy."""
    flags = (HAS_LIVE if live is not None else 0) | (HAS_STALE if stale else 0)
    sv, se = stale or (0, 0)
    return proto.ObjRsp(copies=flags, offset=live or 0, pad1=_STALE.pack(sv, se))


def parse_probe(rsp: proto.ObjRsp) -> tuple[int | None, tuple[int, int] | None]:
    live = rsp.offset if rsp.copies & HAS_LIVE else None
    sv, se = _STALE.unpack(rsp.pad1)
    return live, ((sv, se) if rsp.copies & HAS_STALE else None)


def best_local(store, oid: int) -> tuple[int | None, tuple[int, int] | None]:
    """(live version, (version, epoch) of the best stale copy) of this store."""
    try:
        live = store.version(oid)
    except SdError:
        live = None  # a damaged live copy is no candidate
    stale = None
    for ep, ver in store.stale_copies(oid).items():
        if stale is None or (ver, ep) > stale:
            stale = (ver, ep)
    return live, stale


class Fetcher:
    """Steps 1-4 for one object at a time (``sheep.cluster.recovery`` schedules them)."""

    def __init__(self, *, group, store, vdis, peers, io, io_thread):
        """``group`` the membership (epoch, ring, nodes); ``store`` this node's
        objects; ``vdis`` the VDI table (redundancy and object size per VDI);
        ``peers`` the connection pool for recovery traffic; ``io`` /
        ``io_thread`` run store calls off the event loop."""
        self.group, self.store, self.vdis, self.peers = group, store, vdis, peers
        self.io, self.io_thread = io, io_thread
        # whole objects in memory at once, background and on-access together
        self._fetching = asyncio.Semaphore(MAX_FETCHES)

    # -- helpers ----------------------------------------------------------------

    def _copies(self, oid: int) -> int:
        return self.vdis.copies_of(proto.oid_to_vid(oid))

    def holds(self, oid: int, ring=None) -> bool:
        g = self.group
        ring = ring or g.ring
        return any(g.is_me(n) for n in ring.replicas(oid, self._copies(oid)))

    async def _request(self, node, oid: int, epoch: int, flags: int, length: int = 0,
                       tgt_epoch: int = 0):
        req = proto.Request(proto.Op.READ_PEER, proto.ObjArgs(oid=oid, tgt_epoch=tgt_epoch),
                            flags=flags, epoch=epoch, data_length=length)
        return await self.peers.request(node, req)

    async def _probe(self, node, oid: int, epoch: int):
        """(live version, best stale) of ``node``; raises on any error but NO_OBJ."""
        try:
            rsp, _ = await self._request(node, oid, epoch, PROBE_FLAGS)
        except SdError as e:
            if e.code == CODES["NO_OBJ"]:
                return None, None
            raise
        return parse_probe(rsp.args)

    async def _probe_all(self, nodes, oid: int, epoch: int, need_all: bool = True) -> list:
        """Each node's probe answer; a node that could not answer gives None
        (or, with ``need_all``, makes the attempt a Retry)."""
        res = await asyncio.gather(*(self._probe(n, oid, epoch) for n in nodes),
                                   return_exceptions=True)
        out = []
        for n, r in zip(nodes, res):
            if isinstance(r, BaseException):
                if not isinstance(r, SdError):
                    raise r
                if need_all:
                    raise Retry(f"{n} did not answer the probe: {r.name}")
                out.append(None)
                continue
            out.append(r)
        return out

    async def _fetch(self, node, oid: int, epoch: int, tag: int | None, size: int):
        """(version, data) of the live copy (``tag`` None) or a stale one on ``node``."""
        flags = proto.SD_FLAG_CMD_RECOVERY | (proto.SD_FLAG_CMD_WILDCARD if tag else 0)
        try:
            rsp, body = await self._request(node, oid, epoch, flags, size,
                                            LIVE if tag is None else tag)
        except SdError as e:
            raise Retry(f"fetching from {node}: {e.name}") from None
        if len(body) != size:
            raise Retry(f"short copy of {oid:016x} from {node} ({len(body)} of {size} bytes)")
        return rsp.args.offset, body

    # -- the rule ----------------------------------------------------------------

    async def recover(self, oid: int) -> Outcome:
        """One attempt at steps 1-4 (see the module docstring)."""
        g, store = self.group, self.store
        if proto.is_data_obj(oid):
            await self.vdis.await_state(proto.oid_to_vid(oid))
        await g.settled()
        epoch, ring = g.epoch, g.ring
        if store.exists(oid):
            return Outcome.PRESENT
        if not self.holds(oid, ring):
            return Outcome.NOT_HOLDER
        size = self.vdis.obj_size(oid)
        try:
            sources = await self._choose(oid, epoch, ring)
            if not sources:
                return Outcome.ABSENT
            version, data = await self._first_good(sources, oid, epoch, size)
        except Retry as e:
            log.info("recovering %016x at epoch %d: %s; will retry", oid, epoch, e)
            return Outcome.UNAVAILABLE
        if g.epoch != epoch:
            return Outcome.UNAVAILABLE  # the fetch spanned an epoch change: redo it
        return await self._install(oid, epoch, size, data, version)

    async def _first_good(self, sources, oid: int, epoch: int, size: int):
        """(version, data) from the first source that delivers."""
        async with self._fetching:
            return await self._first_good_locked(sources, oid, epoch, size)

    async def _first_good_locked(self, sources, oid: int, epoch: int, size: int):
        why = []
        for node, tag in sources:
            try:
                if node is None:
                    return await self.io(self.store.read_stale, oid, tag)
                return await self._fetch(node, oid, epoch, tag, size)
            except (Retry, SdError) as e:
                why.append(str(e))
        raise Retry("; ".join(why))

    async def _choose(self, oid: int, epoch: int, ring) -> list:
        """The copies to fetch, best first, as (node or None for this node,
        stale tag or None for live); [] if no copy exists anywhere; Retry if
        that cannot be decided now."""
        g = self.group
        replicas = [n for n in ring.replicas(oid, self._copies(oid)) if not g.is_me(n)]
        answers = await self._probe_all(replicas, oid, epoch, need_all=False)
        live = [(a[0], i) for i, a in enumerate(answers) if a is not None and a[0] is not None]
        if live:  # step 1: the current holders' live copies, newest first
            return [(replicas[i], None) for v, i in sorted(live, reverse=True)]
        silent = [replicas[i] for i, a in enumerate(answers) if a is None]
        if silent:
            raise Retry(f"current holder(s) {', '.join(map(str, silent))} did not answer")
        # step 2: every other current holder said "no such object"
        others = [n for n in g.nodes if not g.is_me(n)]
        answers = await self._probe_all(others, oid, epoch)
        lv, ls = best_local(self.store, oid)
        cands = []  # (version, node or None, stale tag or None)
        if ls:
            cands.append((ls[0], None, ls[1]))
        for n, (v, s) in zip(others, answers):
            if v is not None:
                cands.append((v, n, None))
            if s is not None:
                cands.append((s[0], n, s[1]))
        if not cands:  # step 3, unless the object may live on nodes that are all away
            lost = await self.io_thread(self._lost_epochs, oid, 1, epoch)
            if lost:
                e, holders = lost[-1]
                raise Retry(f"no copy among the members, but every holder of epoch {e} "
                            f"({', '.join(holders)}) is missing")
            return []
        cands.sort(key=lambda c: (c[0], c[2] or 0), reverse=True)
        version, node, tag = cands[0]
        lost = await self.io_thread(self._lost_epochs, oid, M.version_epoch(version), epoch)
        if lost:
            e, holders = lost[0]
            raise Retry(f"best copy is version {M.fmt_version(version)}, but every holder of "
                        f"epoch {e} ({', '.join(holders)}) is missing: one of them may have a "
                        f"newer copy")
        log.info("recovering %016x from the %s copy (version %s) on %s", oid,
                 "live" if tag is None else f"stale (epoch {tag})", M.fmt_version(version),
                 node or "this node")
        return [(n, t) for v, n, t in cands if v == version]

    def _lost_epochs(self, oid: int, since: int, epoch: int) -> list[tuple[int, list[str]]]:
        """Epochs ``since``..``epoch`` none of whose holders of ``oid`` is in
        the cluster now, with those holders."""
        g = self.group
        present = {(bytes(n.addr), n.port) for n in g.nodes}
        copies = self._copies(oid)
        lost = []
        for e in range(max(since, 1), epoch + 1):
            ring = g.epoch_ring(e)
            if ring is None or all((bytes(n.addr), n.port) in present for n in ring.nodes):
                continue
            held = ring.replicas(oid, copies)
            if held and not any((bytes(n.addr), n.port) in present for n in held):
                lost.append((e, [f"{n.host}:{n.port}" for n in held]))
        return lost

    async def _install(self, oid: int, epoch: int, size: int, data, version: int) -> Outcome:
        g, store = self.group, self.store
        sparse = proto.is_sparse_obj(oid)

        def check():
            if g.epoch != epoch:
                raise error_for(CODES["OLD_NODE_VER"], "epoch moved during recovery")

        def install():
            try:
                store.install(oid, size, data, version, sparse, check)
            except SdError as e:
                if e.code == CODES["OLD_NODE_VER"]:
                    return False
                raise
            if g.epoch != epoch and not self.holds(oid):  # moved on meanwhile: no orphan
                store.move_to_stale(oid, epoch)
                return False
            return store.exists(oid)  # (a client's create may have won: also fine)
        if not await self.io(install):
            return Outcome.UNAVAILABLE
        return Outcome.PRESENT

    async def repair(self, oid: int) -> bool:
        """Replace this node's damaged live copy of ``oid`` by the newest live
        copy of another current holder; True if replaced, False if there is
        nothing to replace it with (every other holder answered) or nothing
        to replace; Retry if a holder did not answer or no fetch succeeded."""
        g = self.group
        await g.settled()
        epoch, ring = g.epoch, g.ring
        if not self.holds(oid, ring):
            return False
        replicas = [n for n in ring.replicas(oid, self._copies(oid)) if not g.is_me(n)]
        answers = await self._probe_all(replicas, oid, epoch, need_all=False)
        live = sorted(((a[0], i) for i, a in enumerate(answers)
                       if a is not None and a[0] is not None), reverse=True)
        if not live:
            silent = [replicas[i] for i, a in enumerate(answers) if a is None]
            if silent:  # undecided: one of them may well have a good copy
                raise Retry(f"holder(s) {', '.join(map(str, silent))} did not answer")
            return False
        size = self.vdis.obj_size(oid)
        version, data = await self._first_good([(replicas[i], None) for _v, i in live],
                                               oid, epoch, size)

        def check():
            if g.epoch != epoch:
                raise error_for(CODES["OLD_NODE_VER"], "epoch moved during the repair")
        done = await self.io(lambda: self.store.install(
            oid, size, data, version, proto.is_sparse_obj(oid), check, replace_damaged=True))
        if done:
            log.warning("replaced the damaged copy of %016x by version %s from another "
                        "holder", oid, M.fmt_version(version))
        return done
