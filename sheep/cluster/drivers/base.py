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
driver, on top of ``notify`` (``sheep.cluster.group.Group.cluster_op``), so a driver
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

Serving: the lease and the quorum events
----------------------------------------
Rule: a process removed from the cluster (partitioned away, its session
suspended or expired, frozen long enough to be declared dead) serves no
reads and no writes from the moment the others may have moved on, and
rejoins by itself once it can.  Two tools implement it:

* :meth:`ClusterDriver.may_serve` is the per-request check (a lease
  computed at call time); the daemon calls it when it admits every I/O
  request.
* ``on_quorum(False)`` / ``on_quorum(True)`` are the coarse, event-driven
  view of the same thing (the daemon logs it, answers HALT, ...).  While
  this process's last ``on_quorum`` said False, ``may_serve()`` is False.

Ordering rules:

1. A process's first event is its own ``on_join``.  A member's own
   ``on_join`` means that it is in the primary view: the daemon may set its
   quorum flag there.
2. ``on_quorum`` is never called before the first own ``on_join``; calls
   alternate (False, True, False, ...), False first.
3. A member that was removed (zmq: out of the primary partition; zookeeper:
   session expired) delivers nothing more of its old membership after its
   ``on_quorum(False)``; it rejoins by itself as a fresh joiner (same
   ``Member.ident``; the master's ``check_join`` decides), asking
   ``events.join_opaque()`` for the join data first.  When it is accepted,
   ``on_quorum(True)`` comes immediately before its own ``on_join`` (no
   event in between), then the events of the new view follow as for any
   joiner.
4. A member that was only suspended and resumes with the same membership
   (zookeeper: reconnected within the session) gets ``on_quorum(True)``
   and goes on with the events of its view; nothing was lost.

Callbacks must not raise
------------------------
A callback that raises (``on_join``, ``on_leave``, ``on_notify``,
``on_quorum``, ``join_opaque``) has left the daemon half-updated, so the
driver treats the member as failed, exactly as if the process had died:

* from that moment it delivers no further event and ``may_serve()`` is
  False;
* it closes abruptly, as :meth:`ClusterDriver.close` (no leave message):
  the peers detect a failure and remove it within the driver's bound;
* then it calls ``events.on_driver_failure(exc)`` once, if the events
  object has it (an exception from that one is only logged).

If this happens during :meth:`ClusterDriver.join`, ``join()`` raises
``exc`` too.  A rejoin (rule 3) that the master rejects ends the driver the
same way, with ``exc`` a :class:`JoinRejected`.  ``check_join`` is the one
exception: it answers a question and changes nothing, and an exception
there counts as a rejection with an empty reply (otherwise one poisonous
join request would take down every master in turn).
"""

from __future__ import annotations

import abc
import importlib
import logging
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
        (for which it is the first event of its membership, and means that
        it is in the primary view: ordering rules in the module docstring).
        """

    def on_leave(self, left: Member, members: list[Member]) -> None:
        """``left`` is gone (orderly leave or failure); ``members`` is the new
        view.  Delivered to every surviving member, never to ``left``."""

    def on_notify(self, sender: Member, msg: bytes) -> None:
        """A message broadcast by ``sender``; delivered to every member of
        the view it was sent in, including the sender, in the same total
        order as joins and leaves."""

    def on_quorum(self, has_quorum: bool) -> None:
        """Optional.  False when the driver learns that this member is out of
        the primary view, or may be: zmq: cut off in a minority or removed
        while alive; zookeeper: its connection to ZooKeeper is suspended or
        its session expired.  The daemon must stop serving I/O and say so
        (``may_serve()`` is False meanwhile anyway).  True once it is back:
        resumed with the same membership (zookeeper: reconnected within the
        session), or, after a rejoin, immediately before its own ``on_join``
        (ordering rules in the module docstring).  Drivers without such
        states (local) never call it.  Called on the loop thread, ordered
        with the other events."""

    def join_opaque(self) -> bytes:
        """Optional.  The join data for a rejoin: a driver whose member was
        removed (ordering rule 3) calls it, on the loop thread, before it
        asks to join again, at most once per join request it builds, and
        sends the result to the master's ``check_join`` instead of the
        ``opaque`` given to :meth:`ClusterDriver.join` (which it falls back
        to when the events object has no ``join_opaque``).  Never called
        for the first join."""

    def on_driver_failure(self, exc: BaseException) -> None:
        """Optional.  The driver has stopped for good on its own: a callback
        raised ``exc`` (see "Callbacks must not raise" in the module
        docstring), or a rejoin was rejected (``exc`` is a
        :class:`JoinRejected`).  Called once, on the loop thread, after the
        driver closed (its peers see it as failed); no other event follows.
        The daemon should stop serving for good (exit, or restart with a
        new driver and a new ident)."""


class ClusterDriver(abc.ABC):
    """One process's connection to the membership service.

    Lifecycle: ``join`` once, then any number of ``notify``, then either
    ``leave`` (orderly) or ``close`` (abrupt; peers see a failure).  A
    driver instance is not reusable after ``leave``/``close``, nor after it
    closed itself (``on_driver_failure``); ``close`` stays safe to call.
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
    def may_serve(self) -> bool:
        """Whether this process may serve I/O right now: a lease.

        True only while this process is a member of the current primary
        view *and* the other members cannot have removed it yet.  From the
        moment the others may have moved on to a view without it
        (partitioned away, session suspended or expired, frozen for longer
        than the failure detector allows, leaving, closed or failed) it is
        False.  False negatives are allowed (a lapsed lease is renewed a
        moment later by fresh evidence); false positives are not.

        It answers from the freshest knowledge: it compares the time at the
        call (``time.monotonic()``) with a bound derived from the latest
        evidence the driver received that the others still count it in;
        it is never a flag that a periodic timer refreshes.  So after the
        process was frozen (SIGSTOP/SIGCONT, a swap storm) for longer than
        its lease it returns False until the driver has heard from its peers
        again, even before the driver read the traffic waiting on its
        sockets.  (The local driver's peers never remove a live process, so
        it has no lease to run out.)

        The daemon calls it at the admission of every I/O request, and again
        from an I/O thread right before a write reaches the disk (under the
        object's store lock): it does no I/O, takes no lock, is O(1) and only
        reads the driver's attributes, so any thread may call it (also from
        inside callbacks).  Each driver documents its lease and the margin to
        the time after which its peers may remove it.
        """

    async def _died(self, exc: BaseException) -> None:
        """The member failed (a callback raised, a rejoin was refused): close
        abruptly, then tell the events object, once (module docstring,
        "Callbacks must not raise")."""
        await self.close()
        cb = getattr(self.events, "on_driver_failure", None)
        if cb is not None:
            try:
                cb(exc)
            except Exception:
                logging.getLogger(__name__).exception("%s cluster: on_driver_failure raised",
                                                      self.name)

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work and release resources without a leave
        message; the other members detect the departure as a failure.
        Idempotent."""


#: driver name -> "module:Class", imported lazily so optional dependencies
#: (pyzmq, kazoo) are only needed by whoever uses that driver.
DRIVERS: dict[str, str] = {
    "local": "sheep.cluster.drivers.local:LocalDriver",
    "zmq": "sheep.cluster.drivers.zmq:ZmqDriver",
    "zookeeper": "sheep.cluster.drivers.zookeeper:ZookeeperDriver",
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
