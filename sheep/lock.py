"""VDI locks that never go stale: sessions, leases, fencing, handover (DESIGN §7).

Theory of operation
-------------------
* **Replicated table.**  :class:`LockTable` holds, per vid, the list of
  holders ``(gateway node "addr:port", session id, kind, generation, since)``.
  It changes only in main steps of cluster operations (``{"op": "lock"}``
  messages, see :meth:`LockTable.apply`) and in membership events (a node
  leaving drops every hold owned through it), both delivered in the same
  total order on every node, so every node holds the same table.  Joiners
  adopt it from the master's snapshot (``sheep.group.check_join``).
* **Kinds.**  ``excl`` — the exclusive writer lock (LOCK_VDI type 0); it is
  refused while anybody else holds anything but a standby.  ``shared`` —
  Sheepdog 1.0's shared lock (type 1, iSCSI multipath).  ``read`` — a
  read-only open of a working VDI (refused while a writer holds it, and it
  keeps writers out: the seed's rule).  ``standby`` — a migration destination
  opened inactive: no lock, no conflict, just the target of a handover.
  Snapshots are never locked: opens of snapshots are shared.
* **Owner.**  ``(gateway node, session)``; Sheepdog 1.0 clients have session 0,
  so, as in 1.0, their owner is the node they talk to.
* **Generations.**  Each exclusive grant (and each forced unlock) takes the
  next value of a cluster-wide counter that every node persists in
  ``BASE/lock_generation`` in the main step; joiners bring theirs and every
  member takes the maximum, so after a full restart new generations are
  higher than any issued before.  A write that carries a generation
  (``SD_FLAG_CMD_SESSION``) is accepted only if that generation is the VDI's
  current exclusive grant; otherwise it is refused with FENCED.
* **Sessions and leases.**  Each gateway keeps, for the sessions its clients
  use, the time it last heard of them (any request on a connection bound to
  the session, a RENEW heartbeat, the close of the session's last connection).
  A session not heard of for ``grace`` seconds ends: the gateway issues an
  ``expire`` cluster op releasing every hold of ``(this node, session)``.
  A client that reconnects to another gateway within the grace re-attaches
  its lock there (LOCK_MODE_REATTACH, same generation).
* **Handover.**  The destination registers a standby hold; the source's
  RELEASE_VDI naming the destination's session turns its exclusive hold into
  the destination's in one main step (new generation), so no third party can
  take the lock in between.

Guarantees: main steps are synchronous and deterministic; without
``SD_CLUSTER_FLAG_USE_LOCK`` LOCK_VDI is GET_VDI_INFO and RELEASE_VDI is a
no-op, as in Sheepdog 1.0; requests without ``SD_FLAG_CMD_SESSION`` behave as
in 1.0 except that exclusive locks also end when the owner's node leaves.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from dataclasses import asdict, dataclass

from sheep import proto
from sheep.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.lock")

DEFAULT_GRACE = 8.0  # seconds without news of a session before its locks go
MAX_SHARED = 31
EXCL, SHARED, READ, STANDBY = "excl", "shared", "read", "standby"
KIND_CODE = {EXCL: proto.LOCK_KIND_EXCLUSIVE, SHARED: proto.LOCK_KIND_SHARED,
             READ: proto.LOCK_KIND_READ, STANDBY: proto.LOCK_KIND_STANDBY}

#: the server connection (sheep.server.SheepProtocol) serving the current request
CURRENT_CONN: contextvars.ContextVar = contextvars.ContextVar("sheep_conn", default=None)


def _err(name: str, msg: str | None = None) -> SdError:
    return error_for(CODES[name], msg)


@dataclass
class Holder:
    node: str  # gateway "addr:port"
    session: int  # 0: a Sheepdog 1.0 client (owner = the node)
    kind: str
    gen: int = 0  # exclusive holds only
    since: float = 0.0  # UNIX time of the grant


class LockTable:
    """The replicated lock state machine (pure: no I/O, no clock)."""

    def __init__(self, generation: int = 0):
        self.locks: dict[int, list[Holder]] = {}
        self.generation = generation  # highest generation ever issued
        # vid -> generation of its latest exclusive grant (or forced unlock):
        # a holder whose lock vanished with its gateway may take it back only
        # if nobody was granted the VDI since (see reattach)
        self.last: dict[int, int] = {}

    # -- queries ----------------------------------------------------------

    def holders(self, vid: int) -> list[Holder]:
        return self.locks.get(vid, [])

    def owner(self, vid: int) -> Holder | None:
        """The exclusive holder of ``vid``, if any."""
        for h in self.locks.get(vid, ()):
            if h.kind == EXCL:
                return h
        return None

    def holds_of(self, session: int, node: str | None = None) -> list[tuple[int, Holder]]:
        return [(vid, h) for vid, hs in self.locks.items() for h in hs
                if h.session == session and (node is None or h.node == node)]

    def check_write(self, vid: int, gen: int) -> None:
        """Raise FENCED unless ``gen`` is ``vid``'s current exclusive grant."""
        o = self.owner(vid)
        if o is None or o.gen != gen:
            raise _err("FENCED", f"VDI {vid:#x}: write with lock generation {gen}, but the "
                                 + (f"current grant is generation {o.gen}" if o
                                    else "VDI is not locked any more"))

    # -- transitions (called from main steps, in total order) ------------

    def _next_gen(self) -> int:
        self.generation += 1
        return self.generation

    def _put(self, vid: int, h: Holder) -> None:
        self.locks.setdefault(vid, []).append(h)

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
            h = Holder(node, session, EXCL, self._next_gen(), now)
            self._remove(vid, lambda x: x.kind == STANDBY and x.session == session and session)
            self._put(vid, h)
            self.last[vid] = h.gen
            return h.gen
        if kind == SHARED:
            if any(h.kind != SHARED for h in others):
                raise self._locked(vid, hs)
            if any(h.node == node and h.session == session for h in others):
                raise _err("VDI_LOCKED", f"VDI {vid:#x}: this owner shares the lock already")
            if len(others) >= MAX_SHARED:
                raise _err("VDI_LOCKED", f"VDI {vid:#x}: {MAX_SHARED} participants already")
            self._put(vid, Holder(node, session, SHARED, 0, now))
            return 0
        if kind in (READ, STANDBY):
            if kind == READ and any(h.kind in (EXCL, SHARED) for h in others):
                raise self._locked(vid, hs)
            for h in hs:
                if h.kind == kind and h.session == session and session:
                    h.node = node  # the same session again (e.g. after a reconnect)
                    return 0
            self._put(vid, Holder(node, session, kind, 0, now))
            return 0
        raise _err("INVALID_PARMS", f"unknown lock kind {kind!r}")

    @staticmethod
    def _locked(vid: int, hs: list[Holder]) -> SdError:
        h = next(x for x in hs if x.kind != STANDBY)
        who = f"{h.node}" + (f" session {h.session:016x}" if h.session else "")
        return _err("VDI_LOCKED", f"VDI {vid:#x} is locked ({h.kind}) by {who}")

    def activate(self, vid: int, node: str, session: int, now: float = 0.0,
                 snapshot: bool = False) -> int:
        """A migration destination activates: the lock handed to it, or a free one."""
        if snapshot:
            return 0
        o = self.owner(vid)
        if o is not None and o.session == session and session:
            o.node = node
            self._remove(vid, lambda x: x.kind == STANDBY and x.session == session)
            return o.gen
        return self.lock(vid, node, session, EXCL, now)

    def reattach(self, vid: int, node: str, session: int, gen: int, now: float = 0.0) -> int:
        """Move ``session``'s exclusive hold of generation ``gen`` to gateway ``node``.

        If the hold is gone because its gateway left the cluster, but nobody
        was granted the VDI since — its latest grant is still ``gen`` and
        nothing holds it — the session gets it back under a new generation:
        no other writer can have touched the VDI in between.  A lapsed lease
        or a forced unlock is lost for good.  Otherwise FENCED."""
        o = self.owner(vid)
        if o is not None and session and o.session == session and o.gen == gen:
            o.node = node
            return gen
        if (o is None and session and gen and self.last.get(vid) == gen
                and not any(h.kind != STANDBY for h in self.holders(vid))):
            h = Holder(node, session, EXCL, self._next_gen(), now)
            self._put(vid, h)
            self.last[vid] = h.gen
            return h.gen
        raise _err("FENCED", f"VDI {vid:#x}: the lock of generation {gen} is gone")

    def release(self, vid: int, session: int) -> int:
        """A session releases whatever it holds on ``vid`` (never fails)."""
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
        n = self._remove(vid, lambda h: h.kind in kinds)
        if n:
            self.last[vid] = self._next_gen()  # the former holder cannot take it back
        return n

    def handover(self, vid: int, session: int, target: int, now: float = 0.0) -> int:
        """The exclusive holder ``session`` hands ``vid`` to standby session ``target``."""
        o = self.owner(vid)
        if o is None or not session or o.session != session:
            raise _err("FENCED", f"VDI {vid:#x}: the source does not hold the lock any more")
        dest = next((h for h in self.holders(vid) if h.kind == STANDBY and h.session == target),
                    None)
        if dest is None or not target:
            raise _err("INVALID_PARMS", f"VDI {vid:#x}: session {target:016x} has not opened "
                                        f"it inactive (nothing to hand over to)")
        self._remove(vid, lambda h: h is o or h is dest)
        h = Holder(dest.node, target, EXCL, self._next_gen(), now)
        self._put(vid, h)
        self.last[vid] = h.gen
        return h.gen

    def expire(self, node: str, session: int) -> list[int]:
        """Session ``(node, session)`` ended: drop all its holds; returns the vids."""
        vids = [vid for vid, h in self.holds_of(session, node)]
        for vid in set(vids):
            if any(h.kind == EXCL for h in self.holders(vid)
                   if h.session == session and h.node == node):
                self.last[vid] = 0  # a lapsed lease is lost for good (no take-back)
            self._remove(vid, lambda h: h.session == session and h.node == node)
        return sorted(set(vids))

    def drop_node(self, node: str) -> list[int]:
        """Node ``node`` left the cluster: every hold owned through it goes."""
        vids = sorted({vid for vid, hs in self.locks.items() for h in hs if h.node == node})
        for vid in vids:
            self._remove(vid, lambda h: h.node == node)
        return vids

    def move(self, old: int, new: int) -> None:
        """A snapshot replaced working VDI ``old`` by ``new``: the writer follows."""
        moved = [h for h in self.holders(old) if h.kind in (EXCL, STANDBY)]
        if moved:
            self._remove(old, lambda h: h.kind in (EXCL, STANDBY))
            for h in moved:
                self._put(new, h)
                if h.kind == EXCL:
                    self.last[new] = h.gen

    def drop_vid(self, vid: int) -> None:
        self.locks.pop(vid, None)
        self.last.pop(vid, None)

    def clear(self) -> None:
        """Format: no locks; the generation keeps growing."""
        self.locks.clear()

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
        else:
            raise _err("INVALID_PARMS", f"unknown lock action {a!r}")
        return {"vid": vid, "gen": gen}

    # -- snapshot for joiners ---------------------------------------------

    def snapshot(self) -> dict:
        return {"generation": self.generation,
                "locks": [[vid, [asdict(h) for h in hs]] for vid, hs in sorted(self.locks.items())],
                "last": sorted(self.last.items())}

    def restore(self, snap: dict | None) -> None:
        if not snap:
            return
        self.generation = max(self.generation, snap.get("generation", 0))
        self.locks = {vid: [Holder(**h) for h in hs] for vid, hs in snap.get("locks", [])}
        self.last = {vid: gen for vid, gen in snap.get("last", [])}


