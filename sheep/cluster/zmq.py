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
100 ms; the master removes a member silent for 1 s (a ``leave`` entry).  When
the master is silent for 1 s (or its leave is delivered), the oldest member
that is still heard starts a *view change* with a new view id ``nv``
(``VS``).  A member answers only a candidate younger than itself, and only
once per ``nv`` (``VA``): it stops accepting entries of older views and
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

Primary partition: a view needs a majority of the previous one, so two
disjoint majorities are impossible.  A master that hears less than a
majority of its view for 1 s, a member that has no master for 3 s, and a
member removed while alive are *out*: they call ``on_quorum(False)`` and log
it, drop undelivered entries, fail pending notifies, deliver nothing more,
and keep asking to join again (same ident, never forming a cluster of their
own).  When a master accepts them they deliver ``on_join`` for themselves
(with a fresh view, as any joiner) and then ``on_quorum(True)``.
Consequence: a 2-member cluster does not survive the loss of a member.

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

log = logging.getLogger(__name__)

TICK = 0.1           # heartbeat period
FAIL = 1.0           # silence after which a peer is considered dead
OUT_AFTER = 3.0      # seconds without a master before a member is out
VC_RETRY = 1.0       # a candidate retries its view change after this
JOIN_RETRY = 0.25    # joiners resend their request
VC_GRACE = 0.5      # a candidate waits this long for answers beyond a majority
BOOT_WAIT = 0.6      # a fresh joiner hearing nobody forms the cluster
KEEP = 2000          # committed entries kept for lagging members
CHUNK = 256          # entries per resend

_MEMBER_TRAFFIC = {P.ENTRIES, P.ACK, P.NACK, P.PING, P.NOTIFY_REQ, P.LEAVE_REQ, P.VC_START, P.VC_ACK}
JOINING, NORMAL, VC, CLOSED = "joining", "normal", "view-change", "closed"


