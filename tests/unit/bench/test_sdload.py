"""``python -m bench.sdload`` without daemons: sdload's output line, the run
order and medians, the Markdown tables and ``--compare`` ratios from JSON
documents, the build cache (rebuilt on a changed source; no compiler → a
clear error, exit 3), and one real build of sdload run against a closed port."""

from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import socket
import stat

import pytest

from bench import sdload as S
from bench import sdload_build as B
from bench import sdload_results as R

pytestmark = pytest.mark.quick

REPO = pathlib.Path(__file__).resolve().parents[3]


# -- sdload's output line ------------------------------------------------------

def test_parse_line_reads_the_real_format():
    out = "randr ops=123456 secs=4.00 iops=30864 MiBps=120.6 errors=0\n"
    assert R.parse_line(out, "randr") == {"ops": 123456, "secs": 4.0, "iops": 30864.0,
                                          "mib_s": 120.6, "errors": 0}


def test_parse_line_takes_the_last_line_and_checks_the_mode():
    assert R.parse_line("noise\nseqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=2\n\n",
                        "seqw")["errors"] == 2
    with pytest.raises(ValueError, match="not 'randw'"):
        R.parse_line("seqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=0", "randw")
    for bad in ("", "connect: Connection refused", "randr ops=1 secs=x iops=1 MiBps=1 errors=0",
                "randr ops=1 secs=1.00 iops=1 MiBps=1.0 errors=0 extra"):
        with pytest.raises(ValueError, match="unexpected sdload output"):
            R.parse_line(bad)


# -- order of the runs, medians -------------------------------------------------

def test_schedule_alternates_the_modes_abba():
    assert R.schedule(["nosync", "durable"], 3) == [
        (0, "nosync"), (0, "durable"), (1, "durable"), (1, "nosync"),
        (2, "nosync"), (2, "durable")]
    assert R.schedule(["durable"], 2) == [(0, "durable"), (1, "durable")]


def _run(name, sync, iops, mib_s=1.0, errors=0, failure=None, rnd=0):
    return {"round": rnd, "sync": sync, "workload": name, "ops": int(iops), "secs": 1.0,
            "iops": iops, "mib_s": mib_s, "errors": errors, "failure": failure}


def test_medians_of_each_workload_and_mode():
    runs = [_run("rand-read-4k-t1", "nosync", v) for v in (100.0, 300.0, 200.0)]
    runs += [_run("rand-read-4k-t1", "durable", v, errors=e) for v, e in ((10.0, 1), (30.0, 2))]
    runs += [_run("seq-write-1m-t4", "nosync", 5.0, mib_s=m) for m in (50.0, 70.0)]
    runs += [_run("seq-write-1m-t4", "nosync", 0.0, mib_s=0.0, failure="sheep died")]
    m = R.medians(runs)
    assert m["rand-read-4k-t1"]["nosync"] == {"runs": 3, "failed": 0, "iops": 200.0,
                                             "mib_s": 1.0, "errors": 0, "spread": 3.0,
                                             "p50_us": None, "p99_us": None, "p999_us": None}
    assert m["rand-read-4k-t1"]["durable"]["iops"] == 20.0  # even count: the mean of two
    assert m["rand-read-4k-t1"]["durable"]["errors"] == 3  # summed over the runs
    sw = m["seq-write-1m-t4"]["nosync"]  # the failed run is not in the median
    assert (sw["mib_s"], sw["failed"], sw["runs"], sw["spread"]) == (60.0, 1, 3, 1.4)


# -- tables from JSON documents ---------------------------------------------------

def _doc(medians, sync=("nosync", "durable"), names=("rand-read-4k-t1", "seq-write-1m-t4"),
         **settings):
    s = {"client": "sdload", "sync": list(sync), "seconds": 1, "repeat": 1, "nodes": 3,
         "copies": 3, "objects": 16, "workloads": list(names)}
    s.update(settings)
    return {"settings": s, "medians": medians, "failures": []}


def _m(iops=None, mib_s=None, errors=0, failed=0, lat=(None, None, None)):
    return {"runs": 1, "failed": failed, "iops": iops, "mib_s": mib_s, "errors": errors,
            "spread": None, **dict(zip(R.LATENCY_KEYS, lat))}