# ---------------------------------------------------------------------------
# the daemon side: sessions, leases, persistence, request handlers


class _Session:
    __slots__ = ("conns", "expiring", "last_seen", "sid")

    def __init__(self, sid: int, now: float):
        self.sid, self.last_seen, self.conns, self.expiring = sid, now, set(), False


class Locks:
    """This node's part: the replicated table plus the sessions of its own clients."""

    def __init__(self, sheep):
        self.sheep = sheep
        self.grace = float(getattr(sheep.cfg, "lock_grace", DEFAULT_GRACE) or DEFAULT_GRACE)
        self.path = os.path.join(sheep.cfg.base_dir, "lock_generation")
        self.persisted = self._load()
        self.table = LockTable(self.persisted)
        self.sessions: dict[int, _Session] = {}
        self._reaper: asyncio.Task | None = None

    # -- persistence of the highest generation ------------------------------

    def _load(self) -> int:
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            log.error("cannot read %s: %s; starting from generation 0", self.path, e)
            return 0

    def _persist(self) -> None:
        """Write the highest generation if it grew (inline: part of a main step)."""
        gen = self.table.generation
        if gen <= self.persisted:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{gen}\n")
            if not self.sheep.cfg.nosync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, self.path)
        self.persisted = gen

    # -- replicated state hooks (sheep.group / sheep.ops) --------------------

    @property
    def enforced(self) -> bool:
        return bool(self.sheep.group.config.flags & proto.SD_CLUSTER_FLAG_USE_LOCK)

    @property
    def me(self) -> str:
        return f"{self.sheep.me.host}:{self.sheep.me.port}"

    def apply_main(self, msg: dict) -> dict:
        out = self.table.apply(msg)
        self._persist()
        log.info("lock %s vid %#x session %016x by %s -> generation %d", msg["a"],
                 msg.get("vid", 0), msg.get("session", 0), msg.get("node", "-"), out["gen"])
        return out

    def on_node_leave(self, node: proto.SdNode) -> None:
        vids = self.table.drop_node(f"{node.host}:{node.port}")
        if vids:
            log.info("%s left: released its locks on %s", node,
                     ", ".join(f"{v:#x}" for v in vids))

    def join_info(self) -> int:
        """What a joining node brings: the highest generation it ever saw."""
        return max(self.persisted, self.table.generation)

    def on_join(self, info: dict) -> None:
        """Every member, in order: the generation becomes the max with the joiner's."""
        self.table.generation = max(self.table.generation, int(info.get("lock_gen", 0) or 0))
        self._persist()

    def snapshot(self) -> dict:
        return self.table.snapshot()

    def restore(self, snap: dict | None) -> None:
        self.table.restore(snap)
        self._persist()

    def on_new_vdi(self, msg: dict) -> None:
        if msg.get("replaced"):
            self.table.move(msg["replaced"], msg["vid"])

    def on_del_vdi(self, vid: int) -> None:
        self.table.drop_vid(vid)

    def clear(self) -> None:
        self.table.clear()

    # -- sessions (local to this gateway) -----------------------------------

    def attach(self, sid: int, conn=None) -> None:
        """The session was heard of (on ``conn``): renew its lease, bind the connection."""
        now = time.monotonic()
        s = self.sessions.get(sid)
        if s is None:
            s = self.sessions[sid] = _Session(sid, now)
        s.last_seen = now
        if conn is not None:
            bound = getattr(conn, "lock_sessions", None)
            if bound is None:
                bound = conn.lock_sessions = set()
            bound.add(sid)
            s.conns.add(conn)
        self._start_reaper()

    def touch(self, conn) -> None:
        """A request arrived on ``conn``: the sessions bound to it are alive."""
        now = time.monotonic()
        for sid in getattr(conn, "lock_sessions", ()):
            s = self.sessions.get(sid)
            if s is not None:
                s.last_seen = now

    def conn_closed(self, conn) -> None:
        """``conn`` is gone: the grace period of its sessions starts now."""
        now = time.monotonic()
        for sid in getattr(conn, "lock_sessions", ()):
            s = self.sessions.get(sid)
            if s is not None:
                s.conns.discard(conn)
                s.last_seen = now

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        tick = max(0.1, min(0.5, self.grace / 4))
        while True:
            await asyncio.sleep(tick)
            try:
                self._reap_once()
            except Exception:  # the reaper must survive anything
                log.exception("lock session reaper")

    def _reap_once(self) -> None:
        now = time.monotonic()
        me = self.me
        # holds owned through this node by sessions we do not track (joined
        # state, a handover to a session that never reached us): give them a lease
        for hs in self.table.locks.values():
            for h in hs:
                if h.node == me and h.session and h.session not in self.sessions:
                    self.sessions[h.session] = _Session(h.session, now)
        for sid, s in list(self.sessions.items()):
            if s.expiring or now - s.last_seen <= self.grace:
                continue
            if not self.table.holds_of(sid, me):
                del self.sessions[sid]
                continue
            s.expiring = True
            asyncio.get_running_loop().create_task(self._expire(s))

    async def _expire(self, s: _Session) -> None:
        me = self.me
        log.warning("lock session %016x: no news for %.1fs (connections open: %d); "
                    "releasing its locks", s.sid, time.monotonic() - s.last_seen, len(s.conns))
        msg = {"op": "lock", "a": "expire", "node": me, "session": s.sid}

        async def work():
            return msg
        try:
            await self.sheep.group.cluster_op(work)
        except Exception as e:  # retried at the next reaper tick
            log.warning("releasing the locks of session %016x failed: %s", s.sid, e)
        finally:
            s.expiring = False
            if time.monotonic() - s.last_seen > self.grace and not self.table.holds_of(s.sid, me):
                self.sessions.pop(s.sid, None)

    # -- fencing (called by the gateway for flagged writes) -----------------

    async def check_write(self, req: proto.Request) -> None:
        gen = proto.fence_of(req)
        if not gen or not self.enforced:
            return
        vid = proto.oid_to_vid(req.args.oid)
        st = self.sheep.vdis.state(vid)
        if st is not None and st.snapshot:
            return  # refused as READONLY next; the client then follows the new working VDI
        if gen > self.table.generation:
            # granted through another node a moment ago: wait for its main step here
            await self.sheep.group.wait_until(lambda: self.table.generation >= gen, 3.0)
        self.table.check_write(vid, gen)

    # -- replies -------------------------------------------------------------

    def lock_records(self) -> bytes:
        out = []
        for vid in sorted(self.table.locks):
            for h in self.table.locks[vid]:
                out.append(proto.LockRecord(vid=vid, kind=KIND_CODE[h.kind], session=h.session,
                                            generation=h.gen, since=int(h.since),
                                            owner=self._nid(h.node)).pack())
        return b"".join(out)

    def _nid(self, key: str) -> bytes:
        n = self.sheep.group.node_by_key(key)
        if n is None:
            host, _, port = key.rpartition(":")
            n = proto.SdNode.make(host, int(port))
        return n.nid

    def copies_records(self) -> bytes:
        """GET_VDI_COPIES with the 1.0 view of the locks (exclusive and shared)."""
        vdis = self.sheep.vdis
        out = []
        for vid in sorted(vdis.states):
            rec = vdis.states[vid].record()
            hs = self.table.holders(vid)
            o = self.table.owner(vid)
            shared = [h for h in hs if h.kind == SHARED]
            if o is not None:
                rec.lock_state = proto.LOCK_STATE_LOCKED
                rec.lock_owner = self._nid(o.node)
            elif shared:
                rec.lock_state = proto.LOCK_STATE_SHARED
                rec.nr_participants = len(shared)
                rec.participants_state = b"".join(
                    (1 if i == 0 else 2).to_bytes(4, "little") for i in range(len(shared))
                ).ljust(124, b"\0")
                rec.participants = b"".join(self._nid(h.node) for h in shared).ljust(1240, b"\0")
            out.append(rec.pack())
        return b"".join(out)


