"""The probe writer: a separate process writing self-describing blocks to one
VDI through ``qemu_client`` (asyncio API, gateway failover on) and checking
every read against its model.

    python -m probelib.writer --id N --vdi NAME --host H --port P --run TAG
                              --out FILE [options]

Guarantees:

* at most one request (read or write) per block is in flight at any time,
  so every read has an unambiguous set of allowed answers
  (:class:`probelib.block.BlockModel`);
* every write that fails (any exception: a result code, a lost connection)
  is recorded with its kind (the result name, e.g. ``NO_OBJ``, ``HALT``,
  or the exception type) and leaves its block "in doubt"; the block is
  written again later with a new sequence number;
* a read returning anything but the last acknowledged write or a later
  in-doubt one is recorded as a violation, with the block's recent history;
* on ``stop`` (a line on stdin) no new work starts; in-flight requests
  finish, then every block whose last write is in doubt is written again
  until acknowledged (bounded by ``--settle-timeout``), so that afterwards
  every block's content is an acknowledged write; then the VDI is closed and
  the whole model is written as JSON to ``--out``.

Stdout carries JSON lines: ``{"ev": "ready", ...}`` once open,
``{"ev": "progress", ...}`` every ``--report`` seconds (counts, current
gateway) and ``{"ev": "done"}`` after the model was written.  Other stdin
commands: ``pause`` / ``resume`` (no new requests while paused), ``dump``
(write the model now; answered ``{"ev": "dumped"}``).

``--log-ops`` also keeps every request as ``[t_start, t_end, "w"|"r",
block, outcome, value]`` (outcome ``ok`` or the error kind; value the seq
written or what the read saw) for after-the-fact analysis (partition probes).
``--inspect``: after every failed write, what each replica of the block
holds is read (READ_PEER to each node the ring names) and kept in the
model's ``inspections`` (``disagree``: the replicas differ).
``--first-pass`` writes every block once (until acknowledged) before the
random work and announces ``{"ev": "pass-done"}`` (a lock taker that
supersedes all of a predecessor's data).
``--on-fenced stop`` stops writing once a write is FENCED (reads go on, on
the same open VDI; they carry the lock generation too, so the cluster refuses
them with FENCED rather than serve what the writer no longer owns); the
default reopens the VDI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time

from probelib.block import BLOCK, BlockModel, decode, encode
from qemu_client import aio
from sheep.proto.errors import SdError

OBJ_BLOCKS = (4 << 20) // BLOCK


def error_kind(e: BaseException) -> str:
    """``HALT``, ``NO_OBJ``, ... for result codes, else the exception type's name."""
    if isinstance(e, SdError):
        return e.name
    return type(e).__name__


def block_set(objects: int, per_object: int, first_object: int = 0) -> list[int]:
    """``per_object`` blocks spread over each of ``objects`` 4 MiB objects."""
    step = OBJ_BLOCKS // per_object
    return [o * OBJ_BLOCKS + k * step for o in range(first_object, first_object + objects)
            for k in range(per_object)]


