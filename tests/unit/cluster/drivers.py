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


def rejoined(ident):
    """Predicate: ``ident`` went out (``on_quorum(False)``) and came back:
    ``on_quorum(True)`` and then its own ``on_join`` (base.py, ordering rule
    3).  Anything else right after the quorum True fails the test."""
    def pred(ev):
        ev = [(e["ev"], e.get("ok"), e.get("who")) for e in ev
              if e["ev"] in ("join", "leave", "notify", "quorum")]
        if ("quorum", False, None) not in ev:
            return False
        rest = ev[ev.index(("quorum", False, None)) + 1:]
        if ("quorum", True, None) not in rest:
            return False
        after = rest[rest.index(("quorum", True, None)) + 1:]
        if after and after[0] != ("join", None, ident):
            raise AssertionError(f"{ident}: after on_quorum(True) came {after[0]}, not its own join")
        return bool(after)
    return pred


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

    def serving(self, since: float = 0.0) -> list[dict]:
        """The ``serving`` samples (transitions, and the first after a stall)
        taken after ``since`` (a ``time.monotonic()`` value)."""
        with self.cond:
            return [e for e in self.events if e["ev"] == "serving" and e["t"] > since]

    def stopped_serving(self, since: float, until: float) -> float:
        """When this process stopped serving for good within (since, until):
        the first False sample after the last True one.  (A lease may lapse
        and be renewed for a moment, e.g. under load; what counts is that it
        does not serve from that time on.)"""
        window = [e for e in self.serving(since) if e["t"] < until]
        assert window and not window[-1]["ok"], f"{self.ident} still serving: {window[-5:]}"
        ons = [i for i, e in enumerate(window) if e["ok"]]
        return window[ons[-1] + 1]["t"] if ons else window[0]["t"]

    def is_serving(self) -> bool:
        """The latest ``serving`` sample."""
        s = self.serving()
        return bool(s) and s[-1]["ok"]

    def wait_serving(self, ok: bool = True, timeout: float = 10.0):
        self.wait(lambda ev: [e["ok"] for e in ev if e["ev"] == "serving"][-1:] == [ok],
                  timeout, f"serving={ok}")

    def membership(self) -> list[dict]:
        """join/leave/notify/quorum events, in order (no samples)."""
        with self.cond:
            return [e for e in self.events if e["ev"] in ("join", "leave", "notify", "quorum")]

    def sees(self, members: list[str]):
        """Predicate: the latest view is ``members``."""
        def pred(ev):
            views = [e["members"] for e in ev if e["ev"] in ("join", "leave")]
            return bool(views) and views[-1] == members
        return pred

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()   # also ends a SIGSTOPped process
        self.p.wait(10)

    def stop(self):
        self.kill()
        for f in (self.p.stdout, self.p.stdin):
            try:
                f.close()
            except OSError:
                pass
