"""The master (sequencer) role of the ``zmq`` cluster driver, and the
master's side of the serving lease.

A mixin of :class:`sheep.cluster.drivers.zmq.ZmqDriver` (it uses the driver's
state); the protocol is described in :mod:`sheep.cluster.drivers.zmq`.
"""

from __future__ import annotations

import logging
import time

from . import zmq_proto as P
from .base import Member
from .zmq_proto import CHUNK, FAIL, LEASE

log = logging.getLogger("sheep.cluster.drivers.zmq")

NORMAL = "normal"
_NEVER = float("-inf")


class Sequencer:
    """The master: orders entries, commits them, removes silent members and
    grants the members their leases."""

    # ---- the lease (see "Serving" in sheep.cluster.drivers.zmq) -------------------

    def _become_master(self) -> None:
        """Forget the evidence of any earlier regime: only acknowledgements of
        heartbeats of this view count."""
        self.echo, self.mts, self.stale = {}, {}, set()
        self._refresh_lease()

    def _refresh_lease(self) -> None:
        """Master: serve until LEASE after the newest time T such that a
        majority of the membership (of ``cfg`` and of the delivered view;
        this master counts as hearing itself now) is known to have heard a
        heartbeat of this view sent at T or later."""
        if self.leader != self.me.ident or self.state != NORMAL:
            return
        me, end = self.me.ident, float("inf")
        for ids in ({m["i"] for m in self.cfg}, {m["i"] for m in self.members}):
            need = len(ids) // 2 + 1 - (me in ids)
            if need <= 0:
                continue
            times = sorted((self.echo.get(i, _NEVER) for i in ids if i != me), reverse=True)
            end = min(end, times[need - 1] + LEASE if need <= len(times) else _NEVER)
        self.lease_end = end

    def _take_echo(self, f: str, msg: dict) -> None:
        ts, te = msg.get("ts"), msg.get("te")
        if ts is not None and ts > self.mts.get(f, _NEVER):
            self.mts[f] = ts
        if te is not None and te > self.echo.get(f, _NEVER):
            self.echo[f] = te
            self._refresh_lease()

    def _lease_for(self, ident: str, now: float) -> dict:
        """The lease fields of a message to ``ident``: the member may serve
        until its own ``te`` + ``rl`` (its clock)."""
        out = {"ts": now}
        te = self.mts.get(ident)
        if te is not None and self._in_cfg(ident):
            out.update(te=te, rl=max(0.0, min(LEASE, self.lease_end - now)))
        return out

    def _in_cfg(self, ident: str) -> bool:
        if self._cfg_ids[0] is not self.cfg:
            self._cfg_ids = (self.cfg, {m["i"] for m in self.cfg})
        return ident in self._cfg_ids[1]

    def _entries(self, ident: str, now: float, **msg) -> None:
        self._to(ident, P.ENTRIES, **msg, **self._lease_for(ident, now))

    def _on_ack(self, f: str, msg: dict, now: float) -> None:
        self.acked[f] = max(self.acked.get(f, 0), msg["a"])
        if msg["a"] >= self.welcomes.get(f, {}).get("g", 1 << 62):
            self.welcomes.pop(f, None)
        self._take_echo(f, msg)
        self._advance()
        self._to(f, P.LEASE_MSG, **self._lease_for(f, now))

    # ---- sequencing ---------------------------------------------------------

    def _sequence(self, e: dict) -> None:
        e.update(g=self.last + 1, v=self.vid)
        prev = self.log.get(self.last, {}).get("v", 0)
        self._extend(e)
        if e["k"] in ("join", "leave"):
            self.mc_pending = e["g"]
        self.acked[self.me.ident] = self.last
        self._refresh_lease()
        now = time.monotonic()
        for i in set(self.voters[e["g"]]) | {m["i"] for m in self.cfg}:
            self._entries(i, now, p=e["g"] - 1, pv=prev, es=[e], c=self.commit)
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
            self._refresh_lease()
            self._heartbeat_master()

    def _heartbeat_master(self) -> None:
        pv = self.log.get(self.last, {}).get("v", 0)
        to = {m["i"] for m in self.cfg}   # + members just removed (an orderly leaver)
        for g in range(max(self.commit - 2, 1), self.last + 1):
            to.update(self.voters.get(g, ()))
        now = time.monotonic()
        for i in to:
            self._entries(i, now, p=self.last, pv=pv, es=[], c=self.commit)

    def _resend(self, ident: str, c: int) -> None:
        es = [self.log[g] for g in range(c + 1, min(self.last, c + CHUNK) + 1) if g in self.log]
        if es and es[0]["g"] != c + 1:
            log.warning("zmq cluster: %s is too far behind; it will be removed", ident)
            return
        self._entries(ident, time.monotonic(), p=c, pv=0, es=es, c=self.commit)

    def _welcome(self, ident: str) -> None:
        w = self.welcomes[ident]
        es = [self.log[g] for g in range(w["g"] + 1, self.last + 1) if g in self.log]
        self._to(ident, P.WELCOME, es=es, c=self.commit, **w,
                 **self._lease_for(ident, time.monotonic()))

    def _on_join_req(self, msg: dict) -> None:
        ident, now = msg["i"], time.monotonic()
        self.eps.setdefault(ident, msg["ep"])
        if msg.get("ts") is not None and msg["ts"] > self.mts.get(ident, _NEVER):
            self.mts[ident] = msg["ts"]   # the joiner's clock: its lease starts there
        if any(m["i"] == ident for m in self.cfg):
            if ident in self.welcomes:   # the welcome was lost: the joiner is alive
                self.heard[ident] = now
                self._welcome(ident)
            return
        if ident in self.rejected:
            return self._send(msg["ep"], P.REJECT, r=self.rejected[ident])
        if self.mc_pending or self.commit < self.last:
            # The join info (check_join) is our state, which reflects what we
            # delivered (up to commit); the joiner receives what is sequenced
            # after its join.  Entries sequenced but not yet delivered would
            # fall between the two: answer only when there are none (the
            # joiner asks again every JOIN_RETRY).
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
        # it can answer no view change before our welcome reaches it, so it
        # counts as having heard us now
        self.echo[ident] = now
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
