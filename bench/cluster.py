"""A throw-away local sheep cluster for benchmarks.

Reuses ``tests/harness.py`` (real daemons on free ports >= 7000, each with its
own store under one temporary directory).  :class:`BenchCluster` is a context
manager: whatever happens (errors, Ctrl-C, SIGTERM turned into SystemExit by
``__main__``) every daemon it started is killed and the directory removed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

_TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from harness import Client, Cluster


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    """Busy (non-idle, non-iowait) clock ticks of the whole machine, all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]) - v[3] - v[4]  # user..steal minus idle and iowait


class BenchCluster:
    def __init__(self, nodes: int = 3, copies: int = 3, root: str | None = None):
        self.n, self.copies = nodes, copies
        self.root = root or tempfile.mkdtemp(prefix="sheepbench-")
        self.cluster: Cluster | None = None

    # -- life cycle ---------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        # n=0 then add_node(): a node failing to start must not leak the others.
        self.cluster = Cluster(os.path.join(self.root, "cluster"), 0, nosync=True)
        for _ in range(self.n):
            self.cluster.add_node()
        self.cluster.format(self.copies)

    def close(self) -> None:
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception as e:  # noqa: BLE001 - still remove the directory
                sys.stderr.write(f"bench: cleaning up the cluster: {e}\n")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.cluster.nodes]

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.cluster.nodes if n.pid is not None]

    def check_alive(self) -> None:
        dead = [n.idx for n in self.cluster.nodes if not n.alive()]
        if dead:
            raise RuntimeError(f"sheep node(s) {dead} died; see their sheep.log under "
                               f"{self.cluster.root}")

    def cpu_ticks(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                total += _cpu_ticks(pid)
            except OSError:
                pass
        return total

    def new_vdi(self, name: str, size: int) -> int:
        c = Client(self.ports[0])
        try:
            return c.new_vdi(name, size)
        finally:
            c.close()

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for n in self.cluster.nodes:
            tail = n.log().splitlines()[-lines:]
            out.append(f"--- sheep {n.idx} (port {n.port}) ---\n" + "\n".join(tail))
        return "\n".join(out)
