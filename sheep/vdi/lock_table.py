"""The replicated VDI lock table: a pure state machine (no I/O, no clock).

Holders per vid ``(gateway node "addr:port", session id, kind, generation,
since)``; it changes only in main steps of cluster operations
(:meth:`LockTable.apply`) and in membership events (:meth:`drop_node`), both
delivered in the same total order on every node, so every node holds the
same table.  The daemon side (``sheep.vdi.locks.Locks``) feeds it events,
persists what must survive a restart and answers requests.

Generations: every exclusive grant — a lock, an activation on another
gateway, a re-attach through another gateway, a handover — takes the next
value of a counter that only grows, so a generation names exactly one grant
through one gateway.  ``last[vid]`` is ``(generation, session)`` of the
VDI's latest grant, or ``(generation, 0)`` of the event that ended it for
good (a release, a forced unlock, a lapsed lease: they take a generation
too), so "nobody was granted the VDI since" is ``last[vid] == (gen,
session)`` and merging two tables takes the greater generation.

Draining: when an exclusive grant ends while its gateway is alive — released,
unlocked by an operator, its lease lapsed, or its VDI snapshotted (the lock
moves to the new working VDI) — writes the gateway admitted before may still
be on their way to the replicas.  The grant goes to ``draining[vid] = (gen,
gateway)``: replicas still accept those writes, so each lands everywhere or
nowhere; the gateway admits no new one, and once its writes in flight are
done it sends ``drained`` (a message in the total order).  No new grant is
given on a draining VDI.  So a write of a former holder either completed
before the next holder got the VDI, or never lands: it can neither land
after the new holder's writes nor land on some replicas only.  A gateway
that leaves the cluster takes its draining entries with it (its writes are
refused by epoch from then on).  A re-attach through another gateway does
not drain: the client itself sends its writes in flight again.

Freezing: a snapshot copies the working VDI's object index in its work
step, before its main step moves the lock.  So that no write acknowledged
before the snapshot is missing from the new working VDI's index, the work
step first freezes the VDI (``freeze``, a message in the total order): the
holder's gateway admits no new write of it (they are retried) and says
``quiet`` once the ones it admitted are done; only then is the index read.
The freeze ends with the snapshot's main step, with ``thaw`` when the work
step fails, or when its node leaves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sheep import proto
from sheep.proto.errors import SdError, sd_error

MAX_SHARED = 31
EXCL, SHARED, READ, STANDBY = "excl", "shared", "read", "standby"
KIND_CODE = {EXCL: proto.LOCK_KIND_EXCLUSIVE, SHARED: proto.LOCK_KIND_SHARED,
             READ: proto.LOCK_KIND_READ, STANDBY: proto.LOCK_KIND_STANDBY}



@dataclass
class Holder:
    node: str  # gateway "addr:port"
    session: int  # 0: a Sheepdog 1.0 client (owner = the node)
    kind: str
    gen: int = 0  # exclusive holds only
    since: float = 0.0  # UNIX time of the grant


@dataclass
class Frozen:
    gen: int  # the exclusive grant frozen (0: none)
    node: str  # its gateway, which says "quiet"
    by: str  # the node running the snapshot's work step
    quiet: bool = False
    fid: str = ""  # names this freeze (a late "quiet" of an earlier one is ignored)


class LockTable:
    """The replicated lock state machine (pure: no I/O, no clock)."""

    def __init__(self, generation: int = 0, last=None):
        self.locks: dict[int, list[Holder]] = {}
        self.generation = generation  # highest generation ever issued
        # vid -> generation of its latest exclusive grant, or of the event that
        # ended it for good: a holder whose lock vanished with its gateway may
        # take it back only if nobody was granted the VDI since (see reattach)
        self.last: dict[int, tuple[int, int]] = {}
        self.merge_last(last or [])
        self.draining: dict[int, tuple[int, str]] = {}  # vid -> (gen, gateway), see above
        self.frozen: dict[int, Frozen] = {}  # vid -> a snapshot's freeze, see freeze()

    # -- queries ----------------------------------------------------------

    def holders(self, vid: int) -> list[Holder]:
        """Every lock on ``vid`` (exclusive, shared, read, standby), in grant order."""
        return self.locks.get(vid, [])

    def owner(self, vid: int) -> Holder | None:
        """The exclusive holder of ``vid``, if any."""
        for h in self.locks.get(vid, ()):
            if h.kind == EXCL:
                return h
        return None

    def session_locks(self, session: int, node: str | None = None) -> list[tuple[int, Holder]]:
        """(vid, holder) of every lock ``session`` holds (through gateway ``node``, if given)."""
        return [(vid, h) for vid, hs in self.locks.items() for h in hs
                if h.session == session and (node is None or h.node == node)]

    def check_write(self, vid: int, gen: int, node: str | None = None,
                    draining_ok: bool = False) -> None:
        """Raise FENCED unless ``gen`` is ``vid``'s current exclusive grant
        (and, given ``node``, that grant is held through gateway ``node``) —
        or, with ``draining_ok``, the grant being drained through ``node``.
        Safe to call from an I/O thread: it only reads the table."""
        o = self.owner(vid)
        if draining_ok and self.draining.get(vid) == (gen, node):
            return
        if o is None or o.gen != gen or (node is not None and o.node != node):
            if o is None:
                why = "the VDI is not locked any more"
            elif o.gen != gen:
                why = f"the current grant is generation {o.gen}"
            else:
                why = f"the grant is held through {o.node}, not {node}"
            raise sd_error("FENCED", f"VDI {vid:#x}: write with lock generation {gen}, but {why}")

    # -- transitions (called from main steps, in total order) ------------

    def _next_gen(self) -> int:
        self.generation += 1
        return self.generation

    def _put(self, vid: int, h: Holder) -> None:
        self.locks.setdefault(vid, []).append(h)

    def _drain(self, vid: int, h: Holder) -> None:
        """Exclusive grant ``h`` of ``vid`` ended: its writes in flight drain."""
        if h.kind == EXCL:
            self.draining[vid] = (h.gen, h.node)

    def _settled(self, vid: int) -> None:
        """No grant while a former holder's writes may still be landing."""
        d = self.draining.get(vid)
        if d is not None:
            raise sd_error("VDI_LOCKED", f"VDI {vid:#x}: writes of the former holder (generation "
                                     f"{d[0]} through {d[1]}) are still landing")

    # -- freezing (a snapshot's work step) ------------------------------------

    def freeze(self, vid: int, by: str, fid: str = "") -> None:
        """A snapshot of ``vid`` starts (its work step runs on ``by``): the
        holder's gateway admits no new write (AGAIN, the client retries) and
        says ``quiet`` once its admitted ones are done.  The work step copies
        the VDI's index only then, so no write acknowledged before the
        snapshot is missing from the new working VDI.  Ends with the
        snapshot's main step (``move``), ``thaw``, or ``by`` leaving."""
        if vid in self.frozen:  # one freeze at a time (cluster ops are exclusive)
            raise sd_error("AGAIN", f"VDI {vid:#x} is frozen already")
        o = self.owner(vid)
        if o is None:
            self.frozen[vid] = Frozen(0, "", by, True, fid)
        else:
            self.frozen[vid] = Frozen(o.gen, o.node, by, False, fid)

    def quiet(self, vid: int, gen: int, node: str, fid: str = "") -> None:
        f = self.frozen.get(vid)
        if f is not None and (f.gen, f.node, f.fid) == (gen, node, fid):
            f.quiet = True

    def thaw(self, vid: int, by: str, fid: str = "") -> None:
        f = self.frozen.get(vid)
        if f is not None and f.by == by and f.fid == fid:
            del self.frozen[vid]

    def thaw_all(self, by: str) -> list[int]:
        """The cluster op of ``by`` ended: its freezes end with it."""
        vids = [vid for vid, f in self.frozen.items() if f.by == by]
        for vid in vids:
            del self.frozen[vid]
        return vids

    def is_quiet(self, vid: int) -> bool:
        """The freeze of ``vid`` holds no admitted write any more (or the
        grant it froze ended: then draining covers its writes)."""
        f = self.frozen.get(vid)
        if f is None:
            return False
        o = self.owner(vid)
        return f.quiet or o is None or (o.gen, o.node) != (f.gen, f.node)

    def drained(self, vid: int, gen: int, node: str) -> bool:
        """The gateway ``node`` has no write of ``gen`` in flight any more."""
        if self.draining.get(vid) == (gen, node):
            del self.draining[vid]
            return True
        return False

    def _remove(self, vid: int, pred) -> int:
        hs = self.locks.get(vid)
        if not hs:
            return 0
        keep = [h for h in hs if not pred(h)]
        n = len(hs) - len(keep)
        if keep:
            self.locks[vid] = keep
        else:
            del self.locks[vid]
        return n

    def lock(self, vid: int, node: str, session: int, kind: str, now: float = 0.0,
             snapshot: bool = False) -> int:
        """Take a hold of ``kind``; returns the generation (exclusive) or 0."""
        if snapshot:
            return 0  # snapshots are read-only: shared opens never conflict
        hs = self.holders(vid)
        others = [h for h in hs if h.kind != STANDBY]
        if kind == EXCL:
            if others:
                raise self._locked(vid, hs)
            self._settled(vid)
            h = Holder(node, session, EXCL, self._next_gen(), now)
            self._remove(vid, lambda x: x.kind == STANDBY and x.session == session and session)
            self._put(vid, h)
            self.last[vid] = (h.gen, session)
            return h.gen
        if kind == SHARED:
            if any(h.kind != SHARED for h in others):
                raise self._locked(vid, hs)
            self._settled(vid)  # shared writers carry no generation: nothing fences the old
            if any(h.node == node and h.session == session for h in others):
                raise sd_error("VDI_LOCKED", f"VDI {vid:#x}: this owner shares the lock already")
            if len(others) >= MAX_SHARED:
                raise sd_error("VDI_LOCKED", f"VDI {vid:#x}: {MAX_SHARED} participants already")
            self._put(vid, Holder(node, session, SHARED, 0, now))
            return 0
        if kind in (READ, STANDBY):
            if kind == READ and any(h.kind in (EXCL, SHARED) for h in others):
                raise self._locked(vid, hs)
            if kind == READ:
                self._settled(vid)
            for h in hs:
                if h.kind == kind and h.session == session and session:
                    h.node = node  # the same session again (e.g. after a reconnect)
                    return 0
            self._put(vid, Holder(node, session, kind, 0, now))
            return 0
        raise sd_error("INVALID_PARMS", f"unknown lock kind {kind!r}")

    @staticmethod
    def _locked(vid: int, hs: list[Holder]) -> SdError:
        h = next(x for x in hs if x.kind != STANDBY)
        who = f"{h.node}" + (f" session {h.session:016x}" if h.session else "")
        return sd_error("VDI_LOCKED", f"VDI {vid:#x} is locked ({h.kind}) by {who}")

    def activate(self, vid: int, node: str, session: int, now: float = 0.0,
                 snapshot: bool = False) -> int:
        """A migration destination activates: the lock handed to it, or a free one."""
        if snapshot:
            return 0
        o = self.owner(vid)
        if o is not None and o.session == session and session:
            if o.node != node:  # through another gateway: a new grant
                o.node, o.gen = node, self._next_gen()
                self.last[vid] = (o.gen, session)
            self._remove(vid, lambda x: x.kind == STANDBY and x.session == session)
            return o.gen
        return self.lock(vid, node, session, EXCL, now)

    def reattach(self, vid: int, node: str, session: int, gen: int, now: float = 0.0) -> int:
        """Move ``session``'s exclusive hold of generation ``gen`` to gateway
        ``node``, under a new generation: writes still on their way through the
        old gateway carry the old one and are refused everywhere (fencing).

        If the hold is gone because its gateway left the cluster (or the whole
        cluster restarted), but nobody was granted the VDI since — its latest
        grant is still ``gen`` and nothing holds it — the session gets it back
        the same way: no other writer can have touched the VDI in between.  A
        lapsed lease or a forced unlock is lost for good.  Otherwise FENCED."""
        o = self.owner(vid)
        if o is not None and session and o.session == session and o.gen == gen:
            o.node, o.gen = node, self._next_gen()
            self.last[vid] = (o.gen, session)
            return o.gen
        if (o is None and session and gen and self.last.get(vid) == (gen, session)
                and vid not in self.draining
                and not any(h.kind != STANDBY for h in self.holders(vid))):
            h = Holder(node, session, EXCL, self._next_gen(), now)
            self._put(vid, h)
            self.last[vid] = (h.gen, session)
            return h.gen
        raise sd_error("FENCED", f"VDI {vid:#x}: the lock of generation {gen} is gone")

    def release(self, vid: int, session: int) -> int:
        """A session releases whatever it holds on ``vid`` (never fails); a
        released exclusive lock cannot be taken back."""
        for h in self.holders(vid):
            if h.kind == EXCL and h.session == session:
                self._drain(vid, h)
                self.last[vid] = (self._next_gen(), 0)
        return self._remove(vid, lambda h: h.session == session)

    def release_legacy(self, vid: int, node: str, ltype: int) -> int:
        """Sheepdog 1.0 RELEASE_VDI: type 0 unlocks whoever holds it (that is how
        ``dog vdi lock unlock`` works, so it bumps the generation); type 1 drops
        this node from the shared participants."""
        if ltype == proto.LOCK_TYPE_SHARED:
            return self._remove(vid, lambda h: h.kind == SHARED and h.node == node
                                and not h.session)
        return self.force_unlock(vid, (EXCL,))

    def force_unlock(self, vid: int, kinds=(EXCL, SHARED, READ)) -> int:
        """Operator's unlock: drop the holds, bump the generation (fences the holder)."""
        for h in self.holders(vid):
            if h.kind in kinds:
                self._drain(vid, h)
        n = self._remove(vid, lambda h: h.kind in kinds)
        if n:
            self.last[vid] = (self._next_gen(), 0)  # the former holder cannot take it back
        return n

    def handover(self, vid: int, session: int, target: int, now: float = 0.0) -> int:
        """The exclusive holder ``session`` hands ``vid`` to standby session ``target``."""
        o = self.owner(vid)
        if o is None or not session or o.session != session:
            raise sd_error("FENCED", f"VDI {vid:#x}: the source does not hold the lock any more")
        dest = next((h for h in self.holders(vid) if h.kind == STANDBY and h.session == target),
                    None)
        if dest is None or not target:
            raise sd_error("INVALID_PARMS", f"VDI {vid:#x}: session {target:016x} has not opened "
                                        f"it inactive (nothing to hand over to)")
        self._remove(vid, lambda h: h is o or h is dest)
        h = Holder(dest.node, target, EXCL, self._next_gen(), now)
        self._put(vid, h)
        self.last[vid] = (h.gen, target)
        return h.gen

    def expire(self, node: str, session: int) -> list[int]:
        """Session ``(node, session)`` ended: drop all its holds; returns the vids."""
        vids = [vid for vid, h in self.session_locks(session, node)]
        for vid in set(vids):
            for h in self.holders(vid):
                if h.kind == EXCL and h.session == session and h.node == node:
                    self._drain(vid, h)
                    self.last[vid] = (self._next_gen(), 0)  # a lapsed lease is lost for good
            self._remove(vid, lambda h: h.session == session and h.node == node)
        return sorted(set(vids))

    def drop_node(self, node: str) -> list[int]:
        """Node ``node`` left the cluster: every hold owned through it goes."""
        vids = sorted({vid for vid, hs in self.locks.items() for h in hs if h.node == node})
        for vid in vids:
            self._remove(vid, lambda h: h.node == node)
        for vid in [v for v, (_g, n) in self.draining.items() if n == node]:
            del self.draining[vid]  # its writes are refused by epoch from now on
        for vid, f in list(self.frozen.items()):
            if f.by == node:
                del self.frozen[vid]  # its snapshot's work step is void
            elif f.node == node:
                f.quiet = True
        return vids

    def move(self, old: int, new: int) -> None:
        """A snapshot replaced working VDI ``old`` by ``new``: the writer follows."""
        self.frozen.pop(old, None)
        moved = [h for h in self.holders(old) if h.kind in (EXCL, STANDBY)]
        if moved:
            self._remove(old, lambda h: h.kind in (EXCL, STANDBY))
            for h in moved:
                self._put(new, h)
                if h.kind == EXCL:
                    self.last[new] = (h.gen, h.session)
                    self._drain(old, h)  # its writes to the snapshot's objects

    def drop_vid(self, vid: int) -> None:
        self.locks.pop(vid, None)
        self.last.pop(vid, None)
        self.draining.pop(vid, None)
        self.frozen.pop(vid, None)

    def clear(self) -> None:
        """Format: no locks; the generation keeps growing."""
        self.locks.clear()
        self.draining.clear()
        self.frozen.clear()

    def apply(self, msg: dict) -> dict:
        """One ``{"op": "lock"}`` main step; raises SdError (deterministically) on conflict."""
        a = msg["a"]
        vid = msg.get("vid", 0)
        if a == "lock":
            gen = self.lock(vid, msg["node"], msg["session"], msg["kind"], msg["now"],
                            msg.get("snapshot", False))
        elif a == "activate":
            gen = self.activate(vid, msg["node"], msg["session"], msg["now"],
                                msg.get("snapshot", False))
        elif a == "reattach":
            gen = self.reattach(vid, msg["node"], msg["session"], msg["gen"], msg.get("now", 0.0))
        elif a == "release":
            self.release(vid, msg["session"])
            gen = 0
        elif a == "release_legacy":
            self.release_legacy(vid, msg["node"], msg["type"])
            gen = 0
        elif a == "force":
            self.force_unlock(vid)
            gen = 0
        elif a == "handover":
            gen = self.handover(vid, msg["session"], msg["target"], msg["now"])
        elif a == "expire":
            self.expire(msg["node"], msg["session"])
            gen = 0
        elif a == "drained":
            self.drained(vid, msg["gen"], msg["node"])
            gen = 0
        elif a == "freeze":
            self.freeze(vid, msg["node"], msg.get("fid", ""))
            gen = 0
        elif a == "quiet":
            self.quiet(vid, msg["gen"], msg["node"], msg.get("fid", ""))
            gen = 0
        elif a == "thaw":
            self.thaw(vid, msg["node"], msg.get("fid", ""))
            gen = 0
        else:
            raise sd_error("INVALID_PARMS", f"unknown lock action {a!r}")
        return {"vid": vid, "gen": gen}

    # -- snapshot for joiners ---------------------------------------------

    def snapshot(self) -> dict:
        return {"generation": self.generation,
                "locks": [[vid, [asdict(h) for h in hs]] for vid, hs in sorted(self.locks.items())],
                "last": self.last_items(),
                "draining": sorted([vid, g, n] for vid, (g, n) in self.draining.items()),
                "frozen": sorted([vid, asdict(f)] for vid, f in self.frozen.items())}

    def restore(self, snap: dict | None) -> None:
        if not snap:
            return
        self.generation = max(self.generation, snap.get("generation", 0))
        self.locks = {vid: [Holder(**h) for h in hs] for vid, hs in snap.get("locks", [])}
        self.last = {}
        self.merge_last(snap.get("last", []))
        self.draining = {vid: (g, n) for vid, g, n in snap.get("draining", [])}
        self.frozen = {vid: Frozen(**f) for vid, f in snap.get("frozen", [])}

    def merge_last(self, items) -> None:
        """Take the newer of two ``last`` records per vid (a joiner's, a
        restart's): ``[vid, generation, session]`` items."""
        for vid, gen, session in items:
            if gen > self.last.get(vid, (0, 0))[0]:
                self.last[vid] = (gen, session)
                self.generation = max(self.generation, gen)

    def last_items(self) -> list:
        return sorted([vid, g, s] for vid, (g, s) in self.last.items())