NEW = {"rand-read-4k-t1": {"nosync": _m(2000.0, 7.8, lat=(450.0, 2100.0, 15234.5)),
                           "durable": _m(1500.0, 5.9, errors=4)},
       "seq-write-1m-t4": {"nosync": _m(60.0, 60.0), "durable": _m(30.0, 30.0)}}
OLD = {"rand-read-4k-t1": {"nosync": _m(1000.0, 3.9), "durable": _m(1500.0, 5.9)},
       "seq-write-1m-t4": {"nosync": _m(40.0, 80.0)}}


def test_table_shows_iops_or_mib_s_and_marks_errors():
    lines = R.table(_doc(NEW)).splitlines()
    assert lines[:2] == ["| workload | mode | median | p50 µs | p99 µs | p99.9 µs | errors |",
                         "|---|---|---:|---:|---:|---:|---:|"]
    assert lines[2:] == [
        "| rand-read-4k-t1 | nosync | 2,000 IOPS | 450 | 2,100 | 15,234 | 0 |",
        "| rand-read-4k-t1 | durable | 1,500 IOPS ⚠ | — | — | — | **4** ⚠ |",  # no latency
        "| seq-write-1m-t4 | nosync | 60.0 MiB/s | — | — | — | 0 |",
        "| seq-write-1m-t4 | durable | 30.0 MiB/s | — | — | — | 0 |"]
    assert R.exit_status(_doc(NEW)) == 1
    assert R.exit_status(_doc(OLD, sync=("nosync",))) == 0
    failed = _doc({"rand-read-4k-t1": {"nosync": _m(failed=1)}}, sync=("nosync",),
                  names=("rand-read-4k-t1",))
    assert R.table(failed).splitlines()[2] == (
        "| rand-read-4k-t1 | nosync | — ⚠ | — | — | — | **0, 1 run(s) failed** ⚠ |")
    assert R.exit_status(failed) == 1
    assert R.exit_status({**_doc(OLD, sync=("nosync",)), "failures": ["round 1"]}) == 1


def test_compare_ratios_new_over_old_on_the_shown_metric():
    lines = R.compare_table(_doc(NEW), _doc(OLD)).splitlines()
    assert lines[2:] == [
        "| rand-read-4k-t1 | nosync | 1,000 IOPS | 2,000 IOPS | 2.000 | — | 2,100 | 0 |",
        "| rand-read-4k-t1 | durable | 1,500 IOPS | 1,500 IOPS ⚠ | 1.000 | — | — | **4** ⚠ |",
        "| seq-write-1m-t4 | nosync | 80.0 MiB/s | 60.0 MiB/s | 0.750 | — | — | 0 |",  # MiB/s
        "| seq-write-1m-t4 | durable | — | 30.0 MiB/s | — | — | — | 0 |"]  # not in the old one
    assert R.ratio("rand-read-4k-t1", _m(5.0), _m(0.0)) is None


def test_compare_warns_when_settings_differ():
    assert R.setting_differences(_doc(NEW), _doc(OLD)) == []
    assert R.setting_differences(_doc(NEW, client="python", seconds=4), _doc(OLD)) == [
        "client: old 'sdload', new 'python'", "seconds: old 1, new 4"]


