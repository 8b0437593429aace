"""``python -m bench``: pysheepdog over the Sheepdog protocol vs. a local file.

Starts a throw-away cluster of real ``sheep`` daemons (``-n`` with the
default ``--sync nosync``, the durable default of sheep with ``--sync
durable``), formats it (copies 3 by default), creates a VDI, writes the
whole working set once, then runs each workload for ``--seconds`` against the
cluster and against a plain local file (same block sizes and queue depths).
The file is synced like the cluster: page cache only for ``nosync``,
``fdatasync`` after every write for ``durable`` (as each durable replica
does), on the same file system as the daemons' stores.  Prints a Markdown
table and writes the JSON results (default ``<timestamp>.json`` in
bench/results of a checkout, else in ./bench-results).  The daemons are
killed and their directories removed at the end, also on errors and Ctrl-C.
Exit status: 0 on success, 1 if the cluster failed, 2 on bad arguments,
130 on Ctrl-C (143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import sys
import time

from bench import results_dir
from bench import workloads as W
from bench.cluster import PORT_SPAN, BenchCluster, SignalUnwind, machine_busy_ticks

TARGETS = {  # the project's goals on a 2-core reference machine (unit, minimum)
    "seq-write-1m-qd8": ("mib_s", 250.0),
    "rand-read-4k-qd16": ("iops", 10_000.0),
    "rand-write-4k-qd16": ("iops", 3_000.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(w.name for w in W.WORKLOADS))
    p.add_argument("--seconds", type=float, default=5.0,
                   help="duration of each workload (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="untimed warm-up before each workload (default: %(default)s)")
    p.add_argument("--sync", choices=("nosync", "durable"), default="nosync",
                   help="nosync: sheep -n and the baseline file in the page cache; durable: "
                        "sheep's default and the file fdatasync'ed after every write "
                        "(default: %(default)s)")
    p.add_argument("--base-port", type=int, metavar="PORT",
                   help=f"the daemons listen on free ports in [PORT, PORT+{PORT_SPAN}) "
                        "(default: anywhere in 7000-7999)")
    p.add_argument("--nodes", type=int, default=3, help="sheep daemons (default: %(default)s)")
    p.add_argument("--copies", type=int, default=3, help="replicas (default: %(default)s)")
    p.add_argument("--size-mib", type=int, default=1024,
                   help="VDI size = working set, MiB (default: %(default)s)")
    p.add_argument("--conns-per-node", type=int, default=2,
                   help="client connections to each node (default: %(default)s)")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help="run only these workloads (comma-separated names)")
    p.add_argument("--no-baseline", action="store_true", help="skip the local-file baseline")
    p.add_argument("--json", metavar="PATH",
                   help="write results here (default: <timestamp>.json in bench/results of "
                        "a checkout, else in ./bench-results)")
    p.add_argument("--profile", metavar="DIR",
                   help="sample every daemon with py-spy during each timed workload and "
                        "write collapsed stacks to DIR/<workload>-sheep<i>.txt "
                        "(needs py-spy; sampling costs some throughput)")
    ns = p.parse_args(argv)
    if ns.seconds <= 0 or ns.nodes < 1 or ns.copies < 1 or ns.size_mib < 4:
        p.error("--seconds must be > 0, --nodes/--copies >= 1, --size-mib >= 4")
    if ns.copies > ns.nodes:
        p.error("--copies must not exceed --nodes")
    if ns.base_port is not None and not 1024 <= ns.base_port <= 65535 - ns.nodes:
        p.error("--base-port must be in 1024..65535 with room for --nodes ports")
    ns.workloads = W.WORKLOADS
    if ns.only:
        names = ns.only.split(",")
        unknown = set(names) - {w.name for w in W.WORKLOADS}
        if unknown:
            p.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
        ns.workloads = [w for w in W.WORKLOADS if w.name in names]
    return ns


def _fmt(wl: W.Workload, r: W.Result | None) -> str:
    if r is None:
        return "—"
    if wl.bs >= W.MiB:
        return f"{r.mib_s:,.1f} MiB/s"
    return f"{r.iops:,.0f} IOPS ({r.mib_s:,.1f} MiB/s)"


def _metric(wl: W.Workload, r: W.Result) -> float:
    return r.mib_s if wl.bs >= W.MiB else r.iops


def baseline_label(sync: str) -> str:
    """The baseline's column title: how its writes are synced."""
    return ("local file, fdatasync per write" if sync == "durable"
            else "local file, page cache")


