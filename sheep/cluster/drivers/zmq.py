"""The ``zmq`` membership driver: a multi-machine cluster with no other service.

``-c zmq:HOST:PORT[,HOST:PORT...][,self=HOST:PORT]``

Addresses
---------
The list holds *seed* endpoints: the ZeroMQ (TCP) endpoints at which some
(ideally all) members of the cluster listen.  Every daemon listens on one
endpoint of its own: ``self=HOST:PORT`` if given, else the first entry of the
list that it can bind (an address of this host whose port is free: on a
machine listed once that is its entry; several daemons on one machine take
successive entries), else an ephemeral port on the host of its ident
(``HOST:PORT/...``) or of the first seed.  A joiner sends its request to every
seed (and every endpoint it learnt), so a cluster can be joined as long as
one seed is a live member; members learn each other's endpoints from the log.

Theory of operation
-------------------
One member, the *master* (sequencer, normally ``members[0]``), orders every
event in a replicated log of entries (join, leave, notify, nop), each with a
global sequence number ``g`` and the id ``v`` of the view (regime of one
master) it was sequenced in.  Members ask the master (``J``, ``LR``, ``NR``);
it appends the entry and sends it (``E``) to all members; they store it and
acknowledge their last ``g`` (``A``).  An entry is *committed* when a
majority of the membership before it (its *voters*) holds it; committed
entries are delivered, in ``g`` order, by every member, and the commit point
travels in every ``E`` (sent at least every 100 ms as a heartbeat).  Members
that see a gap answer ``N`` and get the missing entries again.  At most one
membership change is uncommitted at a time, so consecutive views share a
majority.  The joiner gets, once its join entry committed, the view it
joins (``W``) and delivers ``on_join`` for itself.  ``notify`` resolves when
its entry is delivered; each sender numbers its messages and the master only
sequences number ``last + 1`` (FIFO, exactly once; lost requests are resent).

Failure detection: every member sends something to every other member each
100 ms; the master removes a member silent for 1 s (``FAIL``; a ``leave``
entry).  When the master is silent for 1 s (or its leave is delivered), the
oldest member that is still heard starts a *view change* with a new view id
``nv`` (``VS``).  A member answers only a candidate younger than itself, only
once it has not heard its master for ``VC_ANSWER`` = 0.75 s (or knows that
it left), and only once per ``nv`` (``VA``): it stops accepting entries of
older views and
sends its log after the candidate's commit point, its own commit point and
the last view it was normal in.  With answers from a majority of the
membership (before and after the flushed log) the candidate merges them as
in Viewstamped Replication (the log of the answer with the highest (last
normal view, last g) wins; see ``zmq_proto.merge_logs``), adopts it, appends
a leave for every member that did not answer (or a nop) and sends the log
to the answerers.  So a message of the old view that any survivor may have
delivered (committed: held by a majority, which meets every quorum) is
delivered by all survivors before the new view; the others are either kept
in order or dropped by all; their senders re-submit them in the new view.

Liveness details: a master learns of a newer view from ``ST`` (STALE)
answers and goes out only once a majority of its membership sent one (one
member that merely promised a view change that found no followers does not
depose it); such a member, in view-change state for ``OUT_AFTER``, goes out
and rejoins; and a process whose own loop stalled for more than FAIL/2
(frozen, SIGSTOP) reads what waits on its socket for one tick before it
judges anybody silent.

Primary partition: a view needs a majority of the previous one, so two
disjoint majorities are impossible.  A master that hears less than a
majority of its view for 1 s, a member that has no master for 3 s, and a
member removed while alive are *out*: they call ``on_quorum(False)`` and log
it, drop undelivered entries, fail pending notifies, deliver nothing more,
ask ``events.join_opaque()`` for fresh join data and keep asking to join
again (same ident, never forming a cluster of their own).  When a master
accepts them they call ``on_quorum(True)`` and then deliver ``on_join`` for
themselves (with a fresh view, as any joiner).  Consequence: a 2-member
cluster does not survive the loss of a member.

Serving (``may_serve``): a lease, from echoed timestamps, so that neither
the time a message spent in a queue nor a frozen process can stretch it.
Every message of the master to a member carries ``ts`` (the master's clock),
``te`` (the latest ``ts`` of that member that the master received, in the
member's clock) and ``rl`` (the master's remaining lease); every ACK of a
member carries ``ts`` (its clock) and ``te`` (the latest master ``ts`` it
accepted).  A member answers each heartbeat at once, and the master answers
each ACK with a lease message (``L``), so evidence is one round trip old.

* A member (state normal) serves until ``te + rl`` (its clock).  The master
  heard it at ``te`` or later and removes it only after ``FAIL`` = 1 s of
  silence, so ``rl`` <= ``LEASE`` = 0.5 s leaves a 0.5 s margin; and
  ``te`` precedes the master's sending, so ``te + rl`` is at most the
  master's own lease: a member cut off together with its master stops with
  it.  A member the master is removing gets no ``te`` (lease 0).
* The master serves until ``T + LEASE``, where a majority of its view
  (itself counted as now) acknowledged a heartbeat of this view sent at
  ``T`` or later (a joiner counts from the moment its join is sequenced: it
  can answer nothing before it is welcomed).  A view without this master
  needs answers from a majority, which includes one of those members; it
  answers only after ``VC_ANSWER`` = 0.75 s without hearing the master, so
  not before ``T + 0.75``: a 0.25 s margin (and the candidate itself waits
  ``FAIL`` = 1 s).
* Steady state: the lease is renewed every ``TICK`` (0.1 s); measured on
  an idle 3-member cluster it has 0.30 to 0.50 s left (median 0.45), so a
  loop stall or network hiccup of ~0.3 s makes ``may_serve`` False until
  the next round trip (a false negative, never a false positive).  A
  one-member cluster serves while it is normal.

A callback that raises makes the member fail (base.py): state closed at
once (nothing more is delivered or sent), sockets closed, then
``on_driver_failure``; its peers remove it as a silent member.

Bootstrap: a fresh joiner that hears no member for 0.6 s and no joiner of
better rank (seed index, then ident) forms a one-member cluster after its
own ``check_join``.  A fresh daemon started alone in a minority partition can
thus form a separate cluster (the daemon's cluster-creation-time check
rejects it when the partitions meet again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import zmq

from . import zmq_proto as P
from .base import ClusterDriver, ClusterEvents, JoinRejected, Member
from .zmq_join import Joining
from .zmq_master import Sequencer
from .zmq_proto import FAIL, KEEP, TICK
from .zmq_vc import ViewChange

log = logging.getLogger(__name__)

_MEMBER_TRAFFIC = {P.ENTRIES, P.ACK, P.NACK, P.PING, P.NOTIFY_REQ, P.LEAVE_REQ, P.VC_START, P.VC_ACK,
                   P.LEASE_MSG}
JOINING, NORMAL, VC, CLOSED = "joining", "normal", "view-change", "closed"


class ZmqDriver(Joining, Sequencer, ViewChange, ClusterDriver):
    """Membership over ZeroMQ; see the module docstring."""

    name = "zmq"

    def __init__(self, option: str, events: ClusterEvents) -> None:
        super().__init__(option, events)
        self.seeds, self.self_ep = P.parse_option(option)
        self.me: Member | None = None
        self.ep = ""
        self.rank = 10 ** 6
        self.state = JOINING
        self.vid = self.promised = self.normal_vid = 0
        self.leader: str | None = None
        self.members: list[dict] = []      # delivered view {i, node, ep}
        self.cseq: dict[str, int] = {}     # delivered: last notify number per sender
        self.log: dict[int, dict] = {}
        self.last = self.commit = 0
        self.cfg: list[dict] = []          # membership after the whole log
        self.seq: dict[str, int] = {}      # seq numbers after the whole log
        self.voters: dict[int, list[str]] = {}
        self.acked: dict[str, int] = {}
        self.heard: dict[str, float] = {}
        self.eps: dict[str, str] = {}
        self.socks: dict[str, zmq.Socket] = {}
        self.outbox: dict[int, list] = {}  # n -> [b64 msg, future, last sent]
        self.next_n = 1
        self.mc_pending = 0
        self.welcomes: dict[str, dict] = {}
        self.rejected: dict[str, str] = {}
        self.vc: dict | None = None
        self.suspect_since: float | None = None
        self.lost_since: float | None = None
        self.leader_left = False
        self.rejoin = False
        self.leaving: asyncio.Future | None = None
        self.ctx: zmq.Context | None = None
        self.pull: zmq.Socket | None = None
        self._join_fut: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._opaque = b""
        self._t_join = self._t_member = self._t_better = self._t_req = self._t_ack = 0.0
        self.lease_end = 0.0               # may_serve() until then (monotonic)
        self.m_ts: float | None = None     # member: latest ts of its master it accepted
        self.echo: dict[str, float] = {}   # master: latest own ts each member echoed
        self.mts: dict[str, float] = {}    # master: latest ts of each member (its clock)
        self._cfg_ids: tuple = (None, set())
        self.stale: set[str] = set()       # master: members that know a newer view
        self.vc_since = 0.0
        self._fail_task: asyncio.Task | None = None

    # ---- public API -------------------------------------------------------

    async def join(self, me: Member, opaque: bytes) -> None:
        if self.me is not None:
            raise RuntimeError("join() may be called only once per driver")
        self.me, self._opaque = me, opaque
        self._loop = asyncio.get_running_loop()
        self._join_fut = self._loop.create_future()
        try:
            self._open()
            self._t_join = time.monotonic()
            self._task = self._loop.create_task(self._run(), name=f"zmq-cluster {me.ident}")
            await self._join_fut
        except BaseException:
            await self.close()
            raise

    async def leave(self) -> None:
        if self.state not in (NORMAL, VC):
            raise RuntimeError("leave() needs a joined member")
        if len(self.cfg) > 1:
            self.leaving = self._loop.create_future()
            self._request_leave()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.leaving), 5.0)
        await self._shutdown(linger=200)

    async def notify(self, msg: bytes) -> None:
        if self.state not in (NORMAL, VC) or self.leaving is not None:
            raise RuntimeError("notify() needs a joined member")
        n, self.next_n = self.next_n, self.next_n + 1
        fut = self._loop.create_future()
        self.outbox[n] = [P.b64e(msg), fut, 0.0]
        self._push_outbox()
        await fut

    async def close(self) -> None:
        await self._shutdown(linger=0)

    def may_serve(self) -> bool:
        return self.state == NORMAL and self.leaving is None and time.monotonic() < self.lease_end

    # ---- transport --------------------------------------------------------

    def _open(self) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        for opt, val in ((zmq.LINGER, 0), (zmq.RCVHWM, 100000), (zmq.HEARTBEAT_IVL, 300),
                         (zmq.HEARTBEAT_TIMEOUT, 1500)):
            self.pull.setsockopt(opt, val)
        if self.self_ep:
            self.pull.bind(self.self_ep)
            self.ep = self.self_ep
        else:
            for idx, ep in enumerate(self.seeds):
                try:
                    self.pull.bind(ep)
                except zmq.ZMQError:
                    continue
                self.ep, self.rank = ep, idx
                break
            else:
                m = re.match(r"([0-9.]+):\d+/", self.me.ident)
                host = m.group(1) if m else P.host_of(self.seeds[0])
                port = self.pull.bind_to_random_port(f"tcp://{host}")
                self.ep = f"tcp://{host}:{port}"
        self.eps[self.me.ident] = self.ep
        self._loop.add_reader(self.pull.getsockopt(zmq.FD), self._drain)

    def _send(self, ep: str | None, t: str, /, **msg) -> None:
        if not ep or ep == self.ep or self.ctx is None or self.state == CLOSED:
            return
        sock = self.socks.get(ep)
        if sock is None:
            sock = self.socks[ep] = self.ctx.socket(zmq.PUSH)
            for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, 10000), (zmq.RECONNECT_IVL, 100),
                             (zmq.RECONNECT_IVL_MAX, 500), (zmq.CONNECT_TIMEOUT, 1000), (zmq.HEARTBEAT_IVL, 300),
                             (zmq.HEARTBEAT_TIMEOUT, 1500)):
                sock.setsockopt(opt, val)
            sock.connect(ep)
        msg.update(t=t, f=self.me.ident, v=msg.get("v", self.vid))
        with contextlib.suppress(zmq.Again):
            sock.send(P.encode(msg), zmq.NOBLOCK)

    def _to(self, ident: str | None, t: str, /, **msg) -> None:
        self._send(self.eps.get(ident), t, **msg)

    def _drain(self) -> None:
        while self.pull is not None and self.state != CLOSED:
            try:
                frame = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = P.decode(frame)
            if msg is None or msg["f"] == self.me.ident:
                continue
            try:
                self._handle(msg)
            except Exception:
                log.exception("zmq cluster: handling %s from %s failed", msg["t"], msg["f"])

    # ---- local log --------------------------------------------------------

    def _extend(self, e: dict) -> None:
        g = e["g"]
        self.log[g], self.last = e, g
        self.voters[g] = [m["i"] for m in self.cfg]
        if e["k"] in ("join", "leave"):
            self.cfg = P.cfg_after(self.cfg, [e])
        if e["k"] == "join":
            self.seq[e["i"]] = e["nb"] - 1
            self.eps[e["i"]] = e["ep"]
            self.heard[e["i"]] = time.monotonic()
        elif e["k"] == "notify":
            self.seq[e["i"]] = e["n"]

    def _truncate(self, g: int) -> None:
        """Drop entries from ``g`` on (never committed ones) and rebuild."""
        tail = [self.log[x] for x in range(self.commit + 1, g) if x in self.log]
        for x in [x for x in self.log if x > self.commit]:
            del self.log[x]
            self.voters.pop(x, None)
        self.last, self.cfg, self.seq = self.commit, list(self.members), dict(self.cseq)
        for e in tail:
            self._extend(e)

    def _deliver_upto(self, c: int) -> None:
        while self.commit < min(c, self.last) and self.state in (NORMAL, VC):
            e = self.log[self.commit + 1]
            self.commit = g = e["g"]
            k, ident = e["k"], e["i"]
            if k == "join":
                self.members = P.cfg_after(self.members, [e])
                self.cseq[ident] = e["nb"] - 1
                self._call("on_join", self._member(self.members[-1]), self._view(), P.b64d(e["r"]))
                if self.leader == self.me.ident:
                    self.welcomes[ident] = {"g": g, "e": e, "members": list(self.members),
                                            "seqn": dict(self.cseq)}
                    self._welcome(ident)
            elif k == "leave":
                left = next((m for m in self.members if m["i"] == ident), None)
                self.members = P.cfg_after(self.members, [e])
                self.cseq.pop(ident, None)
                if ident == self.me.ident:
                    if self.leaving is not None:
                        self.leaving.done() or self.leaving.set_result(None)
                        return
                    self._go_out("removed from the view while alive")
                    return
                if left is not None:
                    self._call("on_leave", self._member(left), self._view())
                if ident == self.leader:
                    self.leader_left = True
            elif k == "notify":
                self.cseq[ident] = e["n"]
                sender = next((m for m in self.members if m["i"] == ident), None)
                if sender is not None:
                    self._call("on_notify", self._member(sender), P.b64d(e["d"]))
                if ident == self.me.ident and e["n"] in self.outbox:
                    fut = self.outbox.pop(e["n"])[1]
                    fut.done() or fut.set_result(None)
            if g == self.mc_pending:
                self.mc_pending = 0
            for old in [x for x in self.log if x <= g - KEEP]:
                del self.log[old]
                self.voters.pop(old, None)

    @staticmethod
    def _member(m: dict) -> Member:
        return Member(P.b64d(m["node"]), m["i"])

    def _view(self) -> list[Member]:
        return [self._member(m) for m in self.members]

    def _call(self, name: str, *args):
        cb = getattr(self.events, name, None)
        if cb is None or self.state == CLOSED:
            return None
        try:
            return cb(*args)
        except Exception as exc:  # noqa: BLE001 - the member is failed, see base.py
            self._fail(f"{name} raised", exc)
            return None

    def _fail(self, why: str, exc: BaseException) -> None:
        """Deliver and send nothing more, close abruptly (the peers remove us
        as silent), then tell the events object."""
        if self.state == CLOSED:
            return
        log.error("zmq cluster: %s: %s (%r); the member is failed: closing the driver",
                  self.me.ident, why, exc, exc_info=exc)
        self.state, self.lease_end = CLOSED, 0.0
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(exc)
            self._join_fut.exception()   # join() re-raises it when it awaits
        self._fail_task = self._loop.create_task(self._died(exc))

    def _ack(self, to: str | None, now: float) -> None:
        """ACK (with the lease echo) to our master."""
        self._t_ack = now
        self._to(to, P.ACK, a=self.last, ts=now, te=self.m_ts)

    # ---- member -----------------------------------------------------------

    def _on_entries(self, msg: dict) -> None:
        v, f = msg["v"], msg["f"]
        if self.state not in (NORMAL, VC):
            return
        if v < max(self.vid, self.promised):
            return self._to(f, P.STALE, v=max(self.vid, self.promised))
        if self.leader == self.me.ident and v == self.vid:
            return
        if v > self.vid or self.state == VC:
            self.vid = self.promised = self.normal_vid = v
            self.leader, self.state, self.vc, self.leader_left = f, NORMAL, None, False
            self.suspect_since, self.m_ts = None, None
            for item in self.outbox.values():
                item[2] = 0.0
        elif f != self.leader:
            return
        self._take_lease(msg)
        now = time.monotonic()
        p = msg["p"]
        if p > self.last or (p > self.commit and self.log[p]["v"] != msg["pv"]):
            return self._to(f, P.NACK, c=self.commit, ts=now, te=self.m_ts)
        for e in msg["es"]:
            g = e["g"]
            if g <= self.commit or (g in self.log and self.log[g]["v"] == e["v"]):
                continue
            if g <= self.last:
                self._truncate(g)
            if g != self.last + 1:
                return self._to(f, P.NACK, c=self.commit, ts=now, te=self.m_ts)
            self._extend(e)
        self._ack(f, now)   # also for a heartbeat: it renews the master's lease
        self._deliver_upto(msg["c"])

    def _take_lease(self, msg: dict) -> None:
        """A message of our master in our view: the lease it grants (none
        when it does not count us in), and its ts to echo."""
        if msg.get("ts") is not None:
            self.m_ts = msg["ts"]
        self.lease_end = msg["te"] + msg["rl"] if msg.get("te") is not None else 0.0

    def _push_outbox(self) -> None:
        """(Re)send notifies the log does not hold yet to the master."""
        now = time.monotonic()
        if self.state != NORMAL:
            return
        for n in sorted(self.outbox):
            if n <= self.seq.get(self.me.ident, 0):
                continue
            item = self.outbox[n]
            if self.leader == self.me.ident:
                if n == self.seq.get(self.me.ident, 0) + 1:
                    self._sequence({"k": "notify", "i": self.me.ident, "n": n, "d": item[0]})
            elif now - item[2] > 0.3:
                item[2] = now
                self._to(self.leader, P.NOTIFY_REQ, n=n, d=item[0])

    def _request_leave(self) -> None:
        if self.leader == self.me.ident:
            if not self.mc_pending and self.state == NORMAL and not any(
                    e["k"] == "leave" and e["i"] == self.me.ident
                    for g, e in self.log.items() if g > self.commit):
                self._sequence({"k": "leave", "i": self.me.ident})
        else:
            self._to(self.leader, P.LEAVE_REQ)

    # ---- dispatch and the tick --------------------------------------------

    def _handle(self, msg: dict) -> None:
        t, f, now = msg["t"], msg["f"], time.monotonic()
        if t in _MEMBER_TRAFFIC:   # a rejoining ex-member's requests prove nothing
            self.heard[f] = now
        mine = self.state in (NORMAL, VC)
        master = mine and self.leader == self.me.ident and self.state == NORMAL
        if t == P.ENTRIES:
            self._on_entries(msg)
        elif t == P.ACK and master and msg["v"] == self.vid:
            self._on_ack(f, msg, now)
        elif t == P.NACK and master and msg["v"] == self.vid:
            self._take_echo(f, msg)
            self._resend(f, msg["c"])
        elif t == P.LEASE_MSG:
            if self.state == NORMAL and f == self.leader != self.me.ident and msg["v"] == self.vid:
                self._take_lease(msg)
        elif t == P.NOTIFY_REQ and master and msg["n"] == self.seq.get(f, -1) + 1:
            if any(m["i"] == f for m in self.cfg):
                self._sequence({"k": "notify", "i": f, "n": msg["n"], "d": msg["d"]})
        elif t == P.LEAVE_REQ and master and not self.mc_pending:
            if any(m["i"] == f for m in self.cfg):
                self._sequence({"k": "leave", "i": f})
        elif t == P.JOIN_REQ:
            if mine and msg["i"] == self.leader == f:   # our master is out and rejoining
                self.leader_left = True   # (sent by itself: FIFO after its entries)
            if mine or self.rejoin:   # a cluster exists: the joiner must not form one
                self._send(msg["ep"], P.JOIN_SEEN)
            if master:
                self._on_join_req(msg)
            elif mine and self.state == NORMAL:
                self._to(self.leader, P.JOIN_REQ, **{k: msg[k] for k in msg if k not in "tfv"})
            elif not mine and not self.rejoin:
                self._send(msg["ep"], P.JOINER, rank=[self.rank, self.me.ident])
        elif t == P.JOINER:
            if tuple(msg["rank"]) < (self.rank, self.me.ident):
                self._t_better = now
        elif t == P.JOIN_SEEN:
            self._t_member = now
        elif t == P.REJECT and self.state == JOINING:
            if self._join_fut is not None and not self._join_fut.done():
                self._join_fut.set_exception(JoinRejected(P.b64d(msg["r"])))
            else:   # base.py: a rejected rejoin ends the driver
                self._fail("rejoin rejected by the master", JoinRejected(P.b64d(msg["r"])))
        elif t == P.WELCOME:
            self._on_welcome(msg)
        elif t == P.STALE and master and msg["v"] > self.vid:
            # a newer view needs a majority of us: one member that merely
            # promised one (a failed view change) does not depose us
            self.stale.add(f)
            if P.majority([m["i"] for m in self.cfg], self.stale):
                self._go_out(f"a newer view {msg['v']} exists")
        elif t == P.VC_START:
            self._on_vc_start(msg, now)
        elif t == P.VC_ACK:
            self._on_vc_ack(msg)

    async def _run(self) -> None:
        prev = time.monotonic()
        while self.state != CLOSED:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            stalled, prev = now - prev > FAIL / 2, now
            try:
                self._drain()
                if stalled:   # we were frozen: read what waits before judging anyone
                    continue
                if self.state == JOINING:
                    self._joining_tick(now)
                elif self.state == NORMAL and self.leader == self.me.ident:
                    self._master_tick(now)
                elif self.state in (NORMAL, VC):
                    self._member_tick(now)
                if self.leaving is not None and not self.leaving.done() and self.state in (NORMAL, VC):
                    self._request_leave()
                self._push_outbox()
            except Exception:
                log.exception("zmq cluster: tick failed")

    async def _shutdown(self, linger: int) -> None:
        if self.ctx is None and self.state == CLOSED:
            return
        self.state = CLOSED
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(ConnectionError("cluster driver closed"))
            self._join_fut.exception()
        for item in self.outbox.values():
            item[1].done() or item[1].set_exception(RuntimeError("cluster driver closed"))
            item[1].exception()
        if self.pull is not None:
            self._loop.remove_reader(self.pull.getsockopt(zmq.FD))
            self.pull.close(0)
            self.pull = None
        for sock in self.socks.values():
            sock.close(linger)
        self.socks.clear()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
