"""PNG charts of ``python -m bench.sdload`` documents (``--plot PATH.png``).

Drawn from the JSON document alone (a stored result can be re-plotted), with
matplotlib's non-interactive Agg backend (no display needed).  Guarantees:

* :func:`plot_results` writes ``PATH`` -- throughput per workload, one bar per
  mode (and client; with ``old``, the compared document's bars beside the
  new ones), IOPS and MiB/s workloads in separate panels -- and, when any
  summary carries latency percentiles, ``<PATH stem>-latency.png``: p50, p99
  and p99.9 per workload, one panel per mode, log scale.  It returns the
  paths written; a missing value is drawn as no bar, never as zero.
* :func:`plot_sweep` writes ``PATH`` for a ``--sweep`` document: IOPS
  against the swept value (queue depth, or node count), one line per
  workload and mode, and p99 latency against it in a second panel when the
  runs measured latencies.
* Without matplotlib both raise RuntimeError saying how to install it.
"""

from __future__ import annotations

import pathlib

from bench import sdload_results as R

_NEED = ("--plot needs matplotlib, which is not installed "
         "(pip install matplotlib, or the 'bench' extra: pip install 'pysheepdog[bench]')")


def pyplot():
    """matplotlib.pyplot on the Agg backend; RuntimeError without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError(_NEED) from e
    return plt


def latency_path(path: str | pathlib.Path) -> pathlib.Path:
    """Where :func:`plot_results` puts the latency chart: ``x.png`` -> ``x-latency.png``."""
    p = pathlib.Path(path)
    return p.with_name(f"{p.stem}-latency{p.suffix or '.png'}")


def _summary(doc: dict, name: str, sync: str) -> dict:
    return doc.get("medians", {}).get(name, {}).get(sync) or {}


def _bars(ax, groups: list[str], series: list[tuple[str, list]], ylabel: str,
          log: bool = False) -> None:
    """Grouped bars: ``series`` of (label, one value or None per group)."""
    width = 0.8 / max(1, len(series))
    for j, (label, vals) in enumerate(series):
        xs = [i + j * width for i, v in enumerate(vals) if v is not None]
        ys = [v for v in vals if v is not None]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if series:
        ax.legend(fontsize=8)


def summaries(doc: dict):
    """Every summary of a document: per workload and mode (``medians``), or
    per workload, mode and point (a sweep's ``points``)."""
    for per in (doc.get("medians") or {}).values():
        yield from per.values()
    for per in (doc.get("points") or {}).values():
        for by_x in per.values():
            yield from by_x.values()


def has_latency(doc: dict) -> bool:
    """Whether any summary of a document carries a latency percentile."""
    return any(sm and sm.get(k) is not None for sm in summaries(doc) for k in R.LATENCY_KEYS)


def plot_results(doc: dict, path: str | pathlib.Path, old: dict | None = None) -> list[str]:
    """Throughput chart at ``path`` and, with latency data, the latency chart
    beside it (:func:`latency_path`); returns the paths written."""
    plt = pyplot()
    s = doc["settings"]
    names, syncs = list(s["workloads"]), list(s["sync"])
    series_src = []  # (label, document, sync)
    if old is not None:
        oc = old.get("settings", {}).get("client", "?")
        series_src += [(f"{sync} ({oc}, old)", old, sync) for sync in syncs]
    series_src += [(f"{sync} ({s['client']}{', new' if old is not None else ''})", doc, sync)
                   for sync in syncs]
    panels = [(k, [n for n in names if R.metric_of(n) == k]) for k in ("iops", "mib_s")]
    panels = [(k, ns) for k, ns in panels if ns]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (k, group) in zip(axes[0], panels):
        series = [(label, [_summary(d, n, sync).get(k) for n in group])
                  for label, d, sync in series_src]
        _bars(ax, group, series, "IOPS" if k == "iops" else "MiB/s")
    fig.suptitle(f"sdload ({s['client']} client), {s['nodes']} nodes, copies {s['copies']}, "
                 f"median of {s['repeat']} x {s['seconds']} s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    written = [str(path)]
    if not has_latency(doc):
        return written
    fig, axes = plt.subplots(1, len(syncs), figsize=(5.5 * len(syncs), 4.2), squeeze=False)
    for ax, sync in zip(axes[0], syncs):
        series = [(R.LATENCY_LABELS[k], [_summary(doc, n, sync).get(k) for n in names])
                  for k in R.LATENCY_KEYS]
        _bars(ax, names, series, "latency per request (µs)", log=True)
        ax.set_title(sync, fontsize=10)
    fig.suptitle(f"sdload ({s['client']} client) latency percentiles, median of "
                 f"{s['repeat']} run(s)")
    fig.tight_layout()
    out = latency_path(path)
    fig.savefig(out)
    plt.close(fig)
    written.append(str(out))
    return written


def plot_sweep(doc: dict, path: str | pathlib.Path) -> list[str]:
    """IOPS (and p99, when measured) against the swept value; returns [path]."""
    plt = pyplot()
    kind, s = doc["sweep"], doc["settings"]
    xlabel = "queue depth (threads, one request in flight each)" if kind == "qd" else "nodes"
    panels = [("iops", "IOPS")]
    if has_latency(doc):
        panels.append(("p99_us", "p99 latency (µs)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (k, ylabel) in zip(axes[0], panels):
        for name, per in doc["points"].items():
            for sync, by_x in per.items():
                pts = sorted((int(x), v[k]) for x, v in by_x.items()
                             if v and v.get(k) is not None)
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o",
                            label=f"{name} {sync}")
        if kind == "qd":
            ax.set_xscale("log", base=2)
        xs = sorted(int(x) for x in s["points"])
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if k == "p99_us" and _span(doc, k) > 20:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    what = (f"{s['nodes']} nodes, copies {s['copies']}" if kind == "qd"
            else f"{s['threads']} threads, copies min(3, nodes)")
    fig.suptitle(f"sdload ({s['client']} client) --sweep {kind}: {what}, "
                 f"median of {s['repeat']} x {s['seconds']} s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [str(path)]


def _span(doc: dict, k: str) -> float:
    vals = [sm[k] for sm in summaries(doc) if sm and sm.get(k)]
    return max(vals) / min(vals) if vals and min(vals) > 0 else 1.0