def table(rows, sync: str = "nosync") -> str:
    out = [f"| workload | pysheepdog ({sync}) | baseline ({baseline_label(sync)}) | ratio |",
           "|---|---:|---:|---:|"]
    for wl, rs, rb in rows:
        ratio = (f"{_metric(wl, rs) / _metric(wl, rb):.3f}"
                 if rs is not None and rb is not None and _metric(wl, rb) else "—")
        out.append(f"| {wl.label} | {_fmt(wl, rs)} | {_fmt(wl, rb)} | {ratio} |")
    return "\n".join(out)


def cpu_table(rows) -> str:
    out = [("| workload | p50 / p99 latency | client CPU (cores) | daemons CPU (cores) "
            "| other CPU (cores) |"), "|---|---:|---:|---:|---:|"]
    for wl, rs, _rb in rows:
        if rs is None:
            continue
        out.append(f"| {wl.label} | {rs.lat_p50_us:,.0f} / {rs.lat_p99_us:,.0f} µs | "
                   f"{rs.client_cpu / rs.seconds:.2f} | {rs.server_cpu / rs.seconds:.2f} | "
                   f"{(rs.machine_cpu - rs.server_cpu - rs.client_cpu) / rs.seconds:.2f} |")
    return "\n".join(out)


def targets(rows) -> list[dict]:
    out = []
    for wl, rs, _rb in rows:
        if wl.name in TARGETS and rs is not None:
            key, want = TARGETS[wl.name]
            got = getattr(rs, key)
            out.append({"workload": wl.name, "metric": key, "target": want,
                        "measured": round(got, 1), "met": got >= want})
    return out


