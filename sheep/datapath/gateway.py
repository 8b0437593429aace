"""Gateway: object I/O entry point, fanned out to the replicas of the ring.

Guarantees:

* Writes, creates and removes go to all N replicas (N = min(copies, zones))
  in parallel and succeed only when every replica succeeded; this node's own
  leg runs the replica code of ``sheep.datapath.replica`` (the same epoch, serving and
  fencing checks as a peer's).
* Reads try the local copy first, then the other replicas; a replica that
  answers NO_OBJ, EIO or a checksum error is skipped, so corruption on one
  disk is never returned while a good copy exists.  A local copy that is
  missing because recovery has not brought it yet is not waited for: its
  recovery starts and the other replicas are asked; only if none of them
  serves the read does it wait for that recovery, as before.
* Placement uses the ring snapshot of one epoch per attempt.  A replica that
  is unreachable or answers with an epoch error makes the gateway wait for
  the next epoch and retry the whole operation on the new ring; HALT and
  AGAIN (a replica briefly cut off, an object not recovered yet) are retried
  after a short pause; a write that another replica applied while one
  answered NO_OBJ is retried too (whatever the rest answered); NO_OBJ with
  no replica applying the write is final.  All invisibly to the client, for up to
  ``RETRY_WINDOW`` seconds.
* Fencing: a client write that carries a lock generation is checked here and
  again before every retry, and the generation travels with every peer
  write (with this gateway's identity), where each replica checks it under
  the object's lock (``sheep.datapath.replica``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sheep import proto
from sheep.datapath.replica import EPOCH_CODES, RETRY_CODES, Fence
from sheep.proto.connection import AsyncConnection
from sheep.proto.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.datapath.gateway")

RETRY_WINDOW = 30.0
# A peer that does not answer a request for this long is treated as unreachable
# (its connection is dropped and the operation retried): covers hung processes
# and lost hosts, which do not close their connections.  Longer than the
# peer-side epoch wait (replica.EPOCH_WAIT).
PEER_STALL_TIMEOUT = 15.0

SKIP_ON_READ = {CODES["NO_OBJ"], CODES["EIO"]}


class _Attempts:
    """The attempts of one object operation within ``RETRY_WINDOW``:
    :meth:`current` gives (epoch, ring, replica nodes) of the epoch now in
    force; :meth:`wait` of the error that ended an attempt waits before the
    next (an epoch change for epoch-like errors, a growing pause otherwise)
    and raises NETWORK_ERROR once the window is spent.  The first attempt
    costs no await."""

    __slots__ = ("group", "oid", "copies", "deadline", "pause", "epoch")

    def __init__(self, group, oid: int, copies: int):
        self.group, self.oid, self.copies = group, oid, copies
        self.deadline = time.monotonic() + RETRY_WINDOW
        self.pause = 0.05
        self.epoch = 0  # of the last attempt: an epoch change is waited for from there

    def current(self) -> tuple:
        group = self.group
        self.epoch = epoch = group.epoch
        ring = group.ring
        nodes = ring.replicas(self.oid, self.copies)
        if not nodes:
            raise error_for(CODES["HALT"], "no node in the cluster stores objects")
        return epoch, ring, nodes

    async def wait(self, why: int) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error_for(CODES["NETWORK_ERROR"], f"replicas of {self.oid:016x} unreachable")
        if why in EPOCH_CODES:
            await self.group.wait_epoch_change(self.epoch, min(left, 5.0))
        else:
            await asyncio.sleep(min(self.pause, left))
            self.pause = min(self.pause * 2, 1.0)


class PeerPool:
    """One pipelined connection per peer sheep, opened on first use."""

    def __init__(self):
        self._conns: dict[tuple[str, int], AsyncConnection] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    async def get(self, host: str, port: int) -> AsyncConnection:
        key = (host, port)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._conns.get(key)
            if conn is None or conn.closed:
                conn = await AsyncConnection.open(host, port, timeout=3.0,
                                                  stall_timeout=PEER_STALL_TIMEOUT)
                self._conns[key] = conn
            return conn

    async def request(self, node: proto.SdNode, req: proto.Request, payload=b""):
        try:
            conn = await self.get(node.host, node.port)
            # No per-request timer (it costs a task per request): a peer that
            # dies closes the connection and fails every request in flight.
            rsp, body = await conn.request(req, payload)
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            raise error_for(CODES["NETWORK_ERROR"], f"{node}: {e}") from None
        if rsp.result:
            raise error_for(rsp.result)
        return rsp, body

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


class Gateway:
    """Object I/O on every replica of an object (the guarantees above).

    ``group`` the membership (epoch, ring, turns of cluster ops); ``vdis`` the
    VDI table (redundancy, state and size per VDI, references); ``locks`` the
    lock table (fenced writes); ``replica`` this node's holder side, run as
    the local leg; ``peers`` the pool of connections to the other sheep for
    forwarded I/O (recovery traffic has a pool of its own: a forwarded write
    can wait on a peer for on-access recovery, which fetches from this node;
    were that fetch queued behind forwarded I/O on a connection both sheep
    stopped reading, 128 in progress each way, neither would ever be read)."""

    def __init__(self, *, group, vdis, locks, replica, peers: PeerPool):
        self.group, self.vdis, self.locks = group, vdis, locks
        self.replica, self.peers = replica, peers

    # ------------------------------------------------------------------
    # helpers

    def copies(self, oid: int, copies: int = 0) -> int:
        return copies or self.vdis.copies_of(proto.oid_to_vid(oid))

    def _client_copies(self, oid: int, requested: int) -> int:
        """The redundancy a client request is placed with: the VDI's own
        (what recovery uses too) whenever the VDI is known — a client's cached
        count is stale after ``vdi alter-copy`` — else what it asked for."""
        st = self.vdis.state(proto.oid_to_vid(oid))
        return st.copies if st is not None else requested

    def obj_size(self, oid: int) -> int:
        return self.vdis.obj_size(oid)

    def _attempts(self, oid: int, copies: int) -> "_Attempts":
        return _Attempts(self.group, oid, copies)

    async def _peer(self, node, opcode, oid, epoch, copies, offset=0, payload=b"",
                    length=0, flags=0, fence=None, ring=None):
        args = proto.ObjArgs(oid=oid, copies=copies, offset=offset)
        if fence is not None:  # the credentials each replica checks (sheep.peer)
            flags |= proto.SD_FLAG_CMD_SESSION
            proto.set_fence(args, fence.gen)
            args.cow_oid = 1 + next(i for i, n in enumerate(ring.nodes)
                                    if self.group.is_me(n))
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            length = len(payload)
        req = proto.Request(opcode, args, flags=flags, epoch=epoch, data_length=length)
        _rsp, body = await self.peers.request(node, req, payload)
        return body

    def _fence(self, req: proto.Request) -> Fence | None:
        gen = proto.fence_of(req)
        if not gen or not self.locks.enforced:
            return None
        return Fence(gen, self.locks.me)

    async def _fanout(self, oid: int, copies: int, local, remote, fence=None) -> None:
        """Run ``local(epoch)`` here / ``remote(node, epoch, ring)`` on peers, all replicas."""
        copies = self.copies(oid, copies)
        locks, vid = self.locks, proto.oid_to_vid(oid)
        if fence is not None:
            # admitted only while the grant stands, and counted from the same
            # moment on: a grant that ends waits for this fan-out (draining)
            locks.fence_check(vid, fence.gen, fence.node)
            locks.check_not_frozen(vid)  # a snapshot is copying the index: AGAIN
            locks.begin_write(vid, fence.gen)
        attempts = self._attempts(oid, copies)
        why = None
        try:
            while True:
                if why is not None:
                    await attempts.wait(why)
                epoch, ring, nodes = attempts.current()
                self.group.check_op_token()  # a cluster op's work step that lost its turn
                if why is not None and fence is not None:
                    # a retry: fine while the grant stands or is being drained
                    # (it was admitted before), never after the grant moved on
                    locks.fence_check(vid, fence.gen, fence.node, draining_ok=True)
                calls = [local(epoch) if self.group.is_me(n) else remote(n, epoch, ring)
                         for n in nodes]
                results = await asyncio.gather(*calls, return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if not errors:
                    return
                for e in errors:
                    if not isinstance(e, SdError):
                        raise e
                codes = {e.code for e in errors}
                others = codes - {CODES["NO_OBJ"]}
                # NO_OBJ from some replicas while another applied the write (the
                # others answering NO_OBJ or something retryable): a replica
                # could not see the object yet; try again.  When no replica
                # applied it, NO_OBJ is final (a replica answers it only once
                # recovery found no copy anywhere), even next to a HALT.
                if codes <= RETRY_CODES or (others <= RETRY_CODES
                                            and len(errors) < len(results)):
                    log.info("retrying %016x after: %s", oid, "; ".join(map(str, errors)))
                    why = (min(codes & EPOCH_CODES, default=None)
                           or min(codes & RETRY_CODES, default=None) or min(codes))
                    continue
                raise next(e for e in errors if e.code not in RETRY_CODES)
        finally:
            if fence is not None:
                locks.end_write(vid, fence.gen)

    # ------------------------------------------------------------------
    # object operations (used by client requests and internal work steps)

    async def read(self, oid: int, offset: int, length: int, copies: int = 0) -> bytes:
        copies = self.copies(oid, copies)
        group = self.group
        last: SdError | None = None
        attempts = self._attempts(oid, copies)
        why = None
        while True:
            if why is not None:
                await attempts.wait(why)
            epoch, _ring, nodes = attempts.current()
            order = sorted(nodes, key=lambda n: not group.is_me(n))
            why = None
            i = 0
            while i < len(order):
                node = order[i]
                i += 1
                try:
                    if group.is_me(node):
                        # missing here (recovery not there yet)? the others first
                        return await self.replica.read(oid, offset, length, epoch,
                                                       wait=i == len(order))
                    return await self._peer(node, proto.Op.READ_PEER, oid, epoch, copies,
                                            offset, length=length)
                except SdError as e:
                    if getattr(e, "recovering", False):
                        order.append(node)  # last, waiting: if no other holder serves it
                        continue
                    last = e
                    if e.code in RETRY_CODES:
                        why = why if why in EPOCH_CODES else e.code
                    elif e.code not in SKIP_ON_READ:
                        raise
                    if e.code == CODES["EIO"]:
                        log.error("replica of %016x on %s is bad: %s", oid, node, e)
            if why is None:
                raise last  # every replica answered NO_OBJ or EIO

    async def write(self, oid: int, offset: int, data, copies: int = 0, fence=None) -> None:
        async def local(epoch):
            await self.replica.write(oid, data, offset, epoch, fence)

        async def remote(node, epoch, ring):
            await self._peer(node, proto.Op.WRITE_PEER, oid, epoch, copies, offset, data,
                             fence=fence, ring=ring)

        await self._fanout(oid, copies, local, remote, fence)

    async def create_and_write(self, oid: int, offset: int, data, copies: int = 0,
                               fence=None) -> None:
        size = self.obj_size(oid)
        if offset + len(data) > size:
            raise error_for(CODES["INVALID_PARMS"], "write beyond the end of the object")

        async def local(epoch):
            await self.replica.create(oid, data, offset, epoch, fence)

        async def remote(node, epoch, ring):
            await self._peer(node, proto.Op.CREATE_AND_WRITE_PEER, oid, epoch, copies,
                             offset, data if data else b"", length=len(data),
                             flags=proto.SD_FLAG_CMD_WRITE, fence=fence, ring=ring)

        await self._fanout(oid, copies, local, remote, fence)

    async def remove(self, oid: int, copies: int = 0) -> None:
        async def local(epoch):
            await self.replica.remove(oid, epoch)

        async def remote(node, epoch, ring):
            try:
                await self._peer(node, proto.Op.REMOVE_PEER, oid, epoch, copies)
            except SdError as e:
                if e.code != CODES["NO_OBJ"]:  # a 1.0 peer: already gone is fine
                    raise

        await self._fanout(oid, copies, local, remote)

    # ------------------------------------------------------------------
    # client request handlers

    async def _check_data_write(self, oid: int) -> None:
        if proto.is_data_obj(oid):
            vid = proto.oid_to_vid(oid)
            st = await self.vdis.await_state(vid)
            if st is None or st.deleted:
                raise error_for(CODES["NO_VDI"], f"object {oid:016x} belongs to no VDI")
            if st.snapshot:
                raise error_for(CODES["READONLY"])

    async def _check_index(self, oid: int) -> None:
        """A data object must lie inside its VDI (VDIs only grow, so re-read on doubt)."""
        if not proto.is_data_obj(oid):
            return
        vdis = self.vdis
        st = vdis.state(proto.oid_to_vid(oid))
        idx = proto.data_oid_to_idx(oid)
        if idx * (1 << st.block_size_shift) < st.size:
            return
        ino = await vdis.read_header(st.vid)
        st.size = max(st.size, ino.vdi_size)
        if idx * (1 << st.block_size_shift) >= st.size:
            raise error_for(CODES["INVALID_PARMS"],
                            f"object index {idx} is beyond the size of VDI {st.vid:#x}")

    def _check_range(self, oid: int, offset: int, length: int) -> None:
        if offset + length > self.obj_size(oid):
            raise error_for(CODES["INVALID_PARMS"],
                            f"range {offset}+{length} is beyond the end of object {oid:016x}")

    async def _client_fence(self, req: proto.Request, write: bool = True):
        """Check a flagged client request's lock generation here; the fence
        the replicas check again."""
        if not req.flags & proto.SD_FLAG_CMD_SESSION:
            return None
        await self.locks.check_write(req, write)
        return self._fence(req)

    async def handle_read(self, req: proto.Request, payload: bytes):
        a = req.args
        self._check_range(a.oid, a.offset, req.data_length)
        # a fenced reader must not read what it cannot own
        await self._client_fence(req, write=False)
        return None, await self.read(a.oid, a.offset, req.data_length,
                                     self._client_copies(a.oid, a.copies))

    async def handle_write(self, req: proto.Request, payload: bytes):
        a = req.args
        fence = await self._client_fence(req)
        await self._check_data_write(a.oid)
        self._check_range(a.oid, a.offset, len(payload))
        if proto.is_vdi_obj(a.oid) and a.offset < proto.SD_INODE_HEADER_SIZE:
            await self._check_header_write(a, payload)
        copies = self._client_copies(a.oid, a.copies)
        if proto.is_vdi_obj(a.oid) and a.offset + len(payload) > proto.SD_INODE_HEADER_SIZE \
                and a.offset < proto.SD_INODE_INDEX_END:
            await self._write_index(a, payload, fence, copies)
        else:
            await self.write(a.oid, a.offset, payload, copies, fence)
        return None, b""

    async def handle_create(self, req: proto.Request, payload: bytes):
        a = req.args
        fence = await self._client_fence(req)
        await self._check_data_write(a.oid)
        await self._check_index(a.oid)
        self._check_range(a.oid, a.offset, len(payload))
        data = payload
        offset = a.offset
        if req.flags & proto.SD_FLAG_CMD_COW and a.cow_oid:
            size = self.obj_size(a.oid)
            if len(payload) != size:
                # the parent may have just become a snapshot under writes still
                # landing in it: copy it once they have landed
                await self.locks.wait_drained(proto.oid_to_vid(a.cow_oid), code="AGAIN")
                base = await self.read(a.cow_oid, 0, size)
                if not isinstance(base, bytearray):  # (a remote read already is one)
                    base = bytearray(base)
                base[offset:offset + len(payload)] = payload
                data, offset = base, 0  # one copy of the object, shared by every leg
        await self.create_and_write(a.oid, offset, data, self._client_copies(a.oid, a.copies),
                                    fence)
        return None, b""

    async def handle_remove(self, req: proto.Request, payload: bytes):
        a = req.args
        await self.remove(a.oid, self._client_copies(a.oid, a.copies))
        return None, b""

    async def handle_discard(self, req: proto.Request, payload: bytes):
        """DISCARD_OBJ (§7.4): unlink a data object from its inode, then remove it."""
        oid = req.args.oid
        if not proto.is_data_obj(oid):
            raise error_for(CODES["INVALID_PARMS"], "DISCARD_OBJ needs a data object")
        vid, idx = proto.oid_to_vid(oid), proto.data_oid_to_idx(oid)
        fence = await self._client_fence(req)  # a discard is a write: fenced too
        await self._check_data_write(oid)  # NO_VDI; READONLY: a snapshot's inode never changes
        entry = await self.read(proto.vid_to_vdi_oid(vid), proto.data_vdi_id_offset(idx), 4)
        if int.from_bytes(entry, "little"):
            args = proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid), offset=proto.data_vdi_id_offset(idx))
            await self._write_index(args, b"\0\0\0\0", fence)
        return None, b""

    async def _write_index(self, a: proto.ObjArgs, payload: bytes, fence=None,
                           copies: int = 0) -> None:
        """WRITE_OBJ touching ``data_vdi_id``: write, then release dropped references.

        Every entry whose old value ``o`` was non-zero and changed drops one
        reference to ``vid_to_data_oid(o, i)``; once the write has landed,
        :meth:`sheep.vdi.refcount.Refs.release` removes the objects nobody holds.
        """
        lo = max(a.offset, proto.SD_INODE_HEADER_SIZE)
        hi = min(a.offset + len(payload), proto.SD_INODE_INDEX_END)
        first = (lo - proto.SD_INODE_HEADER_SIZE) // 4
        last = (hi - proto.SD_INODE_HEADER_SIZE + 3) // 4
        base = proto.data_vdi_id_offset(first)
        old = await self.read(a.oid, base, 4 * (last - first), copies)
        await self.write(a.oid, a.offset, payload, copies, fence)
        new = bytearray(old)
        new[lo - base:hi - base] = payload[lo - a.offset:hi - a.offset]
        dropped = []
        for k in range(last - first):
            o = int.from_bytes(old[4 * k:4 * k + 4], "little")
            n = int.from_bytes(new[4 * k:4 * k + 4], "little")
            if o and o != n:
                dropped.append((o, first + k))
        await self.vdis.refs.release(dropped)

    async def _check_header_write(self, a: proto.ObjArgs, payload: bytes) -> None:
        """An inode header write may grow ``vdi_size`` but never shrink it."""
        off = proto.INODE_VDI_SIZE_OFF
        if not (a.offset <= off and a.offset + len(payload) >= off + 8):
            return
        new = int.from_bytes(payload[off - a.offset:off - a.offset + 8], "little")
        vid = proto.oid_to_vid(a.oid)
        copies = self._client_copies(a.oid, a.copies)
        cur = int.from_bytes(await self.read(a.oid, off, 8, copies), "little")
        if new < cur:
            raise error_for(CODES["INVALID_PARMS"],
                            f"VDI {vid:#x}: shrinking from {cur} to {new} bytes is not supported")
        st = self.vdis.state(vid)
        if new > (1 << (st.block_size_shift if st else 22)) * proto.MAX_DATA_OBJS:
            raise error_for(CODES["INVALID_PARMS"], f"VDI {vid:#x}: size {new} is too large")
        if st is not None:
            st.size = max(st.size, new)
