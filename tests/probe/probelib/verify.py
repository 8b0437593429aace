"""End-of-probe verification: every block through every node, every replica
one by one, then ``collie vdi check``.

:func:`verify` guarantees, for the VDIs given with their writer models
(``Expect``), once the cluster settled (every node a member, no recovery
running, or a deadline passed — reported, not hidden):

* every modelled block is read through **every** node as the gateway (a
  read-only open with failover off) and judged against the model; every
  other block of a written object must read as zeros;
* every replica the ring names for every object of the VDI (inode and data
  objects) is asked for its hash (GET_HASH, 0xB4) on a direct connection,
  and its file under the node's ``obj/`` is decoded block by block and
  judged against the model, so replicas that agree on old data are caught
  too;
* ``collie vdi check`` runs on each VDI; every "fixed ..." line is a
  finding, and for every object it touched the copy it kept is judged
  (did the check keep the good copy or spread an old one?).

"Lost" means an acknowledged (or already observed) write replaced by older
data or zeros; "corrupt" means torn, garbage, misplaced or foreign data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import qemu_client
from probelib.block import BLOCK, ZERO_BLOCK, BlockModel, Seen, decode, describe
from sheep import proto
from sheep.proto.connection import BlockingConnection
from sheep.proto.placement import Ring

OBJ = proto.SD_DATA_OBJ_SIZE
OBJ_BLOCKS = OBJ // BLOCK
LOST_KINDS = {"older", "zeros-after-ack", "zeros-after-seen"}


class Expect:
    """What each block of one VDI may hold, from the models of the writers
    that wrote it, in succession order (a lock takeover: the later writer's
    acknowledged data supersedes the earlier's)."""

    def __init__(self, name: str, vid: int, reports: list[dict]):
        self.name, self.vid, self.reports = name, vid, reports
        self.run = reports[0]["run"]
        self.models = [{int(b): BlockModel.from_json(m) for b, m in r["blocks"].items()}
                       for r in reports]
        self.blocks = sorted(set().union(*self.models))

    def owners(self, block: int) -> list[tuple[int, BlockModel]]:
        return [(r["id"], m[block]) for r, m in zip(self.reports, self.models)
                if block in m and m[block].history]

    def check(self, block: int, seen: Seen) -> str | None:
        """None if ``seen`` is allowed for ``block``, else the violation kind."""
        owners = self.owners(block)
        if not owners:
            return None if seen.kind == "zero" else "unexpected-data"
        for i in range(len(owners) - 1, -1, -1):
            wid, bm = owners[i]
            if bm.floor == 0 and i > 0:
                # nothing of this writer is visible yet: one of its in-doubt
                # writes, or whatever its predecessors allow
                if seen.kind == "data" and seen.writer == wid and \
                        bm.classify(seen, wid, block, self.run) is None:
                    return None
                continue
            bad = bm.classify(seen, wid, block, self.run)
            if bad is None:
                return None
            if bad == "foreign" and seen.kind == "data" and seen.run == self.run and \
                    any(w == seen.writer for w, _ in owners[:i]):
                return "older"  # a predecessor's data over this writer's
            return bad
        return "unexpected-data"  # not reached

    def describe(self, block: int, seen: Seen) -> str:
        owners = self.owners(block)
        parts = [f"w{w}: {describe(m, seen)}" for w, m in owners] or [describe(None, seen)]
        return f"{self.name} block {block} (object {block // OBJ_BLOCKS}): " + " | ".join(parts)


@dataclass
class Findings:
    settled: bool = True
    settle_note: str = ""
    node_reads: dict = field(default_factory=dict)  # "vdi@host:port" -> {kind: count}
    lost: set = field(default_factory=set)  # (vdi, block) with a lost write somewhere
    corrupt: set = field(default_factory=set)
    evidence: list = field(default_factory=list)
    objects: int = 0
    mismatched: list = field(default_factory=list)  # (vdi, oid, {node: digest})
    stale_replicas: list = field(default_factory=list)  # (vdi, oid, node, [bad blocks])
    missing_replicas: list = field(default_factory=list)
    check_fixed: dict = field(default_factory=dict)  # vdi -> ["fixed ..." lines]
    check_errors: dict = field(default_factory=dict)
    check_outcome: list = field(default_factory=list)

    def figures(self) -> dict:
        return {"lost": len(self.lost), "corrupt": len(self.corrupt),
                "objects": self.objects, "replica_mismatches": len(self.mismatched),
                "stale_replicas": len(self.stale_replicas),
                "missing_replicas": len(self.missing_replicas),
                "vdi_check_fixed": sum(len(v) for v in self.check_fixed.values()),
                "settled": self.settled}

    def note(self, line: str, limit: int = 60) -> None:
        if len(self.evidence) < limit:
            self.evidence.append(line)


def _inode(node, vid: int) -> tuple[proto.InodeHeader, list[int]]:
    c = node.client()
    try:
        hdr = proto.InodeHeader.unpack(c.read_obj(proto.vid_to_vdi_oid(vid), 0,
                                                  proto.SD_INODE_HEADER_SIZE))
        raw = c.read_obj(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE,
                         4 * hdr.nr_objects)
        return hdr, [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
    finally:
        c.close()


def _judge_object(exp: Expect, idx: int, data: bytes, where: str, f: Findings,
                  record: bool = True) -> list[int]:
    """Judge the 1024 blocks of object ``idx``; returns the bad block numbers."""
    bad = []
    modelled = set(exp.blocks)
    for k in range(OBJ_BLOCKS):
        b = idx * OBJ_BLOCKS + k
        chunk = data[k * BLOCK:(k + 1) * BLOCK]
        if b not in modelled and chunk == ZERO_BLOCK:
            continue
        seen = decode(chunk)
        kind = exp.check(b, seen)
        if kind is None:
            continue
        bad.append(b)
        if record:
            (f.lost if kind in LOST_KINDS else f.corrupt).add((exp.name, b))
            f.note(f"[{where}] {kind}: {exp.describe(b, seen)}")
    return bad


def settle(c, nodes, timeout: float) -> tuple[bool, str]:
    """Wait until every node is a member and none recovers (or the deadline)."""
    t0 = time.monotonic()
    last = ""
    while time.monotonic() - t0 < timeout:
        try:
            if c.recovery_idle(nodes):
                return True, f"settled after {time.monotonic() - t0:.1f}s"
            last = "still recovering or not all members"
        except (OSError, ConnectionError) as e:
            last = repr(e)
        time.sleep(0.2)
    return False, f"not settled after {timeout}s: {last}"


def _dump_tasks(node) -> None:
    if node.pid is not None:
        with contextlib.suppress(OSError):
            os.kill(node.pid, signal.SIGUSR1)


def read_through_every_node(c, nodes, exp: Expect, objs: list[int], f: Findings) -> None:
    for n in nodes:
        where = f"{exp.name}@{n.host}:{n.port}"
        counts = f.node_reads.setdefault(where, {})
        # a node that has not answered the open for a while logs what each of
        # its tasks waits on (SIGUSR1): the evidence for a hung request
        dump = threading.Timer(20.0, _dump_tasks, (n,))
        dump.start()
        try:
            v = _open_readonly(exp.name, n)
        except Exception as e:  # noqa: BLE001 - a finding, not a crash
            counts["open-error:" + type(e).__name__] = 1
            f.note(f"[{where}] read-only open failed: {e!r}")
            continue
        finally:
            dump.cancel()
        try:
            for idx in objs:
                try:
                    data = v.pread(idx * OBJ, OBJ)
                except Exception as e:  # noqa: BLE001
                    counts["read-error"] = counts.get("read-error", 0) + 1
                    f.note(f"[{where}] read of object {idx} failed: {e!r}")
                    continue
                for b in _judge_object(exp, idx, data, f"read via {n.port}", f):
                    counts["bad"] = counts.get("bad", 0) + 1
                counts["objects"] = counts.get("objects", 0) + 1
        finally:
            v.close()


def _open_readonly(name: str, node, timeout: float = 15.0):
    """A read-only open through ``node`` alone, retried while a writer that
    just closed (or an NBD connection on its way out) still holds the lock."""
    from sheep.proto.errors import VdiLockedError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return qemu_client.open(name, host=node.host, port=node.port, readonly=True,
                                    failover=False)
        except VdiLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _hash(node, oid: int, epoch: int) -> bytes | str:
    req = proto.Request(proto.Op.GET_HASH, epoch=epoch)
    req.args.oid, req.args.tgt_epoch = oid, epoch
    try:
        with BlockingConnection(node.host, node.port, timeout=30) as conn:
            rsp, _ = conn.request(req)
    except (OSError, ConnectionError) as e:
        return f"unreachable({type(e).__name__})"
    if rsp.result:
        from sheep.proto.errors import result_name
        return result_name(rsp.result)
    return bytes(rsp.args.digest)


def _file(node, oid: int) -> bytes | None:
    try:
        with open(os.path.join(node.obj_dir, f"{oid:016x}"), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def compare_replicas(c, nodes, exp: Expect, hdr, index, f: Findings) -> dict:
    """GET_HASH of every replica the ring names, plus a block-by-block judgement
    of each replica's file.  Returns {oid: {node port: short summary}}."""
    by_key = {n.key(): n for n in nodes}
    cl = nodes[0].client()
    try:
        ring_nodes = cl.nodes()
        epoch = cl.cluster_info().epoch
    finally:
        cl.close()
    ring = Ring(ring_nodes)
    oids = [proto.vid_to_vdi_oid(exp.vid)] + [proto.vid_to_data_oid(v, i)
                                             for i, v in enumerate(index) if v]
    summary = {}
    for oid in oids:
        f.objects += 1
        reps = ring.replicas(oid, hdr.nr_copies)
        digests = {}
        for rn in reps:
            node = by_key.get((rn.host, rn.port))
            d = _hash(node, oid, epoch) if node else "not-a-probe-node"
            digests[rn.port] = d.hex()[:12] if isinstance(d, bytes) else d
        if len(set(digests.values())) != 1 or not all(len(v) == 12 for v in digests.values()):
            f.mismatched.append((exp.name, f"{oid:016x}", digests))
        summary[oid] = {}
        if not proto.is_data_obj(oid):
            continue
        idx = proto.data_oid_to_idx(oid)
        for rn in reps:
            node = by_key.get((rn.host, rn.port))
            data = _file(node, oid) if node else None
            if data is None:
                f.missing_replicas.append((exp.name, f"{oid:016x}", rn.port))
                summary[oid][rn.port] = "missing"
                continue
            bad = _judge_object(exp, idx, data, f"replica {oid:016x} on {rn.port}", f,
                                record=False)
            summary[oid][rn.port] = f"{len(bad)} bad blocks"
            if bad:
                f.stale_replicas.append((exp.name, f"{oid:016x}", rn.port, bad[:8]))
                for b in bad[:3]:
                    k = b - idx * OBJ_BLOCKS
                    seen = decode(data[k * BLOCK:(k + 1) * BLOCK])
                    f.note(f"[replica {oid:016x} on {rn.port}] {exp.check(b, seen)}: "
                           f"{exp.describe(b, seen)}")
    return summary


def vdi_check(node, name: str) -> tuple[list[str], str]:
    r = subprocess.run([sys.executable, "-m", "collie", "vdi", "check", name,
                        "-a", node.host, "-p", str(node.port)],
                       capture_output=True, text=True, timeout=300, check=False)
    fixed = [ln for ln in r.stdout.splitlines() if ln.startswith("fixed")]
    return fixed, (r.stderr.strip() + (f" [exit {r.returncode}]" if r.returncode else ""))


def verify(c, expects: list[Expect], nodes=None, settle_timeout: float = 120.0) -> Findings:
    """Everything in the module docstring, on ``nodes`` (default: all)."""
    nodes = list(c.nodes if nodes is None else nodes)
    f = Findings()
    f.settled, f.settle_note = settle(c, nodes, settle_timeout)
    if not f.settled:
        f.note(f"cluster {f.settle_note}")
    for exp in expects:
        hdr, index = _inode(nodes[0], exp.vid)
        objs = sorted({b // OBJ_BLOCKS for b in exp.blocks})
        read_through_every_node(c, nodes, exp, objs, f)
        compare_replicas(c, nodes, exp, hdr, index, f)
    for exp in expects:
        fixed, err = vdi_check(nodes[0], exp.name)
        f.check_fixed[exp.name] = fixed
        if err:
            f.check_errors[exp.name] = err
        for line in fixed:
            oid = int(line.split()[-1], 16)
            if not proto.is_data_obj(oid):
                continue
            idx = proto.data_oid_to_idx(oid)
            # which copy did the check keep?  judge every replica now
            tmp = Findings()
            hdr, index = _inode(nodes[0], exp.vid)
            compare_replicas(c, nodes, Expect(exp.name, exp.vid, exp.reports), hdr,
                             [v if i == idx else 0 for i, v in enumerate(index)], tmp)
            verdict = ("kept a good copy" if not tmp.stale_replicas else
                       f"spread a bad copy ({len(tmp.stale_replicas)} replicas hold "
                       f"non-acknowledged data)")
            f.check_outcome.append(f"{exp.name}: '{line}': {verdict}")
    return f


def writer_figures(reports: list[dict]) -> dict:
    errs: dict[str, int] = {}
    rerrs: dict[str, int] = {}
    for r in reports:
        for k, v in r["write_errors"].items():
            errs[k] = errs.get(k, 0) + v
        for k, v in r["read_errors"].items():
            rerrs[k] = rerrs.get(k, 0) + v
    return {"writes_acknowledged": sum(r["acked"] for r in reports),
            "writes_sent": sum(r["writes"] for r in reports),
            "reads_checked": sum(r["reads"] for r in reports),
            "writer_violations": sum(len(r["violation_list"]) for r in reports),
            # acknowledged writes a writer's read found replaced by older data
            # or zeros during the run (distinct block + acknowledged write)
            "writer_lost_writes": len({(r["id"], v["block"], v["floor"]) for r in reports
                                       for v in r["violation_list"] if v["kind"] in LOST_KINDS}),
            "write_errors": errs, "read_errors": rerrs,
            "unsettled_blocks": sum(len(r["unsettled"]) for r in reports),
            "failed_writes_inspected": sum(len(r.get("inspections", [])) for r in reports),
            "failed_writes_replicas_disagree": sum(
                1 for r in reports for i in r.get("inspections", []) if i.get("disagree")),
            "reopens": sum(len(r["reopen_list"]) for r in reports)}

