"""Review probe: acknowledged writes across a whole-cluster restart in which
the node that missed the newest epoch comes back first and is killed -9
while the cluster waits (sheep.joins: older-epoch nodes are admitted while
a restarted cluster waits).

4 sheep, copies 3, one writer (probelib.writer, verifying every read).  Node
3 is killed; the writer goes on at the next epoch; the writer stops (its
in-doubt blocks settled); every node is killed at once; then node 3 starts
first, node 0 next (it brings the newer history), node 3 is killed -9 and
restarted while the cluster still waits for nodes 1 and 2, then those come.
probelib.verify reads every block through every node and judges every
replica."""

from __future__ import annotations

import os
import signal

import pytest
from harness import wait_for
from probelib.cluster import MiB, ProbeCluster, WriterProc
from probelib.report import problems, summarize
from probelib.verify import Expect, verify, writer_figures

from sheep import proto

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.timeout(600)]

WRITER = {"objects": 16, "per_object": 16, "concurrency": 4, "interval": 0.01,
          "read_ratio": 0.3, "inspect": True}


def _writer(c, vdi, probe_dir, rnd):
    """A verifying writer on ``vdi`` through node 0, once it has 100 acknowledged writes."""
    w = WriterProc(1, vdi, c.nodes[0].host, c.nodes[0].port, rnd.randrange(1, 1 << 32),
                   os.path.join(probe_dir, "writer1.json"), seed=rnd.randrange(1 << 32),
                   **WRITER)
    try:
        w.wait_ready()
        w.wait_progress(100, 60)
    except BaseException:
        w.kill()
        raise
    return w


def test_older_node_first_and_killed_while_waiting(probe_dir, rnd):
    c = ProbeCluster(os.path.join(probe_dir, "cluster"), 4)
    w = None
    try:
        c.start()
        c.format_locked(3)
        vid = c.new_vdi("order", 64 * MiB)
        w = _writer(c, "order", probe_dir, rnd)
        c.nodes[3].kill(signal.SIGKILL)
        c.wait_all(30, nodes=c.nodes[:3])
        w.wait_progress(300, 120)  # overwrites at the newer epoch, node 3 misses them
        report = w.stop()
        w = None
        for n in c.nodes[:3]:
            os.kill(n.pid, signal.SIGKILL)
        for n in c.nodes[:3]:
            wait_for(lambda n=n: not n.alive(), 10, what="kill")
        c.restart(c.nodes[3])  # older epoch, first
        c.restart(c.nodes[0])  # newer epoch: its history is adopted
        assert c.status(c.nodes[0]) == proto.SD_STATUS_WAIT
        c.nodes[3].kill(signal.SIGKILL)  # while the cluster waits
        c.restart(c.nodes[3])
        c.restart(c.nodes[1])
        c.restart(c.nodes[2])
        wait_for(lambda: all(c.status(n) == proto.SD_STATUS_OK for n in c.nodes), 60,
                 what="running after the restart")
        c.wait_all(60)
        findings = verify(c, [Expect("order", vid, [report])])
        out = summarize(probe_dir, "review-restart-order", writer_figures([report]), findings,
                        {}, cluster=c)
        bad = problems(out, [report])
        assert not bad, "\n".join(bad + findings.evidence[:30])
    finally:
        if w is not None:
            w.kill()
        c.close(keep=True)


def test_refused_node_restarting_under_writes(probe_dir, rnd):
    """A node that is refused (-V in an automatic-vnodes cluster) is started
    again and again while a writer runs: each time a join and a leave epoch
    (0 vnodes); no acknowledged write may be lost, no write error seen."""
    c = ProbeCluster(os.path.join(probe_dir, "cluster"), 3)
    w = None
    try:
        c.start()
        c.format_locked(3)
        vid = c.new_vdi("refused", 64 * MiB)
        w = _writer(c, "refused", probe_dir, rnd)
        bad_node = c.add_node(start=False)
        bad_node.extra += ["-V", "64"]
        for _ in range(6):
            bad_node.start_refused("failed to join the cluster")
            w.wait_progress(20, 60)
        c.nodes.remove(bad_node)
        report = w.stop()
        w = None
        findings = verify(c, [Expect("refused", vid, [report])])
        out = summarize(probe_dir, "review-refused-restarting", writer_figures([report]),
                        findings, {}, cluster=c)
        bad = problems(out, [report])
        assert not bad, "\n".join(bad + findings.evidence[:30])
        assert c.epoch(c.nodes[0]) == 1 + 2 * 6
    finally:
        if w is not None:
            w.kill()
        c.close(keep=True)
