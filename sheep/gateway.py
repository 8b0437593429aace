"""Gateway: object I/O entry point, fanned out to the replicas of the ring.

Guarantees:

* Writes, creates and removes go to all N replicas (N = min(copies, zones))
  in parallel and succeed only when every replica succeeded.
* Reads try the local copy first, then the other replicas; a replica that
  answers NO_OBJ, EIO or a checksum error is skipped, so corruption on one
  disk is never returned while a good copy exists.
* Placement uses the ring snapshot of one epoch per attempt.  A replica that
  is unreachable or answers with an epoch error makes the gateway wait for
  the next epoch (a membership change) and retry the whole operation on the
  new ring, invisibly to the client, for up to ``RETRY_WINDOW`` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from sheep import peer, proto
from sheep.errors import CODES, SdError, error_for
from sheep.net import AsyncConnection

log = logging.getLogger("sheep.gateway")

RETRY_WINDOW = 30.0
# A peer that does not answer a request for this long is treated as unreachable
# (its connection is dropped and the operation retried): covers hung processes
# and lost hosts, which do not close their connections.  Longer than the
# peer-side epoch wait (peer.EPOCH_WAIT).
PEER_STALL_TIMEOUT = 15.0

# The client write being served by this task, when it carries a fencing
# generation: every retry of its fan-out re-checks the lock (a context
# variable, so it follows the request through awaits and nothing else).
_FENCED_REQ: contextvars.ContextVar = contextvars.ContextVar("fenced_req", default=None)
RETRY_CODES = {CODES["OLD_NODE_VER"], CODES["NEW_NODE_VER"], CODES["NETWORK_ERROR"],
               CODES["WAIT_FOR_JOIN"], CODES["WAIT_FOR_FORMAT"], CODES["KILLED"],
               CODES["SHUTDOWN"]}
SKIP_ON_READ = {CODES["NO_OBJ"], CODES["EIO"]}


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
    def __init__(self, sheep):
        self.sheep = sheep
        self.peers = PeerPool()

    # ------------------------------------------------------------------
    # helpers

    def copies(self, oid: int, copies: int = 0) -> int:
        return copies or self.sheep.vdis.copies_of(proto.oid_to_vid(oid))

    def obj_size(self, oid: int) -> int:
        return proto.object_size(oid, self.sheep.vdis.shift_of(proto.oid_to_vid(oid)))

    async def _attempts(self, oid: int, copies: int):
        """Yield (epoch, replica nodes) per attempt, waiting for a new epoch between."""
        group = self.sheep.group
        deadline = time.monotonic() + RETRY_WINDOW
        while True:
            epoch, ring = group.epoch, group.ring
            nodes = ring.replicas(oid, copies)
            if not nodes:
                raise error_for(CODES["HALT"], "no node in the cluster stores objects")
            yield epoch, nodes
            left = deadline - time.monotonic()
            if left <= 0:
                raise error_for(CODES["NETWORK_ERROR"], f"replicas of {oid:016x} unreachable")
            await group.wait_epoch_change(epoch, min(left, 5.0))

    async def _peer(self, node, opcode, oid, epoch, copies, offset=0, payload=b"",
                    length=0, flags=0, cow_oid=0):
        args = proto.ObjArgs(oid=oid, cow_oid=cow_oid, copies=copies, offset=offset)
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            length = len(payload)
        req = proto.Request(opcode, args, flags=flags, epoch=epoch, data_length=length)
        _rsp, body = await self.sheep.gateway.peers.request(node, req, payload)
        return body

    async def _fanout(self, oid: int, copies: int, local, remote) -> None:
        """Run ``local()`` on this node / ``remote(node, epoch)`` on peers, all replicas."""
        copies = self.copies(oid, copies)
        fenced = _FENCED_REQ.get()
        first = True
        async for epoch, nodes in self._attempts(oid, copies):
            if fenced is not None and not first:
                # a retry may come after the writer's lock was broken: check again
                await self.sheep.locks.check_write(fenced)
            first = False
            calls = [local(epoch) if self.sheep.group.is_me(n) else remote(n, epoch)
                     for n in nodes]
            results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if not errors:
                return
            for e in errors:
                if not isinstance(e, SdError):
                    raise e
            if all(e.code in RETRY_CODES for e in errors):
                log.info("retrying %016x after: %s", oid, "; ".join(map(str, errors)))
                continue
            raise next(e for e in errors if e.code not in RETRY_CODES)

    # ------------------------------------------------------------------
    # object operations (used by client requests and internal work steps)

    async def read(self, oid: int, offset: int, length: int, copies: int = 0) -> bytes:
        copies = self.copies(oid, copies)
        store, group = self.sheep.store, self.sheep.group
        last: SdError | None = None
        async for epoch, nodes in self._attempts(oid, copies):
            order = sorted(nodes, key=lambda n: not group.is_me(n))
            retry = False
            for node in order:
                try:
                    if group.is_me(node):
                        return await peer.on_local(self.sheep, oid, store.read, oid, offset, length)
                    return await self._peer(node, proto.Op.READ_PEER, oid, epoch, copies,
                                            offset, length=length)
                except SdError as e:
                    last = e
                    if e.code in RETRY_CODES:
                        retry = True
                    elif e.code not in SKIP_ON_READ:
                        raise
                    if e.code == CODES["EIO"]:
                        log.error("replica of %016x on %s is bad: %s", oid, node, e)
            if not retry:
                raise last  # every replica answered NO_OBJ or EIO

    async def write(self, oid: int, offset: int, data, copies: int = 0) -> None:
        store = self.sheep.store

        async def local(epoch):
            await peer.on_local(self.sheep, oid, store.write, oid, data, offset)
            peer.settle_write(self.sheep, oid, epoch)

        async def remote(node, epoch):
            await self._peer(node, proto.Op.WRITE_PEER, oid, epoch, copies, offset, data)

        await self._fanout(oid, copies, local, remote)

    async def create_and_write(self, oid: int, offset: int, data, copies: int = 0) -> None:
        store = self.sheep.store
        size = self.obj_size(oid)
        if offset + len(data) > size:
            raise error_for(CODES["INVALID_PARMS"], "write beyond the end of the object")

        async def local(epoch):
            await self.sheep.io(store.create_and_write, oid, size, data, offset,
                                proto.is_sparse_obj(oid))
            peer.settle_write(self.sheep, oid, epoch)

        async def remote(node, epoch):
            await self._peer(node, proto.Op.CREATE_AND_WRITE_PEER, oid, epoch, copies,
                             offset, data if data else b"", length=len(data),
                             flags=proto.SD_FLAG_CMD_WRITE)

        await self._fanout(oid, copies, local, remote)

    async def remove(self, oid: int, copies: int = 0) -> None:
        store = self.sheep.store

        async def local(epoch):
            await self.sheep.io(store.remove, oid)

        async def remote(node, epoch):
            await self._peer(node, proto.Op.REMOVE_PEER, oid, epoch, copies)

        await self._fanout(oid, copies, local, remote)

    # ------------------------------------------------------------------
    # client request handlers

    async def _check_data_write(self, oid: int) -> None:
        if proto.is_data_obj(oid):
            vid = proto.oid_to_vid(oid)
            st = await self.sheep.vdis.await_state(vid)
            if st is None or st.deleted:
                raise error_for(CODES["NO_VDI"], f"object {oid:016x} belongs to no VDI")
            if st.snapshot:
                raise error_for(CODES["READONLY"])

    async def _check_index(self, oid: int) -> None:
        """A data object must lie inside its VDI (VDIs only grow, so re-read on doubt)."""
        if not proto.is_data_obj(oid):
            return
        vdis = self.sheep.vdis
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

    async def handle_read(self, req: proto.Request, payload: bytes):
        a = req.args
        self._check_range(a.oid, a.offset, req.data_length)
        return None, await self.read(a.oid, a.offset, req.data_length, a.copies)

    async def handle_write(self, req: proto.Request, payload: bytes):
        a = req.args
        if req.flags & proto.SD_FLAG_CMD_SESSION:
            await self.sheep.locks.check_write(req)  # fencing (sheep.lock)
            _FENCED_REQ.set(req)  # ... and again before every retry (_fanout)
        await self._check_data_write(a.oid)
        self._check_range(a.oid, a.offset, len(payload))
        if proto.is_vdi_obj(a.oid) and a.offset < proto.SD_INODE_HEADER_SIZE:
            await self._check_header_write(a, payload)
        if proto.is_vdi_obj(a.oid) and a.offset + len(payload) > proto.SD_INODE_HEADER_SIZE \
                and a.offset < proto.SD_INODE_INDEX_END:
            await self._write_index(a, payload)
        else:
            await self.write(a.oid, a.offset, payload, a.copies)
        return None, b""

    async def handle_create(self, req: proto.Request, payload: bytes):
        a = req.args
        if req.flags & proto.SD_FLAG_CMD_SESSION:
            await self.sheep.locks.check_write(req)  # fencing (sheep.lock)
            _FENCED_REQ.set(req)  # ... and again before every retry (_fanout)
        await self._check_data_write(a.oid)
        await self._check_index(a.oid)
        self._check_range(a.oid, a.offset, len(payload))
        data = payload
        offset = a.offset
        if req.flags & proto.SD_FLAG_CMD_COW and a.cow_oid:
            size = self.obj_size(a.oid)
            if len(payload) != size:
                base = bytearray(await self.read(a.cow_oid, 0, size))
                base[offset:offset + len(payload)] = payload
                data, offset = bytes(base), 0
        await self.create_and_write(a.oid, offset, data, a.copies)
        return None, b""

    async def handle_remove(self, req: proto.Request, payload: bytes):
        await self.remove(req.args.oid, req.args.copies)
        return None, b""

    async def handle_discard(self, req: proto.Request, payload: bytes):
        """DISCARD_OBJ (§7.4): unlink a data object from its inode, then remove it."""
        oid = req.args.oid
        if not proto.is_data_obj(oid):
            raise error_for(CODES["INVALID_PARMS"], "DISCARD_OBJ needs a data object")
        vid, idx = proto.oid_to_vid(oid), proto.data_oid_to_idx(oid)
        if req.flags & proto.SD_FLAG_CMD_SESSION:
            await self.sheep.locks.check_write(req)  # a discard is a write: fenced too
            _FENCED_REQ.set(req)
        await self._check_data_write(oid)  # NO_VDI; READONLY: a snapshot's inode never changes
        entry = await self.read(proto.vid_to_vdi_oid(vid), proto.data_vdi_id_offset(idx), 4)
        if int.from_bytes(entry, "little"):
            args = proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid), offset=proto.data_vdi_id_offset(idx))
            await self._write_index(args, b"\0\0\0\0")
        return None, b""

    async def _write_index(self, a: proto.ObjArgs, payload: bytes) -> None:
        """WRITE_OBJ touching ``data_vdi_id``: write, then release dropped references.

        Every entry whose old value ``o`` was non-zero and changed drops one
        reference to ``vid_to_data_oid(o, i)``; once the write has landed,
        :meth:`sheep.refcount.Refs.release` removes the objects nobody holds.
        """
        lo = max(a.offset, proto.SD_INODE_HEADER_SIZE)
        hi = min(a.offset + len(payload), proto.SD_INODE_INDEX_END)
        first = (lo - proto.SD_INODE_HEADER_SIZE) // 4
        last = (hi - proto.SD_INODE_HEADER_SIZE + 3) // 4
        base = proto.data_vdi_id_offset(first)
        old = await self.read(a.oid, base, 4 * (last - first))
        await self.write(a.oid, a.offset, payload, a.copies)
        new = bytearray(old)
        new[lo - base:hi - base] = payload[lo - a.offset:hi - a.offset]
        dropped = []
        for k in range(last - first):
            o = int.from_bytes(old[4 * k:4 * k + 4], "little")
            n = int.from_bytes(new[4 * k:4 * k + 4], "little")
            if o and o != n:
                dropped.append((o, first + k))
        await self.sheep.vdis.refs.release(dropped)

    async def _check_header_write(self, a: proto.ObjArgs, payload: bytes) -> None:
        """An inode header write may grow ``vdi_size`` but never shrink it."""
        off = proto.INODE_VDI_SIZE_OFF
        if not (a.offset <= off and a.offset + len(payload) >= off + 8):
            return
        new = int.from_bytes(payload[off - a.offset:off - a.offset + 8], "little")
        vid = proto.oid_to_vid(a.oid)
        cur = int.from_bytes(await self.read(a.oid, off, 8, a.copies), "little")
        if new < cur:
            raise error_for(CODES["INVALID_PARMS"],
                            f"VDI {vid:#x}: shrinking from {cur} to {new} bytes is not supported")
        st = self.sheep.vdis.state(vid)
        if new > (1 << (st.block_size_shift if st else 22)) * proto.MAX_DATA_OBJS:
            raise error_for(CODES["INVALID_PARMS"], f"VDI {vid:#x}: size {new} is too large")
        if st is not None:
            st.size = max(st.size, new)
