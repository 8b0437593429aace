"""What ``python -m bench.sdload`` runs and how its figures are read back.

Pure functions, no daemons: the workload table, sdload's output line (with
its latency percentiles, or without them from an older sdload), the order of
the runs (modes alternated), medians, the Markdown tables (with
``--compare``: old / new / ratio).  The tables are drawn from the JSON
document, so a stored result can be re-read; the charts are in
:mod:`bench.plots`.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

KiB, MiB = 1024, 1024 * 1024
OBJ_SIZE = 4 * MiB
NOBJ = 16  # sdload -n: 16 objects of 4 MiB = the 64 MiB VDI
SYNC_MODES = ("nosync", "durable")


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str  # sdload -m: randw | randr | seqw | seqr
    bs: int
    threads: int

    @property
    def metric(self) -> str:
        """What the table shows: MiB/s for 1 MiB blocks, IOPS for small ones."""
        return "mib_s" if self.bs >= MiB else "iops"

    @property
    def label(self) -> str:
        size = f"{self.bs // MiB} MiB" if self.bs >= MiB else f"{self.bs // KiB} KiB"
        kind = {"randw": "random write", "randr": "random read",
                "seqw": "sequential write", "seqr": "sequential read"}[self.mode]
        return f"{size} {kind}, {self.threads} thread{'s' if self.threads > 1 else ''}"


#: the six workloads of the performance issue, in the order they run
WORKLOADS = [
    Workload("rand-write-4k-t1", "randw", 4 * KiB, 1),
    Workload("rand-write-4k-t16", "randw", 4 * KiB, 16),
    Workload("rand-read-4k-t1", "randr", 4 * KiB, 1),
    Workload("rand-read-4k-t16", "randr", 4 * KiB, 16),
    Workload("seq-write-1m-t4", "seqw", MiB, 4),
    Workload("seq-read-1m-t4", "seqr", MiB, 4),
]
BY_NAME = {w.name: w for w in WORKLOADS}

_NUM = r"\d+(?:\.\d+)?"
_LINE = re.compile(rf"^(?P<mode>\w+) ops=(?P<ops>\d+) secs=(?P<secs>{_NUM}) "
                   rf"iops=(?P<iops>{_NUM}) MiBps=(?P<mib_s>{_NUM}) "
                   rf"errors=(?P<errors>\d+)"
                   rf"(?: p50us=(?P<p50_us>{_NUM}) p99us=(?P<p99_us>{_NUM}) "
                   rf"p999us=(?P<p999_us>{_NUM}))?$")

#: the latency percentiles a run may carry (microseconds), in table order
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us")
LATENCY_LABELS = {"p50_us": "p50", "p99_us": "p99", "p999_us": "p99.9"}


def parse_line(text: str, mode: str | None = None) -> dict:
    """sdload's one line of output (``randr ops=.. secs=.. iops=.. MiBps=..
    errors=.. p50us=.. p99us=.. p999us=..``) as numbers; the latency keys
    (``p50_us``, ``p99_us``, ``p999_us``) only when the line has them (an
    older sdload printed none), None when no request succeeded.  ValueError if the output has no such line
    or it reports another ``mode``."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    m = _LINE.match(lines[-1]) if lines else None
    if m is None:
        raise ValueError(f"unexpected sdload output: {text.strip()[-200:]!r}")
    if mode is not None and m["mode"] != mode:
        raise ValueError(f"sdload ran mode {m['mode']!r}, not {mode!r}")
    out = {"ops": int(m["ops"]), "secs": float(m["secs"]), "iops": float(m["iops"]),
           "mib_s": float(m["mib_s"]), "errors": int(m["errors"])}
    if m["p50_us"] is not None:  # no request succeeded: nothing was measured, not 0 µs
        out.update({k: float(m[k]) if out["ops"] else None for k in LATENCY_KEYS})
    return out


def nearest_rank(values, q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values`` (the
    smallest value with at least ``q`` of them at or below it), as sdload
    computes its percentiles; None for no values."""
    vs = sorted(values)
    if not vs:
        return None
    rank = max(1, -(-round(q * 1000) * len(vs) // 1000))  # ceil(q * n) in integers
    return vs[min(rank, len(vs)) - 1]


def schedule(modes, repeat: int) -> list[tuple[int, str]]:
    """(round, mode) in run order: every round runs each mode once, the order
    reversed every other round (A B, B A, A B ...), so a machine getting
    slower or faster during the run weighs on both modes alike."""
    modes = list(modes)
    out = []
    for r in range(repeat):
        for m in (modes if r % 2 == 0 else modes[::-1]):
            out.append((r, m))
    return out


def summarize(name: str, rs: list[dict]) -> dict:
    """One summary of the runs ``rs`` of workload ``name`` (one mode, one
    point): median IOPS and MiB/s of the runs that finished, total errors,
    how many runs failed outright, ``spread`` (max/min of the shown metric)
    and, for each latency percentile, the median over the finished runs
    that report it (None when none does)."""
    ok = [r for r in rs if r.get("failure") is None]
    key = metric_of(name)
    out = {
        "runs": len(rs), "failed": len(rs) - len(ok),
        "iops": round(statistics.median(r["iops"] for r in ok), 1) if ok else None,
        "mib_s": round(statistics.median(r["mib_s"] for r in ok), 2) if ok else None,
        "errors": sum(r.get("errors", 0) for r in rs),
        "spread": (round(max(r[key] for r in ok) / min(r[key] for r in ok), 3)
                   if len(ok) > 1 and min(r[key] for r in ok) > 0 else None),
    }
    for k in LATENCY_KEYS:
        vals = [r[k] for r in ok if r.get(k) is not None]
        out[k] = round(statistics.median(vals), 1) if vals else None
    return out


def medians(runs: list[dict]) -> dict:
    """{workload: {sync: summary}} over the runs (see :func:`summarize`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["sync"]), []).append(r)
    out: dict = {}
    for (name, sync), rs in groups.items():
        out.setdefault(name, {})[sync] = summarize(name, rs)
    return out