# ---------------------------------------------------------------------------
# request handlers (LOCK_VDI, RELEASE_VDI, GET_LOCKS)

_MODE_KIND = {proto.LOCK_MODE_READ: READ, proto.LOCK_MODE_INACTIVE: STANDBY}


def _name_tag(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) == proto.SD_MAX_VDI_LEN:
        return payload, b""
    if len(payload) == proto.SD_MAX_VDI_LEN + proto.SD_MAX_VDI_TAG_LEN:
        return payload[:256], payload[256:]
    raise _err("INVALID_PARMS", f"VDI name payload must be 256 or 512 bytes, got {len(payload)}")


def _reply(sheep, vid: int, flagged: bool, gen: int = 0, holds: int = 0) -> proto.VdiRsp:
    vdis = sheep.vdis
    st = vdis.state(vid)
    rsp = proto.VdiRsp(vdi_id=vid, copies=st.copies if st else 0,
                       block_size_shift=vdis.shift_of(vid))
    if flagged:
        locks = sheep.locks
        status = proto.LOCK_STATUS_SESSION | (proto.LOCK_STATUS_ENFORCED if locks.enforced else 0)
        proto.set_session_reply(rsp, status, gen, int(locks.grace * 1000), holds)
    return rsp


async def lock_vdi(sheep, req: proto.Request, payload: bytes):
    """LOCK_VDI (PROTOCOL §7.4, §17) plus the session modes of the extension."""
    a = req.args
    locks: Locks = sheep.locks
    flagged = bool(req.flags & proto.SD_FLAG_CMD_SESSION)
    sid, mode, held = proto.lock_session(a) if flagged else (0, proto.LOCK_MODE_WRITE, 0)
    conn = CURRENT_CONN.get()
    if flagged and sid:
        locks.attach(sid, conn)
    if flagged and mode == proto.LOCK_MODE_RENEW:
        if not sid:
            raise _err("INVALID_PARMS", "lease renewal without a session id")
        return _reply(sheep, 0, True, holds=len(locks.table.holds_of(sid))), b""
    name, tag = _name_tag(payload)
    if not locks.enforced:  # Sheepdog 1.0: LOCK_VDI is GET_VDI_INFO
        return _reply(sheep, await sheep.vdis.find(name, tag, a.snapid), flagged), b""
    if a.type not in (proto.LOCK_TYPE_NORMAL, proto.LOCK_TYPE_SHARED):
        raise _err("INVALID_PARMS", f"unknown lock type {a.type}")
    if mode == proto.LOCK_MODE_WRITE:
        action, kind = "lock", SHARED if a.type == proto.LOCK_TYPE_SHARED else EXCL
    elif mode in _MODE_KIND:
        action, kind = "lock", _MODE_KIND[mode]
    elif mode == proto.LOCK_MODE_ACTIVATE:
        action, kind = "activate", EXCL
    elif mode == proto.LOCK_MODE_REATTACH:
        action, kind = "reattach", EXCL
    else:
        raise _err("INVALID_PARMS", f"unknown lock mode {mode}")
    if action != "lock" and not sid:
        raise _err("INVALID_PARMS", "activating or re-attaching a lock needs a session id")
    me = locks.me

    async def work():
        vid = await sheep.vdis.find(name, tag, a.snapid)
        st = sheep.vdis.state(vid)
        return {"op": "lock", "a": action, "vid": vid, "node": me, "session": sid,
                "kind": kind, "gen": held, "now": time.time(),
                "snapshot": bool(st is not None and st.snapshot)}
    out = await sheep.group.cluster_op(work)
    return _reply(sheep, out["vid"], flagged, out["gen"],
                  len(locks.table.holds_of(sid)) if sid else 0), b""


