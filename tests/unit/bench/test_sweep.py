"""``python -m bench.sdload --sweep qd|nodes`` without daemons: the argument
checks, the clusters and points a sweep visits (with a fake cluster factory
and load client), its medians, Markdown table, exit status, and ``main``
writing the JSON document, the table and the line chart."""

from __future__ import annotations

import contextlib
import json

import pytest

from bench import sdload as S
from bench import sdload_results as R
from bench import sweep as SW

pytestmark = pytest.mark.quick


# -- arguments ---------------------------------------------------------------------

def test_points_defaults_and_overrides():
    assert SW.parse_points("qd", None) == [1, 2, 4, 8, 16, 32, 64]
    assert SW.parse_points("nodes", None) == [1, 2, 3, 4, 5]
    assert SW.parse_points("qd", "16,1,4,4") == [1, 4, 16]
    for kind, text, msg in (("qd", "0", "1..256"), ("qd", "257", "1..256"),
                            ("nodes", "1,17", "1..16"), ("qd", "a,b", "integers"),
                            ("qd", ",", "no value"), ("cpu", None, "unknown sweep")):
        with pytest.raises(ValueError, match=msg):
            SW.parse_points(kind, text)


def test_command_line_of_the_sweeps():
    ns = S.parse_args(["--sweep", "qd", "--sync", "nosync"])
    assert ns.points == [1, 2, 4, 8, 16, 32, 64] and ns.workloads == []
    assert [w.name for w in ns.sweep_workloads] == ["rand-read-4k", "rand-write-4k"]
    assert all(w.bs == 4096 for w in ns.sweep_workloads)
    assert [w.mode for w in ns.sweep_workloads] == ["randr", "randw"]
    ns = S.parse_args(["--sweep", "nodes", "--only", "rand-write-4k", "--threads", "8"])
    assert (ns.points, ns.threads, ns.copies, ns.modes) == (
        [1, 2, 3, 4, 5], 8, 3, ["nosync", "durable"])
    assert [w.name for w in ns.sweep_workloads] == ["rand-write-4k"]
    # copies may exceed --nodes for the node sweep (it is capped per point), not otherwise
    assert S.parse_args(["--sweep", "nodes", "--nodes", "1"]).copies == 3
    assert S.parse_args(["--sweep", "nodes"]).threads == 16
    for argv in (["--points", "1,2"], ["--sweep", "qd", "--compare", "x.json"],
                 ["--sweep", "qd", "--only", "rand-read-4k-t1"], ["--sweep", "qd", "--points", "0"],
                 ["--sweep", "nodes", "--points", "1,17"], ["--sweep", "nodes", "--threads", "0"],
                 ["--sweep", "qd", "--copies", "4"], ["--sweep", "rings"],
                 ["--sweep", "nodes", "--base-port", "65533"], ["--threads", "8"],
                 ["--sweep", "qd", "--threads", "8"]):
        with pytest.raises(SystemExit) as e:
            S.parse_args(argv)
        assert e.value.code == 2, argv


def test_copies_and_order():
    assert [SW.copies_for("nodes", n, 3) for n in (1, 2, 3, 4, 5)] == [1, 2, 3, 3, 3]
    assert SW.copies_for("qd", 1, 3) == 3
    assert SW.order([1, 2, 4], 0) == [1, 2, 4] and SW.order([1, 2, 4], 1) == [4, 2, 1]


# -- running with a fake cluster and client -------------------------------------------

class _Fakes:
    def __init__(self, fail_at=None):
        self.clusters: list[tuple[int, int, str]] = []
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    @contextlib.contextmanager
    def open_cluster(self, nodes, copies, sync):
        self.clusters.append((nodes, copies, sync))
        yield _Alive(), 7600, 0xABC

    def runner(self, binary, port, vid, mode, bs, threads, seconds):
        self.calls.append((mode, threads, len(self.clusters)))
        if self.fail_at == len(self.calls):
            raise RuntimeError("sdload exited 2")
        n = self.clusters[-1][0]
        return {"ops": 100 * threads, "secs": seconds, "iops": 100.0 * threads * n,
                "mib_s": 0.4 * threads, "errors": 0, "p50_us": 10.0 * threads,
                "p99_us": 50.0 * threads, "p999_us": 90.0 * threads}


class _Alive:
    def check_alive(self):
        pass


def _ns(*argv):
    return S.parse_args(list(argv))


