"""Fuzzing both ports while a writer verifies its data.

3 sheep (local driver, copies 3, locks on), each with ``--nbd``.  A probe
writer works on VDI ``fuzzw`` through node 0; fuzzers (``probelib.fuzz``)
hammer the Sheepdog port of every node and the NBD port of nodes 0 and 1
for ``--probe-seconds`` (default 8).  Asserted afterwards:

* every daemon is still alive and a member, and the writer made progress
  during and after the fuzzing with no read violation;
* the NBD export still works for a real client: ``qemu-io`` writes and
  verifies a pattern over ``nbd://`` on a fresh VDI;
* nothing lost: every block through every node, every replica, ``collie
  vdi check`` (``probelib.verify``).

Internal errors the fuzzing provoked in the daemons (tracebacks in
``sheep.log``) are reported as figures with their first lines.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time

import pytest
from probelib.cluster import MiB, ProbeCluster, WriterProc, stop_all
from probelib.fuzz import NbdFuzzer, SheepFuzzer
from probelib.report import problems, summarize
from probelib.verify import Expect, verify, writer_figures

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.timeout(300)]

WRITER = {"objects": 4, "per_object": 32, "concurrency": 4, "interval": 0.02,
          "read_ratio": 0.4, "inspect": True}


def _tracebacks(log: str) -> list[str]:
    """The line before each ``Traceback`` and the exception line ending it."""
    lines = log.splitlines()
    out = []
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            out.append(f"{lines[i - 1][:160] if i else ''} => "
                       f"{lines[j][:200] if j < len(lines) else '?'}")
    return out


def test_fuzz_sheep_and_nbd_ports(probe_dir, rnd, probe_seconds):
    c = ProbeCluster(os.path.join(probe_dir, "cluster"), 3, nbd=True)
    writers: list[WriterProc] = []
    try:
        c.start()
        c.format_locked(3)
        vid = c.new_vdi("fuzzw", 16 * MiB)
        scratch = [c.new_vdi(f"scratch{i}", 16 * MiB) for i in range(3)]
        w = WriterProc(1, "fuzzw", "127.0.0.1", c.nodes[0].port, rnd.randrange(1, 1 << 32),
                       os.path.join(probe_dir, "fuzzw.json"), seed=rnd.randrange(1 << 32),
                       **WRITER)
        writers.append(w)
        w.wait_ready()
        w.wait_progress(50, 60)

        fuzzers = [SheepFuzzer("127.0.0.1", n.port, rnd.choice(scratch),
                               random.Random(rnd.randrange(1 << 32))) for n in c.nodes]
        fuzzers += [NbdFuzzer("127.0.0.1", c.nodes[i].nbd_port,
                              ["scratch0", "scratch1", "scratch2", "fuzzw", "nosuch",
                               "scratch0:tag", "scratch1@1", ""],
                              random.Random(rnd.randrange(1 << 32))) for i in (0, 1)]
        stop_at = time.monotonic() + probe_seconds
        conns = [0] * len(fuzzers)

        def run(k):
            while time.monotonic() < stop_at:
                fuzzers[k].one_connection()
                conns[k] += 1
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(fuzzers))]
        acked0 = w.acked()
        for t in threads:
            t.start()
        for t in threads:
            t.join(probe_seconds + 60)
        acked_during = w.acked() - acked0
        # An NBD fuzz connection may still wait (up to LOCK_WAIT) for fuzzw's
        # lock with fuzzed requests queued behind its GO: once the writer lets
        # go of the lock it would get it and write them, legitimately, under
        # the writer's model.  Every NBD connection ends while the writer still
        # holds the lock.
        nbd_idle = _wait_no_connections([c.nodes[i].nbd_port for i in (0, 1)], 30)

        alive = {n.idx: n.alive() for n in c.nodes}
        members_ok = all(alive.values()) and c.all_members()
        w.wait_progress(50, 60)
        qemu = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "read -P 0x5a 0 64k",
             f"nbd://127.0.0.1:{c.nodes[0].nbd_port}/{_fresh(c)}"],
            capture_output=True, text=True, timeout=120, check=False)
        reports = stop_all(writers)
        findings = verify(c, [Expect("fuzzw", vid, [reports[1]])])
        tracebacks = {n.idx: _tracebacks(n.log()) for n in c.nodes}
        figures = {**writer_figures(list(reports.values())),
                   "fuzz_seconds": probe_seconds,
                   "fuzz_connections": {f"{type(f).__name__}:{f.port}": k
                                        for f, k in zip(fuzzers, conns)},
                   "fuzz_outcomes": {f"{type(f).__name__}:{f.port}": f.stats for f in fuzzers},
                   "writer_acked_during_fuzz": acked_during,
                   "daemons_alive": alive, "members_ok": members_ok,
                   "qemu_io_exit": qemu.returncode,
                   "daemon_tracebacks": {k: len(v) for k, v in tracebacks.items()},
                   "traceback_kinds": sorted({t.split("=> ")[-1] for v in tracebacks.values()
                                              for t in v})[:20]}
        out = summarize(probe_dir, "fuzz", figures, findings,
                        {"traceback_list": [t for v in tracebacks.values() for t in v][:20]},
                        cluster=c)
        bad = problems(out, list(reports.values()))
        if not members_ok:
            bad.append(f"a daemon died or left the cluster under fuzzing: alive {alive}")
        if not nbd_idle:
            bad.append("NBD connections of the fuzzers were still open 30 s after the fuzzing")
        if acked_during <= 0:
            bad.append("the writer made no progress while the daemons were fuzzed")
        if qemu.returncode != 0 or "Pattern verification failed" in qemu.stdout:
            bad.append(f"qemu-io over NBD failed after the fuzzing: {qemu.stdout} {qemu.stderr}")
        assert not bad, "\n".join(bad + findings.evidence[:20])
    finally:
        for w in writers:
            w.kill()
        c.close(keep=True)


def _fresh(c) -> str:
    name = f"nbdcheck{random.randrange(1 << 30)}"
    c.new_vdi(name, 16 * MiB)
    return name


def _open_connections(ports: list[int]) -> int:
    """TCP connections whose local port is one of ``ports`` (every state but
    LISTEN and TIME_WAIT: a server side the client closed is in CLOSE_WAIT
    until the daemon closes it), from /proc/net/tcp and tcp6."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            port, state = int(fields[1].rsplit(":", 1)[1], 16), fields[3]
            if port in ports and state not in ("0A", "06"):
                n += 1
    return n


def _wait_no_connections(ports: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _open_connections(ports):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling a condition, not a fixed wait
    return True

