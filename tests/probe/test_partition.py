"""Network partition of a zmq cluster (each sheep in its own network namespace).

5 sheep on the ``zmq`` driver, copies 3, locks on, nodes 0..4 in namespaces
0..4 (``probelib.netns``).  Writer ``maj`` (VDI ``pmaj``) runs in node 2's
namespace with node 2 as its gateway; writer ``min`` (VDI ``pmin``) runs in
node 4's namespace with node 4 as its gateway, logging every request; a
read prober reads ``pmin``'s blocks straight from node 4 and node 0 all the
time.  Then the network splits {0, 4} (with the master, node 0: the
majority must elect a new one) from {1, 2, 3}, or (second variant) {3, 4}
from {0, 1, 2} (the master stays with the majority, so the majority moves on
fast while the minority members merely lost their master):

* the majority must form a view of {1, 2, 3} and go on: ``maj`` keeps
  writing and never sees HALT;
* the minority must stop serving (HALT) — no write of ``min`` may be
  acknowledged after the majority moved on;
* lock takeover: once the majority dropped the lock ``min`` held through
  node 4, a third writer (``taker``, in node 1's namespace) opens ``pmin``
  through node 1 and writes every block of it; from then on no read
  anywhere may return what ``taker`` superseded (no stale read), neither
  during the partition nor after it healed;
* heal: the minority nodes must rejoin by themselves; ``min``'s writes are
  then refused (FENCED: its lock is gone) and its reads must return the
  taker's data;
* finally every block through every node, every replica, ``collie vdi
  check`` (``probelib.verify``), with ``pmin`` judged against min's model
  superseded by taker's.
"""

from __future__ import annotations

import os
import time

import pytest
from harness import wait_for
from probelib.cluster import MiB, ProbeCluster, WriterProc, stop_all
from probelib.netns import Net
from probelib.prober import ReadProber, acks_of, op_reads, stale_reads
from probelib.report import problems, summarize
from probelib.verify import Expect, verify, writer_figures
from probelib.writer import block_set

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.timeout(400)]

WRITER = {"objects": 4, "per_object": 32, "concurrency": 4, "interval": 0.02,
          "read_ratio": 0.4, "report": 0.25}
HALT_CODE = "HALT"


def _first(pred, timeout, what):
    """Wait for ``pred()`` and return the wall-clock time it first held."""
    wait_for(pred, timeout, interval=0.05, what=what)
    return time.time()


