"""Recovery figures: time to restore full redundancy after losing a node, and
the client-visible latency of 4 KiB reads during that recovery.

    python -m bench.recovery [--nodes 5] [--size-mib 256] [--qd 4] [--seconds 5]
                             [--base-port PORT] [--json PATH]

Starts a 5-node copies-3 cluster (``-n``), fills a VDI with random data,
measures 4 KiB random reads (QD ``--qd``, through the nodes that will
survive) for a few seconds as the baseline, then kills one node with SIGKILL
and keeps reading until every object is back on exactly the nodes the new
ring names (full redundancy).  Prints a Markdown table and writes JSON next to
the other bench results.  Exit status 0; 1 if the cluster failed or redundancy was not restored
within ``--timeout``; 2 on bad arguments; 130/143 on
SIGINT/SIGTERM (the daemons are killed and the directory removed in every
case).  Reads never go through the killed node, so the
figure is the cost of recovery work, not of the lost connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from bench import results_dir
from bench import workloads as W
from bench.cluster import PORT_SPAN, BenchCluster, SignalUnwind
from bench.daemons import placement_ok, vdi_oids

MiB = 1 << 20


async def _reads_until(target: W.SheepTarget, qd: int, stop, timeout: float) -> dict:
    """4 KiB random reads at depth ``qd`` in 0.5 s windows until ``stop()``;
    RuntimeError if that takes more than ``timeout`` seconds.

    Returns IOPS over the whole period and the p99 latency of the median and
    of the worst window (the windows' raw samples are not kept)."""
    wl = W.Workload("rand-read-4k", "read", 4096, qd, False)
    windows: list[W.Result] = []
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        windows.append(await target.run(wl, 0.5))
        if await loop.run_in_executor(None, stop):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"full redundancy not restored within {timeout:.0f} s")
    p99s = sorted(r.lat_p99_us for r in windows)
    secs = sum(r.seconds for r in windows)
    return {"iops": sum(r.ops for r in windows) / secs, "windows": len(windows),
            "p99_us_median_window": p99s[len(p99s) // 2], "p99_us_worst_window": p99s[-1]}


async def run(ns) -> dict:
    size = ns.size_mib * MiB
    with BenchCluster(nodes=ns.nodes, copies=3, base_port=ns.base_port) as bc:
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
        t0 = time.perf_counter()
        victim.kill(signal.SIGKILL)
        during = await _reads_until(target, ns.qd, lambda: placement_ok(c, oids),
                                    ns.timeout)
        restore = time.perf_counter() - t0
        target.close()
    return {
        "nodes": ns.nodes, "copies": 3, "vdi_mib": ns.size_mib, "qd": ns.qd,
        "objects": len(oids),
        "restore_seconds": restore,
        "baseline": {"iops": base.iops, "p50_us": base.lat_p50_us, "p99_us": base.lat_p99_us},
        "during_recovery": during,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--qd", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="baseline read time")
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
    if ns.nodes < 4 or ns.size_mib < 4 or ns.qd < 1 or ns.seconds <= 0:
        ap.error("--nodes must be >= 4 (copies 3 after losing one), --size-mib >= 4, "
                 "--qd >= 1, --seconds > 0")
    signals = SignalUnwind()
    try:
        res = asyncio.run(run(ns))
    except KeyboardInterrupt:
        sys.stderr.write("bench.recovery: interrupted; daemons killed, directories removed\n")
        return signals.exit_code()
    except (RuntimeError, OSError, AssertionError) as e:
        sys.stderr.write(f"bench.recovery: failed: {e}\n")
        return 1
    b, d = res["baseline"], res["during_recovery"]
    print(f"| {res['nodes']} nodes, copies 3, {res['vdi_mib']} MiB VDI ({res['objects']} objects) "
          f"| value |\n|---|---:|")
    print(f"| time to restore full redundancy after SIGKILL of one node | "
          f"{res['restore_seconds']:.2f} s |")
    print(f"| 4 KiB random read p99, no recovery (QD {res['qd']}) | {b['p99_us']:,.0f} µs |")
    print(f"| 4 KiB random read p99, during recovery (QD {res['qd']}; median / worst of "
          f"{d['windows']} 0.5 s windows) | {d['p99_us_median_window']:,.0f} / "
          f"{d['p99_us_worst_window']:,.0f} µs |")
    print(f"| 4 KiB random read IOPS, no recovery / during | {b['iops']:,.0f} / {d['iops']:,.0f} |")
    out = ns.json or str(results_dir() / time.strftime("recovery-%Y%m%dT%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