async def release_vdi(sheep, req: proto.Request, payload: bytes):
    """RELEASE_VDI: 1.0 semantics without the flag; release/handover/force with it."""
    a = req.args
    locks: Locks = sheep.locks
    if not locks.enforced:
        return None, b""
    vid = a.base_vdi_id
    me = locks.me
    if req.flags & proto.SD_FLAG_CMD_SESSION:
        sid, target = proto.release_session(a)
        if sid:
            locks.attach(sid, CURRENT_CONN.get())
        if target:
            msg = {"op": "lock", "a": "handover", "vid": vid, "session": sid, "target": target}
        elif sid:
            msg = {"op": "lock", "a": "release", "vid": vid, "session": sid}
        else:
            msg = {"op": "lock", "a": "force", "vid": vid}
    else:
        if a.type not in (proto.LOCK_TYPE_NORMAL, proto.LOCK_TYPE_SHARED):
            raise _err("INVALID_PARMS", f"unknown lock type {a.type}")
        msg = {"op": "lock", "a": "release_legacy", "vid": vid, "node": me, "type": a.type}

    async def work():
        msg["now"] = time.time()
        return msg
    await sheep.group.cluster_op(work)
    return None, b""


async def get_locks(sheep, req: proto.Request, payload: bytes):
    """GET_LOCKS (0xD0, extension): every holder as a LockRecord, by vid."""
    body = sheep.locks.lock_records()
    if len(body) > req.data_length:
        return None, b"", CODES["BUFFER_SMALL"]
    return None, body


def main_lock(sheep, msg: dict) -> dict:
    return sheep.locks.apply_main(msg)
