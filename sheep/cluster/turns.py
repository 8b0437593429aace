"""Cluster operations: one work step at a time in the whole cluster, then a
main step applied by every node in the same place of the total order.

Protocol (built on the driver's notify, which every member delivers in one
order): the origin sends BLOCK; when its BLOCK is the oldest outstanding one
(its *turn*), the origin runs the op's ``work`` step — nobody else in the
cluster runs a work step meanwhile — and sends UNBLOCK carrying the result;
on delivery every member applies the op's ``main`` step.

Guarantees of :class:`Turns`:

* every member keeps the same queue of BLOCKs (delivery order), so every
  member agrees whose turn it is;
* a member that leaves while holding or waiting for a turn loses it, and the
  next BLOCK gets its turn;
* an UNBLOCK that is not for the running op (its sender's turn was dropped
  when it fell out of the view) is ignored everywhere: its work step may be
  stale, its result must not apply;
* a work step that may have lost its turn (this node was cut off, see
  :meth:`Turns.invalidate`) writes nothing more: :meth:`Turns.check_token`
  raises HALT in its I/O, and its UNBLOCK carries HALT, not its result;
* once BLOCK is sent the UNBLOCK always goes out (cancelling the caller does
  not cancel the op), or this node leaves the cluster so that the others
  drop its turn;
* the caller hears the result only after this node's disk work for the op
  is done (``settled``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from sheep.proto.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.cluster.turns")

WORK_TIMEOUT = 60.0  # longest a cluster op may hold the cluster-wide turn


class _OpToken:
    """A running work step's right to write (see Turns.check_token)."""

    __slots__ = ("valid", "why")

    def __init__(self):
        self.valid, self.why = True, ""


#: the token of the cluster op whose work step the current task runs
OP_TOKEN: contextvars.ContextVar = contextvars.ContextVar("sheep_op_token", default=None)


