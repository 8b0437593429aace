"""A throw-away local sheep cluster for benchmarks.

Built on :mod:`bench.daemons` (real ``sheep`` daemons started as
``python -m sheep``, on free ports in 7000-7999 unless ``base_port`` says
otherwise, claimed machine-wide like the tests' ports, each with its own
store under one temporary directory), which is installed with the package:
the benchmarks run from a checkout, an editable install or a plain
``pip install 'pysheepdog[server,bench]'``, whatever the current directory.
:class:`BenchCluster` is a context manager: whatever happens (errors,
Ctrl-C, SIGTERM turned into KeyboardInterrupt by :class:`SignalUnwind`)
every daemon it started is killed and the directory removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

from bench.daemons import Client, Cluster, free_port

#: how many ports above ``base_port`` the daemons may take
PORT_SPAN = 100


class SignalUnwind:
    """SIGINT/SIGTERM raise KeyboardInterrupt, so they unwind through the
    ``with BenchCluster`` (which kills the daemons); :attr:`signum` says which
    arrived (0: none), :meth:`exit_code` the status to exit with."""

    def __init__(self):
        self.signum = 0
        for sig in (signal.SIGINT, signal.SIGTERM):  # also if started with SIGINT ignored
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signum = signum
        raise KeyboardInterrupt

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


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
    """``nodes`` sheep daemons, formatted with ``copies``; ``nosync`` (the
    default) starts them with ``-n`` (no sync of each write), False in the
    default durable mode.  With ``base_port`` they listen on free ports in
    [base_port, base_port + PORT_SPAN), otherwise anywhere in 7000-7999.
    Nothing is created before :meth:`start` (``with`` calls it): the
    directory (``root``, or a fresh ``sheepbench-*`` temporary one) and the
    daemons exist from then until :meth:`close`."""

    def __init__(self, nodes: int = 3, copies: int = 3, root: str | None = None,
                 nosync: bool = True, base_port: int | None = None):
        self.n, self.copies, self.nosync, self.base_port = nodes, copies, nosync, base_port
        self.root = root  # a fresh temporary directory when None, made on start
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
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="sheepbench-")
        # n=0 then add_node(): a node failing to start must not leak the others.
        self.cluster = Cluster(os.path.join(self.root, "cluster"), 0, nosync=self.nosync)
        ports: list[int | None] = [None] * self.n
        if self.base_port is not None:  # ascending, as daemons.Cluster picks them
            hi = min(self.base_port + PORT_SPAN, 65536)
            ports = sorted(free_port(self.base_port, hi) for _ in range(self.n))
        for port in ports:
            self.cluster.add_node(port=port)
        self.cluster.format(self.copies)

    def close(self) -> None:
        if self.cluster is not None:
            try:
                self.cluster.close()
            except Exception as e:  # noqa: BLE001 - still remove the directory
                sys.stderr.write(f"bench: cleaning up the cluster: {e}\n")
        if self.root is not None:
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
