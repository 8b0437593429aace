"""Requests of an open VDI that carry its lock: fencing, take-back, confirmation.

:class:`FencedCalls` is the request path of :class:`sheep.proto.vdi_io.VdiIo`.
It guarantees:

* every write (and every read of an object) carries the generation of our
  lock (``SD_FLAG_CMD_SESSION``), so the cluster refuses it (FENCED) once the
  lock was released or taken over;
* a request refused FENCED because our gateway dropped out of the cluster
  for a moment (and our lock with it) is sent again only after the lock was
  taken back with LOCK_MODE_REATTACH, which the cluster grants only if
  nobody else was granted the VDI since; a takeover or an operator's unlock
  stays FENCED for the caller — never silently re-take a lock somebody else
  may have used;
* an answer from the cached inode alone ("never written, so zeros") is given
  only within ``CONFIRM_WINDOW`` seconds of a request that proved our lock;
  otherwise the lock is confirmed first (one confirmation shared by
  concurrent readers);
* after a gateway failover (:mod:`sheep.proto.failover`) the lock session
  is re-attached through the new gateway before anything is resent.
"""

from __future__ import annotations

import asyncio
import logging

from sheep import proto
from sheep.proto.errors import CODES, FencedError, error_for
from sheep.proto.failover import Connection
from sheep.proto.lock_client import LockSession

log = logging.getLogger("sheep.proto.fenced_calls")

NODE_REFRESH = 30.0  # seconds between node list refreshes (for failover)
# How long a proof that we hold the lock is trusted for reads answered from
# the cached inode alone.  Below the time the cluster needs to take a lock
# away from a live writer: its gateway stops serving ~0.5 s after losing the
# cluster (membership lease) and is removed only later (zmq: 1 s; ZooKeeper:
# the session timeout).
CONFIRM_WINDOW = 0.25


