"""Recovery figures: time to restore full redundancy after losing a node, and
the client-visible latency of 4 KiB reads during that recovery.

    python -m bench.recovery [--nodes 5] [--size-mib 256[,512,...]] [--qd 4]
                             [--seconds 5] [--sync] [--base-port PORT] [--json PATH]

For each size: starts a ``--nodes`` copies-3 cluster (``-n`` unless
``--sync``), fills a VDI with random data, measures 4 KiB random reads (QD
``--qd``, through the nodes that will survive) for a few seconds as the
baseline, then kills one node with SIGKILL and keeps reading until every
object is back on exactly the nodes the new ring names (full redundancy).
Several sizes (``--size-mib 256,1024,4096``) give a sweep, each on a fresh
cluster.  Prints a Markdown table and writes JSON next to the other bench
results.  Exit status 0; 1 if the cluster failed or redundancy was not
restored within ``--timeout``; 2 on bad arguments; 130/143 on SIGINT/SIGTERM
(the daemons are killed and the directory removed in every case).  Reads
never go through the killed node, so the figure is the cost of recovery
work, not of the lost connection.

How the time is taken: a poller thread asks every survivor, every 20 ms, for
its epoch and recovery state (two tiny requests each); the first moment all
of them are past the kill's epoch change and none is recovering is the
restore time, but only once a full check of the object files (every object
on exactly its ring's holders) confirms it; otherwise polling goes on.  The
reads' 0.5 s windows do not quantize the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

from bench import results_dir
from bench import workloads as W
from bench.cluster import PORT_SPAN, BenchCluster, SignalUnwind
from bench.daemons import placement_ok, vdi_oids
from sheep import proto

MiB = 1 << 20
POLL = 0.02  # s between two cheap completion checks


class Completion:
    """Watches a cluster from a thread and stamps the moment full
    redundancy is back (see the module docstring)."""

    def __init__(self, cluster, oids, epoch0: int, t0: float):
        self.cluster, self.oids, self.epoch0, self.t0 = cluster, oids, epoch0, t0
        self.seconds: float | None = None
        self.full_checks = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._watch, name="completion", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._thread.join()

    def _quiet(self) -> bool:
        """Every survivor is past the epoch of the kill and not recovering."""
        for n in self.cluster.live():
            cl = n.client()
            try:
                rsp, body = cl.call(proto.Op.STAT_RECOVERY, data_length=24)
            finally:
                cl.close()
            if rsp.epoch <= self.epoch0 or body[0] != 0:
                return False
        return True

    def _watch(self) -> None:
        try:
            while not self._stop:
                if self._quiet():
                    stamp = time.perf_counter()
                    self.full_checks += 1
                    if placement_ok(self.cluster, self.oids):
                        self.seconds = stamp - self.t0
                        return
                time.sleep(POLL)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e
        finally:
            self.done.set()


async def _reads_until(target: W.SheepTarget, qd: int, done: Completion, timeout: float) -> dict:
    """4 KiB random reads at depth ``qd`` in 0.5 s windows until ``done``;
    RuntimeError if that takes more than ``timeout`` seconds.

    Returns IOPS over the whole period and the p99 latency of the median and
    of the worst window (the windows' raw samples are not kept)."""
    wl = W.Workload("rand-read-4k", "read", 4096, qd, False)
    windows: list[W.Result] = []
    deadline = time.monotonic() + timeout
    while True:
        windows.append(await target.run(wl, 0.5))
        if done.done.is_set():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"full redundancy not restored within {timeout:.0f} s")
    if done.error is not None:
        raise RuntimeError(f"watching the recovery failed: {done.error}")
    p99s = sorted(r.lat_p99_us for r in windows)
    secs = sum(r.seconds for r in windows)
    return {"iops": sum(r.ops for r in windows) / secs, "windows": len(windows),
            "p99_us_median_window": p99s[len(p99s) // 2], "p99_us_worst_window": p99s[-1]}


async def run_one(ns, size_mib: int) -> dict:
    size = size_mib * MiB
    with BenchCluster(nodes=ns.nodes, copies=3, base_port=ns.base_port,
                      nosync=not ns.sync) as bc:
        vid = bc.new_vdi("recovery", size)
        survivors = bc.ports[:-1]
        target = W.SheepTarget(bc.ports, vid, size)
        await target.open()
        await target.prepare()
        target.close()
        target = W.SheepTarget(survivors, vid, size)
        await target.open()
        wl = W.Workload("rand-read-4k", "read", 4096, ns.qd, False)
        base = await target.run(wl, ns.seconds, warmup=1.0)
        oids = vdi_oids(vid, size)
        c = bc.cluster
        victim = c.nodes[-1]
        epoch0 = c.nodes[0].client().cluster_info().epoch
        t0 = time.perf_counter()
        victim.kill(signal.SIGKILL)
        watch = Completion(c, oids, epoch0, t0)
        watch.start()
        try:
            during = await _reads_until(target, ns.qd, watch, ns.timeout)
        finally:
            watch.stop()
        target.close()
    return {
        "nodes": ns.nodes, "copies": 3, "vdi_mib": size_mib, "qd": ns.qd,
        "sync": "durable" if ns.sync else "nosync",
        "objects": len(oids),
        "restore_seconds": watch.seconds,
        "full_checks": watch.full_checks,
        "baseline": {"iops": base.iops, "p50_us": base.lat_p50_us, "p99_us": base.lat_p99_us},
        "during_recovery": during,
    }


def table(results: list[dict]) -> str:
    r0 = results[0]
    out = [f"{r0['nodes']} nodes, copies 3, {r0['sync']}, one node SIGKILLed; 4 KiB random "
           f"reads at QD {r0['qd']} through the survivors throughout", "",
           "| VDI | objects | time to full redundancy | read IOPS before / during | "
           "read p99 before | read p99 during (median / worst 0.5 s window) |",
           "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b, d = r["baseline"], r["during_recovery"]
        out.append(f"| {r['vdi_mib']} MiB | {r['objects']} | {r['restore_seconds']:.2f} s | "
                   f"{b['iops']:,.0f} / {d['iops']:,.0f} | {b['p99_us']:,.0f} µs | "
                   f"{d['p99_us_median_window']:,.0f} / {d['p99_us_worst_window']:,.0f} µs |")
    return "\n".join(out)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of MiB: {text!r}") from None
    if not sizes or min(sizes) < 4:
        raise argparse.ArgumentTypeError("sizes must be >= 4 MiB")
    return sizes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--size-mib", type=_sizes, default=[256], metavar="MIB[,MIB...]",
                    help="VDI size; a comma-separated list runs one fresh cluster per size "
                         "(default 256)")
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="baseline read time")
    ap.add_argument("--sync", action="store_true",
                    help="durable daemons (no -n): every write and recovered object synced")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="give up (exit 1) when redundancy is not restored within this many "
                         "seconds of the kill (default %(default)s)")
    ap.add_argument("--base-port", type=int, metavar="PORT",
                    help=f"the daemons listen on free ports in [PORT, PORT+{PORT_SPAN}) "
                         "(default: anywhere in 7000-7999)")
    ap.add_argument("--json", metavar="PATH",
                    help="write results here (default: recovery-<time>.json in the results "
                         "directory: bench/results of a checkout, else ./bench-results)")
    ns = ap.parse_args(argv)
    if ns.nodes < 4 or ns.qd < 1 or ns.seconds <= 0:
        ap.error("--nodes must be >= 4 (copies 3 after losing one), --qd >= 1, --seconds > 0")
    signals = SignalUnwind()
    results = []
    try:
        for size_mib in ns.size_mib:
            sys.stderr.write(f"bench.recovery: {ns.nodes} nodes, {size_mib} MiB ...\n")
            results.append(asyncio.run(run_one(ns, size_mib)))
            sys.stderr.write(f"bench.recovery: {size_mib} MiB: full redundancy after "
                             f"{results[-1]['restore_seconds']:.2f} s\n")
    except KeyboardInterrupt:
        sys.stderr.write("bench.recovery: interrupted; daemons killed, directories removed\n")
        return signals.exit_code()
    except (RuntimeError, OSError, AssertionError) as e:
        sys.stderr.write(f"bench.recovery: failed: {e}\n")
        return 1
    print(table(results))
    out = ns.json or str(results_dir() / time.strftime("recovery-%Y%m%dT%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results[0] if len(results) == 1 else {"runs": results}, f, indent=2)
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
