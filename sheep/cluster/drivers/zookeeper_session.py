"""Session life cycle of the ``zookeeper`` cluster driver: suspension,
expiry and automatic rejoin, and the serving lease.

A mixin of :class:`sheep.cluster.drivers.zookeeper.ZookeeperDriver` (it uses the
driver's state); the znode protocol is described in
:mod:`sheep.cluster.drivers.zookeeper`.

Sessions (base.py, "Serving"): kazoo reports its connection as CONNECTED,
SUSPENDED (connection lost; the session may live on) or LOST (session
expired).  Its state listener runs in kazoo's thread and records the state
(and a session generation, bumped on LOST) at once, for ``may_serve``; the
loop thread then acts on it, in order:

* SUSPENDED: ``on_quorum(False)``; the member stops serving.
* CONNECTED again in the same session: ``on_quorum(True)``; nothing was lost
  (ephemeral znodes and the queue position survive; reads resume).
* LOST: the peers remove us (our ``alive`` znode vanished with the
  session), so the member is out: nothing more of the old session is
  delivered (the queue reader checks the generation before every entry).
  In the new session that kazoo then opens (it retries until ZooKeeper is
  reachable) the driver rejoins by itself as a fresh joiner with the same
  ident: it removes its old incarnation from the view if nobody did yet
  (the same CAS multi as a LEAVE), asks ``events.join_opaque()`` for fresh
  join data, and creates a new ``alive`` znode and join request; the
  master's ``check_join`` decides.  Accepted, it calls ``on_quorum(True)``
  and then its own ``on_join``.  A rejected rejoin ends the driver
  (``on_driver_failure``).

Serving (``may_serve``): joined, not leaving, kazoo CONNECTED in the
session it joined with, and a lease: a request answered by the server
(``exists`` on our own ``alive`` znode, every ``timeout/10`` s, one at a
time so it never hides a dead connection from kazoo's own pings) proves
that the server heard the session at its sending time ``t`` or later, so
the session cannot expire, nor the peers remove us, before ``t + timeout``;
we serve until ``t + timeout/2`` (a margin of half the session timeout:
1 s with the tests' 2 s, 2.5 s with the default 5 s).  In steady state the
lease has 0.4 to 0.5 x timeout left (measured: 0.78 to 1.0 s of 1 s).  kazoo itself notices
a silent connection only after 2/3 of the timeout; the lease stops serving
earlier, and also right after a SIGSTOP/SIGCONT, before kazoo's thread ran.
The lease assumes that the server grants the requested timeout (it does
within [2, 20] x its ``tickTime``; a request above that would be cut).

A callback that raises makes the member fail (base.py): nothing more is
delivered, the session is closed (the peers remove it at once) and
``on_driver_failure`` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from .zookeeper_duties import _b, _dec_view, _enc, _enc_view, _seq, _stem

log = logging.getLogger("sheep.cluster.drivers.zookeeper")

LEASE_FRACTION = 0.5      # lease = this x session timeout after an answered request
RENEW_FRACTION = 0.1      # a lease request every this x session timeout


class Sessions:
    """kazoo's connection states, rejoining, and ``may_serve``."""

    def _on_state(self, state) -> None:
        """kazoo's thread: record at once (may_serve reads it), act on the loop."""
        state = str(state)
        if state == "LOST":
            self._zk_gen += 1
        self._zk_state = state
        self._threadsafe(self._state_changed, state, self._zk_gen)

    def _state_changed(self, state: str, gen: int) -> None:
        if self._closed or self._failed:
            return
        if state == "SUSPENDED" and self.joined and gen == self._gen:
            log.warning("zookeeper cluster: %s: connection to %s suspended; not serving until "
                        "it is back", self.me.ident, self.hosts)
            self._set_quorum(False)
        elif state == "LOST" and self._gen >= 0 and gen != self._gen:
            self._session_lost()
        elif state == "CONNECTED":
            if self.joined and gen == self._gen and not self._quorum:
                log.warning("zookeeper cluster: %s: reconnected within the session", self.me.ident)
                self._set_quorum(True)
            self._mark("alive")

    def _session_lost(self) -> None:
        """Our session expired: the peers remove us; rejoin in the next one."""
        was_member = self.joined
        log.error("zookeeper cluster: session to %s expired; %s is out of the cluster and "
                  "rejoins with a new session", self.hosts, self.me.ident)
        if was_member:
            self._set_quorum(False)
        self.joined = self._joining = False
        self._was_member = self._was_member or was_member
        self.view, self.version = [], -1
        self._reset_session_state()
        if self._left_fut is not None and not self._left_fut.done():
            self._left_fut.set_result(None)   # leaving: gone with the session
        self._changed.set()
        self._mark(None)

    def _set_quorum(self, ok: bool) -> None:
        if ok != self._quorum:
            self._quorum = ok
            self._deliver("on_quorum", ok)

    async def _register(self) -> None:
        """Enter the current session as a fresh joiner: our old incarnation
        out of the view, our ``alive`` znode, our join request."""
        from kazoo.exceptions import NodeExistsError
        gen, zk, first = self._zk_gen, self._zk, self._gen < 0
        for d in ("queue", "joins", "alive"):
            await self._call(zk.ensure_path_async(self._p(d)))
        with contextlib.suppress(NodeExistsError):
            await self._call(zk.create_async(self._p("view"), _enc({"view": []})))
        if not first:
            await self._drop_old_self()
        names = await self._call(zk.get_children_async(self._p("queue")))
        start = max((_seq(n) for n in names), default=-1) + 1
        opaque = self._opaque
        if self._was_member and hasattr(self.events, "join_opaque"):   # base.py: fresh data
            try:
                opaque = bytes(self.events.join_opaque())
            except Exception as exc:  # noqa: BLE001 - the member is failed, see base.py
                return self._fail("join_opaque raised", exc)
        alive = _enc({"ident": self.me.ident, "pos": start})
        try:
            await self._call(zk.create_async(self._my_alive, alive, ephemeral=True))
        except NodeExistsError:
            _, stat = await self._call(zk.get_async(self._my_alive))
            if first or stat.ephemeralOwner != zk.client_id[0]:
                raise RuntimeError(f"ident {self.me.ident!r} is already in use in {self.base}") from None
            await self._call(zk.set_async(self._my_alive, alive))   # ours: an earlier attempt
        req = await self._call(zk.create_async(
            self._p("joins", f"r-{_stem(self.me.ident)}-"),
            _enc({"ident": self.me.ident, "node": _b(self.me.node), "opaque": _b(opaque)}),
            ephemeral=True, sequence=True))
        if self._zk_gen != gen:
            raise ConnectionError("the ZooKeeper session changed while joining")
        self._reset_session_state()
        self._gen, self._last_seq, self._published, self._req_path = gen, start - 1, start, req
        self._joining = True
        self._wake.set()

    async def _drop_old_self(self) -> None:
        """Remove our expired incarnation from the view (the peers would,
        but maybe nobody is alive to do it), so that we may join again."""
        from kazoo.exceptions import BadVersionError
        while True:
            data, stat = await self._call(self._zk.get_async(self._p("view")))
            view = _dec_view(json.loads(data)["view"])
            if not any(m.ident == self.me.ident for m in view):
                return
            rest = [m for m in view if m.ident != self.me.ident]
            try:
                await self._commit(
                    ("set_data", self._p("view"), _enc({"view": _enc_view(rest)}), stat.version),
                    ("create", self._p("queue", "e-"),
                     _enc({"k": "leave", "id": self.me.ident, "ver": stat.version + 1})))
                log.info("zookeeper cluster: removed the expired incarnation of %s", self.me.ident)
                return
            except BadVersionError:
                continue

    def may_serve(self) -> bool:
        gen, until = self._lease
        return (self.joined and not self._closed and not self._failed and self._left_fut is None
                and self._zk_state == "CONNECTED" and self._zk_gen == self._gen == gen
                and time.monotonic() < until)

    async def _renew_lease(self) -> None:
        """Keep one lease request in flight at a time (see "Serving")."""
        while not self._closed and not self._failed:
            gen = self._zk_gen
            if gen == self._gen and self._zk_state == "CONNECTED":
                t = time.monotonic()
                try:
                    stat = await self._call(self._zk.exists_async(self._my_alive))
                except Exception:  # noqa: BLE001 - no answer, no lease
                    stat = None
                if stat is not None and self._zk_gen == gen:
                    self._lease = (gen, t + LEASE_FRACTION * self.timeout)
            await asyncio.sleep(RENEW_FRACTION * self.timeout)
