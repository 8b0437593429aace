"""Workload definitions and the two engines that run them.

* :func:`run_sheep` — an asyncio (uvloop) client over ``sheep.proto.connection.AsyncConnection``:
  ``qd`` workers, each with one request in flight, spread round-robin over
  ``conns_per_node`` pipelined connections to every node (each node acts as a
  gateway).  Reads are READ_OBJ, writes WRITE_OBJ on objects created by
  :func:`prepare_sheep`.
* :class:`FileTarget` — the local baseline: the same offsets on a plain file with
  ``os.pread``/``os.pwrite`` from ``qd`` threads, synced like the cluster it
  is set beside: ``sync=False`` (a ``sheep -n`` cluster) leaves writes in the
  page cache; ``sync=True`` (a durable cluster, whose replicas ``fdatasync``
  each write before acknowledging it) calls ``os.fdatasync`` after every
  timed write, inside the timed span.

Both run each workload for a fixed time, stop issuing at the deadline, wait
for what is in flight, and count completed operations.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import threading
import time
import zlib
from dataclasses import dataclass

from sheep import proto
from sheep.proto.connection import AsyncConnection

KiB, MiB = 1024, 1024 * 1024
OBJ = proto.SD_DATA_OBJ_SIZE


@dataclass(frozen=True)
class Workload:
    name: str
    op: str  # "read" | "write"
    bs: int
    qd: int
    seq: bool

    @property
    def label(self) -> str:
        size = f"{self.bs // MiB} MiB" if self.bs >= MiB else f"{self.bs // KiB} KiB"
        kind = "seq" if self.seq else "rand"
        return f"{size} {kind} {self.op}, QD {self.qd}"


WORKLOADS = [
    Workload("seq-write-1m-qd8", "write", MiB, 8, True),
    Workload("seq-read-1m-qd8", "read", MiB, 8, True),
    Workload("rand-write-4k-qd1", "write", 4 * KiB, 1, False),
    Workload("rand-write-4k-qd16", "write", 4 * KiB, 16, False),
    Workload("rand-read-4k-qd1", "read", 4 * KiB, 1, False),
    Workload("rand-read-4k-qd16", "read", 4 * KiB, 16, False),
]


class Offsets:
    """Offsets for one workload: sequential (shared cursor) or uniform random."""

    def __init__(self, wl: Workload, size: int, seed: int = 1):
        self.bs, self.size, self.seq = wl.bs, size, wl.seq
        self.nblocks = size // wl.bs
        self.cursor = 0
        self.rng = random.Random(seed)

    def next(self) -> int:
        if self.seq:
            off = self.cursor
            self.cursor = (off + self.bs) % (self.nblocks * self.bs)
            return off
        return self.rng.randrange(self.nblocks) * self.bs


def payloads(bs: int, count: int = 8) -> list[bytes]:
    """Incompressible, non-zero buffers (the store skips CRCs of zero blocks)."""
    return [os.urandom(bs) for _ in range(count)]


@dataclass
class Result:
    ops: int
    seconds: float
    bs: int
    client_cpu: float  # CPU seconds used by this process
    lat_p50_us: float
    lat_p99_us: float
    server_cpu: float = 0.0  # CPU seconds used by the daemons (sheep only)
    machine_cpu: float = 0.0  # CPU seconds used by the whole machine (sheep only)

    @property
    def iops(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def mib_s(self) -> float:
        return self.iops * self.bs / MiB

    def as_dict(self) -> dict:
        return {"ops": self.ops, "seconds": round(self.seconds, 4), "iops": round(self.iops, 1),
                "mib_s": round(self.mib_s, 2), "lat_p50_us": round(self.lat_p50_us, 1),
                "lat_p99_us": round(self.lat_p99_us, 1),
                "client_cpu_s": round(self.client_cpu, 3),
                "client_cores": round(self.client_cpu / self.seconds, 3) if self.seconds else 0,
                "server_cpu_s": round(self.server_cpu, 3),
                "server_cores": round(self.server_cpu / self.seconds, 3) if self.seconds else 0,
                "machine_cores": round(self.machine_cpu / self.seconds, 3) if self.seconds else 0}


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentiles(lat: list[float]) -> tuple[float, float]:
    if not lat:
        return 0.0, 0.0
    lat.sort()
    return (lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)


# ---------------------------------------------------------------------------
# sheep client


class SheepError(RuntimeError):
    pass


class SheepTarget:
    """Pipelined connections to every node of a cluster, for one VDI."""

    def __init__(self, ports: list[int], vid: int, size: int, conns_per_node: int = 2,
                 host: str = "127.0.0.1"):
        self.ports, self.vid, self.size = ports, vid, size
        self.conns_per_node, self.host = conns_per_node, host
        self.conns: list[AsyncConnection] = []

    async def open(self) -> None:
        # Interleave nodes so that worker i % len(conns) cycles over the nodes.
        for _ in range(self.conns_per_node):
            for p in self.ports:
                self.conns.append(await AsyncConnection.open(self.host, p))

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()

    async def call(self, conn: AsyncConnection, req: proto.Request, payload=b"") -> bytes:
        if payload:
            req.flags |= proto.SD_FLAG_CMD_WRITE
            req.data_length = len(payload)
        rsp, body = await conn.request(req, payload, timeout=120.0)
        if rsp.result:
            raise SheepError(f"{proto.Op(req.opcode).name} on {conn.port} failed: "
                             f"result {rsp.result:#x}")
        return body

    async def prepare(self, concurrency: int = 6, progress=None) -> None:
        """Create every data object of the working set with random contents
        (CREATE_AND_WRITE_OBJ of the whole object, then WRITE_OBJ of its
        ``data_vdi_id`` entry in the inode, like dog does)."""
        nobj = -(-self.size // OBJ)
        todo = iter(range(nobj))
        done = 0
        bufs = payloads(OBJ, 2)
        vid_le = self.vid.to_bytes(4, "little")

        async def worker(k: int) -> None:
            nonlocal done
            conn = self.conns[k % len(self.conns)]
            for idx in todo:
                await self.call(conn, proto.Request(
                    proto.Op.CREATE_AND_WRITE_OBJ,
                    proto.ObjArgs(oid=proto.vid_to_data_oid(self.vid, idx), offset=0)),
                    bufs[idx % 2])
                await self.call(conn, proto.Request(
                    proto.Op.WRITE_OBJ,
                    proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                  offset=proto.data_vdi_id_offset(idx))), vid_le)
                done += 1
                if progress:
                    progress(done, nobj)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))

    async def run(self, wl: Workload, seconds: float, warmup: float = 0.0) -> Result:
        if warmup > 0:
            await self._run(wl, warmup)
        return await self._run(wl, seconds)

    async def _run(self, wl: Workload, seconds: float) -> Result:
        offs = Offsets(wl, self.size, seed=zlib.crc32(wl.name.encode()))
        bufs = payloads(wl.bs) if wl.op == "write" else None
        vid = self.vid
        write = wl.op == "write"
        opcode = proto.Op.WRITE_OBJ if write else proto.Op.READ_OBJ
        flags = proto.SD_FLAG_CMD_WRITE if write else 0
        bs = wl.bs
        lat: list[float] = []
        counts = [0] * wl.qd
        clock = time.perf_counter

        async def worker(k: int, deadline: float) -> None:
            conn = self.conns[k % len(self.conns)]
            args = proto.ObjArgs()
            req = proto.Request(opcode, args, flags=flags, data_length=bs)
            n = 0
            ap = lat.append
            while True:
                t0 = clock()
                if t0 >= deadline:
                    break
                off = offs.next()
                idx, o = divmod(off, OBJ)
                args.oid = (vid << 32) | idx
                args.offset = o
                rsp, body = await conn.request(req, bufs[n & 7] if write else b"")
                if rsp.result:
                    raise SheepError(f"{wl.name}: {proto.Op(opcode).name} of "
                                     f"{args.oid:016x}+{o} on port {conn.port} failed: "
                                     f"result {rsp.result:#x}")
                if not write and len(body) != bs:
                    raise SheepError(f"{wl.name}: short read ({len(body)} bytes)")
                ap(clock() - t0)
                n += 1
            counts[k] = n

        cpu0, t0 = _cpu_self(), clock()
        deadline = t0 + seconds
        await asyncio.gather(*(worker(k, deadline) for k in range(wl.qd)))
        elapsed = clock() - t0
        p50, p99 = _percentiles(lat)
        return Result(sum(counts), elapsed, bs, _cpu_self() - cpu0, p50, p99)


# ---------------------------------------------------------------------------
# local file baseline


class FileTarget:
    """A plain file of ``size`` bytes at ``path``.  ``sync``: every timed
    write is followed by ``os.fdatasync`` (what a durable sheep does per
    write); without it writes stay in the page cache (``sheep -n``).  The
    untimed :meth:`prepare` writes the whole file once and, with ``sync``,
    syncs it once at the end."""

    def __init__(self, path: str, size: int, sync: bool = False):
        self.path, self.size, self.sync = path, size, sync
        self.fd = -1

    def prepare(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        bufs = payloads(OBJ, 2)
        for i in range(-(-self.size // OBJ)):
            os.pwrite(self.fd, bufs[i % 2], i * OBJ)
        if self.sync:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def run(self, wl: Workload, seconds: float, warmup: float = 0.0) -> Result:
        if warmup > 0:
            self._run(wl, warmup)
        return self._run(wl, seconds)

    def _run(self, wl: Workload, seconds: float) -> Result:
        offs = Offsets(wl, self.size, seed=zlib.crc32(wl.name.encode()))
        lock = threading.Lock()  # the sequential cursor / RNG are shared
        bufs = payloads(wl.bs) if wl.op == "write" else None
        fd, bs, write, sync = self.fd, wl.bs, wl.op == "write", self.sync
        fdatasync = os.fdatasync
        lats: list[list[float]] = [[] for _ in range(wl.qd)]
        counts = [0] * wl.qd
        clock = time.perf_counter
        errors: list[BaseException] = []

        def worker(k: int, deadline: float) -> None:
            n = 0
            ap = lats[k].append
            try:
                while True:
                    t0 = clock()
                    if t0 >= deadline:
                        break
                    with lock:
                        off = offs.next()
                    if write:
                        os.pwrite(fd, bufs[n & 7], off)
                        if sync:
                            fdatasync(fd)
                    elif len(os.pread(fd, bs, off)) != bs:
                        raise OSError("short read")
                    ap(clock() - t0)
                    n += 1
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                errors.append(e)
            counts[k] = n

        cpu0, t0 = _cpu_self(), clock()
        deadline = t0 + seconds
        if wl.qd == 1:
            worker(0, deadline)
        else:
            threads = [threading.Thread(target=worker, args=(k, deadline), daemon=True)
                       for k in range(wl.qd)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = clock() - t0
        if errors:
            raise errors[0]
        p50, p99 = _percentiles([x for lat in lats for x in lat])
        return Result(sum(counts), elapsed, bs, _cpu_self() - cpu0, p50, p99)