def test_qd_sweep_one_cluster_per_round_every_point_up_then_down():
    ns = _ns("--sweep", "qd", "--points", "1,4,16", "--sync", "nosync", "--repeat", "2",
             "--nodes", "3", "--copies", "2")
    f = _Fakes()
    runs, failures = SW.run_sweep(ns, f.open_cluster, f.runner, None, lambda m: None)
    assert failures == [] and f.clusters == [(3, 2, "nosync"), (3, 2, "nosync")]
    assert [(m, t) for m, t, _ in f.calls] == [
        ("randr", 1), ("randr", 4), ("randr", 16), ("randw", 1), ("randw", 4), ("randw", 16),
        ("randr", 16), ("randr", 4), ("randr", 1), ("randw", 16), ("randw", 4), ("randw", 1)]
    assert {(r["nodes"], r["copies"]) for r in runs} == {(3, 2)} and len(runs) == 12
    pts = SW.points_summary("qd", runs)
    assert list(pts["rand-read-4k"]["nosync"]) == ["1", "4", "16"]
    s = pts["rand-write-4k"]["nosync"]["16"]
    assert (s["runs"], s["iops"], s["p99_us"]) == (2, 4800.0, 800.0)


def test_nodes_sweep_a_fresh_cluster_per_point_copies_capped():
    ns = _ns("--sweep", "nodes", "--sync", "both", "--repeat", "1", "--threads", "4",
             "--only", "rand-read-4k")
    f = _Fakes()
    runs, failures = SW.run_sweep(ns, f.open_cluster, f.runner, None, lambda m: None)
    assert failures == []
    assert f.clusters == [(n, min(3, n), "nosync") for n in (1, 2, 3, 4, 5)] + \
        [(n, min(3, n), "durable") for n in (1, 2, 3, 4, 5)]
    assert {t for _m, t, _c in f.calls} == {4}
    doc = SW.document(ns, runs, failures, {"tool": "bench.sdload",
                                           "settings": {"client": "sdload", "sync": ns.modes,
                                                        "seconds": 4, "repeat": 1, "nodes": 3,
                                                        "copies": 3, "workloads": []}})
    assert doc["sweep"] == "nodes" and doc["settings"]["points"] == [1, 2, 3, 4, 5]
    assert doc["settings"]["workloads"] == ["rand-read-4k"] and doc["settings"]["threads"] == 4
    lines = SW.table(doc).splitlines()
    assert lines[0] == ("| workload | mode | nodes | copies | IOPS | MiB/s | p50 µs | p99 µs "
                        "| p99.9 µs | errors |")
    assert lines[2] == "| rand-read-4k | nosync | 1 | 1 | 400 | 1.6 | 40.0 | 200 | 360 | 0 |"
    assert lines[6] == "| rand-read-4k | nosync | 5 | 3 | 2,000 | 1.6 | 40.0 | 200 | 360 | 0 |"
    assert len(lines) == 2 + 10 and SW.exit_status(doc) == 0


def test_a_failure_stops_the_sweep_and_is_reported():
    ns = _ns("--sweep", "qd", "--points", "1,2", "--sync", "both", "--repeat", "1")
    f = _Fakes(fail_at=3)
    runs, failures = SW.run_sweep(ns, f.open_cluster, f.runner, None, lambda m: None)
    assert len(f.calls) == 3 and len(failures) == 1 and "sdload exited 2" in failures[0]
    assert runs[-1]["failure"].startswith("sdload exited 2") and len(runs) == 3
    doc = SW.document(ns, runs, failures, {"settings": {"client": "sdload", "sync": ns.modes,
                                                        "seconds": 4, "repeat": 1, "nodes": 3,
                                                        "copies": 3, "workloads": []}})
    assert SW.exit_status(doc) == 1
    table = SW.table(doc)
    assert "| rand-write-4k | nosync | 1 | — ⚠ | — | — | — | — | **0, 1 run(s) failed** ⚠ |" in table
    assert "| rand-read-4k | durable | 1 | — | — | — | — | — | — |" in table  # never ran


def test_errors_reported_by_a_point_make_the_exit_status_1():
    runs = [{"round": 0, "sync": "nosync", "workload": "rand-read-4k", "nodes": 3, "copies": 3,
             "threads": 1, "iops": 5.0, "mib_s": 0.0, "errors": 2, "failure": None}]
    doc = {"sweep": "qd", "points": SW.points_summary("qd", runs), "failures": []}
    assert SW.exit_status(doc) == 1
    assert R.bad(doc["points"]["rand-read-4k"]["nosync"]["1"])


def test_main_runs_a_sweep_and_writes_json_table_and_chart(tmp_path, monkeypatch, capsys):
    f = _Fakes()
    monkeypatch.setattr(S, "filled_cluster",
                        lambda ns, runner, binary, nodes, copies, sync:
                        f.open_cluster(nodes, copies, sync))
    monkeypatch.setattr(S, "run_python", f.runner)
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert S.main(["--sweep", "qd", "--client", "python", "--points", "1,2", "--sync", "durable",
                   "--repeat", "1", "--seconds", "1", "--json", str(out),
                   "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert doc["sweep"] == "qd" and doc["settings"]["client"] == "python"
    assert doc["points"]["rand-read-4k"]["durable"]["2"]["iops"] == 600.0
    assert "medians" not in doc
    text = capsys.readouterr().out
    assert "| rand-read-4k | durable | 2 | 600 | 0.8 | 20.0 | 100 | 180 | 0 |" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