class Turns:
    """The cluster-op queue of one node.

    ``notify(bytes)`` sends a message in the cluster's total order (the
    driver's), ``settled()`` waits for this node's queued disk work,
    ``fatal(why)`` stops the node; ``main_step(msg)`` applies an op's main
    step (the op table's) and returns its result."""

    def __init__(self, notify: Callable[[bytes], Awaitable], settled: Callable[[], Awaitable],
                 fatal: Callable[[str], None], main_step: Callable[[dict], object]):
        self._notify, self._settled, self._fatal = notify, settled, fatal
        self.main_step = main_step
        self.blocks: list[tuple[str, str]] = []  # (block id, sender ident) in delivery order
        self._turns: dict[str, asyncio.Future] = {}
        self._done: dict[str, asyncio.Future] = {}
        self.running: str | None = None
        self._tokens: set[_OpToken] = set()  # work steps running on this node

    # -- the origin's side ---------------------------------------------------

    async def run(self, work):
        """Run ``work()`` exclusively cluster-wide, then apply its result everywhere.

        ``work`` is an async callable returning a JSON-able "main" message (or
        raising SdError).  Returns what the main step returned on this node."""
        return await asyncio.shield(asyncio.ensure_future(self._run(work)))

    async def _run(self, work):
        bid = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        turn = self._turns[bid] = loop.create_future()
        done = self._done[bid] = loop.create_future()
        token = _OpToken()
        try:
            try:
                await self._notify(json.dumps({"t": "block", "id": bid}).encode())
            except RuntimeError as e:  # not a member (cut off, rejoining)
                raise error_for(CODES["HALT"], f"cannot start a cluster operation: {e}") from None
            await turn
            self._tokens.add(token)
            ctx = OP_TOKEN.set(token)
            try:
                msg = await asyncio.wait_for(work(), WORK_TIMEOUT)
            except SdError as e:
                msg = {"op": "error", "code": e.code, "message": e.message}
            except asyncio.TimeoutError:
                msg = {"op": "error", "code": CODES["NETWORK_ERROR"],
                       "message": f"cluster operation took longer than {WORK_TIMEOUT}s"}
            except Exception as e:
                log.exception("work step failed")
                msg = {"op": "error", "code": CODES["SYSTEM_ERROR"], "message": str(e)}
            finally:
                OP_TOKEN.reset(ctx)
                self._tokens.discard(token)
            if not token.valid:
                msg = {"op": "error", "code": CODES["HALT"], "message": token.why}
            try:
                await self._notify(json.dumps({"t": "unblock", "id": bid, "msg": msg}).encode())
            except RuntimeError as e:
                # not a member any more: the others dropped our turn with our leave
                raise error_for(CODES["HALT"], f"cluster operation lost: {e}") from None
            except Exception as e:
                # every node waits for our UNBLOCK: leave, so they drop our turn
                self._fatal(f"cannot send the end of a cluster operation: {e!r}")
                raise error_for(CODES["CLUSTER_ERROR"], str(e)) from None
            result = await done
            await self._settled()  # the op's disk work is done before anyone hears of it
            return result
        finally:
            self._turns.pop(bid, None)
            self._done.pop(bid, None)

    def check_token(self) -> None:
        """Gateway writes of a cluster op's work step: HALT once this node
        may have lost its turn (see :meth:`invalidate`)."""
        token = OP_TOKEN.get()
        if token is not None and not token.valid:
            raise error_for(CODES["HALT"], token.why)

    def invalidate(self, why: str) -> None:
        """This node was cut off: the others may drop its turn, so a work step
        still running must not write anything more (its I/O gets HALT)."""
        for token in self._tokens:
            token.valid, token.why = False, why

    # -- every member's side (delivery order) --------------------------------

    def on_block(self, bid: str, ident: str) -> None:
        self.blocks.append((bid, ident))
        self.next_turn()

    def on_unblock(self, bid: str, sender: str) -> bool:
        """End the running op's turn; False (and nothing changed but its
        origin told HALT) if the UNBLOCK is not for the running op.  The main
        step is :meth:`apply`'s."""
        if not (self.blocks and self.blocks[0][0] == bid):
            log.error("UNBLOCK %s from %s is not for the running cluster op (%s); ignored",
                      bid, sender, self.blocks[:1])
            fut = self._done.pop(bid, None)
            if fut is not None and not fut.done():
                fut.set_exception(error_for(CODES["HALT"], "the cluster dropped our turn"))
            return False
        self.blocks.pop(0)
        self.running = None
        return True

    def apply(self, bid: str, msg: dict) -> None:
        """The main step of the op that just ended, its outcome to its origin.
        A main step that fails other than with SdError stops this node."""
        try:
            outcome = (True, self.main_step(msg))
        except SdError as e:  # deterministic: the same on every node
            outcome = (False, e)
        except Exception as e:
            # Anything else (a disk error, a bug) would leave this node's
            # state behind the others': it must not go on serving.
            self._fatal(f"cannot apply cluster operation {msg.get('op')}: {e!r}")
            outcome = (False, error_for(CODES["SYSTEM_ERROR"], str(e)))
        fut = self._done.pop(bid, None)
        if fut is not None and not fut.done():
            if outcome[0]:
                fut.set_result(outcome[1])
            else:
                fut.set_exception(outcome[1])

    def on_leave(self, ident: str) -> None:
        """A member left: its queued and running turns are gone."""
        lost = [b for b in self.blocks if b[1] == ident]
        if lost:
            head = self.blocks[0] if self.blocks else None
            self.blocks = [b for b in self.blocks if b[1] != ident]
            if head in lost:
                self.running = None
                self.next_turn()

    def adopt(self, blocks: list) -> None:
        """The queue as the master saw it (a joiner): a foreign op may be running."""
        self.blocks = [tuple(b) for b in blocks]
        self.running = self.blocks[0][0] if self.blocks else None

    def next_turn(self) -> None:
        """Give the turn to the oldest BLOCK if no op is running."""
        if self.running is not None or not self.blocks:
            return
        bid, _ident = self.blocks[0]
        self.running = bid
        fut = self._turns.pop(bid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def lose_turns(self, why: str) -> None:
        """Our queued BLOCKs are gone (we rejoined): fail the ops waiting on them.

        That covers ops still waiting for their turn (nothing was done) and
        ops whose turn had come: their UNBLOCK went out in a view we left, so
        it will never be delivered here (the cluster applied it or dropped
        it; its state, which we just adopted, says which) — without this
        their caller would wait forever."""
        queued = {b for b, _ident in self.blocks}
        for table in (self._turns, self._done):
            for bid, fut in list(table.items()):
                if bid not in queued and not fut.done():
                    fut.set_exception(error_for(CODES["HALT"], f"cluster operation lost: {why}"))
                    fut.exception()  # retrieved: the caller may be gone already
