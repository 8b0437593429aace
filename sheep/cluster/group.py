"""Membership views, epochs, the epoch log and cluster-operation ordering.

Theory of operation
-------------------
The cluster driver (``sheep.cluster``) delivers joins, leaves and notify
messages to every member in one total order.  :class:`Group` turns that stream
into the node's cluster state:

* **View → nodes → ring.**  Each view is a list of members (oldest first, the
  oldest is the master).  The node list is the members' ``SdNode`` records in
  node order, with vnodes recomputed when the cluster uses automatic vnodes;
  the ring is a frozen :class:`sheep.proto.placement.Ring` of that list.
* **Epochs.**  Once the cluster is formatted, every view change while it is
  running increments the epoch and appends ``epoch/NNNNNNNN`` to the store.
  All members apply the same changes in the same order, so epochs and epoch
  logs agree everywhere.
* **Cluster operations** (format, VDI create/delete, attributes, shutdown)
  use block/unblock built on notify (:mod:`sheep.cluster.turns`): one work
  step at a time cluster-wide, then a main step applied by every member in
  the same place of the order.
* **Events.**  Recovery, locks and VDIs follow the cluster state by
  subscribing to what the group publishes (:mod:`sheep.cluster.events`:
  epoch changed, node joined/left, ...); their replicated state travels in
  the join reply through the same bus.  The group calls none of them by
  name.
* **Joining.**  The master applies the join rules (``sheep.cluster.joins``) and
  replies with a snapshot of the cluster state, which the joiner adopts; the
  VDIs the joiner found on its own disk are merged by every member.  A
  refused join is delivered too (as in 1.0): the refused node is a member
  for a moment (a running cluster logs its join and its leave as epochs),
  logs why and exits; it never reaches state OK, so it serves nothing.
* **Restart.**  A node that restarts with a formatted store waits
  (WAIT_FOR_JOIN) until every node of the newest epoch is back, then runs;
  nodes with older epochs are admitted meanwhile (their objects become
  stale copies) and a node with a newer epoch brings its history.
* **Disk work off the loop.**  Callbacks run on the event loop, next to the
  driver's heartbeats, and never block: the disk work an event implies
  (epoch log, moves to ``.stale``, format, config) is queued, in delivery
  order, on :attr:`Group.jobs` (``sheep.cluster.jobs``); I/O waits for it
  (:meth:`Group.settled`).
* **Failures.**  A callback that raises, a failing job or a driver that
  fails leave this node's state behind the others': it stops serving at once
  and exits (:meth:`Group.fatal`), so that it never serves a half-applied
  event.
* **Serving.**  I/O is admitted only while :meth:`Group.serving` holds: the
  node is in the primary view (``on_quorum``) and the driver's membership
  lease is fresh (``may_serve``).  A node's own join means it is in the
  primary view again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

from sheep import proto
from sheep.cluster import events as ev
from sheep.cluster.drivers.base import Member, create_driver
from sheep.cluster.epochs import EpochHistory
from sheep.cluster.jobs import Jobs

# internal cluster status (mirrors cluster_info.status plus "never formatted")
from sheep.cluster.joins import (
    KILLED,
    OK,
    SHUTDOWN,
    WAIT_FOR_FORMAT,
    WAIT_FOR_JOIN,
    comparable_tombs,
    verdict,
)
from sheep.cluster.turns import Turns
from sheep.proto.errors import CODES, error_for
from sheep.proto.placement import Ring, auto_vnodes

log = logging.getLogger("sheep.cluster.group")


STATUS_CODE = {OK: proto.SD_STATUS_OK, WAIT_FOR_FORMAT: proto.SD_STATUS_WAIT,
               WAIT_FOR_JOIN: proto.SD_STATUS_WAIT, SHUTDOWN: proto.SD_STATUS_SHUTDOWN,
               KILLED: proto.SD_STATUS_KILLED}


def _node_key(node: proto.SdNode) -> str:
    return f"{node.host}:{node.port}"


class Group:
    """This node's view of the cluster; all state changes run on the loop.

    ``cfg`` is the daemon's configuration (``cluster``, ``vnodes``), ``store``
    its store, ``me`` its node; ``io_thread(fn, *args)`` runs disk work off
    the loop; ``request_exit(delay, code=0)`` stops the daemon; ``events``
    is the bus the group publishes on; ``main_step(msg)`` applies a cluster
    op's main step (the op table's)."""

    def __init__(self, *, cfg, store, me: proto.SdNode, io_thread, request_exit,
                 events: ev.Events, main_step):
        self.cfg = cfg
        self.store = store
        self.me: proto.SdNode = me
        self.events = events
        self._request_exit = request_exit
        raw = self.store.load_config()
        self.config = proto.SheepdogConfig.unpack(raw) if raw else proto.SheepdogConfig()
        self.epoch = self.store.latest_epoch() if self.config.ctime else 0
        if not self.config.ctime:
            self.status = WAIT_FOR_FORMAT
        else:
            self.status = WAIT_FOR_JOIN
        self.members: list[Member] = []
        self.nodes: list[proto.SdNode] = []
        self.ring = Ring([])
        self.disable_recovery = False
        # per-node overrides of (nr_vnodes, space) set by "node vnodes set" and
        # "cluster reweight"; keyed "addr:port", replicated like all state
        self.weights: dict[str, list[int]] = {}
        self.quorum = True
        self._refused: set[str] = set()  # idents of members whose join was refused
        self._epoch_changed = asyncio.Event()
        self.member: Member | None = None
        self.jobs = Jobs(io_thread, self.fatal)
        self.history = EpochHistory(self.store, self.jobs)
        self.driver = create_driver(cfg.cluster, self)
        self.turns = Turns(self.driver.notify, self.settled, self.fatal, main_step)

    # ------------------------------------------------------------------
    # lifecycle

    async def start(self, local_vdis: list) -> None:
        """Join the cluster; returns once this node is a member.  ``local_vdis``:
        the VDIs found on this node's disk (``VdiTable.local_snapshot``)."""
        self.member = Member(self.me.wire(),
                             f"{self.me.host}:{self.me.port}/{os.getpid()}/{uuid.uuid4().hex[:12]}")
        await self.driver.join(self.member, self._opaque(local_vdis))

    def _opaque(self, local_vdis: list | None = None) -> bytes:
        return json.dumps({
            "ctime": self.config.ctime, "epoch": self.epoch, "history": self.history.records(),
            "config": self.config.pack().hex() if self.formatted else None,
            "fixed_vnodes": self.cfg.vnodes is not None,
            "vdis": local_vdis or [],
            **self.events.collect_join_data(),  # tombs (VDIs), lock_gen (locks)
        }).encode()

    def join_opaque(self) -> bytes:
        """Driver callback: fresh join data for a rejoin (after being out)."""
        return self._opaque()

    def on_driver_failure(self, exc: BaseException) -> None:
        """Driver callback: it can no longer deliver events to us."""
        self.fatal(f"the cluster driver failed: {exc!r}")

    async def stop(self) -> None:
        try:
            await self.driver.leave()
        except Exception:  # leaving is best effort; others detect the exit anyway
            log.debug("leave failed", exc_info=True)
        await self.driver.close()

    # ------------------------------------------------------------------
    # derived state

    @property
    def formatted(self) -> bool:
        return self.config.ctime != 0

    def _rebuild_nodes(self) -> None:
        nodes = []
        for m in self.members:
            n = proto.SdNode.unpack(m.node)
            w = self.weights.get(_node_key(n))
            if m.ident in self._refused:  # holds nothing until it is gone (sheep.joins)
                n = n.replace(nr_vnodes=0, space=0)
            elif w is not None:
                n = n.replace(nr_vnodes=w[0] if n.nr_vnodes else 0, space=w[1])
            nodes.append(n)
        # before format a node weighs by its own strategy (1.0: sys->cinfo.flags
        # starts with AUTO_VNODES unless -V), so "node list" shows the weights
        auto = (self.config.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES if self.formatted
                else self.cfg.vnodes is None)
        if auto:
            weights = auto_vnodes([n.space if n.nr_vnodes else 0 for n in nodes])
            nodes = [n.replace(nr_vnodes=w) for n, w in zip(nodes, weights)]
        self.nodes = proto.sort_nodes(nodes)
        self.ring = Ring(self.nodes)

    def node_by_key(self, key: str) -> proto.SdNode | None:
        for n in self.nodes:
            if _node_key(n) == key:
                return n
        return None

    def is_me(self, node: proto.SdNode) -> bool:
        return node.addr == self.me.addr and node.port == self.me.port

    def epoch_nodes(self, epoch: int) -> list[proto.SdNode]:
        return self.history.nodes(epoch)

    def epoch_ring(self, epoch: int) -> Ring | None:
        """The ring of a past epoch (from the epoch log), None if unknown."""
        return self.history.ring(epoch)

    async def settled(self) -> None:
        """Wait until the disk work of every event delivered so far is done."""
        await self.jobs.settled()

    def serving(self) -> bool:
        """May this node serve I/O now?  (any thread; see module docstring)"""
        if not self.quorum or self.status in (KILLED, SHUTDOWN):
            return False
        may_serve = getattr(self.driver, "may_serve", None)
        return may_serve is None or bool(may_serve())

    def _bump_epoch(self) -> None:
        self.epoch += 1
        self.history.write(self.epoch, proto.pack_nodes(self.nodes))
        log.info("epoch %d: %s", self.epoch, ", ".join(str(n) for n in self.nodes))
        self.events.publish(ev.EPOCH_CHANGED, self.epoch - 1)
        self._notify_epoch()

    def _notify_epoch(self) -> None:
        """Wake everyone waiting for a view/epoch/status change."""
        self._epoch_changed.set()
        self._epoch_changed = asyncio.Event()

    async def _wait_until(self, pred, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._epoch_changed.wait(), left)
            except asyncio.TimeoutError:
                return pred()
        return True

    async def wait_until(self, pred, timeout: float) -> bool:
        """Wait until ``pred()`` holds after some applied cluster event; False on timeout."""
        return await self._wait_until(pred, timeout)

    async def wait_epoch_change(self, seen: int, timeout: float) -> bool:
        """Wait until the epoch differs from ``seen``; False on timeout."""
        return await self._wait_until(lambda: self.epoch != seen, timeout)

    async def wait_epoch_at_least(self, epoch: int, timeout: float) -> bool:
        return await self._wait_until(lambda: self.epoch >= epoch, timeout)

    # ------------------------------------------------------------------
    # ClusterEvents (called by the driver, in total order)

    def check_join(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        """Master only: the join rules (``sheep.cluster.joins.verdict``), then the
        snapshot.  A refused joiner is accepted by the driver all the same
        (1.0 semantics): the reply says why it is refused, the joiner exits
        on its own join event and every member applies join and leave."""
        info = json.loads(opaque or b"{}")
        jnode = proto.SdNode.unpack(joiner.node)
        if joiner.ident == (self.member.ident if self.member else None):
            # first member: accept ourselves; our own state is the cluster state
            return True, json.dumps({"self": True, "vdis": info.get("vdis", []),
                                     "lock_gen": info.get("lock_gen", 0)}).encode()
        v = verdict(self.status, self.config, self.epoch, jnode, info)
        if v.refused:
            code, msg = v.refused
            log.warning("%s", msg)
            return True, json.dumps({"refused": {"code": CODES[code], "name": code,
                                                 "error": msg}}).encode()
        config, status, epoch, epochs = self.config.pack().hex(), self.status, self.epoch, None
        if v.config:  # an unformatted cluster takes over the joiner's cluster info
            config, status = v.config, WAIT_FOR_JOIN
            epoch, epochs = info.get("epoch", 0), v.adopt
        snap = {
            "config": config,
            "status": status,
            "blocks": [list(b) for b in self.turns.blocks],
            "epoch": epoch,
            "disable_recovery": self.disable_recovery,
            "epochs": self.history.records() if epochs is None else epochs,
            "weights": self.weights,
            "vdis": info.get("vdis", []),
            "tombs": comparable_tombs(info, v, self.history.logs, self.epoch),  # the joiner's collected ids (vdi_recycle)
            "adopt": v.adopt,
            "adopt_config": v.config,
            "refused": sorted(self._refused),
            "lock_gen": info.get("lock_gen", 0),  # the joiner's highest lock generation
            **self.events.snapshots(),  # state (VDIs), locks
        }
        return True, json.dumps(snap).encode()

    # The driver delivers events synchronously and in total order; each is
    # applied completely before the next one (and before check_join runs), so
    # a joiner's snapshot is exactly the state at its join point.

    def _guarded(self, what: str, fn, *args) -> None:
        """Run a membership callback; if it fails half-way, this node's state is
        behind the others': stop serving and leave (never serve it)."""
        if self.status == KILLED:
            return  # failed before: apply nothing more
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - any failure is fatal here
            log.exception("%s failed", what)
            self.fatal(f"cannot apply {what}: {e!r}")

    def on_join(self, joined: Member, members: list[Member], reply: bytes) -> None:
        self._guarded("a join", self._on_join, joined, members, reply)

    def on_leave(self, left: Member, members: list[Member]) -> None:
        self._guarded("a leave", self._on_leave, left, members)

    def on_notify(self, sender: Member, msg: bytes) -> None:
        self._guarded("a cluster message", self._on_notify, sender, msg)

    def _on_join(self, joined: Member, members: list[Member], reply: bytes) -> None:
        info = json.loads(reply or b"{}")
        me = self.member is not None and joined.ident == self.member.ident
        if info.get("refused"):
            self._on_refused_join(joined, members, info["refused"], me)
            return
        my_epoch = self.epoch  # what this node's own store knew before the join
        if me:
            self.quorum = True  # our own join: we are in the primary view
        if me and not info.get("self"):
            # a history that differs from the cluster's at an epoch we both
            # have (we were in a cluster that was force-recovered without us,
            # or the other way round): our copies' versions are not comparable
            theirs = {e: nodes for e, nodes, _ts in info.get("epochs", [])}
            diverged = any(e in theirs and rec[0].hex() != theirs[e]
                           for e, rec in self.history.logs.items() if e <= my_epoch)
            if (info.get("status") in (OK, WAIT_FOR_JOIN) and 0 < my_epoch
                    and (my_epoch < info.get("epoch", 0) or diverged)):
                if diverged:
                    log.warning("our epoch history differs from the cluster's: keeping our "
                                "objects only as stale copies")
                # we missed writes meanwhile.  Queued before _adopt logs the
                # cluster's epochs: a crash in between must never leave the
                # newer history with our old copies still live (after a
                # restart we would join at the cluster's epoch, undemoted)
                self.events.publish(ev.DATA_STALE, my_epoch)
            # e.g. our tombstones as the cluster took them (those of a history
            # it does not have are dropped, ``_comparable_tombs``)
            self.events.publish(ev.REJOINING, info)
            self._adopt(info)
            self.turns.lose_turns("rejoined the cluster")  # our old BLOCKs are not in its queue
        was_formatted = self.formatted
        if not me and info.get("adopt_config") and not was_formatted:
            # an unformatted cluster takes over the joiner's cluster info (1.0)
            cfg = proto.SheepdogConfig.unpack(bytes.fromhex(info["adopt_config"]))
            cfg.space, cfg.shutdown = self.me.space, 0
            self._save_config(cfg)
            self.config, self.status = cfg, WAIT_FOR_JOIN
            self.epoch = info["epoch"]
            log.info("took over the cluster info of %s (formatted, creation time %d)",
                     proto.SdNode.unpack(joined.node), cfg.ctime)
        if info.get("adopt"):  # a restarting node brought a newer epoch history
            hist = info["adopt"]
            newest = max(e for e, _, _ in hist)
            if not me and was_formatted and self.epoch < newest:
                self.events.publish(ev.DATA_STALE, self.epoch)  # our data is older
            for e, nodes_hex, ts in hist:
                self.history.write(e, bytes.fromhex(nodes_hex), ts)
            self.epoch = newest
            log.info("adopted the epoch history of %s (epoch %d)",
                     proto.SdNode.unpack(joined.node), self.epoch)
        self.events.publish(ev.NODE_JOINED, info)  # VDIs merged, lock generations
        self.members = list(members)
        self._rebuild_nodes()
        log.info("%s joined; %d members", proto.SdNode.unpack(joined.node), len(members))
        if self.status == OK:
            self._bump_epoch()
        elif self.status == WAIT_FOR_JOIN:
            self._maybe_start_after_restart()
        else:
            self._notify_epoch()

    def _on_refused_join(self, joined: Member, members: list[Member], why: dict,
                         me: bool) -> None:
        """A join the master refused: the refused node logs why and exits;
        the others count it as a member until it leaves (join and leave are
        epochs of a running cluster, as in 1.0) but take nothing from it."""
        if me:
            log.error("failed to join the cluster: %s (%s); exiting", why.get("error"),
                      why.get("name"))
            self.status = KILLED  # never serves: it was never in state OK
            self._notify_epoch()
            self._request_exit(0.0, code=1)
            return
        self._refused.add(joined.ident)
        self.members = list(members)
        self._rebuild_nodes()
        log.info("%s joined (refused: %s); %d members", proto.SdNode.unpack(joined.node),
                 why.get("name"), len(members))
        if self.status == OK:
            self._bump_epoch()
        else:
            self._notify_epoch()

    def _adopt(self, info: dict) -> None:
        """Take the master's snapshot of the cluster state (joiner only)."""
        cfg = proto.SheepdogConfig.unpack(bytes.fromhex(info["config"]))
        if cfg.ctime:
            cfg.space = self.me.space
            cfg.shutdown = 0
            self._save_config(cfg)
            if not info.get("adopt"):  # our own history is newer otherwise
                mine = dict(self.history.logs)
                for e, nodes_hex, ts in info["epochs"]:
                    rec = mine.get(e)
                    if rec is None or rec[0].hex() != nodes_hex:
                        self.history.write(e, bytes.fromhex(nodes_hex), ts)
                for e in mine:  # epochs the cluster never had (a diverged past)
                    if e > info["epoch"]:
                        self.history.remove(e)
        self.config = cfg
        self.status = info["status"]
        # the cluster-op queue as the master saw it: a foreign op may be running
        self.turns.adopt(info.get("blocks", []))
        self.epoch = info["epoch"]
        self.weights = dict(info.get("weights", {}))
        self.disable_recovery = info.get("disable_recovery", False)
        self._refused = set(info.get("refused", []))
        self.events.restore(info)

    def _maybe_start_after_restart(self) -> None:
        """Start once every node of the newest epoch is a member (1.0
        ``enough_nodes_gathered``); refused joiners do not count.  Nodes the
        epoch gave 0 vnodes hold none of its objects and are not waited for
        (stronger than 1.0): among them is a refused joiner logged before its
        leave (a crash in between), which could never be admitted again."""
        nodes = self.epoch_nodes(self.epoch)
        last = ({_node_key(n) for n in nodes if n.nr_vnodes}
                or {_node_key(n) for n in nodes})
        present = {_node_key(proto.SdNode.unpack(m.node)) for m in self.members
                   if m.ident not in self._refused}
        if last and last <= present:
            self._start_running(f"all nodes of epoch {self.epoch} are back")

    def _start_running(self, why: str) -> None:
        # what the ring is made of (sheep.proto.placement.Ring): the same members with
        # other vnode counts or zones (weights set by "node vnodes set" are
        # not kept across a restart; a node restarted with another -V or -z)
        # are another ring: a new epoch, whose recovery moves the objects
        def ring_key(nodes):
            return sorted((_node_key(n), n.nr_vnodes, n.zone) for n in nodes)
        last = ring_key(self.epoch_nodes(self.epoch))
        present = ring_key(self.nodes)
        self.status = OK
        log.info("%s; cluster is running", why)
        if last != present:
            self._bump_epoch()
        else:
            # the same members as before the restart: no new epoch, but a
            # recovery interrupted by the restart must still be finished
            self.events.publish(ev.RESUMED)
            self._notify_epoch()

    def _on_leave(self, left: Member, members: list[Member]) -> None:
        self._refused.discard(left.ident)
        self.members = list(members)
        self._rebuild_nodes()
        log.info("%s left; %d members", proto.SdNode.unpack(left.node), len(members))
        self.events.publish(ev.NODE_LEFT, proto.SdNode.unpack(left.node))  # in order, everywhere
        self.turns.on_leave(left.ident)
        if self.status == OK:
            self._bump_epoch()
        else:
            self._notify_epoch()

    def _on_notify(self, sender: Member, msg: bytes) -> None:
        m = json.loads(msg)
        if m["t"] == "block":
            self.turns.on_block(m["id"], sender.ident)
        elif m["t"] == "recovered":
            self.events.publish(ev.RECOVERED, m["epoch"], m["node"])
        elif m["t"] == "lock":  # drained, freeze, quiet, thaw (sheep.vdi.lock_table)
            self.events.publish(ev.LOCK_MESSAGE, m)
            self._notify_epoch()  # wake waiters (wait_drained, a snapshot's freeze)
        elif m["t"] == "unblock":
            if not self.turns.on_unblock(m["id"], sender.ident):
                return
            # whatever its outcome, a freeze its work step made ends with it
            # (a snapshot's main step ends it too; sheep.vdi.lock_table)
            self.events.publish(ev.OP_ENDED, proto.SdNode.unpack(sender.node))
            self.turns.apply(m["id"], m["msg"])
            self._notify_epoch()  # state changed: wake waiters (e.g. VdiTable.await_state)
            self.turns.next_turn()

    def fatal(self, why: str) -> None:
        """This node can no longer keep its state in step with the cluster: stop
        serving at once (status KILLED), then exit (peers see it leave)."""
        if self.status == KILLED:
            return
        log.critical("%s; leaving the cluster", why)
        self.status = KILLED
        self._notify_epoch()
        self._request_exit(0.0, code=1)

    # ------------------------------------------------------------------
    # cluster operations (sheep.cluster.turns)

    async def cluster_op(self, work):
        """Run ``work()`` exclusively cluster-wide, then apply its result everywhere
        (:meth:`sheep.cluster.turns.Turns.run`).  Returns once this node's disk
        work for the op is done."""
        return await self.turns.run(work)

    # ------------------------------------------------------------------
    # main steps owned by the group

    def apply_format(self, msg: dict) -> None:
        """MAKE_FS main step: wipe, set the config, epoch 1 with current members."""
        cfg = proto.SheepdogConfig(
            ctime=msg["ctime"], flags=msg["flags"], copies=msg["copies"],
            default_store=proto.pad(msg["store"], 16), shutdown=0,
            copy_policy=msg["copy_policy"], block_size_shift=msg["block_size_shift"],
            version=6, space=self.me.space)
        store = self.store

        def wipe():  # I/O waits for it: nothing touches objects of the old cluster
            store.wipe()
            store.remove_epochs()
        self.history.forget_all()
        self.jobs.submit("formatting the store", wipe)
        self._save_config(cfg)
        self.config = cfg
        self.events.publish(ev.FORMATTED)  # every VDI is gone
        self.status = OK
        self.epoch = 0
        self._rebuild_nodes()
        self._bump_epoch()
        log.info("cluster formatted: copies %d, flags %#x, store %s",
                 cfg.copies, cfg.flags, msg["store"])

    def apply_shutdown(self) -> None:
        self.status = SHUTDOWN
        self.config.shutdown = 1
        done = self._save_config(self.config)
        log.info("cluster shutdown requested")
        # exit once the config is on disk (and the reply had time to go out)
        done.add_done_callback(lambda _f: self._request_exit(0.2))

    def apply_force_recover(self) -> list[proto.SdNode]:
        """FORCE_RECOVER main step: run with the nodes present (every node)."""
        if self.status != WAIT_FOR_JOIN:
            raise error_for(CODES["FORCE_RECOVER"])
        last = self.epoch_nodes(self.epoch)
        self._start_running(f"recovery forced with {len(self.nodes)} of {len(last)} nodes")
        return last

    def apply_weights(self, weights: dict) -> None:
        """Set (nr_vnodes, space) of some nodes; a running cluster moves to a new epoch."""
        changed = False
        for key, w in weights.items():
            if self.weights.get(key) != list(w):
                self.weights[key] = list(w)
                changed = True
        if changed:
            self._rebuild_nodes()
            if self.status == OK:
                self._bump_epoch()

    def on_quorum(self, has_quorum: bool) -> None:
        """Driver: this member is (not) in the primary partition."""
        if has_quorum != self.quorum:
            self.quorum = has_quorum
            if has_quorum:
                log.warning("back in the primary partition: serving I/O again")
            else:
                log.error("cut off from the majority of the cluster (minority partition): "
                          "I/O is halted until the partition heals")
                # the others may drop our cluster-op turn: a work step still
                # running must not write anything more (its I/O gets HALT)
                self.turns.invalidate("cut off while running the operation")
            self._notify_epoch()

    def check_op_token(self) -> None:
        """Gateway writes of a cluster op's work step: HALT once this node
        may have lost its turn (see on_quorum)."""
        self.turns.check_token()

    def save_config(self) -> None:
        self._save_config(self.config)

    def _save_config(self, cfg: proto.SheepdogConfig):
        """Write the config in delivery order (a job); returns its future."""
        return self.jobs.submit("saving the config", self.store.save_config, cfg.pack())

    def now(self) -> int:
        return int(time.time())
