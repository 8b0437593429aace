"""Lock sessions of VDI clients (the pysheepdog extension of docs/protocol.md §17).

A :class:`LockSession` is one client's identity towards the cluster: a random
64-bit session id carried (behind ``SD_FLAG_CMD_SESSION``) in LOCK_VDI and
RELEASE_VDI, plus a renewal task that sends a lease heartbeat (LOCK_VDI in
``LOCK_MODE_RENEW``) often enough that the gateway never lets the lease
lapse: every ``min(2 s, grace / 3)``, the grace being what the gateway
announced.  When the client dies or stalls, the heartbeats stop and the
gateway releases the session's locks after the grace period.

Errors: :class:`VdiLockedError` (someone else holds the VDI),
:class:`FencedError` (our lock was released or taken over: our writes are
refused), :class:`InactiveError` (I/O on a VDI opened inactive).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from sheep import proto
from sheep.proto.errors import CODES, FencedError, SdError, VdiLockedError  # noqa: F401

log = logging.getLogger("sheep.proto.lock_client")

RENEW_MAX = 2.0  # seconds between heartbeats at most


class InactiveError(SdError):
    """I/O on a VDI that is open inactive (migration destination before activate)."""

    code = CODES["INVALID_PARMS"]


@dataclass
class Grant:
    vid: int
    copies: int
    block_size_shift: int
    generation: int  # 0: no exclusive lock (read-only, snapshot, inactive, no locking)


class LockSession:
    def __init__(self, conn, session_id: int | None = None, interval: float | None = None):
        self.conn = conn
        self.id = session_id or (secrets.randbits(63) | 1)
        self.interval = interval
        self.lease_ms = 0
        self.supported = False  # the server understands sessions
        self.enforced = False  # the cluster enforces locks
        self.lock_count = -1  # locks the gateway counted for us at the last renewal
        self._task: asyncio.Task | None = None

    async def lock(self, name: str, tag: str = "", snapid: int = 0,
                   mode: int = proto.LOCK_MODE_WRITE, generation: int = 0,
                   ltype: int = proto.LOCK_TYPE_NORMAL) -> Grant:
        args = proto.VdiArgs(snapid=snapid, type=ltype)
        proto.set_lock_session(args, self.id, mode, generation)
        rsp, _ = await self.conn.call(proto.Op.LOCK_VDI, args,
                                      payload=proto.vdi_name_payload(name, tag),
                                      flags=proto.SD_FLAG_CMD_SESSION)
        status, gen, lease_ms, _count = proto.session_reply(rsp.args)
        self.supported = bool(status & proto.LOCK_STATUS_SESSION)
        self.enforced = bool(status & proto.LOCK_STATUS_ENFORCED)
        if lease_ms:
            self.lease_ms = lease_ms
        return Grant(rsp.args.vdi_id, rsp.args.copies, rsp.args.block_size_shift, gen)

    async def release(self, vid: int, handover_to: int = 0) -> None:
        """Release our holds on ``vid``, or hand the exclusive lock to another session."""
        args = proto.VdiArgs(base_vdi_id=vid)
        if not self.supported:  # a Sheepdog 1.0 server: plain RELEASE_VDI
            if handover_to:
                raise SdError(CODES["INVALID_PARMS"], "the server does not support handover")
            await self.conn.call(proto.Op.RELEASE_VDI, args)
            return
        proto.set_release_session(args, self.id, handover_to)
        await self.conn.call(proto.Op.RELEASE_VDI, args, flags=proto.SD_FLAG_CMD_SESSION)

    async def renew(self) -> int:
        """One lease heartbeat; returns how many locks the cluster has for us."""
        args = proto.VdiArgs()
        proto.set_lock_session(args, self.id, proto.LOCK_MODE_RENEW)
        rsp, _ = await self.conn.call(proto.Op.LOCK_VDI, args, flags=proto.SD_FLAG_CMD_SESSION)
        self.lock_count = proto.session_reply(rsp.args)[3]
        return self.lock_count

    async def confirm(self, vid: int, generation: int) -> bool:
        """Does this session still hold ``vid`` (its exclusive grant of
        ``generation``, or with 0 a read hold) through the current gateway,
        as the gateway — which answers only while it is in the primary view —
        knows it now?"""
        args = proto.VdiArgs(base_vdi_id=vid)
        proto.set_lock_session(args, self.id, proto.LOCK_MODE_RENEW, generation)
        rsp, _ = await self.conn.call(proto.Op.LOCK_VDI, args, flags=proto.SD_FLAG_CMD_SESSION)
        status, _gen, _lease, self.lock_count = proto.session_reply(rsp.args)
        return bool(status & proto.LOCK_STATUS_HELD)

    def period(self) -> float:
        if self.interval:
            return self.interval
        if self.lease_ms:
            return max(0.05, min(RENEW_MAX, self.lease_ms / 3000))
        return RENEW_MAX

    def start(self) -> None:
        """Keep the lease alive (only useful when the server supports sessions)."""
        if self._task is None and self.supported and self.enforced:
            self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.period())
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the gateway may be restarting: keep trying
                log.warning("lease renewal of session %016x failed: %s", self.id, e)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
