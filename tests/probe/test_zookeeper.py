"""One ZooKeeper-driver sheep loses its ZooKeeper session while it still
reaches its peers and its clients.

3 sheep on the ``zookeeper`` driver against a real ZooKeeper server
(``tests/zkserver.py``), session timeout ``T``; each sheep talks to
ZooKeeper through its own ``probelib.zkproxy.ZkProxy``.  Node 2 serves a
writer (``cut``, VDI ``zk``, every request logged) and a read prober.  Two
ways to lose the session:

* ``proxy``: node 2's proxy is blackholed — a partition between node 2 and
  ZooKeeper only;
* ``sigstop``: node 2 is SIGSTOPped past ``T`` (a process pause), then
  continued.

Once the other two have moved on (a view without node 2, the lock ``cut``
held through node 2 dropped), a taker opens ``zk`` through node 0 and
writes every block.  Asserted:

* node 2 serves no read and acknowledges no write that started after its
  session may have expired (``T`` after ZooKeeper last heard from it; for
  ``sigstop``: after it was continued, since it cannot know how long it
  slept) — it must stop serving from the moment the others may have moved
  on (``T`` after the last byte its proxy forwarded to ZooKeeper);
* no stale read: nothing returns data the taker had superseded;
* when ZooKeeper is reachable again, node 2 rejoins by itself;
* then every block through every node, every replica, ``vdi check``.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from harness import wait_for
from probelib.cluster import MiB, ProbeCluster, WriterProc, stop_all
from probelib.prober import ReadProber, acks_of, op_reads, stale_reads
from probelib.report import problems, summarize
from probelib.verify import Expect, verify, writer_figures
from probelib.writer import block_set
from probelib.zkproxy import ZkProxy

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.timeout(300)]

T = 3  # ZooKeeper session timeout (s); the test server's tickTime is 500 ms
WRITER = {"objects": 4, "per_object": 32, "concurrency": 4, "interval": 0.02,
          "read_ratio": 0.5, "report": 0.25}
CUT = 2


@pytest.mark.parametrize("how", ["proxy", "sigstop"])
def test_sheep_loses_its_zookeeper_session(probe_dir, rnd, zookeeper, how):
    proxies = [ZkProxy(zookeeper) for _ in range(3)]
    cid = f"probe-{uuid.uuid4().hex[:10]}"
    c = ProbeCluster(os.path.join(probe_dir, "cluster"), 3,
                     node_spec=lambda i: f"zookeeper:{proxies[i].address}/{cid},timeout={T}")
    writers: list[WriterProc] = []
    prober = None
    try:
        c.start(60)
        c.format_locked(3)
        vid = c.new_vdi("zk", 16 * MiB)
        run = rnd.randrange(1, 1 << 32)
        n = c.nodes

        def writer(wid, node, **kw):
            w = WriterProc(wid, "zk", n[node].host, n[node].port, run,
                           os.path.join(probe_dir, f"zk-w{wid}.json"),
                           seed=rnd.randrange(1 << 32), log_ops=True, **{**WRITER, **kw})
            writers.append(w)
            return w
        cut = writer(1, CUT, on_fenced="stop", accept="2", settle_timeout=5)
        cut.wait_ready()
        cut.wait_progress(50, 60)
        prober = ReadProber(n[CUT].host, n[CUT].port, vid,
                            block_set(WRITER["objects"], WRITER["per_object"]),
                            timeout=0.5).start()

        # -- lose the session ---------------------------------------------------
        t_cut = time.time()
        if how == "proxy":
            proxies[CUT].blackhole()
        else:
            c.sigstop(n[CUT])
        others = [n[0], n[1]]
        t_moved = _first(lambda: all(c.members(x) == sorted(y.key() for y in others)
                                     for x in others), 4 * T + 20, "the others' view of 2")
        # the server may expire the session T after it last heard from node 2
        # (its proxy saw the last byte go up: also before a SIGSTOP)
        t_may = proxies[CUT].last_upstream + T
        taker = writer(2, 0, first_pass=True)
        taker.wait_ready(60)
        done = taker.wait_event(lambda ev: ev["ev"] == "pass-done", 120, "the taker's pass")
        t_pass = done["t"]
        t_resume = None
        t_back = None  # when node 2 is a member again (it may serve from then on)
        if how == "sigstop":
            t_resume = time.time()
            c.sigcont(n[CUT])
            # it cannot know how long it slept: from now on it must not serve,
            # until it has rejoined (by itself: nothing else changes)
            t_may = min(t_may, t_resume)
            # t_back: the last moment node 2 was seen *not* back yet (a poll
            # that began then still said so): it was surely no member before
            t_back = _last_false(lambda: all(n[CUT].key() in c.members(x) for x in others),
                                 4 * T + 20, "node 2 back in the others' view")
        # stay cut (proxy) / awake (sigstop) a few session timeouts
        deadline = time.monotonic() + 2 * T
        while time.monotonic() < deadline:
            taker.wait_progress(5, 30)

        # -- heal ---------------------------------------------------------------
        t_heal = time.time()
        if how == "proxy":
            proxies[CUT].heal()
        rejoined = True
        try:
            c.wait_all(30)
        except AssertionError:
            rejoined = False
        t_rejoin = time.time() if rejoined else None
        if rejoined:
            taker.wait_progress(20, 60)
        prober.stop()
        reports = stop_all(writers)

        # -- judgement ----------------------------------------------------------
        rcut, rtake = reports[1], reports[2]
        # the window in which node 2 must not serve: a read sent after t_may
        # and answered before t_end was served while node 2 was surely cut off
        t_end = t_back or t_heal
        served = [r for r in prober.log if r[3] == "ok" and t_may < r[0] and r[1] < t_end]
        cut_reads = [r for r in op_reads(rcut)
                     if r[3] == "ok" and t_may < r[0] and r[1] < t_end]
        cut_acks = [o for o in rcut["ops"] if o[2] == "w" and o[4] == "ok" and o[0] > t_may]
        taker_acks = acks_of(rtake)
        stale = [("prober", *s) for s in stale_reads(prober.log, taker_acks, 2)]
        stale += [("writer cut", *s) for s in stale_reads(op_reads(rcut), taker_acks, 2)]
        findings = verify(c, [Expect("zk", vid, [rcut, rtake])],
                          nodes=c.nodes if rejoined else others)
        log2 = n[CUT].log()
        figures = {**writer_figures([rtake]),
                   "others_moved_on_after_cut_s": round(t_moved - t_cut, 2),
                   "session_may_expire_after_cut_s": round(t_may - t_cut, 2),
                   "taker_pass_done_after_cut_s": round(t_pass - t_cut, 2),
                   "node2_reads_served_after_session_may_expire": len(served),
                   "cut_writer_reads_ok_after_session_may_expire": len(cut_reads),
                   "cut_writer_writes_acked_after_session_may_expire": len(cut_acks),
                   "stale_reads": len(stale),
                   "rejoined": rejoined,
                   "rejoin_after_heal_s": round(t_rejoin - t_heal, 2) if rejoined else None,
                   "rejoin_after_sigcont_s": round(t_back - t_resume, 2) if t_back else None,
                   "node2_log_session": [ln for ln in log2.splitlines() if "[sheep.server.ops]" not in ln
                                         and any(k in ln for k in (
                                             "kazoo", "zookeeper]", "cut off", "primary partition",
                                             "joined", "left"))][-12:],
                   "cut_write_errors": rcut["write_errors"],
                   "cut_read_errors": rcut["read_errors"]}
        out = summarize(probe_dir, f"zookeeper-{how}", figures, findings,
                        {"stale_list": stale[:30], "served_list": served[:10]}, cluster=c)
        bad = problems(out, [rtake], allow_write_errors=True)
        if served or cut_reads:
            bad.append(f"node 2 served {len(served)} prober reads and {len(cut_reads)} client "
                       f"reads after its session may have expired (before it rejoined): "
                       f"{(served + cut_reads)[:3]}")
        if cut_acks:
            bad.append(f"node 2 acknowledged {len(cut_acks)} writes after its session may have "
                       f"expired: {cut_acks[:3]}")
        if stale:
            bad.append(f"{len(stale)} stale reads: {stale[:5]}")
        if not rejoined:
            bad.append("node 2 did not rejoin by itself within 30 s of reaching ZooKeeper again")
        assert not bad, "\n".join(bad + findings.evidence[:20])
    finally:
        if prober is not None:
            prober.stop()
        for w in writers:
            w.kill()
        c.close(keep=True)
        for p in proxies:
            p.close()


def _last_false(pred, timeout, what):
    """Poll ``pred`` until it holds; return when the last poll that found it
    false began (the event happened after that moment)."""
    deadline = time.monotonic() + timeout
    t_false = time.time()
    while True:
        t = time.time()
        if pred():
            return t_false
        t_false = t
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _first(pred, timeout, what):
    wait_for(pred, timeout, interval=0.05, what=what)
    return time.time()

