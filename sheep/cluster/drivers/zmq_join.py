"""Joining in the ``zmq`` cluster driver: the joiner's requests, forming a
cluster, the welcome, and going out of the primary partition (then
rejoining).

A mixin of :class:`sheep.cluster.drivers.zmq.ZmqDriver` (it uses the driver's
state); the protocol is described in :mod:`sheep.cluster.drivers.zmq`.
"""

from __future__ import annotations

import logging
import time

from . import zmq_proto as P
from .base import JoinRejected
from .zmq_proto import BOOT_WAIT, JOIN_RETRY

log = logging.getLogger("sheep.cluster.drivers.zmq")

JOINING, NORMAL, VC, CLOSED = "joining", "normal", "view-change", "closed"


class Joining:
    """A process outside the view: asking to join, forming, welcomed; and a
    member going out."""

    def _joining_tick(self, now: float) -> None:
        if now - self._t_req >= JOIN_RETRY:
            self._t_req = now
            me = self.me
            req = dict(i=me.ident, node=P.b64e(me.node), ep=self.ep, o=P.b64e(self._opaque),
                       nb=self.next_n, ts=now)
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
        if self.leader == self.me.ident:   # we form the cluster
            self._become_master()
        else:
            self.m_ts = None
            self._take_lease(msg)
            self._ack(self.leader, now)
        if self.rejoin:   # base.py, ordering rule 3: quorum first, then our own join
            log.warning("zmq cluster: back in the primary partition (view %d)", self.vid)
            self.rejoin = False
            self._call("on_quorum", True)
        self._call("on_join", self._member(self.members[-1]), self._view(), P.b64d(e["r"]))
        self._join_fut.done() or self._join_fut.set_result(None)
        self._deliver_upto(msg["c"])

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
        self.lease_end, self.m_ts, self.echo, self.mts, self.stale = 0.0, None, {}, {}, set()
        for item in self.outbox.values():
            item[1].done() or item[1].set_exception(RuntimeError("lost the primary partition"))
            item[1].exception()
        self.outbox.clear()
        if was_member:
            self._call("on_quorum", False)
        cb = getattr(self.events, "join_opaque", None)
        if cb is not None and self.state != CLOSED:   # base.py: fresh join data
            try:
                self._opaque = bytes(cb())
            except Exception as exc:  # noqa: BLE001 - the member is failed, see base.py
                self._fail("join_opaque raised", exc)
