"""``python -m bench.sdload --sweep qd|nodes``: how the cluster scales with
queue depth and with node count.

* ``--sweep qd``: 4 KiB random read and 4 KiB random write with 1, 2, 4, 8,
  16, 32 and 64 threads (each thread one connection with one request in
  flight, so threads = queue depth), on one cluster of ``--nodes`` nodes and
  ``--copies`` copies per mode and round.
* ``--sweep nodes``: the same two workloads with ``--threads`` threads
  (default 16) on 1, 2, 3, 4 and 5 nodes, copies min(``--copies``, nodes)
  (``--copies`` defaults to 3), a fresh cluster for every node count.

``--points 1,4,16`` replaces the swept values.  Each mode (``--sync``) and
round (``--repeat``) runs the whole sweep; modes alternate as in the plain
run (A B, B A, ...) and the points go up in even rounds and down in odd ones,
so a machine that gets slower or faster weighs on every point alike.  The
document's ``points`` hold, per workload, mode and point, the median IOPS,
MiB/s and latency percentiles of the rounds (:func:`bench.sdload_results.summarize`).

This module is pure except :func:`run_sweep`, which is handed the cluster
factory and the load client, so it is tested without daemons.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import sdload_results as R

KINDS = ("qd", "nodes")
DEFAULT_POINTS = {"qd": (1, 2, 4, 8, 16, 32, 64), "nodes": (1, 2, 3, 4, 5)}
#: upper bounds of a point: sdload runs at most 256 threads; nodes take ports
#: in [--base-port, --base-port + 100) and 2 cores run them all
MAX_POINT = {"qd": 256, "nodes": 16}
DEFAULT_THREADS = 16


@dataclass(frozen=True)
class SweepWorkload:
    name: str
    mode: str  # sdload -m
    bs: int


WORKLOADS = [SweepWorkload("rand-read-4k", "randr", 4 * R.KiB),
             SweepWorkload("rand-write-4k", "randw", 4 * R.KiB)]
BY_NAME = {w.name: w for w in WORKLOADS}


def parse_points(kind: str, text: str | None) -> list[int]:
    """The swept values: the defaults of ``kind``, or ``text`` ("1,4,16"),
    sorted, without duplicates; ValueError naming what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"unknown sweep {kind!r} (qd or nodes)")
    if text is None:
        return list(DEFAULT_POINTS[kind])
    try:
        pts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--points {text!r}: comma-separated integers expected") from None
    if not pts:
        raise ValueError("--points: no value given")
    if pts[0] < 1 or pts[-1] > MAX_POINT[kind]:
        raise ValueError(f"--points for --sweep {kind} must be in 1..{MAX_POINT[kind]}")
    return pts


def parse_workloads(only: str | None) -> list[SweepWorkload]:
    """The sweep's workloads (``--only`` names a subset); ValueError on an unknown name."""
    if not only:
        return list(WORKLOADS)
    names = [n for n in only.split(",") if n]
    unknown = set(names) - set(BY_NAME)
    if unknown or not names:
        raise ValueError(f"--sweep workloads are {', '.join(BY_NAME)}; unknown: "
                         f"{', '.join(sorted(unknown)) or '(none given)'}")
    return [w for w in WORKLOADS if w.name in names]


def copies_for(kind: str, nodes: int, copies: int) -> int:
    """The copies of a cluster of the sweep: ``copies`` for ``qd``,
    min(``copies``, nodes) for ``nodes``."""
    return copies if kind == "qd" else min(copies, nodes)


def order(points: list[int], rnd: int) -> list[int]:
    """Points in run order: ascending in even rounds, descending in odd ones."""
    return list(points) if rnd % 2 == 0 else list(points)[::-1]


def x_of(kind: str, rec: dict) -> int:
    """The swept value of a run record."""
    return rec["threads"] if kind == "qd" else rec["nodes"]


def _point(runner, binary, cluster, rec: dict, wl: SweepWorkload, seconds: int,
           runs: list, log) -> None:
    bc, port, vid = cluster
    try:
        rec.update(runner(binary, port, vid, wl.mode, wl.bs, rec["threads"], seconds))
        bc.check_alive()
        rec["failure"] = None
    except (RuntimeError, OSError) as e:
        rec["failure"] = str(e)
        runs.append(rec)
        raise RuntimeError(f"{wl.name} at {rec['threads']} threads on {rec['nodes']} nodes "
                           f"({rec['sync']}) failed: {e}") from e
    runs.append(rec)
    log(f"  {wl.name} {rec['sync']} {rec['nodes']} nodes, {rec['threads']} threads: "
        f"{rec['iops']:,.0f} IOPS, p99 {R.fmt_us(rec.get('p99_us'))} µs, "
        f"errors {rec['errors']}{' ⚠' if rec['errors'] else ''}")


