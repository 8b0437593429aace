"""What ``python -m bench.sdload`` runs and how its figures are read back.

Pure functions, no daemons: the workload table, sdload's output line, the
order of the runs (modes alternated), medians, the Markdown tables (with
``--compare``: old / new / ratio) and the optional bar chart.  The tables
are drawn from the JSON document, so a stored result can be re-read.
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

_LINE = re.compile(r"^(?P<mode>\w+) ops=(?P<ops>\d+) secs=(?P<secs>\d+(?:\.\d+)?) "
                   r"iops=(?P<iops>\d+(?:\.\d+)?) MiBps=(?P<mib_s>\d+(?:\.\d+)?) "
                   r"errors=(?P<errors>\d+)$")


def parse_line(text: str, mode: str | None = None) -> dict:
    """sdload's one line of output (``randr ops=.. secs=.. iops=.. MiBps=..
    errors=..``) as numbers; ValueError if the output has no such line or
    it reports another ``mode``."""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    m = _LINE.match(lines[-1]) if lines else None
    if m is None:
        raise ValueError(f"unexpected sdload output: {text.strip()[-200:]!r}")
    if mode is not None and m["mode"] != mode:
        raise ValueError(f"sdload ran mode {m['mode']!r}, not {mode!r}")
    return {"ops": int(m["ops"]), "secs": float(m["secs"]), "iops": float(m["iops"]),
            "mib_s": float(m["mib_s"]), "errors": int(m["errors"])}


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


def medians(runs: list[dict]) -> dict:
    """{workload: {sync: summary}} over the runs: median IOPS and MiB/s of
    the runs that finished, total errors, how many runs failed outright."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["sync"]), []).append(r)
    out: dict = {}
    for (name, sync), rs in groups.items():
        ok = [r for r in rs if r.get("failure") is None]
        out.setdefault(name, {})[sync] = {
            "runs": len(rs), "failed": len(rs) - len(ok),
            "iops": round(statistics.median(r["iops"] for r in ok), 1) if ok else None,
            "mib_s": round(statistics.median(r["mib_s"] for r in ok), 2) if ok else None,
            "errors": sum(r.get("errors", 0) for r in rs),
            "spread": (round(max(r[_key(name)] for r in ok) / min(r[_key(name)] for r in ok), 3)
                       if len(ok) > 1 and min(r[_key(name)] for r in ok) > 0 else None),
        }
    return out


def _key(name: str) -> str:
    w = BY_NAME.get(name)
    return w.metric if w else "iops"


def bad(summary: dict | None) -> bool:
    """A summary that reported errors or has a failed run."""
    return bool(summary) and (summary["errors"] > 0 or summary["failed"] > 0)


def exit_status(doc: dict) -> int:
    """1 if a workload reported errors or failed (or the run stopped early), else 0."""
    if doc.get("failures"):
        return 1
    return 1 if any(bad(s) for per in doc["medians"].values() for s in per.values()) else 0


def fmt(name: str, summary: dict | None) -> str:
    if not summary or summary.get(_key(name)) is None:
        return "—"
    v = summary[_key(name)]
    return f"{v:,.1f} MiB/s" if _key(name) == "mib_s" else f"{v:,.0f} IOPS"


def _errors(summary: dict | None) -> str:
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
    """| workload | mode | result | errors | — medians of the runs."""
    out = ["| workload | mode | median | errors |", "|---|---|---:|---:|"]
    for name, sync, s in _rows(doc):
        out.append(f"| {name} | {sync} | {fmt(name, s)}{' ⚠' if bad(s) else ''} "
                   f"| {_errors(s)} |")
    return "\n".join(out)


def ratio(name: str, new: dict | None, old: dict | None) -> float | None:
    k = _key(name)
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
    """| workload | mode | old | new | ratio | errors | — ratio = new / old."""
    out = ["| workload | mode | old | new | ratio (new/old) | errors (new) |",
           "|---|---|---:|---:|---:|---:|"]
    for name, sync, s in _rows(doc):
        o = old.get("medians", {}).get(name, {}).get(sync)
        r = ratio(name, s, o)
        out.append(f"| {name} | {sync} | {fmt(name, o)}{' ⚠' if bad(o) else ''} "
                   f"| {fmt(name, s)}{' ⚠' if bad(s) else ''} "
                   f"| {'—' if r is None else f'{r:.3f}'} | {_errors(s)} |")
    return "\n".join(out)


def plot(doc: dict, path: str) -> None:
    """Bar chart: one group per workload, nosync and durable side by side
    (IOPS and MiB/s workloads in two panels).  RuntimeError without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib, which is not installed "
                           "(pip install matplotlib, or the 'bench' extra)") from e
    syncs = doc["settings"]["sync"]
    panels = [(k, [n for n in doc["settings"]["workloads"] if _key(n) == k])
              for k in ("iops", "mib_s")]
    panels = [(k, ns) for k, ns in panels if ns]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    width = 0.8 / len(syncs)
    for ax, (k, names) in zip(axes[0], panels):
        for j, sync in enumerate(syncs):
            vals = [(doc["medians"].get(n, {}).get(sync) or {}).get(k) or 0 for n in names]
            ax.bar([i + j * width for i in range(len(names))], vals, width, label=sync)
        ax.set_xticks([i + width * (len(syncs) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("IOPS" if k == "iops" else "MiB/s")
        ax.legend()
    s = doc["settings"]
    fig.suptitle(f"sdload ({s['client']} client), {s['nodes']} nodes, copies {s['copies']}, "
                 f"median of {s['repeat']} x {s['seconds']} s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