def test_command_line_refusals(tmp_path, capsys):
    for argv in (["--only", "rand-read-4k-t2"], ["--seconds", "0"], ["--seconds", "1.5"],
                 ["--copies", "4"], ["--compare", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit) as e:
            S.parse_args(argv)
        assert e.value.code == 2
    ns = S.parse_args(["--only", "seq-read-1m-t4,rand-write-4k-t1", "--sync", "durable"])
    assert [w.name for w in ns.workloads] == ["rand-write-4k-t1", "seq-read-1m-t4"]
    assert ns.modes == ["durable"] and S.parse_args([]).modes == ["nosync", "durable"]


# -- the build cache ---------------------------------------------------------------

def _fake_cc(tmp_path) -> tuple[dict, pathlib.Path]:
    """A 'compiler' that logs its call and writes a script to its -o path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    cc = bindir / "cc"
    cc.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                  'while [ "$1" != "-o" ]; do shift; done\n'
                  'printf "#!/bin/sh\\necho built\\n" > "$2"\n')
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    return {"PATH": str(bindir), "XDG_CACHE_HOME": str(tmp_path / "cache")}, calls


def test_build_caches_and_rebuilds_when_the_source_changes(tmp_path):
    env, calls = _fake_cc(tmp_path)
    src = tmp_path / "sdload.c"
    src.write_text("int main(void) { return 0; }\n")
    first = B.build(src, env=env)
    assert first.parent == tmp_path / "cache" / "pysheepdog"
    assert first.name == f"sdload-{B.source_hash(src)}" and os.access(first, os.X_OK)
    assert calls.read_text().split()[:3] == list(B.CFLAGS)
    assert B.build(src, env=env) == first and len(calls.read_text().splitlines()) == 1
    src.write_text("int main(void) { return 1; }\n")
    second = B.build(src, env=env)
    assert second != first and len(calls.read_text().splitlines()) == 2
    assert sorted(p.name for p in second.parent.iterdir()) == [second.name]  # old one gone


def test_build_honours_cc_and_reports_compiler_errors(tmp_path):
    env, _ = _fake_cc(tmp_path)
    fail = tmp_path / "bin" / "failcc"
    fail.write_text('#!/bin/sh\necho "sdload.c:1: error: boom" >&2\nexit 1\n')
    fail.chmod(0o755)
    src = tmp_path / "sdload.c"
    src.write_text("x\n")
    with pytest.raises(B.BuildError, match="(?s)failed \\(exit 1\\).*error: boom"):
        B.build(src, env={**env, "CC": "failcc -std=c11"})
    assert B.find_compiler({**env, "CC": "failcc -std=c11"}) == [str(fail), "-std=c11"]
    assert not list((tmp_path / "cache" / "pysheepdog").iterdir())  # no half-written binary


def test_without_a_compiler_a_clear_error_and_exit_3(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert B.find_compiler(env) is None
    with pytest.raises(B.BuildError, match="no C compiler found.*--client python"):
        B.build(env=env)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert S.main(["--only", "rand-read-4k-t1", "--json", str(tmp_path / "r.json")]) == 3
    assert "cannot build sdload: no C compiler found" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_sdload_source_ships_as_package_data():
    assert B.SOURCE == REPO / "bench" / "sdload.c"
    assert B.SOURCE.read_text().startswith("/* Build: gcc -O2 -Wall -pthread")
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "bench*" in cfg["options.packages.find"]["include"]
    assert cfg["options.package_data"]["bench"].split() == ["sdload.c"]


def test_run_sdload_exit_status_and_errors(tmp_path):
    fake = tmp_path / "sdload"
    fake.write_text('#!/bin/sh\necho "result 0x3" >&2\n'
                    'echo "randw ops=5 secs=1.00 iops=5 MiBps=0.0 errors=2"\nexit 1\n')
    fake.chmod(0o755)
    r = S.run_sdload(fake, 1, 1, "randw", 4096, 1, 1)
    assert (r["ops"], r["errors"], r["stderr"]) == (5, 2, "result 0x3")
    fake.write_text('#!/bin/sh\necho "randw ops=5 secs=1.00 iops=5 MiBps=0.0 errors=0"\n'
                    'exit 1\n')  # a failure exit without errors counted: not trusted
    with pytest.raises(RuntimeError, match="exited 1"):
        S.run_sdload(fake, 1, 1, "randw", 4096, 1, 1)


# -- one real build, run against nothing ----------------------------------------------

@pytest.mark.skipif(B.find_compiler() is None, reason="no C compiler")
def test_real_sdload_builds_and_fails_cleanly_against_a_closed_port(tmp_path):
    binary = B.build(cache=tmp_path)
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match="(?s)exited 2.*Connection refused"):
            S.run_sdload(binary, port, 1, "randr", 4096, 1, 1)
    assert shutil.which(str(binary))