class Writer:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.rnd = random.Random(a.seed)
        self.blocks = block_set(a.objects, a.per_object, a.first_object)
        self.model = {b: BlockModel() for b in self.blocks}
        self.busy: set[int] = set()
        self.seq = a.seq_base
        self.vdi = None
        self.writes = self.acked = self.reads = 0
        self.write_errors: dict[str, int] = {}
        self.read_errors: dict[str, int] = {}
        self.violations: list[dict] = []
        self.reopens: list[list] = []
        self.gateways: list[list] = []
        self.ops: list[list] = []
        self.inspections: list[dict] = []
        self.fenced = False  # --on-fenced stop: no more writes
        self.stopping = False
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.reopening: asyncio.Future | None = None
        self.consecutive_errors = 0

    # -- output ----------------------------------------------------------

    def emit(self, ev: str, **kw) -> None:
        sys.stdout.write(json.dumps({"ev": ev, "t": round(time.time(), 4), **kw}) + "\n")
        sys.stdout.flush()

    def counts(self) -> dict:
        gw = self.vdi.conn.gateway if self.vdi is not None else (None, None)
        return {"writes": self.writes, "acked": self.acked, "reads": self.reads,
                "write_errors": dict(self.write_errors), "read_errors": dict(self.read_errors),
                "violations": len(self.violations), "gateway": list(gw),
                "fenced": self.fenced, "reopens": len(self.reopens)}

    def dump(self) -> None:
        out = {"id": self.a.id, "vdi": self.a.vdi, "run": self.a.run, **self.counts(),
               "blocks": {str(b): m.to_json() for b, m in self.model.items()},
               "violation_list": self.violations, "reopen_list": self.reopens,
               "gateway_list": self.gateways, "ops": self.ops, "last_seq": self.seq,
               "inspections": self.inspections,
               "unsettled": sorted(b for b, m in self.model.items() if m.doubt)}
        tmp = self.a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, self.a.out)

    # -- the VDI -----------------------------------------------------------

    async def open(self, deadline: float) -> None:
        last = None
        while time.monotonic() < deadline:
            try:
                self.vdi = await aio.open(self.a.vdi, host=self.a.host, port=self.a.port)
                self._note_gateway()
                return
            except SdError as e:
                last = e
            except (OSError, ConnectionError, TimeoutError) as e:
                last = e
            await asyncio.sleep(0.2)
        raise TimeoutError(f"could not open {self.a.vdi}: {last!r}")

    def _note_gateway(self) -> None:
        gw = list(self.vdi.conn.gateway)
        if not self.gateways or self.gateways[-1][1:] != gw:
            self.gateways.append([round(time.time(), 4), *gw])

    async def reopen(self, why: str) -> None:
        """Close and open again (once, whoever asks first).  The old VDI's
        close waits for its writes in flight, so none of them can land after
        a newer write to the same block went out on the new one."""
        if self.reopening is not None:
            await asyncio.shield(self.reopening)
            return
        self.reopening = asyncio.get_running_loop().create_future()
        self.reopens.append([round(time.time(), 4), why])
        try:
            old, self.vdi = self.vdi, None
            if old is not None:
                try:
                    await asyncio.wait_for(old.close(), 75)
                except Exception as e:  # noqa: BLE001 - it is broken anyway
                    self.reopens.append([round(time.time(), 4), f"close failed: {e!r}"])
            try:
                await self.open(time.monotonic() + self.a.reopen_timeout)
            except Exception as e:  # noqa: BLE001 - the next request tries again
                self.reopens.append([round(time.time(), 4), f"open failed: {e!r}"])
        finally:
            fut, self.reopening = self.reopening, None
            fut.set_result(None)

    async def _usable(self) -> None:
        """Wait for a reopen in progress; reopen if the VDI is not open."""
        if self.reopening is not None:
            await asyncio.shield(self.reopening)
        if self.vdi is None:
            await self.reopen("not open")
        if self.vdi is None:
            raise ConnectionError("VDI not open")

    async def _after_error(self, e: BaseException) -> None:
        kind = error_kind(e)
        self.consecutive_errors += 1
        if kind == "FENCED":
            if self.a.on_fenced == "stop":
                self.fenced = True
                return
            await self.reopen("FENCED")
        elif isinstance(e, ConnectionError) and "closed" in str(e):
            await self.reopen(kind)
        # do not spin while the cluster refuses everything (HALT, ...)
        await asyncio.sleep(min(0.05 * self.consecutive_errors, 0.5))

    # -- requests ----------------------------------------------------------

    async def write(self, b: int) -> None:
        self.seq += 1
        seq = self.seq
        m = self.model[b]
        data = encode(self.a.id, b, seq, self.a.run)
        self.writes += 1
        t0 = time.time()
        try:
            await self._usable()
            await self.vdi.pwrite(b * BLOCK, data)
        except Exception as e:  # noqa: BLE001 - every failure is data for the report
            t1 = time.time()
            kind = error_kind(e)
            m.on_error(seq, kind, t0, t1)
            self.write_errors[kind] = self.write_errors.get(kind, 0) + 1
            if self.a.log_ops:
                self.ops.append([round(t0, 4), round(t1, 4), "w", b, kind, seq])
            if self.a.inspect:
                await self.inspect(b, seq, kind)
            await self._after_error(e)
            return
        t1 = time.time()
        m.on_ack(seq, t0, t1)
        self.acked += 1
        self.consecutive_errors = 0
        if self.a.log_ops:
            self.ops.append([round(t0, 4), round(t1, 4), "w", b, "ok", seq])

    async def inspect(self, b: int, seq: int, kind: str) -> None:
        """After a failed write: read block ``b`` from each replica the ring
        names (READ_PEER on a direct connection, at the cluster's epoch) and
        keep what each one holds, so a failed write that some replicas applied
        and others not (replicas that disagree) is on record."""
        from sheep import proto
        from sheep.proto.connection import AsyncConnection
        from sheep.proto.placement import Ring

        rec = {"block": b, "seq": seq, "kind": kind, "t": round(time.time(), 4)}
        for _attempt in range(5):
            try:
                if self.vdi is None:
                    break
                rsp, body = await asyncio.wait_for(self.vdi.conn.call(
                    proto.Op.GET_NODE_LIST, data_length=proto.SD_MAX_NODES * proto.SD_NODE_SIZE),
                    10)
                nodes = proto.unpack_nodes(body, rsp.args.nr_nodes)
                epoch = rsp.epoch
                oid = proto.vid_to_data_oid(self.vdi.vid, b // OBJ_BLOCKS)
                held, retry = {}, False
                for n in Ring(nodes).replicas(oid, self.vdi.inode.nr_copies):
                    conn = await AsyncConnection.open(n.host, n.port, timeout=3)
                    try:
                        r, data = await asyncio.wait_for(conn.request(proto.Request(
                            proto.Op.READ_PEER, proto.ObjArgs(oid=oid, offset=(b % OBJ_BLOCKS)
                                                              * BLOCK),
                            epoch=epoch, data_length=BLOCK)), 10)
                    finally:
                        conn.close()
                    if r.result in (0x81, 0x82):  # OLD/NEW_NODE_VER: the epoch moved
                        retry = True
                        break
                    held[n.port] = decode(data).short() if not r.result else error_kind(
                        SdError(r.result))
                if not retry:
                    rec["epoch"], rec["replicas"] = epoch, held
                    rec["disagree"] = len(set(held.values())) > 1
                    break
            except Exception as e:  # noqa: BLE001 - inspection is best effort
                rec["error"] = repr(e)
            await asyncio.sleep(0.2)
        self.inspections.append(rec)

    async def read(self, b: int) -> None:
        m = self.model[b]
        t0 = time.time()
        try:
            await self._usable()
            data = await self.vdi.pread(b * BLOCK, BLOCK)
        except Exception as e:  # noqa: BLE001
            kind = error_kind(e)
            self.read_errors[kind] = self.read_errors.get(kind, 0) + 1
            if self.a.log_ops:
                self.ops.append([round(t0, 4), round(time.time(), 4), "r", b, kind, None])
            await self._after_error(e)
            return
        t1 = time.time()
        self.reads += 1
        self.consecutive_errors = 0
        seen = decode(data)
        if self.a.log_ops:
            self.ops.append([round(t0, 4), round(t1, 4), "r", b, "ok", seen.short()])
        bad = m.classify(seen, self.a.id, b, self.a.run)
        if bad == "foreign" and seen.kind == "data" and seen.writer in self.a.accept:
            return  # a successor's data (a lock takeover): judged from the op log
        if bad:
            self.violations.append({"kind": bad, "block": b, "seen": seen.short(),
                                    "t0": round(t0, 4), "t1": round(t1, 4),
                                    "gateway": list(self.vdi.conn.gateway) if self.vdi else None,
                                    "floor": m.floor, "acked": m.acked, "doubt": list(m.doubt),
                                    "history": m.history[-6:]})
        else:
            m.observe(seen)

    async def first_pass(self) -> None:
        """--first-pass: write every block once (until acknowledged) before
        anything else, then announce ``{"ev": "pass-done"}``."""
        todo = list(self.blocks)
        self.rnd.shuffle(todo)

        async def one():
            while todo and not self.stopping:
                b = todo.pop()
                self.busy.add(b)
                try:
                    while not self.stopping and not self.fenced:
                        await self.write(b)
                        if not self.model[b].doubt:
                            break
                finally:
                    self.busy.discard(b)
        await asyncio.gather(*(one() for _ in range(self.a.concurrency)))
        self.emit("pass-done", **self.counts())

    async def worker(self) -> None:
        while not self.stopping:
            await self.unpaused.wait()
            if self.stopping:
                break
            free = [b for b in self.rnd.sample(self.blocks, min(8, len(self.blocks)))
                    if b not in self.busy]
            if not free:
                await asyncio.sleep(0.001)
                continue
            b = free[0]
            self.busy.add(b)
            try:
                if self.fenced or self.rnd.random() < self.a.read_ratio:
                    await self.read(b)
                else:
                    await self.write(b)
                if self.vdi is not None:
                    self._note_gateway()
            finally:
                self.busy.discard(b)
            if self.a.interval:
                await asyncio.sleep(self.rnd.uniform(0, 2 * self.a.interval))

    async def settle(self) -> None:
        """Write every block whose last write is in doubt again until acknowledged."""
        deadline = time.monotonic() + self.a.settle_timeout
        while not self.fenced and time.monotonic() < deadline:
            todo = [b for b, m in self.model.items() if m.doubt]
            if not todo:
                return
            for b in todo:
                if time.monotonic() > deadline or self.fenced:
                    return
                await self.write(b)

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(self.a.report)
            self.emit("progress", **self.counts())


async def amain(a: argparse.Namespace) -> int:
    w = Writer(a)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue = asyncio.Queue()

    def stdin_reader():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")  # the test went away
    threading.Thread(target=stdin_reader, daemon=True).start()
    await w.open(time.monotonic() + a.reopen_timeout)
    w.emit("ready", generation=w.vdi.generation, **w.counts())
    rep = asyncio.ensure_future(w.reporter())

    async def work():
        if a.first_pass:
            await w.first_pass()
        await asyncio.gather(*(w.worker() for _ in range(a.concurrency)))
    workers = [asyncio.ensure_future(work())]
    while True:
        cmd = await commands.get()
        if cmd == "pause":
            w.unpaused.clear()
            w.emit("paused", **w.counts())
        elif cmd == "resume":
            w.unpaused.set()
        elif cmd == "dump":
            w.dump()
            w.emit("dumped", **w.counts())
        elif cmd == "stop":
            break
    w.stopping = True
    w.unpaused.set()
    await asyncio.gather(*workers)
    await w.settle()
    rep.cancel()
    if w.vdi is not None:
        try:
            await asyncio.wait_for(w.vdi.close(), 30)
        except Exception as e:  # noqa: BLE001
            w.reopens.append([round(time.time(), 4), f"close failed: {error_kind(e)}"])
    w.dump()
    w.emit("done", **w.counts())
    return 0


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="probelib.writer")
    p.add_argument("--id", type=int, required=True, help="writer id (>= 1), in every block")
    p.add_argument("--vdi", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="first gateway")
    p.add_argument("--run", type=int, required=True, help="run tag, in every block")
    p.add_argument("--out", required=True, help="where the JSON model goes")
    p.add_argument("--objects", type=int, default=8)
    p.add_argument("--first-object", type=int, default=0)
    p.add_argument("--per-object", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--interval", type=float, default=0.01, help="mean pause after a request")
    p.add_argument("--read-ratio", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--seq-base", type=int, default=0)
    p.add_argument("--report", type=float, default=0.5)
    p.add_argument("--settle-timeout", type=float, default=90.0)
    p.add_argument("--reopen-timeout", type=float, default=90.0)
    p.add_argument("--log-ops", action="store_true")
    p.add_argument("--inspect", action="store_true",
                   help="after a failed write, record what each replica of the block holds")
    p.add_argument("--first-pass", action="store_true",
                   help="write every block once first, then announce pass-done")
    p.add_argument("--on-fenced", choices=("reopen", "stop"), default="reopen")
    p.add_argument("--accept", type=lambda s: {int(x) for x in s.split(",") if x},
                   default=set(), help="writer ids whose data is not foreign (successors)")
    a = p.parse_args(argv)
    if a.id < 1:
        p.error("--id must be >= 1")
    return a


if __name__ == "__main__":
    sys.exit(asyncio.run(amain(parse())))
