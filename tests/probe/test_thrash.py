"""Kill/restart thrashing with writers that verify every acknowledged write.

5 sheep on the local driver (``--thrash-driver zmq``: the zmq driver),
copies 3, VDI locks on; two writer processes
(``probelib.writer``, through ``qemu_client`` with gateway failover), each
on its own VDI, starting on different gateways.  ``--rounds N`` rounds of
``probelib.thrash`` (SIGKILL a random node, SIGKILL a writer's gateway,
SIGKILL two nodes at once, SIGSTOP a node for seconds; killed nodes come
back on their own stores, at once or after the cluster went on without
them, in any order).

Two variants: ``nowait`` starts the next round as soon as every node is a
member again and the writers progressed, so kills hit nodes that are still
recovering (the stricter one: the daemon claims to survive kill -9 of any
copies-1 nodes at once and any order of restarts, and recovery must never
lose the newest copy); ``wait`` also waits until no node is recovering.
Both run with ``-n`` (acknowledged means in every replica's page cache,
which a SIGKILL does not lose); ``nowait`` runs once more in the default
durable mode (every acknowledged write synced; reads of cached data are
answered inline, the others on I/O threads).

At the end the writers stop (and rewrite their in-doubt blocks until
acknowledged), and ``probelib.verify`` reads every block through every node,
judges every replica of every object one by one and runs ``collie vdi
check``.  Asserted: nothing lost, nothing corrupt, replicas byte-identical,
every replica holding acknowledged data, nothing for ``vdi check`` to fix,
no read violation seen by the writers, and no write error reaching the
writers (the client documents that callers see no error on failover).
"""

from __future__ import annotations

import os

import pytest
from harness import free_port
from probelib.cluster import MiB, ProbeCluster, WriterProc
from probelib.report import problems, summarize
from probelib.thrash import Thrasher
from probelib.verify import Expect, verify, writer_figures

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.probe_timeout(240, 12)]

NODES, COPIES = 5, 3
VDI_SIZE = 64 * MiB
# 16 objects per VDI: recovery after a kill takes long enough that the next
# round (nowait) often hits nodes that are still recovering
WRITER = {"objects": 16, "per_object": 16, "concurrency": 4, "interval": 0.02,
          "read_ratio": 0.4, "inspect": True}


def start_writers(c, probe_dir, rnd, names, prefix=lambda i: ()):
    run = rnd.randrange(1, 1 << 32)
    writers = []
    for i, name in enumerate(names):
        node = c.nodes[i % len(c.nodes)]
        writers.append(WriterProc(i + 1, name, node.host, node.port, run,
                                  os.path.join(probe_dir, f"writer{i + 1}.json"),
                                  prefix=prefix(i), seed=rnd.randrange(1 << 32), **WRITER))
    return writers


@pytest.mark.parametrize("recovery,sync", [("nowait", "nosync"), ("wait", "nosync"),
                                           ("nowait", "durable")])
def test_kill_restart_rounds(probe_dir, rnd, rounds, recovery, sync, thrash_driver):
    spec = None  # the harness's private local:PATH
    if thrash_driver == "zmq":
        spec = "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(NODES))
    c = ProbeCluster(os.path.join(probe_dir, "cluster"), NODES,  # default lock grace (8 s)
                     driver_spec=spec, nosync=sync == "nosync")
    writers = []
    try:
        c.start()
        c.format_locked(COPIES)
        names = ["thrash1", "thrash2"]
        vids = [c.new_vdi(n, VDI_SIZE) for n in names]
        writers = start_writers(c, probe_dir, rnd, names)
        for w in writers:
            w.wait_ready()
        for w in writers:
            w.wait_progress(50, 60)
        th = Thrasher(c, writers, rnd, wait_recovery=recovery == "wait")
        th.run(rounds)
        for n in c.nodes:  # after a stall some node may be down
            if not n.alive():
                c.restart(n)
        c.wait_all(60)
        reports = [w.stop() for w in writers]
        findings = verify(c, [Expect(n, v, [r]) for n, v, r in zip(names, vids, reports)])
        figures = {"rounds": len(th.rounds), **writer_figures(reports),
                   "stalls": th.stalls,
                   "actions": {a: sum(r.action == a for r in th.rounds)
                               for a in ("kill", "gateway", "double", "stop")}}
        out = summarize(probe_dir, f"thrash-{recovery}-{thrash_driver}", figures, findings,
                        {"round_log": [r.line() for r in th.rounds]}, cluster=c)
        bad = problems(out, reports)
        assert not bad, "\n".join(bad + findings.evidence[:30])
    finally:
        for w in writers:
            w.kill()
        c.close(keep=True)