@pytest.mark.parametrize("minority", [[0, 4], [3, 4]], ids=["master-cut-off", "master-in-majority"])
def test_zmq_partition_3_2_with_lock_takeover(probe_dir, rnd, minority):
    maj_idx = [i for i in range(5) if i not in minority]
    net = Net(5)
    c = None
    writers: list[WriterProc] = []
    probers: list[ReadProber] = []
    try:
        net.setup()
        spec = "zmq:" + ",".join(f"{net.addr(i)}:7100" for i in range(5))
        c = ProbeCluster(os.path.join(probe_dir, "cluster"), 5, node_host=net.addr,
                         node_prefix=net.prefix, driver_spec=spec,
                         extra=["--lock-grace", "3"])
        c.start(60)
        c.format_locked(3)
        vid_maj = c.new_vdi("pmaj", 16 * MiB)
        vid_min = c.new_vdi("pmin", 16 * MiB)
        run = rnd.randrange(1, 1 << 32)
        n = c.nodes

        def writer(wid, vdi, node, **kw):
            w = WriterProc(wid, vdi, n[node].host, n[node].port, run,
                           os.path.join(probe_dir, f"{vdi}-w{wid}.json"),
                           prefix=net.prefix(node), seed=rnd.randrange(1 << 32),
                           log_ops=True, **{**WRITER, **kw})
            writers.append(w)
            return w
        maj = writer(1, "pmaj", 2)
        mino = writer(2, "pmin", 4, on_fenced="stop", accept="3", settle_timeout=5)
        for w in (maj, mino):
            w.wait_ready()
            w.wait_progress(50, 60)
        blocks = block_set(WRITER["objects"], WRITER["per_object"])
        for i in minority:  # blocks this minority node holds: it can answer from its disk
            probers.append(ReadProber(n[i].host, n[i].port, vid_min,
                                      _local_blocks(c, n[i], vid_min, blocks),
                                      timeout=0.5).start())

        # -- the partition ----------------------------------------------------
        t_cut = time.time()
        net.cut([minority, maj_idx])
        majority = [n[i] for i in maj_idx]
        t_view = _first(lambda: all(c.members(x) == sorted(y.key() for y in majority)
                                    for x in majority), 30, "the majority's view of 3")
        halts = _HaltWatch([n[i] for i in minority]).start()
        # the takeover starts as soon as the majority moved on (not when the
        # minority admits it is one): that is when stale reads would appear
        taker = writer(3, "pmin", 1, first_pass=True)
        taker.wait_ready(60)
        t_taken = time.time()
        done = taker.wait_event(lambda ev: ev["ev"] == "pass-done", 120, "the taker's pass")
        t_pass = done["t"]
        t_halt = halts.wait(30)
        maj.wait_progress(50, 60)  # the majority goes on

        # -- heal -------------------------------------------------------------
        t_heal = time.time()
        net.heal()
        rejoined = True
        try:
            c.wait_all(60)
        except AssertionError:
            rejoined = False
        t_rejoin = time.time() if rejoined else None
        if rejoined:
            maj.wait_progress(50, 60)
            taker.wait_progress(20, 60)
            # the fenced writer's reads go on after the heal: refused (FENCED:
            # reads carry the lock generation too) or answered, never stale
            def attempts(ev):
                return ev.get("reads", 0) + sum(ev.get("read_errors", {}).values())
            reads0 = attempts(mino.last)
            mino.wait_event(lambda ev: attempts(ev) >= reads0 + 30, 60,
                            "min's read attempts after the heal")
        for p in probers:
            p.stop()
        reports = stop_all(writers)

        # -- judgement ------------------------------------------------------------
        rmaj, rmin, rtake = reports[1], reports[2], reports[3]
        minority_acks_after = [o for o in rmin["ops"] if o[2] == "w" and o[4] == "ok"
                               and o[1] > t_view]
        taker_acks = acks_of(rtake)
        stale = [("writer min", 4, *s) for s in stale_reads(op_reads(rmin), taker_acks, 3)]
        for p in probers:
            stale += [("prober", p.port, *s) for s in stale_reads(p.log, taker_acks, 3)]
        served_after = {p.port: sum(1 for t0, _t1, _b, o, _s in p.log if o == "ok" and t0 > t_view
                                    and t0 < t_heal)
                        for p in probers}
        prober_phases = {p.port: _phases(p.log, {"cut": t_cut, "view": t_view,
                                                 "taken": t_taken, "heal": t_heal})
                         for p in probers}
        maj_halts = {k: v for r in (rmaj, rtake) for k, v in
                     {**r["write_errors"], **r["read_errors"]}.items() if k == HALT_CODE}
        nodes = c.nodes if rejoined else majority
        findings = verify(c, [Expect("pmaj", vid_maj, [rmaj]),
                              Expect("pmin", vid_min, [rmin, rtake])], nodes=nodes)
        figures = {**writer_figures([rmaj, rtake]),
                   "detect_majority_view_s": round(t_view - t_cut, 2),
                   "detect_minority_halt_s": {i: round(t - t_cut, 2) for i, t in t_halt.items()},
                   "takeover_after_cut_s": round(t_taken - t_cut, 2),
                   "taker_pass_done_after_cut_s": round(t_pass - t_cut, 2),
                   "rejoined": rejoined,
                   "rejoin_after_heal_s": round(t_rejoin - t_heal, 2) if rejoined else None,
                   "minority_writes_acked_after_detection": len(minority_acks_after),
                   "stale_reads": len(stale),
                   "stale_reads_during_partition": sum(1 for x in stale if x[-5] < t_heal),
                   "stale_reads_after_heal": sum(1 for x in stale if x[-5] >= t_heal),
                   "minority_reads_served_after_majority_view": served_after,
                   "prober_outcomes_by_phase": prober_phases,
                   "majority_halts": maj_halts,
                   "min_write_errors": rmin["write_errors"],
                   "min_read_errors": rmin["read_errors"]}
        out = summarize(probe_dir, f"zmq-partition-minority-{minority}", figures, findings,
                        {"stale_list": stale[:30],
                         "minority_acks_after_list": minority_acks_after[:30]}, cluster=c)
        bad = problems(out, [rmaj, rtake], allow_write_errors=True)
        # min's own in-doubt blocks are superseded by the taker's pass: only
        # the final owners' unsettled blocks count (problems() counted them)
        bad = [b for b in bad if not b.startswith("unsettled_blocks")]
        if rtake["unsettled"]:
            bad.append(f"taker left blocks in doubt: {rtake['unsettled'][:10]}")
        if minority_acks_after:
            bad.append(f"{len(minority_acks_after)} minority writes acknowledged after the "
                       f"majority's view formed: {minority_acks_after[:5]}")
        if stale:
            bad.append(f"{len(stale)} stale reads: {stale[:5]}")
        if not rejoined:
            bad.append("the minority nodes did not rejoin by themselves within 60 s of the heal")
        if maj_halts:
            bad.append(f"majority-side clients saw HALT: {maj_halts}")
        bad += [f"writer {r['id']} violation: {v}" for r in (rmin,) for v in
                r["violation_list"][:5]]
        assert not bad, "\n".join(bad + findings.evidence[:20])
    finally:
        for p in probers:
            p.stop()
        for w in writers:
            w.kill()
        if c is not None:
            c.close(keep=True)
        net.close()


