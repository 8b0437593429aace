"""The view change of the ``zmq`` cluster driver: a member's failure
detection of its master, and the election of a new one.

A mixin of :class:`sheep.cluster.drivers.zmq.ZmqDriver` (it uses the driver's
state); the protocol is described in :mod:`sheep.cluster.drivers.zmq`.
"""

from __future__ import annotations

import logging
import time

from . import zmq_proto as P
from .zmq_proto import FAIL, OUT_AFTER, TICK, VC_ANSWER, VC_GRACE, VC_RETRY

log = logging.getLogger("sheep.cluster.drivers.zmq")

NORMAL, VC = "normal", "view-change"


class ViewChange:
    """Failure detection of the master, and view changes."""

    def _age(self, ident: str) -> int:
        return next((x for x, m in enumerate(self.cfg) if m["i"] == ident), 10 ** 6)

    def _member_tick(self, now: float) -> None:
        for m in self.cfg:
            if m["i"] != self.leader:
                self._to(m["i"], P.PING)
        if now - self._t_ack >= TICK / 2:   # else an ACK answered a heartbeat just now
            self._ack(self.leader, now)
        if self.state == VC and now - self.vc_since > OUT_AFTER:   # nobody followed
            return self._go_out("the view change did not complete")
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
            self.vc_since = now if self.state != VC else self.vc_since
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
        # VC_ANSWER > LEASE: the master's lease rests on this (see "Serving")
        if not self.leader_left and now - self.heard.get(self.leader, 0) < VC_ANSWER:
            return
        self.vc_since = now if self.state != VC else self.vc_since
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
        self._become_master()
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
