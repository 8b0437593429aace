"""VDI locks that never go stale: sessions, leases, fencing, handover (docs/protocol.md §17,
docs/data-safety.md "Fencing").

Theory of operation
-------------------
* **Replicated table.**  :class:`sheep.vdi.lock_table.LockTable` holds, per vid, the list of
  holders ``(gateway node "addr:port", session id, kind, generation, since)``.
  It changes only in main steps of cluster operations (``{"op": "lock"}``
  messages, see :meth:`LockTable.apply`) and in membership events (a node
  leaving drops every hold owned through it), both delivered in the same
  total order on every node, so every node holds the same table.  Joiners
  adopt it from the master's snapshot (``sheep.cluster.group.check_join``).
* **Kinds.**  ``excl`` — the exclusive writer lock (LOCK_VDI type 0); it is
  refused while anybody else holds anything but a standby.  ``shared`` —
  Sheepdog 1.0's shared lock (type 1, iSCSI multipath).  ``read`` — a
  read-only open of a working VDI (refused while a writer holds it, and it
  keeps writers out).  ``standby`` — a migration destination
  opened inactive: no lock, no conflict, just the target of a handover.
  Snapshots are never locked: opens of snapshots are shared.
* **Owner.**  ``(gateway node, session)``; Sheepdog 1.0 clients have session 0,
  so, as in 1.0, their owner is the node they talk to.
* **Generations.**  Each exclusive grant (also a re-attach or activation
  through another gateway, a handover) and each end of a grant takes the next
  value of a cluster-wide counter; every node persists the counter and the
  latest grant per VDI in ``BASE/lock_state`` (a store job, durable before
  the reply to the lock request); joiners bring theirs and every member takes
  the maximum, so after a full restart new generations are higher than any
  issued before, and a writer whose lock vanished with the restart takes it
  back if nobody was granted the VDI since.  A write (or read) that carries
  a generation (``SD_FLAG_CMD_SESSION``) is accepted only if that generation
  is the VDI's current exclusive grant held through the gateway it came
  through — at the gateway, and again at every replica under the object's
  lock (``sheep.datapath.replica``); otherwise it is refused with FENCED.
* **Sessions and leases.**  Each gateway keeps, for the sessions its clients
  use, the time it last heard of them (any request on a connection bound to
  the session, a RENEW heartbeat, the close of the session's last connection).
  A session not heard of for ``grace`` seconds ends: the gateway issues an
  ``expire`` cluster op releasing every hold of ``(this node, session)``.
  A client that reconnects to another gateway within the grace re-attaches
  its lock there (LOCK_MODE_REATTACH: a new generation, so writes still
  travelling through the old gateway are fenced).  Time this process spent
  stopped (SIGSTOP, a stalled loop) does not count against a lease: renewals
  may be waiting unread on its sockets.
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
import json
import logging
import time

from sheep import proto
from sheep.cluster import events as ev
from sheep.proto.errors import CODES, SdError, sd_error
from sheep.proto.inode import split_name_tag
from sheep.vdi.lock_flight import DRAIN_WAIT, FREEZE_WAIT, WritesInFlight  # noqa: F401
from sheep.vdi.lock_table import EXCL, KIND_CODE, READ, SHARED, STANDBY, LockTable

log = logging.getLogger("sheep.vdi.locks")

DEFAULT_GRACE = 8.0  # seconds without news of a session before its locks go
STATE_FILE = "lock_state"

#: the server connection (sheep.server.listener.SheepProtocol) serving the current request
CURRENT_CONN: contextvars.ContextVar = contextvars.ContextVar("sheep_conn", default=None)



# ---------------------------------------------------------------------------
# the daemon side: sessions, leases, persistence, request handlers


class _Session:
    __slots__ = ("conns", "expiring", "extended", "last_seen", "sid")

    def __init__(self, sid: int, now: float):
        self.sid, self.last_seen, self.conns, self.expiring = sid, now, set(), False
        self.extended = 0.0  # lease time granted for our own stalls since last heard

    def heard(self, now: float) -> None:
        self.last_seen, self.extended = now, 0.0


class Locks(WritesInFlight):
    """This node's part: the replicated table plus the sessions of its own clients."""

    def __init__(self, *, me, group, store, vdis, grace: float | None = None):
        """``me`` this node (its "host:port" names it in the table); ``group``
        the membership (config flags, cluster ops, node keys, store jobs);
        ``store`` where the generation counter persists; ``vdis`` the VDI
        table (snapshots are read-only; GET_VDI_COPIES); ``grace`` how long
        a silent session keeps its locks (s; default ``DEFAULT_GRACE``)."""
        self.me = f"{me.host}:{me.port}"
        self.group, self.store, self.vdis = group, store, vdis
        self.grace = float(grace or DEFAULT_GRACE)
        gen, last = self._load()
        self.table = LockTable(gen, last)
        self.persisted = (self.table.generation, self.table.last_items())
        self.sessions: dict[int, _Session] = {}
        self._reaper: asyncio.Task | None = None
        self._init_flight()  # writes in flight (sheep.vdi.lock_flight)
        self._last_tick: float | None = None

    # -- persistence of the generation counter and the latest grants ---------

    def _load(self) -> tuple[int, list]:
        store = self.store
        try:
            raw = store.read_file(STATE_FILE)
            if raw is not None:
                st = json.loads(raw)
                return int(st["generation"]), [tuple(x) for x in st["last"]]
            old = store.read_file("lock_generation")  # format 1: the counter only
            return (int(old.strip() or 0) if old else 0), []
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("cannot read the lock state in %s: %s; starting from generation 0",
                      self.store.base_dir, e)
            return 0, []

    def _persist(self) -> None:
        """Queue a durable write of the counter and the latest grants if they
        changed (a store job: lock replies wait for it, see :meth:`settled`)."""
        state = (self.table.generation, self.table.last_items())
        if state == self.persisted:
            return
        self.persisted = state
        raw = json.dumps({"generation": state[0], "last": state[1]}).encode()
        self.group.jobs.submit("persisting the lock state",
                                     self.store.write_file, STATE_FILE, raw)

    # -- replicated state hooks (sheep.cluster.group / sheep.server.ops) --------------------

    @property
    def enforced(self) -> bool:
        return bool(self.group.config.flags & proto.SD_CLUSTER_FLAG_USE_LOCK)

    def subscribe(self, events: ev.Events) -> None:
        """Follow the cluster (:mod:`sheep.cluster.events`): the table travels in
        join replies; joins merge generations; a leave drops the node's locks;
        lock messages and the end of cluster ops apply in delivery order."""
        events.state("locks", self.snapshot, self.restore)
        events.join_data("lock_gen", self.join_info)
        events.subscribe(ev.NODE_JOINED, self.on_join)
        events.subscribe(ev.NODE_LEFT, self.on_node_leave)
        events.subscribe(ev.LOCK_MESSAGE, self._lock_message)
        events.subscribe(ev.OP_ENDED, self.op_ended)

    def _lock_message(self, msg: dict) -> None:
        try:
            self.apply_main(msg)
        except SdError:  # deterministic: ignored the same way everywhere
            pass

    def apply_main(self, msg: dict) -> dict:
        """A lock main step (or a ``drained`` message), in total order."""
        try:
            out = self.table.apply(msg)
        finally:
            self._delivered(msg)
            self._changed()
        log.debug("lock %s vid %#x session %016x by %s -> generation %d", msg["a"],
                 msg.get("vid", 0), msg.get("session", 0), msg.get("node", "-"), out["gen"])
        return out

    def _changed(self) -> None:
        """After any change of the table: persist it, drain what we must."""
        self._persist()
        me = self.me
        loop = asyncio.get_running_loop()
        for vid, (gen, node) in self.table.draining.items():
            if node == me and (vid, gen) not in self._drains:
                self._drains[(vid, gen)] = loop.create_task(self._drain(vid, gen))
        for vid, f in self.table.frozen.items():
            if f.node == me and not f.quiet and f.fid not in self._quiets:
                self._quiets[f.fid] = loop.create_task(self._quiesce(vid, f.gen, f.fid))

    def on_node_leave(self, node: proto.SdNode) -> None:
        vids = self.table.drop_node(f"{node.host}:{node.port}")
        self._changed()
        if vids:
            log.info("%s left: released its locks on %s", node,
                     ", ".join(f"{v:#x}" for v in vids))

    def join_info(self) -> dict:
        """What a joining node brings: its counter and latest grants."""
        return {"generation": self.table.generation, "last": self.table.last_items()}

    def on_join(self, info: dict) -> None:
        """Every member, in order: merge the joiner's counter and latest grants."""
        mine = info.get("lock_gen") or {}
        if isinstance(mine, int):  # format 1 join data: the counter only
            mine = {"generation": mine, "last": []}
        self.table.generation = max(self.table.generation, int(mine.get("generation", 0)))
        self.table.merge_last(mine.get("last", []))
        self._changed()

    def snapshot(self) -> dict:
        return self.table.snapshot()

    def restore(self, snap: dict | None) -> None:
        self.table.restore(snap)
        self._changed()

    def on_new_vdi(self, msg: dict) -> None:
        if msg.get("replaced"):
            self.table.move(msg["replaced"], msg["vid"])
            self._changed()

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
        s.heard(now)
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
                s.heard(now)

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
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            stall, last = now - last - tick, now
            if stall > tick:
                # this process was stopped (or its loop stalled): renewals may be
                # waiting unread on its sockets; the time does not count against
                # anybody's lease, and nobody is judged before they were read
                for s in self.sessions.values():  # at most one grace per silence
                    add = min(stall, max(0.0, self.grace - s.extended))
                    s.last_seen += add
                    s.extended += add
                log.warning("lock session leases extended by %.1fs: this process did not "
                            "run for that long", stall)
                continue
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
            if not self.table.session_locks(sid, me):
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
            await self.group.cluster_op(work)
        except Exception as e:  # retried at the next reaper tick
            log.warning("releasing the locks of session %016x failed: %s", s.sid, e)
        finally:
            s.expiring = False
            if time.monotonic() - s.last_seen > self.grace and not self.table.session_locks(s.sid, me):
                self.sessions.pop(s.sid, None)

    # -- fencing (the gateway for flagged requests, every replica for writes) --

    async def fence_ready(self, gen: int) -> None:
        """Wait (briefly) until this node applied the grant of ``gen``: it may
        have been granted through another node a moment ago."""
        if gen > self.table.generation:
            await self.group.wait_until(lambda: self.table.generation >= gen, 3.0)

    async def check_write(self, req: proto.Request, write: bool = True) -> None:
        """A client request with a lock generation, at its gateway (this node).
        Reads of a snapshot (a clone's parent) need no lock."""
        gen = proto.fence_of(req)
        if not gen or not self.enforced:
            return
        await self.fence_ready(gen)
        vid = proto.oid_to_vid(req.args.oid)
        st = self.vdis.state(vid)
        if not write and st is not None and st.snapshot:
            return
        self.fence_check(vid, gen, self.me)

    def fence_check(self, vid: int, gen: int, node: str, draining_ok: bool = False) -> None:
        """FENCED unless ``gen`` is ``vid``'s current exclusive grant, held
        through gateway ``node`` — or, with ``draining_ok`` (replicas, and a
        gateway finishing a fan-out it started), that grant being drained.
        A write to a snapshot is READONLY unless it is such a draining write.
        Only reads state: safe from an I/O thread (``sheep.datapath.replica`` runs it
        under the object's store lock)."""
        if not self.enforced:
            return
        t = self.table
        if draining_ok and t.draining.get(vid) == (gen, node):
            return  # admitted before its grant ended: it lands everywhere
        st = self.vdis.state(vid)
        if st is not None and st.snapshot:
            raise sd_error("READONLY", f"VDI {vid:#x} is a snapshot now")
        t.check_write(vid, gen, node)

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
        n = self.group.node_by_key(key)
        if n is None:
            host, _, port = key.rpartition(":")
            n = proto.SdNode.make(host, int(port))
        return n.nid

    def copies_records(self) -> bytes:
        """GET_VDI_COPIES with the 1.0 view of the locks (exclusive and shared)."""
        vdis = self.vdis
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



