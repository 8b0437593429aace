"""Driver registry for the driver-independent membership tests, and the
process wrapper they use.

``DRIVERS[name](tmp_path)`` returns ``(spec, cleanup)``: ``spec(i)`` is the
``-c`` value member number ``i`` (0, 1, ...) is started with, ``cleanup()``
releases whatever the factory set up.  To add a driver, add one factory
(e.g. ``"zookeeper"``: start a server on a loopback port, return
``lambda i: f"zookeeper:127.0.0.1:{port}/test"`` and a cleanup stopping it).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HELPER = Path(__file__).with_name("member_proc.py")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on 127.0.0.1."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def local_factory(tmp_path: Path):
    return (lambda i: f"local:{tmp_path / 'cluster'}"), (lambda: None)


def zmq_factory(tmp_path: Path, seeds: int = 6):
    spec = "zmq:" + ",".join(f"127.0.0.1:{p}" for p in free_ports(seeds))
    return (lambda i: spec), (lambda: None)


def zookeeper_factory(tmp_path: Path):
    """A real ZooKeeper server of its own; session timeout 2 s (failure detection)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/
    from zkserver import ZooKeeperServer

    zk = ZooKeeperServer().start()
    spec = f"zookeeper:{zk.address}/contract,timeout=2"
    return (lambda i: spec), zk.stop


DRIVERS = {
    "local": local_factory,
    "zmq": zmq_factory,
    "zookeeper": zookeeper_factory,
}


class Proc:
    """One member_proc.py process; its JSON events are collected by a thread."""

    def __init__(self, spec: str, ident: str, opaque: str | None = None, prefix: list[str] = ()):
        self.ident = ident
        args = [*prefix, sys.executable, str(HELPER), spec, ident]
        if opaque is not None:
            args += ["--opaque", opaque]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, pred, timeout=15.0, what=""):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.ident}: timed out waiting for {what}: {self.events[-20:]}")
                self.cond.wait(left)

    def wait_joined(self, timeout=15.0):
        self.wait(lambda ev: any(e["ev"] == "joined" for e in ev), timeout, "joined")

    def send(self, line: str):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def of(self, kind: str) -> list[dict]:
        with self.cond:
            return [e for e in self.events if e["ev"] == kind]

    def views(self) -> list[list[str]]:
        with self.cond:
            return [e["members"] for e in self.events if e["ev"] in ("join", "leave")]

    def history(self) -> list[tuple]:
        """Delivered views and messages, in order (the virtual-synchrony trace)."""
        with self.cond:
            return [("view", tuple(e["members"])) if e["ev"] in ("join", "leave")
                    else ("msg", e["frm"], e["msg"])
                    for e in self.events if e["ev"] in ("join", "leave", "notify")]

    def sees(self, members: list[str]):
        """Predicate: the latest view is ``members``."""
        def pred(ev):
            views = [e["members"] for e in ev if e["ev"] in ("join", "leave")]
            return bool(views) and views[-1] == members
        return pred

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)

    def stop(self):
        self.kill()
        for f in (self.p.stdout, self.p.stdin):
            try:
                f.close()
            except OSError:
                pass
