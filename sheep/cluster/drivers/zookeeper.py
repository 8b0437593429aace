"""The ``zookeeper`` membership driver, on kazoo against a real ZooKeeper.

``-c zookeeper:HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=N]``

* ``HOST:PORT,...`` the ZooKeeper ensemble (kazoo connection string);
* ``CLUSTER_ID`` (default ``sheepdog``; letters, digits, ``_.-``) names an
  independent cluster: its znodes live under ``/pysheepdog/CLUSTER_ID``;
* ``timeout=N`` the ZooKeeper session timeout in seconds (default 5, float
  allowed).  It is the failure-detection bound: a SIGKILLed member is
  removed about N s (plus up to one server tick) after its death.  The
  server clamps it to [2, 20] x its ``tickTime`` (with the Debian default
  ``tickTime=2000`` that is at least 4 s).

Theory of operation
-------------------
Znodes under ``BASE = /pysheepdog/CLUSTER_ID``:

* ``alive/<stem>``: ephemeral, one per process (member or joiner), data
  ``{"ident", "pos"}``; it vanishes when the session closes or expires,
  which is the failure detector.  ``pos`` is the first queue entry the
  process still needs (for garbage collection).
* ``joins/r-<stem>-<seq>``: ephemeral sequential join request
  ``(ident, node, opaque)``; deleted by whoever answers it.
* ``view``: the current member list.  Its znode *version* is the view
  number: every membership change is one ZooKeeper multi-op
  ``set_data(view, new list, version=v)`` + ``create(queue/e-, record)``,
  so it is a compare-and-swap and at most one change per view number can
  ever commit.  A notify is ``check(view, version=v)`` + ``create``: it is
  ordered in exactly the view the sender had delivered, or retried after
  the sender delivered the newer view (or refused if it was removed).
* ``queue/e-<seq>``: persistent sequential records, the single total
  order: ACK(joiner, accept, reply, new view, ver), LEAVE(ident, ver),
  NOTIFY(ident, uid, msg).  Every member reads the queue in sequence order
  and applies it (``_apply``) from its own accepting ACK on, so all
  members deliver the same sequence.

Duties, re-derived on every wake-up (watches on queue/, alive/, joins/,
view set a flag; a 1 s poll is the fallback), all CAS-protected so a
stale decision only costs a failed multi:

* *dead removal*: the first member of the view whose ``alive`` znode
  exists (or, when no member is alive, the oldest pending joiner) appends
  LEAVE for each member whose ``alive`` znode is gone (re-checked with
  ``exists`` first).  Two processes racing append at most one LEAVE: the
  second multi fails its version check.
* *joins*: the master (``view[0]``) answers join requests in request
  order: ``check_join`` then ACK in a multi that also deletes the request
  (so a request is answered once; a dead joiner's request is gone).
* *formation*: when the view is empty the oldest pending joiner answers
  its own request with ``check_join`` on itself.
* *garbage collection*: every ``GC_INTERVAL`` s the master reads the
  ``pos`` of every ``alive`` znode and deletes queue entries below the
  minimum (and below its own position taken before the listing, which
  covers joiners whose ACK is already written).  Members publish ``pos``
  at most every ``PUBLISH_INTERVAL`` s; a published pos is never ahead.

Threads: kazoo runs its I/O and callbacks in its own threads.  Its results
and watch events are handed to the asyncio loop with
``loop.call_soon_threadsafe``; all state lives on the loop thread and all
``ClusterEvents`` callbacks run there, from one task, in queue order.

Sessions: SUSPENDED stops serving (``on_quorum(False)``), the same session
back resumes it (``on_quorum(True)``); LOST (expired) puts the member out
and it rejoins by itself in a new session; ``may_serve`` is a lease
renewed by answered requests.  See :mod:`sheep.cluster.drivers.zookeeper_session`.

Limits: a master whose ACK multi fails its version check (a concurrent
LEAVE) calls ``check_join`` again for the same request; a notify whose
multi died with a connection loss is retried with the same uid (members
drop the second copy, but a view change in between can let a new member
see it); a hung process whose kazoo thread still pings is not detected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import re

from .base import ClusterDriver, ClusterEvents, JoinRejected, Member
from .zookeeper_duties import Duties, _b, _dec_view, _enc, _enc_view, _seq, _stem, _unb
from .zookeeper_session import Sessions

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_ID = "sheepdog"
DEFAULT_TIMEOUT = 5.0
ROOT = "/pysheepdog"
POLL_INTERVAL = 1.0       # seconds between wake-ups without a watch event
CONNECT_TIMEOUT = 15.0

_SPEC = re.compile(r"^(?P<hosts>[^/]+?)(?:/(?P<cid>[^,/]+))?(?:,timeout=(?P<timeout>[0-9.]+))?$")


def parse_option(option: str) -> tuple[str, str, float]:
    """``"h:p[,h:p...][/ID][,timeout=N]"`` -> (hosts, cluster id, timeout)."""
    m = _SPEC.match(option.strip())
    if not m:
        raise ValueError(f"bad zookeeper option {option!r}; expected "
                         "HOST:PORT[,HOST:PORT...][/CLUSTER_ID][,timeout=N]")
    hosts = m["hosts"]
    for h in hosts.split(","):
        if not re.fullmatch(r"[^:,\s]+:\d+", h):
            raise ValueError(f"bad zookeeper server {h!r} in {option!r}; expected HOST:PORT")
    cid = m["cid"] or DEFAULT_CLUSTER_ID
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cid) or cid in (".", ".."):
        raise ValueError(f"bad zookeeper cluster id {cid!r}")
    timeout = float(m["timeout"]) if m["timeout"] else DEFAULT_TIMEOUT
    if timeout <= 0:
        raise ValueError(f"bad zookeeper timeout in {option!r}")
    return hosts, cid, timeout


class ZookeeperDriver(Sessions, Duties, ClusterDriver):
    """Membership through a ZooKeeper ensemble; see the module docstring."""

    name = "zookeeper"

    def __init__(self, option: str, events: ClusterEvents) -> None:
        super().__init__(option, events)
        self.hosts, self.cluster_id, self.timeout = parse_option(option)
        self.base = f"{ROOT}/{self.cluster_id}"
        self.me: Member | None = None
        self.view: list[Member] = []
        self.version = -1          # view znode version of self.view
        self.joined = False
        self._closed = self._failed = False
        self._zk = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._lease_task: asyncio.Task | None = None
        self._fail_task: asyncio.Task | None = None
        self._join_fut: asyncio.Future | None = None
        self._left_fut: asyncio.Future | None = None
        self._changed: asyncio.Event | None = None   # set on each view change
        self._opaque = b""
        # written by kazoo's thread (_on_state), read anywhere
        self._zk_state = "LOST"
        self._zk_gen = 0           # session generation: +1 on every LOST
        # loop thread
        self._gen = -1             # generation of our alive znode / join request
        self._lease = (-1, 0.0)    # (generation, serve until)
        self._joining = False      # our join request is pending
        self._was_member = False   # the next own join is a rejoin
        self._quorum = True        # what on_quorum last said (True: nothing yet)
        self._reset_session_state()
        self._uids = itertools.count()
        self._seen_uids: collections.OrderedDict = collections.OrderedDict()
        self._watchers: dict = {}

    def _reset_session_state(self) -> None:
        self._last_seq = -1        # last queue entry consumed
        self._dirty = {"alive", "joins", "view"}
        self._alive: set[str] = set()
        self._joins: list[str] = []
        self._zview: tuple[list[Member], int] = ([], -1)   # view znode, for joiners
        self._published = -1
        self._last_publish = self._last_gc = 0.0
        self._req_path = ""

    # ---- paths ------------------------------------------------------------

    def _p(self, *parts: str) -> str:
        return "/".join((self.base,) + parts)

    @property
    def _my_alive(self) -> str:
        return self._p("alive", _stem(self.me.ident))

    # ---- kazoo <-> asyncio --------------------------------------------------

    def _threadsafe(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop thread (from any thread)."""
        with contextlib.suppress(RuntimeError):   # loop already closed
            self._loop.call_soon_threadsafe(fn, *args)

    def _call(self, async_result) -> asyncio.Future:
        """An asyncio future for a kazoo IAsyncResult."""
        fut = self._loop.create_future()

        def settle(r):
            if fut.done():
                return
            if r.successful():
                fut.set_result(r.value)
            else:
                fut.set_exception(r.exception)
        async_result.rawlink(lambda r: self._threadsafe(settle, r))
        return fut

    def _watch(self, what: str | None):
        """The (cached) watch callback for ``what``: one function per path, so
        kazoo's watcher set does not grow with every re-registration."""
        fn = self._watchers.get(what)
        if fn is None:
            def fn(_event) -> None:
                self._threadsafe(self._mark, what)
            self._watchers[what] = fn
        return fn

    def _mark(self, what: str | None) -> None:
        if what:
            self._dirty.add(what)
        if self._wake is not None:
            self._wake.set()

    async def _commit(self, *ops: tuple) -> list:
        """Commit one multi-op; ``ops`` are ``("check", path, version)``,
        ``("set_data", path, data, version)``, ``("delete", path)`` or
        ``("create", path, data)`` (persistent sequential).  Raises the
        first real error of a failed multi."""
        txn = self._zk.transaction()
        for op, *args in ops:
            if op == "create":
                txn.create(*args, sequence=True)
            else:
                getattr(txn, op)(*args)
        if any(op == "create" and args[0].startswith(self._p("queue", "")) for op, *args in ops):
            # every append bumps queue/'s data version: a join ACK checks it
            # (see Duties._answer), so no entry can slip in between the
            # state the master gave the joiner and the ACK
            txn.set_data(self._p("queue"), b"", -1)
        results = await self._call(txn.commit_async())
        from kazoo.exceptions import RolledBackError
        errors = [r for r in results if isinstance(r, Exception)]
        real = [e for e in errors if not isinstance(e, RolledBackError)]
        if errors:
            raise (real or errors)[0]
        return results

    # ---- public API -------------------------------------------------------

    async def join(self, me: Member, opaque: bytes) -> None:
        if self.me is not None:
            raise RuntimeError("join() may be called only once per driver")
        from kazoo.client import KazooClient
        self.me, self._opaque = me, opaque
        self._loop = asyncio.get_running_loop()
        self._wake, self._changed = asyncio.Event(), asyncio.Event()
        self._join_fut = self._loop.create_future()
        self._zk = KazooClient(hosts=self.hosts, timeout=self.timeout,
                               connection_retry={"max_tries": -1, "max_delay": 1.0})
        self._zk.add_listener(self._on_state)
        try:
            try:
                await self._loop.run_in_executor(None, self._zk.start, CONNECT_TIMEOUT)
            except Exception as e:
                raise ConnectionError(f"cannot connect to ZooKeeper at {self.hosts}: {e}") from e
            await self._register()
            self._task = self._loop.create_task(self._run(), name=f"zookeeper-cluster {me.ident}")
            self._lease_task = self._loop.create_task(self._renew_lease(),
                                                      name=f"zookeeper-lease {me.ident}")
            await self._join_fut
        except BaseException:
            await self._shutdown()
            raise

    async def leave(self) -> None:
        if not self.joined or self._closed or self._failed:
            raise RuntimeError("leave() needs a joined member")
        from kazoo.exceptions import BadVersionError
        self._left_fut = self._loop.create_future()
        while self.joined:
            v, rest = self.version, [m for m in self.view if m.ident != self.me.ident]
            rec = _enc({"k": "leave", "id": self.me.ident, "ver": v + 1})
            try:
                await self._commit(("set_data", self._p("view"), _enc({"view": _enc_view(rest)}), v),
                                   ("create", self._p("queue", "e-"), rec))
                break
            except BadVersionError:
                await self._await_change(v)
        if self.joined:   # deliver everything ordered before our LEAVE
            self._mark("view")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._left_fut), 10 * self.timeout)
        self.joined = False
        await self._shutdown()

    async def notify(self, msg: bytes) -> None:
        from kazoo.exceptions import (
            BadVersionError,
            ConnectionLoss,
            SessionExpiredError,
        )
        uid = f"{self.me.ident if self.me else ''}/{next(self._uids)}"
        while True:
            if not self.joined or self._closed or self._failed:
                raise RuntimeError("notify() needs a joined member")
            v = self.version
            rec = _enc({"k": "notify", "id": self.me.ident, "uid": uid, "msg": _b(msg)})
            try:
                await self._commit(("check", self._p("view"), v),
                                   ("create", self._p("queue", "e-"), rec))
                return
            except BadVersionError:
                await self._await_change(v)
            except ConnectionLoss:
                # unknown outcome: retry; _apply drops a second copy by uid
                log.warning("zookeeper cluster: connection lost during notify; retrying")
                await asyncio.sleep(0.2)
            except SessionExpiredError:
                raise RuntimeError("the ZooKeeper session expired: no longer a member") from None

    async def close(self) -> None:
        await self._shutdown()

    async def _await_change(self, version: int) -> None:
        """Wait until this member delivered a view newer than ``version``."""
        self._mark("view")
        while self.joined and self.version == version and not self._closed and not self._failed:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), POLL_INTERVAL)

    # ---- the queue ----------------------------------------------------------

    def _current(self) -> bool:
        """Still in the session we registered in, and alive."""
        return not (self._closed or self._failed) and self._gen == self._zk_gen

    async def _catch_up(self) -> None:
        """Read and apply every queue entry after the last one consumed."""
        from kazoo.exceptions import NoNodeError
        names = await self._call(self._zk.get_children_async(
            self._p("queue"), watch=self._watch(None)))
        new = sorted((n for n in names if _seq(n) > self._last_seq), key=_seq)
        if not new:
            return
        futs = [self._call(self._zk.get_async(self._p("queue", n))) for n in new]
        results = await asyncio.gather(*futs, return_exceptions=True)
        for name, res in zip(new, results):
            if not self._current():   # nothing more of an old session
                return
            if isinstance(res, NoNodeError):
                if self.joined:
                    log.error("zookeeper cluster: queue entry %s vanished before it was read", name)
            elif isinstance(res, Exception):
                raise res      # connection trouble: retry from this entry later
            else:
                self._apply(json.loads(res[0]))
            self._last_seq = _seq(name)

    def _apply(self, r: dict) -> None:
        me, kind = self.me.ident, r["k"]
        if kind == "ack":
            ident = r["id"]
            if r["ok"]:
                view = _dec_view(r["view"])
                joined = next(m for m in view if m.ident == ident)
                if ident == me and self._joining and not self.joined:
                    self.view, self.version, self.joined, self._joining = view, r["ver"], True, False
                    self._view_changed()
                    self._set_quorum(True)   # a rejoin: quorum first (base.py, rule 3)
                    self._deliver("on_join", joined, list(view), _unb(r["reply"]))
                    self._join_fut.done() or self._join_fut.set_result(None)
                elif self.joined:
                    self._check_ver(r)
                    self.view, self.version = view, r["ver"]
                    self._view_changed()
                    self._deliver("on_join", joined, list(view), _unb(r["reply"]))
            elif ident == me and self._joining and not self.joined:
                self._joining = False
                if not self._join_fut.done():
                    self._join_fut.set_exception(JoinRejected(_unb(r["reply"])))
                else:   # base.py: a rejected rejoin ends the driver
                    self._fail("rejoin rejected by the master", JoinRejected(_unb(r["reply"])))
        elif kind == "leave" and self.joined:
            self._check_ver(r)
            left = next((m for m in self.view if m.ident == r["id"]), None)
            self.view = [m for m in self.view if m.ident != r["id"]]
            self.version = r["ver"]
            self._view_changed()
            if r["id"] == me:
                self.joined = False
                if self._left_fut is None:
                    log.error("zookeeper cluster: %s was removed from the cluster", me)
                elif not self._left_fut.done():
                    self._left_fut.set_result(None)
            elif left is not None:
                self._deliver("on_leave", left, list(self.view))
        elif kind == "notify" and self.joined:
            uid = r["uid"]
            if uid in self._seen_uids:
                return
            self._seen_uids[uid] = None
            if len(self._seen_uids) > 10000:
                self._seen_uids.popitem(last=False)
            sender = next((m for m in self.view if m.ident == r["id"]), None)
            if sender is not None:
                self._deliver("on_notify", sender, _unb(r["msg"]))

    def _check_ver(self, r: dict) -> None:
        if r["ver"] != self.version + 1:
            log.error("zookeeper cluster: view version jumped from %d to %d",
                      self.version, r["ver"])

    def _view_changed(self) -> None:
        self._changed.set()

    def _deliver(self, name: str, *args) -> None:
        cb = getattr(self.events, name, None)
        if cb is None or self._closed or self._failed:
            return
        try:
            cb(*args)
        except Exception as exc:  # noqa: BLE001 - the member is failed, see base.py
            self._fail(f"{name} raised", exc)

    def _fail(self, why: str, exc: BaseException) -> None:
        """Deliver nothing more, close the session (the peers remove us at
        once), then tell the events object."""
        if self._closed or self._failed:
            return
        log.error("zookeeper cluster: %s: %s (%r); the member is failed: closing the driver",
                  self.me.ident, why, exc, exc_info=exc)
        self._failed, self.joined = True, False
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(exc)
            self._join_fut.exception()   # join() re-raises it when it awaits
        self._changed.set()
        self._fail_task = self._loop.create_task(self._died(exc))

    # ---- background loop ----------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closed and not self._failed:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                self._dirty.add("alive")
            self._wake.clear()
            try:
                if self._gen != self._zk_gen:   # our session expired: rejoin in the new one
                    if self._zk_state != "CONNECTED" or self._left_fut is not None:
                        continue
                    await self._register()
                await self._catch_up()
                if self._current() and await self._duties():
                    self._wake.set()
                if self._current():
                    await self._housekeeping()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep the member running
                if not self._closed:
                    log.warning("zookeeper cluster: %r; retrying", e)
                self._dirty.update(("alive", "joins", "view"))
                self._wake.set()
                backoff = min(1.0, backoff * 2 or 0.05)

    async def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.joined = False
        if self._changed is not None:
            self._changed.set()
        for name in ("_task", "_lease_task"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._join_fut is not None and not self._join_fut.done():
            self._join_fut.set_exception(ConnectionError("cluster driver closed"))
            self._join_fut.exception()   # mark retrieved
        zk, self._zk = self._zk, None
        if zk is not None:
            def stop():
                with contextlib.suppress(Exception):
                    zk.stop()   # closes the session: our ephemeral znodes vanish now
                with contextlib.suppress(Exception):
                    zk.close()
            await self._loop.run_in_executor(None, stop)