def _reply(sheep, vid: int, flagged: bool, gen: int = 0, lock_count: int = 0,
           extra: int = 0) -> proto.VdiRsp:
    vdis = sheep.vdis
    st = vdis.state(vid)
    rsp = proto.VdiRsp(vdi_id=vid, copies=st.copies if st else 0,
                       block_size_shift=vdis.shift_of(vid))
    if flagged:
        locks = sheep.locks
        status = proto.LOCK_STATUS_SESSION | (proto.LOCK_STATUS_ENFORCED if locks.enforced else 0)
        proto.set_session_reply(rsp, status | extra, gen, int(locks.grace * 1000), lock_count)
    return rsp


async def lock_vdi(sheep, req: proto.Request, payload: bytes):
    """LOCK_VDI (docs/protocol.md §7.4, §17) plus the session modes of the extension."""
    a = req.args
    locks: Locks = sheep.locks
    flagged = bool(req.flags & proto.SD_FLAG_CMD_SESSION)
    sid, mode, held = proto.lock_session(a) if flagged else (0, proto.LOCK_MODE_WRITE, 0)
    conn = CURRENT_CONN.get()
    if flagged and sid:
        locks.attach(sid, conn)
    if flagged and mode == proto.LOCK_MODE_RENEW:
        if not sid:
            raise sd_error("INVALID_PARMS", "lease renewal without a session id")
        held_ok = 0
        if a.base_vdi_id:  # "do I still hold it?" (qemu_client, before trusting its cache)
            if held:
                o = locks.table.owner(a.base_vdi_id)
                ok = o is not None and (o.session, o.gen, o.node) == (sid, held, locks.me)
            else:
                ok = any(h.session == sid and h.node == locks.me and h.kind in (READ, SHARED)
                         for h in locks.table.holders(a.base_vdi_id))
            held_ok = proto.LOCK_STATUS_HELD if ok else 0
        return _reply(sheep, 0, True, lock_count=len(locks.table.session_locks(sid)),
                      extra=held_ok), b""
    name, tag = split_name_tag(payload)
    if not locks.enforced:  # Sheepdog 1.0: LOCK_VDI is GET_VDI_INFO
        return _reply(sheep, await sheep.vdis.find(name, tag, a.snapid), flagged), b""
    if a.type not in (proto.LOCK_TYPE_NORMAL, proto.LOCK_TYPE_SHARED):
        raise sd_error("INVALID_PARMS", f"unknown lock type {a.type}")
    if mode == proto.LOCK_MODE_WRITE:
        action, kind = "lock", SHARED if a.type == proto.LOCK_TYPE_SHARED else EXCL
    elif mode in _MODE_KIND:
        action, kind = "lock", _MODE_KIND[mode]
    elif mode == proto.LOCK_MODE_ACTIVATE:
        action, kind = "activate", EXCL
    elif mode == proto.LOCK_MODE_REATTACH:
        action, kind = "reattach", EXCL
    else:
        raise sd_error("INVALID_PARMS", f"unknown lock mode {mode}")
    if action != "lock" and not sid:
        raise sd_error("INVALID_PARMS", "activating or re-attaching a lock needs a session id")
    me = locks.me
    if action in ("lock", "activate", "reattach") and kind in (EXCL, READ, SHARED):
        # a former holder's writes may still be landing: wait for them here,
        # not while holding the cluster-wide turn (the grant is refused if not)
        await locks.wait_drained(await sheep.vdis.find(name, tag, a.snapid))

    async def work():
        vid = await sheep.vdis.find(name, tag, a.snapid)
        st = sheep.vdis.state(vid)
        return {"op": "lock", "a": action, "vid": vid, "node": me, "session": sid,
                "kind": kind, "gen": held, "now": time.time(),
                "snapshot": bool(st is not None and st.snapshot)}
    out = await sheep.group.cluster_op(work)
    await sheep.group.settled()  # the new generation is durable before anyone uses it
    return _reply(sheep, out["vid"], flagged, out["gen"],
                  len(locks.table.session_locks(sid)) if sid else 0), b""


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
            raise sd_error("INVALID_PARMS", f"unknown lock type {a.type}")
        msg = {"op": "lock", "a": "release_legacy", "vid": vid, "node": me, "type": a.type}

    async def work():
        msg["now"] = time.time()
        return msg
    await sheep.group.cluster_op(work)
    await sheep.group.settled()
    return None, b""


async def get_locks(sheep, req: proto.Request, payload: bytes):
    """GET_LOCKS (0xD0, extension): every holder as a LockRecord, by vid."""
    body = sheep.locks.lock_records()
    if len(body) > req.data_length:
        return None, b"", CODES["BUFFER_SMALL"]
    return None, body


def main_lock(sheep, msg: dict) -> dict:
    return sheep.locks.apply_main(msg)