def run_sweep(ns, open_cluster, runner, binary, log) -> tuple[list[dict], list[str]]:
    """Run the sweep ``ns.sweep`` over ``ns.points``; returns (runs, failures).

    ``open_cluster(nodes, copies, sync)`` is a context manager yielding
    ``(cluster, port, vid)`` of a fresh, filled cluster; ``runner(binary,
    port, vid, mode, bs, threads, seconds)`` one measurement (a dict as
    :func:`bench.sdload_results.parse_line` returns).  The first failure
    (an exception of the cluster or the client) is recorded and stops the
    sweep; KeyboardInterrupt goes through to the caller."""
    runs: list[dict] = []
    failures: list[str] = []
    for rnd, sync in R.schedule(ns.modes, ns.repeat):
        log(f"round {rnd + 1}/{ns.repeat}, {sync}: --sweep {ns.sweep} over {ns.points}")
        try:
            if ns.sweep == "qd":
                with open_cluster(ns.nodes, ns.copies, sync) as cluster:
                    for wl in ns.sweep_workloads:
                        for t in order(ns.points, rnd):
                            rec = {"round": rnd, "sync": sync, "workload": wl.name,
                                   "nodes": ns.nodes, "copies": ns.copies, "threads": t}
                            _point(runner, binary, cluster, rec, wl, ns.seconds, runs, log)
            else:
                for n in order(ns.points, rnd):
                    c = copies_for("nodes", n, ns.copies)
                    with open_cluster(n, c, sync) as cluster:
                        for wl in ns.sweep_workloads:
                            rec = {"round": rnd, "sync": sync, "workload": wl.name,
                                   "nodes": n, "copies": c, "threads": ns.threads}
                            _point(runner, binary, cluster, rec, wl, ns.seconds, runs, log)
        except (RuntimeError, AssertionError, OSError, TimeoutError) as e:
            failures.append(f"round {rnd + 1} {sync}: {e}")
            log(f"round {rnd + 1} {sync} failed: {e}")
            break
    return runs, failures


def points_summary(kind: str, runs: list[dict]) -> dict:
    """{workload: {sync: {str(point): summary}}} of the runs, points ascending."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["sync"], x_of(kind, r)), []).append(r)
    out: dict = {}
    for (name, sync, x) in sorted(groups):
        out.setdefault(name, {}).setdefault(sync, {})[str(x)] = R.summarize(name, groups[name, sync, x])
    return out


def document(ns, runs: list[dict], failures: list[str], common: dict) -> dict:
    """The JSON document of a sweep; ``common`` holds the tool, machine, commit
    and compiler fields shared with the plain run."""
    settings = {**common.pop("settings"), "sweep": ns.sweep, "points": ns.points,
                "threads": ns.threads if ns.sweep == "nodes" else None,
                "workloads": [w.name for w in ns.sweep_workloads]}
    return {**common, "sweep": ns.sweep, "settings": settings,
            "workloads": {w.name: {"mode": w.mode, "bs": w.bs, "metric": "iops"}
                          for w in ns.sweep_workloads},
            "runs": runs, "points": points_summary(ns.sweep, runs), "failures": failures}


def table(doc: dict) -> str:
    """Markdown: one row per workload, mode and point (ascending): IOPS,
    MiB/s, p50 / p99 / p99.9 µs, errors; with ``--sweep nodes`` also copies."""
    kind, s = doc["sweep"], doc["settings"]
    nodes = kind == "nodes"
    head = "| workload | mode | " + ("nodes | copies" if nodes else "QD (threads)") + \
        " | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | errors |"
    out = [head, "|---|---|" + ("---:|---:|" if nodes else "---:|") + "---:|" * 6]
    for name in s["workloads"]:
        for sync in s["sync"]:
            for x in s["points"]:
                sm = doc["points"].get(name, {}).get(sync, {}).get(str(x))
                where = f"{x} | {copies_for(kind, x, s['copies'])}" if nodes else f"{x}"
                iops = "—" if not sm or sm["iops"] is None else f"{sm['iops']:,.0f}"
                mib = "—" if not sm or sm["mib_s"] is None else f"{sm['mib_s']:,.1f}"
                out.append(f"| {name} | {sync} | {where} | {iops}{' ⚠' if R.bad(sm) else ''} "
                           f"| {mib} | {R.latency_cells(sm)} | {R.errors_cell(sm)} |")
    return "\n".join(out)


def exit_status(doc: dict) -> int:
    """1 if the sweep stopped on a failure or any point reported errors, else 0."""
    if doc.get("failures"):
        return 1
    return 1 if any(R.bad(sm) for per in doc["points"].values() for by_x in per.values()
                    for sm in by_x.values()) else 0