def _phases(log, marks: dict) -> dict:
    """Outcome counts of a prober log between consecutive time marks."""
    names = ["before-cut", "cut..view", "view..taken", "taken..heal", "after-heal"]
    edges = [marks["cut"], marks["view"], marks["taken"], marks["heal"]]
    out = {k: {} for k in names}
    for t0, _t1, _b, outcome, _seen in log:
        k = names[sum(t0 >= e for e in edges)]
        out[k][outcome] = out[k].get(outcome, 0) + 1
    return out


def _local_blocks(c, node, vid, blocks):
    """The blocks whose object ``node`` holds under the current ring."""
    from sheep import proto
    from sheep.proto.placement import Ring

    cl = node.client()
    try:
        ring = Ring(cl.nodes())
    finally:
        cl.close()
    mine = [b for b in blocks if any(
        (r.host, r.port) == node.key()
        for r in ring.replicas(proto.vid_to_data_oid(vid, b // 1024), 3))]
    return mine or blocks


class _HaltWatch:
    """Polls nodes until each answers HALT; ``wait()`` returns {idx: time}."""

    def __init__(self, nodes):
        import threading

        self.nodes, self.t = nodes, {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._deadline = time.monotonic() + 60

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        while len(self.t) < len(self.nodes) and time.monotonic() < self._deadline:
            for x in self.nodes:
                if x.idx not in self.t and _halted(x):
                    self.t[x.idx] = time.time()
            time.sleep(0.05)

    def wait(self, timeout):
        self._thread.join(timeout)
        missing = [x.idx for x in self.nodes if x.idx not in self.t]
        assert not missing, f"minority nodes {missing} never answered HALT"
        return dict(self.t)


def _halted(node) -> bool:
    """The node answers STAT_CLUSTER with HALT (it knows it is in a minority)."""
    from sheep import proto
    from sheep.proto.errors import CODES

    try:
        cl = node.client()
        try:
            rsp, _ = cl.call(proto.Op.STAT_CLUSTER, proto.ClusterArgs(nodes_nr=0),
                             data_length=4096, check=False)
            return rsp.result == CODES["HALT"]
        finally:
            cl.close()
    except (OSError, ConnectionError):
        return False
