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

Session loss: if this process's session expires it is considered failed
(its peers remove it); it stops delivering events, logs an error and calls
``events.on_quorum(False)`` when the events object has it.

Limits: a master whose ACK multi fails its version check (a concurrent
LEAVE) calls ``check_join`` again for the same request; a notify whose
multi died with a connection loss is retried with the same uid (members
drop the second copy, but a view change in between can let a new member
see it); a hung process whose kazoo thread still pings is not detected.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import itertools
import json
import logging
import re
import time

from .base import ClusterDriver, ClusterEvents, JoinRejected, Member

log = logging.getLogger(__name__)

DEFAULT_CLUSTER_ID = "sheepdog"
DEFAULT_TIMEOUT = 5.0
ROOT = "/pysheepdog"
POLL_INTERVAL = 1.0       # seconds between wake-ups without a watch event
GC_INTERVAL = 2.0         # seconds between queue garbage collections
PUBLISH_INTERVAL = 0.5    # seconds between updates of our alive/ pos
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


def _stem(ident: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", ident)[:40]
    return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def _seq(name: str) -> int:
    return int(name[-10:])


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb(text: str) -> bytes:
    return base64.b64decode(text)


def _enc(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _enc_view(members: list[Member]) -> list:
    return [[m.ident, _b(m.node)] for m in members]


def _dec_view(data: list) -> list[Member]:
    return [Member(_unb(n), i) for i, n in data]


class ZookeeperDriver(ClusterDriver):
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
        self._closed = False
        self._expired = False
        self._zk = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._join_fut: asyncio.Future | None = None
        self._left_fut: asyncio.Future | None = None
        self._changed: asyncio.Event | None = None   # set on each view change
        self._last_seq = -1        # last queue entry consumed
        self._start_seq = 0        # joiner: first entry that may be our ACK
        self._dirty = {"alive", "joins", "view"}
        self._alive: set[str] = set()
        self._joins: list[str] = []
        self._zview: tuple[list[Member], int] = ([], -1)   # view znode, for joiners
        self._published = -1
        self._last_publish = self._last_gc = 0.0
        self._uids = itertools.count()
        self._seen_uids: collections.OrderedDict = collections.OrderedDict()
        self._req_path = ""
        self._watchers: dict = {}

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

    def _on_state(self, state) -> None:   # kazoo thread
        self._threadsafe(self._state_changed, str(state))

    def _state_changed(self, state: str) -> None:
        if state == "LOST" and not self._closed and (self.joined or not self._join_fut.done()):
            log.error("zookeeper cluster: session to %s expired; %s is considered failed "
                      "and stops delivering events", self.hosts, self.me.ident)
            self._expired = True
            was_member, self.joined = self.joined, False
            if self._changed is not None:
                self._changed.set()
            if not self._join_fut.done():
                self._join_fut.set_exception(ConnectionError("zookeeper session expired"))
            if was_member and hasattr(self.events, "on_quorum"):
                self._deliver(self.events.on_quorum, False)
        elif state == "CONNECTED":
            self._mark("alive")

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
        from kazoo.exceptions import NodeExistsError
        self.me = me
        self._loop = asyncio.get_running_loop()
        self._wake, self._changed = asyncio.Event(), asyncio.Event()
        self._join_fut = self._loop.create_future()
        self._zk = KazooClient(hosts=self.hosts, timeout=self.timeout,
                               connection_retry={"max_tries": -1, "max_delay": 1.0})
        try:
            try:
                await self._loop.run_in_executor(None, self._zk.start, CONNECT_TIMEOUT)
            except Exception as e:
                raise ConnectionError(f"cannot connect to ZooKeeper at {self.hosts}: {e}") from e
            self._zk.add_listener(self._on_state)
            for d in ("queue", "joins", "alive"):
                await self._call(self._zk.ensure_path_async(self._p(d)))
            with contextlib.suppress(NodeExistsError):
                await self._call(self._zk.create_async(self._p("view"), _enc({"view": []})))
            names = await self._call(self._zk.get_children_async(self._p("queue")))
            self._start_seq = max((_seq(n) for n in names), default=-1) + 1
            self._last_seq = self._start_seq - 1
            try:
                await self._call(self._zk.create_async(
                    self._my_alive, _enc({"ident": me.ident, "pos": self._start_seq}),
                    ephemeral=True))
            except NodeExistsError:
                raise RuntimeError(f"ident {me.ident!r} is already in use in {self.base}") from None
            self._published = self._start_seq
            self._req_path = await self._call(self._zk.create_async(
                self._p("joins", f"r-{_stem(me.ident)}-"),
                _enc({"ident": me.ident, "node": _b(me.node), "opaque": _b(opaque)}),
                ephemeral=True, sequence=True))
            self._wake.set()
            self._task = self._loop.create_task(self._run(), name=f"zookeeper-cluster {me.ident}")
            await self._join_fut
        except BaseException:
            await self._shutdown()
            raise

    async def leave(self) -> None:
        if not self.joined or self._closed:
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
        from kazoo.exceptions import BadVersionError, ConnectionLoss
        uid = f"{self.me.ident if self.me else ''}/{next(self._uids)}"
        while True:
            if not self.joined or self._closed:
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

    async def close(self) -> None:
        await self._shutdown()

    async def _await_change(self, version: int) -> None:
        """Wait until this member delivered a view newer than ``version``."""
        self._mark("view")
        while self.joined and self.version == version and not self._closed:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), POLL_INTERVAL)

    # ---- the queue ----------------------------------------------------------

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
            if self._closed or self._expired:
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
                if ident == me and not self.joined and not self._join_fut.done():
                    self.view, self.version, self.joined = view, r["ver"], True
                    self._view_changed()
                    self._deliver(self.events.on_join, joined, list(view), _unb(r["reply"]))
                    self._join_fut.set_result(None)
                elif self.joined:
                    self._check_ver(r)
                    self.view, self.version = view, r["ver"]
                    self._view_changed()
                    self._deliver(self.events.on_join, joined, list(view), _unb(r["reply"]))
            elif ident == me and not self.joined and not self._join_fut.done():
                self._join_fut.set_exception(JoinRejected(_unb(r["reply"])))
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
                self._deliver(self.events.on_leave, left, list(self.view))
        elif kind == "notify" and self.joined:
            uid = r["uid"]
            if uid in self._seen_uids:
                return
            self._seen_uids[uid] = None
            if len(self._seen_uids) > 10000:
                self._seen_uids.popitem(last=False)
            sender = next((m for m in self.view if m.ident == r["id"]), None)
            if sender is not None:
                self._deliver(self.events.on_notify, sender, _unb(r["msg"]))

    def _check_ver(self, r: dict) -> None:
        if r["ver"] != self.version + 1:
            log.error("zookeeper cluster: view version jumped from %d to %d",
                      self.version, r["ver"])

    def _view_changed(self) -> None:
        self._changed.set()

    @staticmethod
    def _deliver(callback, *args) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("zookeeper cluster: %s raised", getattr(callback, "__name__", callback))

    # ---- duties -------------------------------------------------------------

    async def _refresh(self) -> None:
        """Re-read the watched directories whose watch fired."""
        zk = self._zk
        if "alive" in self._dirty:
            self._dirty.discard("alive")
            self._alive = set(await self._call(zk.get_children_async(
                self._p("alive"), watch=self._watch("alive"))))
        if "joins" in self._dirty:
            self._dirty.discard("joins")
            names = await self._call(zk.get_children_async(
                self._p("joins"), watch=self._watch("joins")))
            self._joins = sorted(names, key=_seq)
        if "view" in self._dirty and not self.joined:
            self._dirty.discard("view")
            data, stat = await self._call(zk.get_async(self._p("view"), watch=self._watch("view")))
            self._zview = (_dec_view(json.loads(data)["view"]), stat.version)

    def _is_alive(self, ident: str) -> bool:
        return ident == self.me.ident or _stem(ident) in self._alive

    async def _really_dead(self, ident: str) -> bool:
        stat = await self._call(self._zk.exists_async(self._p("alive", _stem(ident))))
        return stat is None

    async def _duties(self) -> bool:
        """Do one duty if one is due; True when something was appended."""
        from kazoo.exceptions import BadVersionError, NoNodeError
        await self._refresh()
        view, v = (self.view, self.version) if self.joined else self._zview
        live = [m for m in view if self._is_alive(m.ident)]
        first_joiner = self._joins[0] if self._joins else None
        mine = self._req_path.rsplit("/", 1)[-1]
        responsible = (live and live[0].ident == self.me.ident) or \
            (not live and not self.joined and first_joiner == mine)
        try:
            if responsible:
                for m in view:
                    if self._is_alive(m.ident):
                        continue
                    if not await self._really_dead(m.ident):
                        self._dirty.add("alive")   # our listing was stale
                        continue
                    rest = [x for x in view if x.ident != m.ident]
                    await self._append_change(rest, v, {"k": "leave", "id": m.ident})
                    log.info("zookeeper cluster: %s failed; removed", m.ident)
                    return True
            if self.joined and view and view[0].ident == self.me.ident and self._joins:
                return await self._answer(self._joins[0], view, v)
            if not self.joined and not view and first_joiner == mine:
                return await self._answer(mine, view, v)
        except (BadVersionError, NoNodeError):
            self._dirty.update(("joins", "view"))
            return True    # somebody else acted first: catch up and re-decide
        return False

    async def _answer(self, req: str, view: list[Member], v: int) -> bool:
        """Answer the join request ``req`` (we are the master, or forming)."""
        from kazoo.exceptions import NoNodeError
        path = self._p("joins", req)
        try:
            data, _ = await self._call(self._zk.get_async(path))
        except NoNodeError:   # joiner died or answered already
            self._dirty.add("joins")
            return True
        r = json.loads(data)
        joiner, opaque = Member(_unb(r["node"]), r["ident"]), _unb(r["opaque"])
        if any(m.ident == joiner.ident for m in view):
            accept, reply = False, b"ident already a member"
        else:
            try:
                accept, reply = self.events.check_join(joiner, opaque)
                accept, reply = bool(accept), bytes(reply)
            except Exception:
                log.exception("zookeeper cluster: check_join raised; rejecting %s", joiner.ident)
                accept, reply = False, b""
        rec = {"k": "ack", "id": joiner.ident, "ok": accept, "reply": _b(reply)}
        if accept:
            await self._append_change(view + [joiner], v, rec, delete=path)
        else:
            await self._commit(("check", self._p("view"), v), ("delete", path),
                               ("create", self._p("queue", "e-"), _enc(rec)))
        self._dirty.add("joins")
        return True

    async def _append_change(self, new_view: list[Member], v: int, rec: dict,
                             delete: str | None = None) -> None:
        """CAS the view from version ``v`` to ``new_view`` and append ``rec``."""
        rec = dict(rec, ver=v + 1)
        if rec["k"] == "ack":
            rec["view"] = _enc_view(new_view)
        ops = [("set_data", self._p("view"), _enc({"view": _enc_view(new_view)}), v),
               ("create", self._p("queue", "e-"), _enc(rec))]
        if delete:
            ops.insert(1, ("delete", delete))
        await self._commit(*ops)
        self._dirty.add("view")

    async def _housekeeping(self) -> None:
        """Publish our queue position; the master garbage-collects the queue."""
        now = time.monotonic()
        pos = self._last_seq + 1
        if pos != self._published and now - self._last_publish >= PUBLISH_INTERVAL:
            self._last_publish = now
            await self._call(self._zk.set_async(
                self._my_alive, _enc({"ident": self.me.ident, "pos": pos})))
            self._published = pos
        if not (self.joined and self.view and self.view[0].ident == self.me.ident) \
                or now - self._last_gc < GC_INTERVAL:
            return
        self._last_gc = now
        limit = pos
        stems = await self._call(self._zk.get_children_async(self._p("alive")))
        datas = await asyncio.gather(*[self._call(self._zk.get_async(self._p("alive", s)))
                                       for s in stems], return_exceptions=True)
        for d in datas:
            if not isinstance(d, Exception):
                limit = min(limit, int(json.loads(d[0]).get("pos", 0)))
        names = await self._call(self._zk.get_children_async(self._p("queue")))
        old = [n for n in names if _seq(n) < limit]
        if old:
            await asyncio.gather(*[self._call(self._zk.delete_async(self._p("queue", n)))
                                   for n in old], return_exceptions=True)
            log.debug("zookeeper cluster: collected %d queue entries", len(old))

    # ---- background loop ----------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while not self._closed:
            if backoff:
                await asyncio.sleep(backoff)
            try:
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                self._dirty.add("alive")
            self._wake.clear()
            if self._expired:
                return
            try:
                await self._catch_up()
                if await self._duties():
                    self._wake.set()
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
        task, self._task = self._task, None
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

