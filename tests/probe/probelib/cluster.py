"""Clusters and writer processes for the probe tier.

:class:`ProbeCluster` is a :class:`harness.Cluster` (real ``sheep`` daemons
started as a user would start them) that nodes can be killed, stopped and
restarted in, formatted with VDI locks on, and that keeps its directory
(stores, ``sheep.log`` of every node) when the probe failed.  Nodes may
live in network namespaces (``probelib.netns``) or have their own ``-c``
value (the ZooKeeper proxy), through ``node_prefix`` / ``node_spec``.

:class:`WriterProc` runs one ``probelib.writer`` process and follows its
JSON events.  Every wait here polls a condition until a deadline.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

from harness import Client, Cluster, Node, wait_for

from sheep import proto

PROBE_DIR = pathlib.Path(__file__).resolve().parents[1]  # tests/probe
MiB = 1 << 20


class ProbeNode(Node):
    """A harness node that may run under a command prefix (``ip netns exec
    NS``), listen on its own address and use its own ``-c`` value."""

    host: str = "127.0.0.1"
    prefix: tuple = ()
    spec: str | None = None

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.spec is not None:
            argv[argv.index("-c") + 1] = self.spec
        if self.host != "127.0.0.1":
            argv[-1:-1] = ["-b", self.host, "-y", self.host]
        return [*self.prefix, *argv]

    def client(self) -> Client:
        return Client(self.port, self.host)

    def key(self) -> tuple[str, int]:
        return self.host, self.port


class ProbeCluster(Cluster):
    """``n`` sheep daemons (zones 0..n-1) for a probe.

    ``node_host(i)``, ``node_prefix(i)``, ``node_spec(i)`` (optional) give
    node ``i`` its address, command prefix and ``-c`` value.  The cluster is
    not started by the constructor: call :meth:`start`."""

    def __init__(self, root, n: int, node_host=None, node_prefix=None, node_spec=None,
                 **kw):
        self._n = n
        self._host = node_host or (lambda i: "127.0.0.1")
        self._prefix = node_prefix or (lambda i: [])
        self._spec = node_spec or (lambda i: None)
        super().__init__(root, 0, **kw)

    def start(self, timeout: float = 30.0) -> ProbeCluster:
        from harness import free_port

        for port in sorted(free_port() for _ in range(self._n)):
            self.add_node(port=port)
        self.wait_all(timeout)
        return self

    def add_node(self, start: bool = True, zone: int | None = None,
                 port: int | None = None) -> Node:
        """As :meth:`harness.Cluster.add_node`, with this cluster's per-node
        address, prefix and ``-c`` value."""
        from harness import free_port

        idx = len(self.nodes)
        extra = list(self.extra)
        nbd_port = free_port(10809, 11808) if self.nbd else None
        if nbd_port:
            extra += ["--nbd", f"{self._host(idx)}:{nbd_port}"]
        node = ProbeNode(self, idx, port or free_port(),
                         os.path.join(self.store_root, f"store{idx}"),
                         idx if zone is None else zone, extra)
        node.nbd_port = nbd_port
        node.host, node.prefix, node.spec = self._host(idx), list(self._prefix(idx)), \
            self._spec(idx)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    # -- membership --------------------------------------------------------

    def members(self, node: Node) -> list[tuple[str, int]] | None:
        """The node list ``node`` reports (None if it does not answer)."""
        try:
            c = node.client()
            try:
                return sorted((n.host, n.port) for n in c.nodes())
            finally:
                c.close()
        except (OSError, ConnectionError):
            return None

    def all_members(self, nodes=None) -> bool:
        """True when every node of ``nodes`` (default: all) is alive and
        reports exactly ``nodes`` as the members."""
        nodes = self.nodes if nodes is None else nodes
        want = sorted(n.key() for n in nodes)
        return all(n.alive() and self.members(n) == want for n in nodes)

    def wait_all(self, timeout: float = 30.0, nodes=None) -> None:
        wait_for(lambda: self.all_members(nodes), timeout, interval=0.05,
                 what=f"{len(self.nodes if nodes is None else nodes)} nodes to be members")

    def status(self, node: Node) -> int | None:
        try:
            c = node.client()
            try:
                return c.cluster_info().status
            finally:
                c.close()
        except (OSError, ConnectionError):
            return None

    def format_locked(self, copies: int = 3) -> None:
        """Format with VDI locks enforced (what ``collie cluster format`` does)."""
        c = self.nodes[0].client()
        try:
            c.format(copies, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES
                     | proto.SD_CLUSTER_FLAG_USE_LOCK)
        finally:
            c.close()
        wait_for(lambda: all(self.status(n) == proto.SD_STATUS_OK for n in self.nodes), 20,
                 what="cluster running")

    def new_vdi(self, name: str, size: int) -> int:
        c = self.nodes[0].client()
        try:
            return c.new_vdi(name, size)
        finally:
            c.close()

    def epoch(self, node: Node) -> int:
        c = node.client()
        try:
            return c.cluster_info().epoch
        finally:
            c.close()

    def recovering(self, node: Node) -> bool:
        c = node.client()
        try:
            return bool(c.call(proto.Op.STAT_RECOVERY, data_length=24)[1][0])
        finally:
            c.close()

    def recovery_idle(self, nodes=None) -> bool:
        """Every node is a member of one view and none is recovering."""
        nodes = self.nodes if nodes is None else nodes
        if not self.all_members(nodes):
            return False
        return not any(self.recovering(n) for n in nodes)

    # -- faults --------------------------------------------------------------

    def restart(self, node: Node, timeout: float = 60.0) -> None:
        """Start ``node`` again on its own store (retrying while the daemon
        refuses to start because, e.g., its store lock is not free yet)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                node.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def sigstop(self, node: Node) -> None:
        if node.pid is not None:
            os.kill(node.pid, signal.SIGSTOP)

    def sigcont(self, node: Node) -> None:
        if node.pid is not None:
            try:
                os.kill(node.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # -- teardown ----------------------------------------------------------

    def log_paths(self) -> list[str]:
        return [os.path.join(n.store, "sheep.log") for n in self.nodes]

    def close(self, keep: bool = False) -> None:
        """Kill every daemon; remove the directory unless ``keep`` (or
        SHEEP_KEEP_TEST_DIRS is set)."""
        for n in self.nodes:
            self.sigcont(n)
            n.kill(signal.SIGKILL)
        if not keep and not os.environ.get("SHEEP_KEEP_TEST_DIRS"):
            shutil.rmtree(self.root, ignore_errors=True)


class WriterProc:
    """One ``python -m probelib.writer`` process (see that module).

    ``events`` collects its JSON lines; ``last`` is the latest progress
    (or ready) event.  :meth:`stop` returns the model it wrote."""

    def __init__(self, wid: int, vdi: str, host: str, port: int, run: int, out: str,
                 prefix: list[str] = (), **opts):
        self.wid, self.vdi, self.out = wid, vdi, out
        argv = [*prefix, sys.executable, "-m", "probelib.writer", "--id", str(wid),
                "--vdi", vdi, "--host", host, "--port", str(port), "--run", str(run),
                "--out", out]
        for k, v in opts.items():
            if v is True:
                argv.append("--" + k.replace("_", "-"))
            elif v not in (None, False):
                argv += ["--" + k.replace("_", "-"), str(v)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(PROBE_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.stderr_path = out + ".stderr"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._stderr, text=True, env=env)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()

    @property
    def last(self) -> dict:
        with self.cond:
            for ev in reversed(self.events):
                if "acked" in ev:
                    return ev
        return {}

    def wait_event(self, pred, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                if self.p.poll() is not None and not self._alive_reader():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
        raise AssertionError(f"writer {self.wid}: timed out after {timeout}s waiting for {what}"
                             f" (exit {self.p.poll()}; stderr: {self.stderr()[-1500:]})")

    def _alive_reader(self) -> bool:
        return not self.p.stdout.closed and self.p.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> dict:
        return self.wait_event(lambda ev: ev["ev"] == "ready", timeout, "ready")

    def acked(self) -> int:
        return self.last.get("acked", 0)

    def gateway(self) -> tuple[str, int] | None:
        gw = self.last.get("gateway")
        return tuple(gw) if gw and gw[0] else None

    def wait_progress(self, more: int, timeout: float) -> None:
        """Wait until ``more`` further writes were acknowledged."""
        want = self.acked() + more
        self.wait_event(lambda ev: ev.get("acked", 0) >= want, timeout,
                        f"{more} more acknowledged writes (at {self.acked()})")

    def send(self, cmd: str) -> None:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def stop(self, timeout: float = 240.0) -> dict:
        """Stop, let it settle its in-doubt blocks and close; return its model."""
        self.request_stop()
        if self.p.poll() is None:
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._stderr.close()
        if self.p.returncode != 0 or not os.path.exists(self.out):
            raise AssertionError(f"writer {self.wid} failed (exit {self.p.returncode}): "
                                 f"{self.stderr()[-3000:]}")
        with open(self.out) as f:
            return json.load(f)

    def request_stop(self) -> None:
        """Send ``stop`` without waiting (see :func:`stop_all`)."""
        if self.p.poll() is None:
            try:
                self.send("stop")
            except (BrokenPipeError, OSError):
                pass

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        if not self._stderr.closed:
            self._stderr.close()


def stop_all(writers: list[WriterProc]) -> dict[int, dict]:
    """Stop every writer at once (they settle in parallel); {writer id: model}."""
    for w in writers:
        w.request_stop()
    return {w.wid: w.stop() for w in writers}
