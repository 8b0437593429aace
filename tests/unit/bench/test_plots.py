"""``--plot``: PNG charts drawn from synthetic ``bench.sdload`` documents (no
daemons): throughput bars per workload and mode, the latency chart only when
percentiles were measured, the sweep's line chart; valid PNG files (magic,
header, a real size); a clear error, before any measurement, without
matplotlib."""

from __future__ import annotations

import struct
import sys

import pytest

from bench import plots as P
from bench import sdload as S
from bench import sdload_results as R

pytestmark = pytest.mark.quick

# matplotlib is in the test extra (setup.cfg): a missing one fails here, it is not skipped

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert len(data) > 10_000, f"{path}: only {len(data)} bytes"
    assert data.endswith(b"IEND\xaeB`\x82")  # complete, not truncated
    return struct.unpack(">II", data[16:24])


def _summary(iops, mib_s, lat=None):
    lat = lat or (None, None, None)
    return {"runs": 2, "failed": 0, "iops": iops, "mib_s": mib_s, "errors": 0, "spread": 1.1,
            **dict(zip(R.LATENCY_KEYS, lat))}


def _doc(latency=True, client="sdload"):
    names = [w.name for w in R.WORKLOADS]
    med = {}
    for i, n in enumerate(names):
        lat = (50.0 + i, 400.0 + i, 3000.0 + i) if latency else None
        med[n] = {"nosync": _summary(1000.0 * (i + 1), 10.0 * (i + 1), lat),
                  "durable": _summary(500.0 * (i + 1), 5.0 * (i + 1), lat)}
    med[names[0]]["durable"] = None  # a mode that never ran: no bar, no crash
    return {"settings": {"client": client, "sync": ["nosync", "durable"], "seconds": 1,
                         "repeat": 2, "nodes": 3, "copies": 3, "workloads": names},
            "medians": med, "failures": []}


def test_throughput_and_latency_charts_are_pngs(tmp_path):
    out = tmp_path / "r.png"
    written = P.plot_results(_doc(), out)
    assert written == [str(out), str(tmp_path / "r-latency.png")]
    w, h = _png_size(out)
    assert w >= 800 and h >= 300
    _png_size(tmp_path / "r-latency.png")


def test_no_latency_chart_without_latency_data(tmp_path):
    out = tmp_path / "old.png"
    assert P.plot_results(_doc(latency=False), out) == [str(out)]
    _png_size(out)
    assert not (tmp_path / "old-latency.png").exists()
    assert P.has_latency(_doc()) and not P.has_latency(_doc(latency=False))


def test_compare_chart_puts_old_and_new_bars_side_by_side(tmp_path):
    out = tmp_path / "cmp.png"
    assert P.plot_results(_doc(), out, old=_doc(latency=False, client="python"))[0] == str(out)
    _png_size(out)


def test_missing_values_are_no_bar_not_a_zero_bar():
    plt = P.pyplot()
    fig, ax = plt.subplots()
    P._bars(ax, ["a", "b", "c"], [("x", [1.0, None, 3.0]), ("y", [None, None, 2.0])], "IOPS")
    heights = sorted(p.get_height() for p in ax.patches)
    plt.close(fig)
    assert heights == [1.0, 2.0, 3.0]


def test_sweep_chart_is_a_png(tmp_path):
    pts = {name: {"nosync": {str(q): _summary(100.0 * q, q / 2.56, (20.0 * q, 90.0 * q, 300.0 * q))
                             for q in (1, 2, 4, 8, 16, 32, 64)}}
           for name in ("rand-read-4k", "rand-write-4k")}
    doc = {"sweep": "qd", "points": pts, "failures": [],
           "settings": {"client": "sdload", "sync": ["nosync"], "seconds": 1, "repeat": 1,
                        "nodes": 3, "copies": 3, "threads": None,
                        "points": [1, 2, 4, 8, 16, 32, 64],
                        "workloads": ["rand-read-4k", "rand-write-4k"]}}
    out = tmp_path / "qd.png"
    assert P.plot_sweep(doc, out) == [str(out)]
    w, _h = _png_size(out)
    assert w >= 800  # two panels: IOPS and p99
    doc["sweep"], doc["settings"]["threads"] = "nodes", 16
    doc["settings"]["points"] = [1, 2, 3]
    doc["points"] = {"rand-read-4k": {"durable": {str(n): _summary(100.0 * n, 1.0)
                                                  for n in (1, 2, 3)}}}
    assert not P.has_latency(doc)
    P.plot_sweep(doc, tmp_path / "nodes.png")
    w1, _ = _png_size(tmp_path / "nodes.png")
    assert w1 < w  # one panel: no latency measured


def test_without_matplotlib_a_clear_error_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(RuntimeError, match="--plot needs matplotlib.*bench"):
        P.plot_results(_doc(), tmp_path / "x.png")
    with pytest.raises(SystemExit) as e:
        S.parse_args(["--plot", str(tmp_path / "x.png")])
    assert e.value.code == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert S.parse_args([]).plot is None  # no --plot: matplotlib not needed


def test_latency_path():
    assert str(P.latency_path("/a/b/run.png")) == "/a/b/run-latency.png"
    assert str(P.latency_path("run")) == "run-latency.png"