class ZmqDriver(ClusterDriver):
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
        self._t_join = self._t_member = self._t_better = self._t_req = 0.0

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
        if not ep or ep == self.ep or self.ctx is None:
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
        while self.pull is not None:
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

    def _call(self, name: str, *args) -> None:
        cb = getattr(self.events, name, None)
        if cb is None:
            return
        try:
            cb(*args)
        except Exception:
            log.exception("zmq cluster: %s raised", name)

    # ---- master -----------------------------------------------------------

    def _sequence(self, e: dict) -> None:
        e.update(g=self.last + 1, v=self.vid)
        prev = self.log.get(self.last, {}).get("v", 0)
        self._extend(e)
        if e["k"] in ("join", "leave"):
            self.mc_pending = e["g"]
        self.acked[self.me.ident] = self.last
        for i in set(self.voters[e["g"]]) | {m["i"] for m in self.cfg}:
            self._to(i, P.ENTRIES, p=e["g"] - 1, pv=prev, es=[e], c=self.commit)
        self._advance()

    def _advance(self) -> None:
        new = self.commit
        for g in range(self.commit + 1, self.last + 1):
            if self.log[g]["v"] != self.vid:
                continue
            have = {i for i, a in self.acked.items() if a >= g}
            if not P.majority(self.voters[g], have) and self.voters[g]:
                break
            new = g
        if new > self.commit:
            self._deliver_upto(new)
            self._heartbeat_master()

    def _heartbeat_master(self) -> None:
        pv = self.log.get(self.last, {}).get("v", 0)
        to = {m["i"] for m in self.cfg}   # + members just removed (an orderly leaver)
        for g in range(max(self.commit - 2, 1), self.last + 1):
            to.update(self.voters.get(g, ()))
        for i in to:
            self._to(i, P.ENTRIES, p=self.last, pv=pv, es=[], c=self.commit)

    def _resend(self, ident: str, c: int) -> None:
        es = [self.log[g] for g in range(c + 1, min(self.last, c + CHUNK) + 1) if g in self.log]
        if es and es[0]["g"] != c + 1:
            log.warning("zmq cluster: %s is too far behind; it will be removed", ident)
            return
        self._to(ident, P.ENTRIES, p=c, pv=0, es=es, c=self.commit)

    def _welcome(self, ident: str) -> None:
        w = self.welcomes[ident]
        es = [self.log[g] for g in range(w["g"] + 1, self.last + 1) if g in self.log]
        self._to(ident, P.WELCOME, es=es, c=self.commit, **w)

    def _on_join_req(self, msg: dict) -> None:
        ident = msg["i"]
        self.eps.setdefault(ident, msg["ep"])
        if any(m["i"] == ident for m in self.cfg):
            if ident in self.welcomes:   # the welcome was lost: the joiner is alive
                self.heard[ident] = time.monotonic()
                self._welcome(ident)
            return
        if ident in self.rejected:
            return self._send(msg["ep"], P.REJECT, r=self.rejected[ident])
        if self.mc_pending:
            return
        joiner = Member(P.b64d(msg["node"]), ident)
        try:
            accept, reply = self.events.check_join(joiner, P.b64d(msg["o"]))
            accept, reply = bool(accept), bytes(reply)
        except Exception:
            log.exception("zmq cluster: check_join raised; rejecting %s", ident)
            accept, reply = False, b""
        if not accept:
            self.rejected[ident] = P.b64e(reply)
            return self._send(msg["ep"], P.REJECT, r=self.rejected[ident])
        self.eps[ident] = msg["ep"]
        self._sequence({"k": "join", "i": ident, "node": msg["node"], "ep": msg["ep"],
                        "r": P.b64e(reply), "nb": msg["nb"]})

    def _master_tick(self, now: float) -> None:
        self._heartbeat_master()
        live = {m["i"] for m in self.cfg if now - self.heard.get(m["i"], now) < FAIL}
        live.add(self.me.ident)
        live |= {m["i"] for m in self.members if now - self.heard.get(m["i"], now) < FAIL}
        if not (P.majority([m["i"] for m in self.cfg], live)
                and P.majority([m["i"] for m in self.members], live)):
            self.lost_since = self.lost_since or now
            if now - self.lost_since > FAIL:
                return self._go_out("the master hears less than a majority of its view")
        else:
            self.lost_since = None
        if not self.mc_pending:
            dead = [m["i"] for m in self.cfg if m["i"] not in live]
            if dead:
                log.info("zmq cluster: %s is silent; removing it", dead[0])
                self._sequence({"k": "leave", "i": dead[0]})

    # ---- view change ------------------------------------------------------

    def _age(self, ident: str) -> int:
        return next((x for x, m in enumerate(self.cfg) if m["i"] == ident), 10 ** 6)

    def _member_tick(self, now: float) -> None:
        for m in self.cfg:
            if m["i"] != self.leader:
                self._to(m["i"], P.PING)
        self._to(self.leader, P.ACK, a=self.last)
        if not (self.leader_left or now - self.heard.get(self.leader, now) > FAIL):
            self.suspect_since = None
            return
        self.suspect_since = self.suspect_since or now
        if now - self.suspect_since > OUT_AFTER:
            return self._go_out("no master reachable within a majority")
        cand = next((m["i"] for m in self.cfg if m["i"] != self.leader and (
            m["i"] == self.me.ident or now - self.heard.get(m["i"], 0) < FAIL)), None)
        if self.vc is not None and self.state == VC:
            self._try_install(now)
        if cand == self.me.ident and (self.vc is None or now - self.vc["t0"] > VC_RETRY):
            nv = max(self.vid, self.promised) + 1
            self.promised, self.state = nv, VC
            self.vc = {"nv": nv, "t0": now, "cfg": [m["i"] for m in self.cfg],
                       "acks": {self.me.ident: self._vc_state(self.commit)}}
            log.info("zmq cluster: master %s lost; starting view change %d", self.leader, nv)
            for m in self.cfg:
                self._to(m["i"], P.VC_START, v=nv, c=self.commit)

    def _vc_state(self, c: int) -> dict:
        return {"nv": self.normal_vid, "last": self.last, "c": self.commit,
                "es": [self.log[g] for g in range(c + 1, self.last + 1) if g in self.log]}

    def _on_vc_start(self, msg: dict, now: float) -> None:
        f, nv = msg["f"], msg["v"]
        if self.state not in (NORMAL, VC) or nv <= self.promised or self._age(f) > 10 ** 5:
            return
        if self._age(self.me.ident) < self._age(f) or self.leader == self.me.ident:
            return
        if not self.leader_left and now - self.heard.get(self.leader, 0) < FAIL / 2:
            return
        self.promised, self.state, self.vc = nv, VC, None
        self._to(f, P.VC_ACK, v=nv, **self._vc_state(msg["c"]))

    def _on_vc_ack(self, msg: dict) -> None:
        if self.vc is None or msg["v"] != self.vc["nv"] or self.state != VC:
            return
        self.vc["acks"][msg["f"]] = msg
        self._try_install(time.monotonic())

    def _try_install(self, now: float) -> None:
        """Install the new view once a majority answered and every member
        still heard from answered too (or VC_GRACE passed)."""
        acks = self.vc["acks"]
        if not P.majority(self.vc["cfg"], set(acks)):
            return
        heard = {i for i in self.vc["cfg"] if now - self.heard.get(i, 0) < FAIL}
        if not heard <= set(acks) | {self.leader} and now - self.vc["t0"] < VC_GRACE:
            return
        merged = P.merge_logs(acks, self.log, self.commit)
        if merged is None:
            log.error("zmq cluster: view change %d: a log position is held by nobody", self.vc["nv"])
            return
        final = P.cfg_after(self.members, [e for e in merged if e["g"] > self.commit])
        if not P.majority([m["i"] for m in final], set(acks)):
            return
        self._truncate(self.commit + 1)
        for e in merged:
            if e["g"] > self.commit:
                self._extend(e)
        self.vid = self.normal_vid = self.vc["nv"]
        self.leader, self.state, self.leader_left = self.me.ident, NORMAL, False
        self.suspect_since = self.lost_since = None
        self.acked = {self.me.ident: self.last}
        log.info("zmq cluster: view %d installed; %s is the master", self.vid, self.me.ident)
        for ident, a in acks.items():
            if ident != self.me.ident:
                self._resend(ident, a["c"])
        self.vc = None
        gone = [m["i"] for m in self.cfg if m["i"] not in acks]
        for ident in gone:
            self._sequence({"k": "leave", "i": ident})
        if not gone:
            self._sequence({"k": "nop", "i": self.me.ident})
        self._push_outbox()

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
            self.suspect_since = None
            for item in self.outbox.values():
                item[2] = 0.0
        elif f != self.leader:
            return
        p = msg["p"]
        if p > self.last or (p > self.commit and self.log[p]["v"] != msg["pv"]):
            return self._to(f, P.NACK, c=self.commit)
        for e in msg["es"]:
            g = e["g"]
            if g <= self.commit or (g in self.log and self.log[g]["v"] == e["v"]):
                continue
            if g <= self.last:
                self._truncate(g)
            if g != self.last + 1:
                return self._to(f, P.NACK, c=self.commit)
            self._extend(e)
        if msg["es"]:
            self._to(f, P.ACK, a=self.last)
        self._deliver_upto(msg["c"])

    def _on_welcome(self, msg: dict) -> None:
        if self.state != JOINING or self._join_fut is None:
            return
        e = msg["e"]
        self.vid = self.promised = self.normal_vid = msg["v"]
        self.leader, self.state = msg["f"], NORMAL
        self.members, self.cseq = msg["members"], msg["seqn"]
        self.log = {e["g"]: e}
        self.voters = {}
        self.last = self.commit = e["g"]
        self.cfg, self.seq = list(self.members), dict(self.cseq)
        now = time.monotonic()
        for m in self.members:
            self.eps[m["i"]], self.heard[m["i"]] = m["ep"], now
        for x in msg["es"]:
            if x["g"] == self.last + 1:
                self._extend(x)
        self._to(self.leader, P.ACK, a=self.last)
        self._call("on_join", self._member(self.members[-1]), self._view(), P.b64d(e["r"]))
        if self.rejoin:
            log.warning("zmq cluster: back in the primary partition (view %d)", self.vid)
            self.rejoin = False
            self._call("on_quorum", True)
        self._join_fut.done() or self._join_fut.set_result(None)
        self._deliver_upto(msg["c"])

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

    def _go_out(self, why: str) -> None:
        was_member = self.state in (NORMAL, VC)
        log.warning("zmq cluster: %s: out of the primary partition (%s); not serving, "
                    "asking to rejoin", self.me.ident, why)
        self.state, self.rejoin, self.leader, self.vc = JOINING, True, None, None
        self.log, self.voters, self.acked, self.welcomes = {}, {}, {}, {}
        self.last = self.commit = self.mc_pending = 0
        self.members, self.cfg, self.seq, self.cseq = [], [], {}, {}
        self.suspect_since = self.lost_since = None
        self.leader_left = False
        for item in self.outbox.values():
            item[1].done() or item[1].set_exception(RuntimeError("lost the primary partition"))
            item[1].exception()
        self.outbox.clear()
        if was_member:
            self._call("on_quorum", False)

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
            self.acked[f] = max(self.acked.get(f, 0), msg["a"])
            self.welcomes.pop(f, None) if msg["a"] >= self.welcomes.get(f, {}).get("g", 1 << 62) else None
            self._advance()
        elif t == P.NACK and master and msg["v"] == self.vid:
            self._resend(f, msg["c"])
        elif t == P.NOTIFY_REQ and master and msg["n"] == self.seq.get(f, -1) + 1:
            if any(m["i"] == f for m in self.cfg):
                self._sequence({"k": "notify", "i": f, "n": msg["n"], "d": msg["d"]})
        elif t == P.LEAVE_REQ and master and not self.mc_pending:
            if any(m["i"] == f for m in self.cfg):
                self._sequence({"k": "leave", "i": f})
        elif t == P.JOIN_REQ:
            if mine and msg["i"] == self.leader:   # our master is out and rejoining
                self.leader_left = True
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
            else:
                log.error("zmq cluster: rejoin rejected by the master: %r", P.b64d(msg["r"]))
                self.state = CLOSED
        elif t == P.WELCOME:
            self._on_welcome(msg)
        elif t == P.STALE and master and msg["v"] > self.vid:
            self._go_out(f"a newer view {msg['v']} exists")
        elif t == P.VC_START:
            self._on_vc_start(msg, now)
        elif t == P.VC_ACK:
            self._on_vc_ack(msg)

    def _joining_tick(self, now: float) -> None:
        if now - self._t_req >= JOIN_RETRY:
            self._t_req = now
            me = self.me
            req = dict(i=me.ident, node=P.b64e(me.node), ep=self.ep, o=P.b64e(self._opaque),
                       nb=self.next_n)
            for ep in set(self.seeds) | set(self.eps.values()):
                self._send(ep, P.JOIN_REQ, **req)
        quiet = now - max(self._t_join, self._t_member, self._t_better)
        if not self.rejoin and quiet > BOOT_WAIT and not self._join_fut.done():
            self._bootstrap()

    def _bootstrap(self) -> None:
        try:
            accept, reply = self.events.check_join(self.me, self._opaque)
            accept, reply = bool(accept), bytes(reply)
        except Exception:
            log.exception("zmq cluster: check_join raised; not forming the cluster")
            accept, reply = False, b""
        if not accept:
            self._join_fut.set_exception(JoinRejected(reply))
            return
        log.info("zmq cluster: no cluster answered; %s forms one at %s", self.me.ident, self.ep)
        e = {"g": 1, "v": 1, "k": "join", "i": self.me.ident, "node": P.b64e(self.me.node),
             "ep": self.ep, "r": P.b64e(reply), "nb": self.next_n}
        members = [{"i": e["i"], "node": e["node"], "ep": e["ep"]}]
        self._on_welcome({"t": P.WELCOME, "f": self.me.ident, "v": 1, "e": e, "es": [], "c": 1,
                          "members": members, "seqn": {self.me.ident: self.next_n - 1}})

    async def _run(self) -> None:
        while self.state != CLOSED:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            try:
                self._drain()
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
