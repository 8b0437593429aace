"""``python -m bench``'s local-file baseline is synced like the cluster it is
set beside: a ``sheep -n`` cluster against a file in the page cache, a
durable cluster (whose replicas ``fdatasync`` every write) against a file
``fdatasync``'ed after every write.  Checked on the real FileTarget (the
fdatasync calls counted) and through ``main`` with the cluster faked."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from bench import __main__ as M
from bench import workloads as W

pytestmark = pytest.mark.quick

WRITE = W.Workload("t-write", "write", 4096, 2, False)
READ = W.Workload("t-read", "read", 4096, 2, False)


@pytest.fixture
def fdatasyncs(monkeypatch):
    """The fds passed to os.fdatasync while the test runs (the real call is made)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


@pytest.mark.parametrize("sync", [False, True])
def test_file_target_syncs_every_write_exactly_when_asked(tmp_path, fdatasyncs, sync):
    ft = W.FileTarget(str(tmp_path / "f.img"), 4 * W.MiB, sync=sync)
    try:
        ft.prepare()
        prepared = len(fdatasyncs)
        assert prepared == (1 if sync else 0)  # the untimed fill: one sync at its end
        w = ft.run(WRITE, 0.05)
        assert w.ops > 0
        assert len(fdatasyncs) - prepared == (w.ops if sync else 0)
        assert set(fdatasyncs) <= {ft.fd}
        before = len(fdatasyncs)
        r = ft.run(READ, 0.05)
        assert r.ops > 0 and len(fdatasyncs) == before  # reads never sync
    finally:
        ft.close()
    assert not (tmp_path / "f.img").exists()


def test_the_cluster_and_the_baseline_get_the_same_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for sync, nosync, dsync in (("nosync", True, False), ("durable", False, True)):
        ns = M.parse_args(["--sync", sync, "--base-port", "7600"])
        bc = M.bench_cluster(ns)
        assert (bc.nosync, bc.base_port) == (nosync, 7600)
        assert M.baseline_target(ns, "/nonexistent", 4 * W.MiB).sync is dsync
        bc.close()  # never started: nothing to kill, nothing was created
    assert list(tmp_path.iterdir()) == []
    assert M.parse_args([]).sync == "nosync"  # the default did not change
    with pytest.raises(SystemExit):
        M.parse_args(["--sync", "both"])


class _FakeCluster:
    made: list["_FakeCluster"] = []
    ports = [7600, 7601, 7602]

    def __init__(self, nodes, copies, nosync=True, base_port=None, root=None):
        self.nosync, self.root = nosync, _FakeCluster.root
        _FakeCluster.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def new_vdi(self, name, size):
        return 1


@pytest.mark.parametrize("sync", ["nosync", "durable"])
def test_main_runs_the_baseline_in_the_clusters_mode(tmp_path, monkeypatch, fdatasyncs,
                                                      capsys, sync):
    _FakeCluster.made, _FakeCluster.root = [], str(tmp_path)
    monkeypatch.setattr(M, "BenchCluster", _FakeCluster)

    async def fake_run_cluster(ns, bc, vid, size):
        return {wl.name: W.Result(10, 1.0, wl.bs, 0.1, 5.0, 9.0) for wl in ns.workloads}
    monkeypatch.setattr(M, "run_cluster", fake_run_cluster)
    out = tmp_path / "r.json"
    assert M.main(["--sync", sync, "--seconds", "0.05", "--warmup", "0", "--size-mib", "4",
                   "--only", "rand-write-4k-qd1", "--json", str(out)]) == 0
    assert [c.nosync for c in _FakeCluster.made] == [sync == "nosync"]
    doc = json.loads(out.read_text())
    assert doc["config"]["sync"] == sync and doc["config"]["nosync"] is (sync == "nosync")
    ops = doc["workloads"]["rand-write-4k-qd1"]["baseline_file"]["ops"]
    assert ops > 0
    # durable: prepare's one sync, then one per timed write; nosync: none at all
    assert len(fdatasyncs) == (1 + ops if sync == "durable" else 0)
    head = capsys.readouterr().out.splitlines()[0]
    assert head == (f"| workload | pysheepdog ({sync}) | baseline ("
                    + ("local file, fdatasync per write" if sync == "durable"
                       else "local file, page cache") + ") | ratio |")
