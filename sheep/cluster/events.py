"""Membership events: what :class:`sheep.cluster.group.Group` publishes, and
the parts of the daemon that subscribe (recovery, locks, VDIs).

The group turns the driver's totally ordered stream (joins, leaves,
messages) into cluster state; the other parts follow that state by
subscribing to the events below instead of being called by name.  The
daemon (``sheep.daemon``) does the wiring; no part reaches another through
it.

Guarantees of :class:`Events`:

* **Synchronous and in order.**  :meth:`Events.publish` runs every
  subscriber of the topic before it returns, in subscription order, on the
  caller's thread (the event loop).  So an event is applied completely, by
  every part, before the group looks at the next one — and before a
  joiner's snapshot of the state is taken (``Group.check_join``).
* **Failures are the publisher's.**  A subscriber that raises stops the
  publish and the exception reaches the group's callback, which stops the
  node (``Group.fatal``): a node never serves a half-applied event.
* **State transfer.**  A part that holds replicated state registers it with
  :meth:`Events.state` (how to take a snapshot of it, how to restore one);
  the master's join reply carries every part's snapshot and the joiner
  restores them, in registration order, as one step of its own join.

Topics (the arguments each subscriber gets):

==================  =================================================================
``EPOCH_CHANGED``   ``(previous_epoch)``: a new epoch is logged; its ring is current
``RESUMED``         ``()``: the cluster runs again with the epoch it had (a restart
                    with the same members): an interrupted recovery goes on
``DATA_STALE``      ``(epoch)``: this node's copies up to ``epoch`` are older than the
                    cluster's (it missed writes): they become stale copies
``REJOINING``       ``(join_reply)``: this node's own join, before the cluster's state
                    is adopted (the reply says which of our records it kept)
``NODE_JOINED``     ``(join_reply)``: a member joined (every member, the joiner too)
``NODE_LEFT``       ``(node)``: a member left, in the same place of the order everywhere
``RECOVERED``       ``(epoch, node)``: a node finished recovering ``epoch``
``LOCK_MESSAGE``    ``(message)``: a lock table message (drained, freeze, quiet, thaw)
``OP_ENDED``        ``(node)``: the cluster operation ``node`` ran has ended
``FORMATTED``       ``()``: the cluster was formatted: every VDI is gone
==================  =================================================================
"""

from __future__ import annotations

from collections.abc import Callable

EPOCH_CHANGED = "epoch changed"
RESUMED = "resumed"
DATA_STALE = "data stale"
REJOINING = "rejoining"
NODE_JOINED = "node joined"
NODE_LEFT = "node left"
RECOVERED = "recovered"
LOCK_MESSAGE = "lock message"
OP_ENDED = "cluster op ended"
FORMATTED = "formatted"

TOPICS = frozenset({EPOCH_CHANGED, RESUMED, DATA_STALE, REJOINING, NODE_JOINED, NODE_LEFT,
                    RECOVERED, LOCK_MESSAGE, OP_ENDED, FORMATTED})


class Events:
    """One node's membership event bus (see the module docstring)."""

    def __init__(self):
        self._subs: dict[str, list[Callable]] = {t: [] for t in TOPICS}
        self._states: dict[str, tuple[Callable[[], object], Callable[[object], None]]] = {}
        self._join_data: dict[str, Callable[[], object]] = {}

    def subscribe(self, topic: str, fn: Callable) -> None:
        """Call ``fn(*args)`` on every ``publish(topic, *args)``, after the
        subscribers that came before it."""
        if topic not in self._subs:
            raise ValueError(f"unknown event topic {topic!r}")
        self._subs[topic].append(fn)

    def publish(self, topic: str, *args) -> None:
        """Run every subscriber of ``topic`` now, in order; the first exception
        propagates (the rest do not run)."""
        for fn in self._subs[topic]:
            fn(*args)

    def subscribers(self, topic: str) -> list[Callable]:
        return list(self._subs[topic])

    # -- replicated state ----------------------------------------------------

    def state(self, name: str, snapshot: Callable[[], object],
              restore: Callable[[object], None]) -> None:
        """Register a part's replicated state under ``name``."""
        self._states[name] = (snapshot, restore)

    def snapshots(self) -> dict[str, object]:
        """Every registered part's state now (JSON-able), by name."""
        return {name: snap() for name, (snap, _restore) in self._states.items()}

    def restore(self, snapshots: dict) -> None:
        """Give each part its state from ``snapshots`` (a missing one as None)."""
        for name, (_snap, restore) in self._states.items():
            restore(snapshots.get(name))

    def join_data(self, name: str, fn: Callable[[], object]) -> None:
        """What this node tells the cluster about ``name`` when it joins."""
        self._join_data[name] = fn

    def collect_join_data(self) -> dict[str, object]:
        return {name: fn() for name, fn in self._join_data.items()}
