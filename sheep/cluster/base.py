"""The membership-driver contract (mirrors Sheepdog's ``sheep/cluster.h``).

Theory of operation
-------------------
A *driver* connects one daemon process to a group of peers and gives it a
virtually synchronous view of that group.  The daemon's group layer hands
the driver a :class:`ClusterEvents` object; the driver calls it back, on the
event-loop thread, with one totally ordered stream of events:

* ``on_join``   a process became a member (the master accepted it),
* ``on_leave``  a member left, orderly or because it died,
* ``on_notify`` a member broadcast a message.

Guarantees every driver gives (virtual synchrony):

1. Every member delivers the same sequence of joins, leaves and notifies,
   starting at its own join event.
2. A notify is delivered in the view in which it was sent, or not at all;
   no member delivers a message that a surviving member does not.
3. A member that exits or is killed (SIGKILL) is removed: ``on_leave`` is
   delivered on every survivor within 2 seconds (``local`` driver; other
   drivers document their own bound).
4. The master is always ``members[0]``, the oldest member.  The first
   process to join an empty cluster is the master of a one-member view;
   its own ``check_join`` decides whether it may form the cluster.

Block / unblock
---------------
Sheepdog drivers also offer ``block()`` / ``unblock(msg)``: one member runs
a step while every other member waits, then the step's result is delivered
to every member in the total order.  Here this is implemented once, for every
driver, on top of ``notify`` (``sheep.group.Group.cluster_op``), so a driver
only has to provide the four guarantees above:

* ``block``: the member notifies BLOCK(id); BLOCKs are queued in delivery
  order; the member whose BLOCK is at the head runs its step — at most one
  step runs in the whole cluster at a time (the queue is part of the state a
  joiner adopts, so a newcomer cannot jump it).
* ``unblock(msg)``: the member notifies UNBLOCK(id, msg); every member
  applies ``msg`` (the op's main step) at that position of the total order,
  then the next BLOCK in the queue gets its turn.
* a member that leaves while queued or running loses its turn on every
  member at the same point (its leave event); a step that cannot finish
  within ``group.WORK_TIMEOUT`` reports an error instead of holding the turn.

Callbacks are synchronous and must not block: they run on the loop thread,
sometimes while the driver holds a cluster-wide lock.  They may schedule
coroutines but never await driver methods themselves.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Member:
    """One member of a view.

    ``node`` is the opaque node record (the daemon passes its 80-byte
    ``sd_node``); drivers carry it unchanged and never parse it.  ``ident``
    is unique per process incarnation, e.g. ``"127.0.0.1:7000/<pid>/<hex>"``;
    a restarted daemon uses a new ident.
    """

    node: bytes
    ident: str


class JoinRejected(Exception):
    """The master refused a join; ``reply`` holds the master's reply bytes."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(f"join rejected by the master: {reply!r}")
        self.reply = reply


class ClusterEvents(Protocol):
    """Callbacks implemented by the daemon's group layer.

    All are called on the event-loop thread, one at a time, in the total
    order described in the module docstring.  The ``members`` lists are
    fresh copies, oldest member first (``members[0]`` is the master).
    """

    def check_join(self, joiner: Member, opaque: bytes) -> tuple[bool, bytes]:
        """Decide whether ``joiner`` may join; returns ``(accept, reply)``.

        Called only on the current master, and exactly once per join
        request that reaches a live master.  ``opaque`` is what the joiner
        passed to :meth:`ClusterDriver.join`; ``reply`` travels back to the
        joiner (in ``on_join`` or in :class:`JoinRejected`) and to every
        member in ``on_join``.  On an empty cluster the joiner is asked
        about itself.  An exception counts as a rejection with empty reply.
        """

    def on_join(self, joined: Member, members: list[Member], reply: bytes) -> None:
        """``joined`` became a member; ``members`` is the new view.

        Delivered to every member of the new view, including the joiner
        (for which it is the first event it ever receives).
        """

    def on_leave(self, left: Member, members: list[Member]) -> None:
        """``left`` is gone (orderly leave or failure); ``members`` is the new
        view.  Delivered to every surviving member, never to ``left``."""

    def on_notify(self, sender: Member, msg: bytes) -> None:
        """A message broadcast by ``sender``; delivered to every member of
        the view it was sent in, including the sender, in the same total
        order as joins and leaves."""

    def on_quorum(self, has_quorum: bool) -> None:
        """Optional.  Drivers with a primary-partition rule (zmq) call this with
        False when this member is cut off in a minority — it must stop serving
        I/O and say so — and with True once it is back in the primary partition.
        Drivers without such a rule never call it.  Called on the loop thread,
        ordered with the other events."""


class ClusterDriver(abc.ABC):
    """One process's connection to the membership service.

    Lifecycle: ``join`` once, then any number of ``notify``, then either
    ``leave`` (orderly) or ``close`` (abrupt; peers see a failure).  A
    driver instance is not reusable after ``leave``/``close``.
    """

    #: the name used in ``-c NAME[:OPTION]``
    name: str = ""

    def __init__(self, option: str, events: ClusterEvents) -> None:
        """``option`` is the text after ``"NAME:"`` in the ``-c`` value (``''``
        when absent); ``events`` receives all callbacks.  Does no I/O."""
        self.option = option
        self.events = events

    @abc.abstractmethod
    async def join(self, me: Member, opaque: bytes) -> None:
        """Ask to join the cluster as ``me``.

        Returns after ``on_join(me, members, reply)`` was delivered to this
        process.  Raises :class:`JoinRejected` if the master refused (no
        ``on_join`` is delivered then).  Waits as long as it takes for a
        live master to answer; wrap it in a timeout if needed.
        """

    @abc.abstractmethod
    async def leave(self) -> None:
        """Leave in an orderly way.

        Every event ordered before the leave is still delivered here; every
        surviving member then delivers ``on_leave(me)``.  Releases all
        resources, like :meth:`close`.
        """

    @abc.abstractmethod
    async def notify(self, msg: bytes) -> None:
        """Broadcast ``msg`` to the current view.

        Returns once ``msg`` has its place in the total order; it will then
        be delivered through ``on_notify`` to every member, the sender
        included (possibly before this coroutine returns).  Raises
        ``RuntimeError`` when this process is not a member.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release resources without a leave
        message; the other members detect the departure as a failure.
        Idempotent."""


#: driver name -> "module:Class", imported lazily so optional dependencies
#: (pyzmq, kazoo) are only needed by whoever uses that driver.
DRIVERS: dict[str, str] = {
    "local": "sheep.cluster.local:LocalDriver",
    "zmq": "sheep.cluster.zmq:ZmqDriver",
    "zookeeper": "sheep.cluster.zookeeper:ZookeeperDriver",
}


def create_driver(spec: str, events: ClusterEvents) -> ClusterDriver:
    """Build the driver named by a ``sheep -c`` value.

    ``spec`` is ``NAME`` or ``NAME:OPTION`` (``"local"``,
    ``"local:/tmp/cluster"``); the option is everything after the first
    colon.  An unknown name raises ``ValueError`` listing the supported
    drivers.
    """
    name, _, option = spec.partition(":")
    name = name.strip()
    target = DRIVERS.get(name)
    if target is None:
        supported = ", ".join(sorted(DRIVERS))
        raise ValueError(
            f"unknown cluster driver {name!r} in -c {spec!r}; "
            f"supported drivers: {supported}"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(option, events)