def log(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


async def run_cluster(ns, bc: BenchCluster, vid: int, size: int) -> dict:
    target = W.SheepTarget(bc.ports, vid, size, ns.conns_per_node)
    await target.open()
    try:
        t0 = time.perf_counter()
        last = [0.0]

        def progress(done, total):
            now = time.perf_counter()
            if now - last[0] > 2 or done == total:
                last[0] = now
                log(f"  prepared {done}/{total} objects")
        await target.prepare(progress=progress)
        log(f"preparation: {size // W.MiB} MiB x {ns.copies} copies in "
            f"{time.perf_counter() - t0:.1f} s")
        bc.check_alive()
        out = {}
        hz = os.sysconf("SC_CLK_TCK")
        for wl in ns.workloads:
            if ns.warmup > 0:
                await target._run(wl, ns.warmup)
            spies = start_profilers(ns, bc, wl)
            ticks0, busy0 = bc.cpu_ticks(), machine_busy_ticks()
            try:
                r = await target._run(wl, ns.seconds)
                r.server_cpu = (bc.cpu_ticks() - ticks0) / hz
                r.machine_cpu = (machine_busy_ticks() - busy0) / hz
            finally:
                for sp in spies:
                    sp.wait()
            bc.check_alive()
            other = (r.machine_cpu - r.server_cpu - r.client_cpu) / r.seconds
            log(f"pysheepdog {wl.name}: {_fmt(wl, r)}, client {r.client_cpu / r.seconds:.2f} "
                f"cores, daemons {r.server_cpu / r.seconds:.2f} cores, rest of the machine "
                f"{other:.2f} cores" + (" (other load: results are noisy)" if other > 0.25 else ""))
            out[wl.name] = r
        return out
    finally:
        target.close()


def start_profilers(ns, bc: BenchCluster, wl: W.Workload) -> list:
    if not ns.profile:
        return []
    import shutil
    import subprocess

    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    os.makedirs(ns.profile, exist_ok=True)
    procs = []
    for i, pid in enumerate(bc.pids):
        out = os.path.join(ns.profile, f"{wl.name}-sheep{i}.txt")
        procs.append(subprocess.Popen(
            [exe, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", out,
             "-d", str(max(1, int(ns.seconds))), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.3)  # let py-spy attach
    return procs


def bench_cluster(ns) -> BenchCluster:
    """The cluster of a run: ``sheep -n`` for ``--sync nosync``, durable otherwise."""
    return BenchCluster(ns.nodes, ns.copies, nosync=ns.sync == "nosync", base_port=ns.base_port)


def baseline_target(ns, root: str, size: int) -> W.FileTarget:
    """The baseline file of a run, synced like :func:`bench_cluster`'s cluster
    (``fdatasync`` per write exactly when the cluster is durable), in ``root``
    (the cluster's directory: the same file system as the stores)."""
    return W.FileTarget(os.path.join(root, "baseline.img"), size, sync=ns.sync == "durable")


def run_baseline(ns, root: str, size: int) -> dict:
    ft = baseline_target(ns, root, size)
    try:
        ft.prepare()
        out = {}
        for wl in ns.workloads:
            r = ft.run(wl, ns.seconds, ns.warmup)
            log(f"baseline   {wl.name}: {_fmt(wl, r)}")
            out[wl.name] = r
        return out
    finally:
        ft.close()


def main(argv=None) -> int:
    ns = parse_args(argv)
    signals = SignalUnwind()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    size = ns.size_mib * W.MiB
    started = time.strftime("%Y%m%dT%H%M%S")
    sheep_res: dict = {}
    base_res: dict = {}
    error = None
    try:
        log(f"starting {ns.nodes} sheep daemons ({'-n' if ns.sync == 'nosync' else 'durable'})"
            f", copies {ns.copies}")
        with bench_cluster(ns) as bc:
            log(f"cluster up in {bc.root}, ports {bc.ports}")
            vid = bc.new_vdi("bench", size)
            try:
                sheep_res = runner(run_cluster(ns, bc, vid, size))
            except (TimeoutError, W.SheepError, ConnectionError, OSError, RuntimeError) as e:
                if signals.signum:  # the loop was stopped by our signal handler
                    raise KeyboardInterrupt from None
                error = f"cluster failed: {e}"
                log(error)
                log(bc.log_tail())
            if not ns.no_baseline:
                base_res = run_baseline(ns, bc.root, size)
    except KeyboardInterrupt:
        log("interrupted; daemons killed, directories removed")
        return signals.exit_code()
    except (RuntimeError, AssertionError, OSError) as e:
        log(f"cluster failed: {e}")
        return 1
    rows = [(wl, sheep_res.get(wl.name), base_res.get(wl.name)) for wl in ns.workloads]
    print(table(rows, ns.sync))
    print()
    print(cpu_table(rows))
    tg = targets(rows)
    if tg:
        print()
        for t in tg:
            unit = "MiB/s" if t["metric"] == "mib_s" else "IOPS"
            print(f"- target {t['workload']}: >= {t['target']:,.0f} {unit}: measured "
                  f"{t['measured']:,.1f} — {'met' if t['met'] else 'NOT met'}")
    doc = {
        "started": started, "host": platform.node(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "config": {"seconds": ns.seconds, "warmup": ns.warmup, "nodes": ns.nodes,
                   "copies": ns.copies, "size_mib": ns.size_mib,
                   "conns_per_node": ns.conns_per_node, "sync": ns.sync,
                   "nosync": ns.sync == "nosync", "baseline": baseline_label(ns.sync)},
        "workloads": {wl.name: {"label": wl.label, "op": wl.op, "bs": wl.bs, "qd": wl.qd,
                                "seq": wl.seq,
                                "pysheepdog": rs.as_dict() if rs else None,
                                "baseline_file": rb.as_dict() if rb else None,
                                "ratio": round(_metric(wl, rs) / _metric(wl, rb), 4)
                                if rs and rb and _metric(wl, rb) else None}
                      for wl, rs, rb in rows},
        "targets": tg, "error": error,
    }
    path = pathlib.Path(ns.json) if ns.json else results_dir() / f"{started}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"results written to {path}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