def metric_of(name: str) -> str:
    """The metric a workload is shown in: MiB/s for 1 MiB blocks, IOPS otherwise
    (also for names not in :data:`WORKLOADS`, e.g. the sweeps')."""
    w = BY_NAME.get(name)
    return w.metric if w else "iops"


def fmt_us(v: float | None) -> str:
    """A latency in µs for the tables: — when unknown."""
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def latency_cells(summary: dict | None) -> str:
    """`` p50 | p99 | p99.9 `` cells (µs) of a summary, — where unknown."""
    return " | ".join(fmt_us((summary or {}).get(k)) for k in LATENCY_KEYS)


def bad(summary: dict | None) -> bool:
    """A summary that reported errors or has a failed run."""
    return bool(summary) and (summary["errors"] > 0 or summary["failed"] > 0)


def exit_status(doc: dict) -> int:
    """1 if a workload reported errors or failed (or the run stopped early), else 0."""
    if doc.get("failures"):
        return 1
    return 1 if any(bad(s) for per in doc["medians"].values() for s in per.values()) else 0


def fmt(name: str, summary: dict | None) -> str:
    if not summary or summary.get(metric_of(name)) is None:
        return "—"
    v = summary[metric_of(name)]
    return f"{v:,.1f} MiB/s" if metric_of(name) == "mib_s" else f"{v:,.0f} IOPS"


def errors_cell(summary: dict | None) -> str:
    if not summary:
        return "—"
    text = str(summary["errors"])
    if summary["failed"]:
        text += f", {summary['failed']} run(s) failed"
    return f"**{text}** ⚠" if bad(summary) else text


def _rows(doc: dict):
    names = [n for n in doc["settings"]["workloads"]]
    for name in names:
        for sync in doc["settings"]["sync"]:
            yield name, sync, doc["medians"].get(name, {}).get(sync)


def table(doc: dict) -> str:
    """| workload | mode | median | p50 | p99 | p99.9 | errors | — medians of
    the runs; latencies in µs (median of the runs' percentiles), — for runs
    that measured none."""
    out = ["| workload | mode | median | p50 µs | p99 µs | p99.9 µs | errors |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for name, sync, s in _rows(doc):
        out.append(f"| {name} | {sync} | {fmt(name, s)}{' ⚠' if bad(s) else ''} "
                   f"| {latency_cells(s)} | {errors_cell(s)} |")
    return "\n".join(out)


def ratio(name: str, new: dict | None, old: dict | None) -> float | None:
    k = metric_of(name)
    if not new or not old or new.get(k) is None or not old.get(k):
        return None
    return new[k] / old[k]


#: settings that make two documents' figures incomparable when they differ
COMPARED_SETTINGS = ("client", "seconds", "nodes", "copies", "objects")


def setting_differences(doc: dict, old: dict) -> list[str]:
    a, b = old.get("settings", {}), doc.get("settings", {})
    return [f"{k}: old {a.get(k)!r}, new {b.get(k)!r}" for k in COMPARED_SETTINGS
            if a.get(k) != b.get(k)]


def compare_table(doc: dict, old: dict) -> str:
    """| workload | mode | old | new | ratio | p99 old | p99 new | errors | —
    ratio = new / old; p99 in µs, — where a document has none."""
    out = ["| workload | mode | old | new | ratio (new/old) | p99 µs old | p99 µs new "
           "| errors (new) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, sync, s in _rows(doc):
        o = old.get("medians", {}).get(name, {}).get(sync)
        r = ratio(name, s, o)
        out.append(f"| {name} | {sync} | {fmt(name, o)}{' ⚠' if bad(o) else ''} "
                   f"| {fmt(name, s)}{' ⚠' if bad(s) else ''} "
                   f"| {'—' if r is None else f'{r:.3f}'} | {fmt_us((o or {}).get('p99_us'))} "
                   f"| {fmt_us((s or {}).get('p99_us'))} | {errors_cell(s)} |")
    return "\n".join(out)