class FencedCalls:
    """The lock-carrying request path of one open VDI (base of ``VdiIo``)."""

    def __init__(self, conn, name: str):
        self.conn = conn
        self.name = name
        self.vid = 0
        self.inode: proto.InodeHeader | None = None
        # locking (sheep.proto.lock_client): mode of the open, generation of our grant
        self.session = LockSession(conn)
        self.tag, self.snapid = "", 0
        self.mode = proto.LOCK_MODE_WRITE
        self.generation = 0
        self._refresher: asyncio.Task | None = None
        self._confirmed_at = float("-inf")  # loop time a request proving our lock was sent
        self._confirming: asyncio.Future | None = None
        self._taking_back: asyncio.Future | None = None

    @property
    def is_snapshot(self) -> bool:
        return bool(self.inode.is_snapshot)

    @property
    def _failover(self) -> bool:
        return isinstance(self.conn, Connection) and self.conn.failover_enabled

    # ------------------------------------------------------------------
    # failover support

    async def _reattach(self) -> None:
        """Run by the connection after a failover, before anything is resent."""
        s = self.session
        if self.generation and s.supported and s.enforced:
            # Re-attach our hold through the new gateway.  If our old gateway's
            # departure dropped it, the cluster gives it back (new generation)
            # only if nobody was granted the VDI meanwhile; otherwise FENCED
            # reaches the caller — never silently re-take a lock someone else
            # may have used (their data would be overwritten).
            grant = await s.lock(self.name, "", 0, proto.LOCK_MODE_REATTACH,
                                 generation=self.generation)
            if grant.generation != self.generation:
                log.warning("VDI %s: lock taken back after failover, generation %d -> %d",
                            self.name, self.generation, grant.generation)
            else:
                log.info("VDI %s: lock of generation %d re-attached", self.name,
                         grant.generation)
            self.generation = grant.generation
        elif s.supported and s.enforced and self.mode in (proto.LOCK_MODE_READ,
                                                          proto.LOCK_MODE_INACTIVE):
            await s.lock(self.name, self.tag, self.snapid, self.mode)

    async def _refresh_nodes(self) -> None:
        while True:
            await asyncio.sleep(NODE_REFRESH)
            try:
                await self.conn.refresh_nodes()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - next time
                log.debug("node list refresh failed: %s", e)

    def _fence_flags(self, args: proto.ObjArgs) -> int:
        if self.generation:
            proto.set_fence(args, self.generation)
            return proto.SD_FLAG_CMD_SESSION
        proto.set_fence(args, 0)
        return 0

    async def _call(self, op: int, args=None, payload=b"", data_length: int = 0,
                    flags: int = 0, fenced: bool = False, retry: bool = True):
        try:
            return await self._call_once(op, args, payload, data_length, flags, fenced, retry)
        except FencedError:
            if not (fenced and self.generation):
                raise
            sent = getattr(args, "pad", 0)  # the generation this request carried
            # Sent with a generation we have replaced since (a failover, a take
            # back by another request): just send it again with the new one.
            # Else our gateway may have dropped out of the cluster for a moment
            # (and its locks with it) while our connection to it stayed up:
            # take the lock back if nobody was granted the VDI since.  Anything
            # else (a takeover, an operator's unlock) stays FENCED.
            if sent == self.generation and not await self._take_back(sent):
                raise
            return await self._call_once(op, args, payload, data_length, flags, fenced, retry)

    async def _call_once(self, op, args, payload, data_length, flags, fenced, retry):
        sent = asyncio.get_running_loop().time()
        if not self._failover:  # e.g. the NBD export's in-process connection
            if fenced:
                flags |= self._fence_flags(args)
            out = await self.conn.call(op, args, payload, data_length, flags)
        else:
            prepare = (lambda: self._fence_flags(args)) if fenced else None
            out = await self.conn.call(op, args, payload, data_length, flags,
                                       retry=retry, prepare=prepare)
        if fenced and self.generation:  # the cluster accepted our generation
            self._confirmed_at = max(self._confirmed_at, sent)
        return out

    async def _take_back(self, gen: int) -> bool:
        """Re-attach our lock of generation ``gen`` through the current gateway
        (one attempt shared by every request that was fenced meanwhile); True
        if we hold it again."""
        s = self.session
        if not (s.supported and s.enforced):
            return False
        if self._taking_back is None:
            self._taking_back = asyncio.get_running_loop().create_task(self._take_back_once(gen))
        fut = self._taking_back
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._taking_back is fut:
                self._taking_back = None

    async def _take_back_once(self, gen: int) -> bool:
        if self.generation != gen:  # somebody took it back already
            return True
        try:
            grant = await self.session.lock(self.name, "", 0, proto.LOCK_MODE_REATTACH,
                                            generation=gen)
        except FencedError:
            return False
        log.warning("VDI %s: lock taken back through the same gateway, generation %d -> %d",
                    self.name, gen, grant.generation)
        self.generation = grant.generation
        return True

    def _needs_confirmation(self) -> bool:
        s = self.session
        return (s.supported and s.enforced and not self.is_snapshot
                and (self.generation or self.mode == proto.LOCK_MODE_READ))

    async def _confirm_lock(self) -> None:
        """Before answering a read from the cached inode alone: make sure our
        lock still stands (FencedError if not).  Concurrent readers share one
        confirmation."""
        loop = asyncio.get_running_loop()
        if not self._needs_confirmation() or loop.time() - self._confirmed_at < CONFIRM_WINDOW:
            return
        if self._confirming is None:
            self._confirming = loop.create_task(self._confirm_once())
        fut = self._confirming
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done() and self._confirming is fut:
                self._confirming = None

    async def _confirm_once(self) -> None:
        sent = asyncio.get_running_loop().time()
        gen = self.generation
        if not await self.session.confirm(self.vid, gen):
            if not (gen and await self._take_back(gen)):
                raise error_for(CODES["FENCED"], f"VDI {self.name}: our lock (generation "
                                                 f"{gen}) is gone; the VDI may have another writer")
        self._confirmed_at = max(self._confirmed_at, sent)

    async def _wcall(self, op: int, args: proto.ObjArgs, payload: bytes, flags: int = 0):
        """A write carrying our lock generation, so that the cluster can fence it."""
        return await self._call(op, args, payload, flags=flags, fenced=True)
