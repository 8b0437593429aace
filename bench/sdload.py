"""``python -m bench.sdload``: the Sheepdog object protocol under a neutral C load client.

What is measured: ``sdload`` (``bench/sdload.c``, the team's load client,
compiled on first use into ``~/.cache/pysheepdog``, see bench/sdload_build.py)
opens one TCP connection per thread to the first node of a throw-away
cluster (3 nodes, copies 3 by default) and keeps one request in flight on
each: READ_OBJ / WRITE_OBJ on the 16 objects (4 MiB each) of one 64 MiB VDI,
created first with ``sdload -m fill``.  The first node is the gateway: each
write goes to it and is forwarded to the other replicas.  The six workloads
are those of the performance issue (4 KiB random write and read with 1 and
16 threads, 1 MiB sequential write and read with 4 threads), each for
``--seconds``; the cluster runs once with ``sheep -n`` (``nosync``: writes
not synced) and once in the default ``durable`` mode, each on a fresh
cluster.  ``--repeat`` rounds alternate the modes (A B, B A, ...) and the
table shows the median of each workload and mode.  ``--client python`` runs
the same workloads with our own client library (asyncio, one connection and
one request in flight per "thread"; no compiler needed), so the figures can
be set beside a client we wrote ourselves.

Reading the ratios: ``--compare OLD.json`` adds old / new / ratio (new/old)
per workload and mode.  Two runs of the same code do not give 1.000: their
ratio is the noise of this machine, and a change is only visible beyond it
(run the baseline twice to see how far it goes; the JSON keeps each run and
``spread``, the max/min of a workload's runs).  The old document was measured
at another time, not alternated with the new one: on a shared or busy
machine (CI, other tests; 2 cores run the client, 3 daemons and everything
else) load that came or went between the two runs shows up as a ratio.  For
a decision, alternate baseline and candidate runs yourself and compare
several pairs; the settings of both documents must match (a warning says
when client, seconds, nodes, copies or objects differ).

Latency: every run also reports p50, p99 and p99.9 of its requests (µs,
nearest rank; sdload from a log-linear histogram within 0.8%, the Python
client exactly), columns of the table; the medians are the medians of the
runs' percentiles.  ``--plot PATH.png`` writes the throughput chart there and
the latency chart to ``PATH-latency.png`` (matplotlib, the ``bench`` extra).
``--sweep qd`` / ``--sweep nodes`` measure scaling with queue depth (1..64
threads) and node count (1..5 nodes) instead of the six workloads: see
bench/sweep.py.

Caveats of sdload itself: ``-s`` is whole seconds; a thread whose connection
breaks stops silently (counted neither as an operation nor as an error), so
after each workload the harness checks that every daemon is still alive; the
data written is one constant byte (0x5a), reads are not verified.

Exit status: 0; 1 if a workload reported errors (marked ⚠ in the table), a
run failed or a daemon died; 2 on bad arguments; 3 if sdload cannot be built
(no C compiler: install one or use ``--client python``); 130 on Ctrl-C
(143 on SIGTERM).  A failed run stops the benchmark; what was measured is
still written.  Every daemon and temporary directory is removed on exit,
errors and Ctrl-C.  The daemons are started by :mod:`bench.daemons`
(``python -m sheep``), part of the installed package: the benchmark runs
from a checkout or after ``pip install 'pysheepdog[server,bench]'``, from any
directory (results then go to ``./bench-results``, see
:func:`bench.results_dir`).  ``--base-port P`` keeps the daemons on free
ports in [P, P+100), claimed machine-wide like the tests' ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pathlib
import platform
import random
import subprocess
import sys
import time

from bench import PACKAGE, in_checkout, plots, results_dir
from bench import sdload_build as B
from bench import sdload_results as R
from bench import sweep as SW
from bench.cluster import PORT_SPAN, BenchCluster, SignalUnwind
from sheep import proto
from sheep.proto.connection import AsyncConnection

FILL_THREADS = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.sdload",
        description="The Sheepdog object protocol under the neutral C load client sdload "
                    "(or --client python) on a throw-away local cluster.",
        epilog="workloads: " + ", ".join(w.name for w in R.WORKLOADS) +
        "; with --sweep: " + ", ".join(w.name for w in SW.WORKLOADS) +
        ". Exit status: 0; 1 errors or a failed run; 2 bad arguments; "
        "3 sdload cannot be built (no C compiler: use --client python); 130 Ctrl-C, "
        "143 SIGTERM. docs/bench.md says how to read the figures.")
    p.add_argument("--client", choices=("sdload", "python"), default="sdload",
                   help="the load client: the C sdload (default) or our Python client library")
    p.add_argument("--sync", choices=("nosync", "durable", "both"), default="both",
                   help="cluster mode: sheep -n, the default durable mode, or both, each on "
                        "a fresh cluster (default: %(default)s)")
    p.add_argument("--seconds", type=int, default=4,
                   help="duration of each workload, whole seconds (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2,
                   help="rounds, modes alternated, medians reported (default: %(default)s)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these workloads")
    p.add_argument("--nodes", type=int, default=3, help="sheep daemons (default: %(default)s)")
    p.add_argument("--copies", type=int, default=3, help="replicas (default: %(default)s)")
    p.add_argument("--base-port", type=int, metavar="PORT",
                   help=f"the daemons listen on free ports in [PORT, PORT+{PORT_SPAN}) "
                        "(default: anywhere in 7000-7999, as the tests)")
    p.add_argument("--json", metavar="PATH",
                   help="write results here (default: sdload-<timestamp>.json in bench/results "
                        "of a checkout, else in ./bench-results)")
    p.add_argument("--compare", metavar="OLD.json", help="add old / new / ratio columns")
    p.add_argument("--plot", metavar="PATH.png",
                   help="PNG charts (needs matplotlib): throughput at PATH.png, latency "
                        "percentiles at PATH-latency.png; with --sweep one line chart")
    p.add_argument("--sweep", choices=SW.KINDS,
                   help="instead of the six workloads: 4 KiB random read/write at queue depth "
                        "1..64 (qd) or on 1..5 nodes, copies min(--copies, nodes) (nodes)")
    p.add_argument("--points", metavar="N[,N]",
                   help="the swept values (default qd: 1,2,4,8,16,32,64; nodes: 1,2,3,4,5)")
    p.add_argument("--threads", type=int,
                   help=f"threads of each run of --sweep nodes (default: {SW.DEFAULT_THREADS})")
    ns = p.parse_args(argv)
    if ns.seconds < 1 or ns.repeat < 1 or ns.nodes < 1 or ns.copies < 1:
        p.error("--seconds, --repeat, --nodes, --copies must be >= 1")
    if ns.sweep != "nodes" and ns.copies > ns.nodes:
        p.error("1 <= --copies <= --nodes")
    ns.modes = list(R.SYNC_MODES) if ns.sync == "both" else [ns.sync]
    if ns.plot:  # before minutes of measurements, not after
        try:
            plots.pyplot()
        except RuntimeError as e:
            p.error(str(e))
    if ns.threads is not None and ns.sweep != "nodes":
        p.error("--threads applies to --sweep nodes only (the workloads have their own)")
    if ns.sweep or ns.points:
        return _sweep_args(p, ns)
    if ns.base_port is not None and not 1024 <= ns.base_port <= 65535 - ns.nodes:
        p.error("--base-port must be in 1024..65535 with room for --nodes ports")
    ns.workloads = R.WORKLOADS
    if ns.only:
        names = [n for n in ns.only.split(",") if n]
        unknown = set(names) - set(R.BY_NAME)
        if unknown or not names:
            p.error(f"unknown workload(s): {', '.join(sorted(unknown)) or '(none given)'}")
        ns.workloads = [w for w in R.WORKLOADS if w.name in names]
    if ns.compare:
        try:
            ns.old = json.loads(pathlib.Path(ns.compare).read_text())
            ns.old["medians"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--compare {ns.compare}: not a bench.sdload result ({e})")
    return ns


def _sweep_args(p: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.Namespace:
    """The checks and derived fields of ``--sweep``: ``points``,
    ``sweep_workloads`` (and ``workloads`` empty)."""
    if not ns.sweep:
        p.error("--points needs --sweep qd or --sweep nodes")
    if ns.compare:
        p.error("--compare does not apply to --sweep")
    if ns.threads is None:
        ns.threads = SW.DEFAULT_THREADS
    if not 1 <= ns.threads <= SW.MAX_POINT["qd"]:
        p.error(f"--threads must be in 1..{SW.MAX_POINT['qd']}")
    try:
        ns.points = SW.parse_points(ns.sweep, ns.points)
        ns.sweep_workloads = SW.parse_workloads(ns.only)
    except ValueError as e:
        p.error(str(e))
    most = max(ns.points) if ns.sweep == "nodes" else ns.nodes
    if ns.base_port is not None and not 1024 <= ns.base_port <= 65535 - most:
        p.error("--base-port must be in 1024..65535 with room for the nodes' ports")
    ns.workloads = []
    return ns


def log(msg: str) -> None:
    sys.stderr.write(f"[sdload] {msg}\n")
    sys.stderr.flush()


# -- the two clients ---------------------------------------------------------

def run_sdload(binary, port: int, vid: int, mode: str, bs: int, threads: int,
               seconds: int) -> dict:
    cmd = [str(binary), "-p", str(port), "-v", str(vid), "-n", str(R.NOBJ), "-b", str(bs),
           "-t", str(threads), "-s", str(seconds), "-m", mode]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    try:
        out = R.parse_line(r.stdout, mode)
    except ValueError as e:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {e}; stderr: "
                           f"{r.stderr.strip()[-300:]!r}") from None
    if r.returncode not in (0, 1) or (r.returncode == 1) != (out["errors"] > 0):
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    if r.stderr.strip():
        out["stderr"] = r.stderr.strip()[-300:]
    return out


async def _py_load(port: int, vid: int, mode: str, bs: int, threads: int,
                   seconds: int) -> dict:
    """What sdload does, with AsyncConnection: ``threads`` connections, one
    request in flight on each, the same offsets, data and output figures
    (latency percentiles exact, from every successful request's time).
    Unlike sdload a broken connection counts as an error."""
    fill = mode == "fill"
    seq, write = fill or mode.startswith("seq"), fill or mode.endswith("w")
    length = R.OBJ_SIZE if fill else bs
    per_obj = R.OBJ_SIZE // length
    opcode = (proto.Op.CREATE_AND_WRITE_OBJ if fill else
              proto.Op.WRITE_OBJ if write else proto.Op.READ_OBJ)
    buf = b"\x5a" * length
    cursor = itertools.count()
    counts = {"ops": 0, "bytes": 0, "errors": 0}
    lat: list[float] = []  # seconds, successful requests
    clock = time.perf_counter
    stop = False

    async def worker(conn: AsyncConnection, rng: random.Random) -> None:
        while not stop:
            if seq:
                s = next(cursor)
                if fill and s >= R.NOBJ:
                    break
                idx, off = (s // per_obj) % R.NOBJ, (s % per_obj) * length
            else:
                idx, off = rng.randrange(R.NOBJ), rng.randrange(per_obj) * length
            req = proto.Request(opcode, proto.ObjArgs(oid=(vid << 32) | idx, offset=off),
                                flags=proto.SD_FLAG_CMD_WRITE if write else 0,
                                data_length=length)
            t0 = clock()
            try:
                rsp, body = await conn.request(req, buf if write else b"", timeout=60)
            except (ConnectionError, TimeoutError) as e:
                counts["errors"] += 1
                log(f"  python client: {e}")
                break
            if rsp.result or (not write and len(body) != length):
                counts["errors"] += 1
            else:
                lat.append(clock() - t0)
                counts["ops"] += 1
                counts["bytes"] += length

    t0 = time.perf_counter()
    conns = [await AsyncConnection.open("127.0.0.1", port) for _ in range(threads)]
    try:
        tasks = [asyncio.ensure_future(worker(c, random.Random(i)))
                 for i, c in enumerate(conns)]
        if not fill:
            await asyncio.sleep(seconds)
            stop = True
        await asyncio.gather(*tasks)
    finally:
        for c in conns:
            c.close()
    dt = time.perf_counter() - t0
    pct = {k: None if not lat else round(R.nearest_rank(lat, q) * 1e6, 1)
           for k, q in zip(R.LATENCY_KEYS, (0.5, 0.99, 0.999))}
    return {"ops": counts["ops"], "secs": round(dt, 2), "iops": round(counts["ops"] / dt),
            "mib_s": round(counts["bytes"] / dt / R.MiB, 1), "errors": counts["errors"], **pct}


def run_python(_binary, port, vid, mode, bs, threads, seconds) -> dict:
    try:
        import uvloop
        run = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with the server extra
        run = asyncio.run
    return run(_py_load(port, vid, mode, bs, threads, seconds))


# -- one round: a fresh cluster, the table once ------------------------------

@contextlib.contextmanager
def filled_cluster(ns, runner, binary, nodes: int, copies: int, sync: str):
    """A fresh cluster of ``nodes`` daemons (``-n`` for nosync), formatted
    with ``copies``, holding one VDI whose ``R.NOBJ`` objects were all
    written (``sdload -m fill``); yields (cluster, gateway port, vid).  The
    daemons are killed and the directory removed when the block ends."""
    log(f"  starting {nodes} sheep daemons{' (-n)' if sync == 'nosync' else ''}, "
        f"copies {copies}")
    with BenchCluster(nodes, copies, nosync=sync == "nosync", base_port=ns.base_port) as bc:
        port = bc.ports[0]
        vid = bc.new_vdi("sdload", R.NOBJ * R.OBJ_SIZE)
        log(f"  cluster up, ports {bc.ports}; vdi {vid:#x}, filling {R.NOBJ} objects")
        fill = runner(binary, port, vid, "fill", R.OBJ_SIZE, FILL_THREADS, 1)
        if fill["errors"] or fill["ops"] != R.NOBJ:
            raise RuntimeError(f"fill: {fill['ops']}/{R.NOBJ} objects written, "
                               f"{fill['errors']} errors\n{bc.log_tail()}")
        yield bc, port, vid


def run_round(ns, runner, binary, rnd: int, sync: str, runs: list) -> None:
    log(f"round {rnd + 1}/{ns.repeat}, {sync}")
    with filled_cluster(ns, runner, binary, ns.nodes, ns.copies, sync) as (bc, port, vid):
        for wl in ns.workloads:
            rec = {"round": rnd, "sync": sync, "workload": wl.name}
            try:
                rec.update(runner(binary, port, vid, wl.mode, wl.bs, wl.threads, ns.seconds))
                bc.check_alive()
                rec["failure"] = None
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                rec["failure"] = str(e)
                log(f"  {wl.name}: FAILED: {e}")
                runs.append(rec)
                raise RuntimeError(f"{wl.name} ({sync}) failed: {e}\n{bc.log_tail()}") from e
            runs.append(rec)
            figure = R.fmt(wl.name, rec)
            log(f"  {wl.name} {sync}: {figure}, {rec['ops']} ops in {rec['secs']} s, "
                f"p50/p99/p99.9 {R.latency_cells(rec).replace(' | ', ' / ')} µs, "
                f"errors {rec['errors']}{' ⚠' if rec['errors'] else ''}")


def machine() -> dict:
    info = {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f
                                if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


def git_commit() -> str | None:
    """The checkout's HEAD; None for an installed package or without git."""
    if not in_checkout():
        return None
    try:  # read-only; no optional locks (another process may be committing)
        r = subprocess.run(["git", "-C", str(PACKAGE.parent), "rev-parse", "HEAD"],
                           capture_output=True, text=True, timeout=10,
                           env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def compiler_version() -> str | None:
    cc = B.find_compiler()
    if cc is None:
        return None
    try:
        r = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=10)
        return r.stdout.splitlines()[0] if r.stdout else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_json(doc: dict, path: str | None, started: str) -> pathlib.Path:
    prefix = f"sdload-{doc['sweep']}" if doc.get("sweep") else "sdload"
    target = pathlib.Path(path) if path else results_dir() / f"{prefix}-{started}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as e:
        if path:
            raise
        target = pathlib.Path.cwd() / target.name  # a read-only results directory
        log(f"cannot write {target.parent} ({e}); writing to the current directory")
        target.write_text(json.dumps(doc, indent=2) + "\n")
    return target


def main(argv=None) -> int:
    ns = parse_args(argv)
    signals = SignalUnwind()
    started = time.strftime("%Y%m%dT%H%M%S")
    info = machine()
    binary, runner = None, run_python
    if ns.client == "sdload":
        try:
            binary = B.build(log=log)
        except B.BuildError as e:
            log(f"cannot build sdload: {e}")
            return 3
        runner = run_sdload
        log(f"sdload: {binary}")
    runs: list[dict] = []
    failures: list[str] = []
    try:
        if ns.sweep:
            def open_cluster(nodes, copies, sync):
                return filled_cluster(ns, runner, binary, nodes, copies, sync)
            runs, failures = SW.run_sweep(ns, open_cluster, runner, binary, log)
            if signals.signum:
                raise KeyboardInterrupt
        else:
            for rnd, sync in R.schedule(ns.modes, ns.repeat):
                try:
                    run_round(ns, runner, binary, rnd, sync, runs)
                except (RuntimeError, AssertionError, OSError, TimeoutError) as e:
                    if signals.signum:
                        raise KeyboardInterrupt from None
                    failures.append(f"round {rnd + 1} {sync}: {e}")
                    log(f"round {rnd + 1} {sync} failed: {e}")
                    break
    except KeyboardInterrupt:
        log("interrupted; daemons killed, directories removed")
        return signals.exit_code()
    info["loadavg_end"] = os.getloadavg()
    common = {
        "tool": "bench.sdload", "started": started, "machine": info, "git_commit": git_commit(),
        "settings": {"client": ns.client, "sync": ns.modes, "seconds": ns.seconds,
                     "repeat": ns.repeat, "nodes": ns.nodes, "copies": ns.copies,
                     "base_port": ns.base_port, "objects": R.NOBJ,
                     "vdi_mib": R.NOBJ * R.OBJ_SIZE // R.MiB,
                     "workloads": [w.name for w in ns.workloads],
                     "sdload_source_sha256_16": B.source_hash() if binary else None,
                     "compiler": compiler_version() if binary else None},
    }
    if ns.sweep:
        doc = SW.document(ns, runs, failures, common)
    else:
        doc = {**common,
               "workloads": {w.name: {"label": w.label, "mode": w.mode, "bs": w.bs,
                                      "threads": w.threads, "metric": w.metric}
                             for w in ns.workloads},
               "runs": runs, "medians": R.medians(runs), "failures": failures}
    path = write_json(doc, ns.json, started)
    if ns.sweep:
        print(SW.table(doc))
    elif ns.compare:
        for d in R.setting_differences(doc, ns.old):
            print(f"> warning: settings differ from {ns.compare}: {d}")
        print(R.compare_table(doc, ns.old))
    else:
        print(R.table(doc))
    for f in failures:
        print(f"\n> FAILED: {f.splitlines()[0]}")
    log(f"results written to {path}")
    status = SW.exit_status(doc) if ns.sweep else R.exit_status(doc)
    if ns.plot:
        try:
            written = (plots.plot_sweep(doc, ns.plot) if ns.sweep else
                       plots.plot_results(doc, ns.plot, getattr(ns, "old", None)))
        except (RuntimeError, OSError, ValueError) as e:
            log(f"no plot: {e}")
            return status or 1
        log(f"plot written to {', '.join(written)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
