"""The thrasher: rounds of faults against a running cluster with writers.

Each round is one of

* ``kill``: SIGKILL a random node;
* ``gateway``: SIGKILL the node one of the writers uses as its gateway now;
* ``double``: SIGKILL two nodes at once (copies - 1 for copies 3);
* ``stop``: SIGSTOP a random node for 1-4 s, then SIGCONT (a hung process:
  the local driver's flock liveness still sees it, so it stays a member);

then every killed node is restarted on its own store, either at once (its
departure may not even have been noticed yet) or after the survivors formed
their view and the writers made progress without it ("degraded"); double
kills restart in random order, one after the other, or both daemons at the
same moment ("parallel").  A round ends when
every node is a member again and every writer acknowledged writes since the
round began; with ``wait_recovery`` also only once no node is recovering.
Every wait has a deadline; a round that misses one is recorded as a
``stall`` and ends the thrashing (the probe then verifies what it has).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from harness import wait_for

ACTIONS = (("kill", 0.25), ("gateway", 0.3), ("double", 0.3), ("stop", 0.15))
PROGRESS = 20  # acknowledged writes per writer that show the cluster serves
MEMBERS_TIMEOUT = 60.0
PROGRESS_TIMEOUT = 90.0
RECOVERY_TIMEOUT = 180.0


@dataclass
class Round:
    n: int
    action: str
    victims: list = field(default_factory=list)
    restart: str = ""
    t0: float = 0.0
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(self.t0)) + f".{int(self.t0 % 1 * 1000):03d}"
        return (f"round {self.n:3d} {t} {self.action:8s} nodes {self.victims} "
                f"{self.restart:10s} {self.seconds:5.1f}s {self.note}")


class Thrasher:
    def __init__(self, cluster, writers, rnd, wait_recovery: bool, log=print):
        self.c, self.writers, self.rnd = cluster, writers, rnd
        self.wait_recovery = wait_recovery
        self.log = log
        self.rounds: list[Round] = []
        self.stalls: list[str] = []

    def _pick_action(self) -> str:
        x = self.rnd.random()
        for name, w in ACTIONS:
            if x < w:
                return name
            x -= w
        return ACTIONS[-1][0]

    def _node_at(self, port: int):
        for n in self.c.nodes:
            if n.port == port:
                return n
        return None

    def _progress(self) -> None:
        for w in self.writers:
            w.wait_progress(PROGRESS, PROGRESS_TIMEOUT)

    def _restart(self, victims, r: Round) -> None:
        modes = ["at-once", "degraded"] + (["parallel"] if len(victims) > 1 else [])
        mode = self.rnd.choice(modes)
        order = list(victims)
        self.rnd.shuffle(order)
        r.restart = mode
        if mode == "parallel":  # every victim's daemon starts at the same time
            errors = []

            def start(n):
                try:
                    self.c.restart(n)
                except Exception as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)
            threads = [threading.Thread(target=start, args=(n,)) for n in order]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            if errors:
                raise errors[0]
            return
        if mode == "degraded":
            survivors = [n for n in self.c.nodes if n not in victims]
            self.c.wait_all(MEMBERS_TIMEOUT, nodes=survivors)
            self._progress()
        for i, n in enumerate(order):
            self.c.restart(n)
            if i + 1 < len(order):  # one after the other: the cluster sees each join
                joined = [m for m in self.c.nodes if m not in order[i + 1:]]
                self.c.wait_all(MEMBERS_TIMEOUT, nodes=joined)

    def one(self, n: int) -> Round:
        action = self._pick_action()
        r = Round(n, action, t0=time.time())
        if action == "gateway":
            w = self.rnd.choice(self.writers)
            gw = w.gateway()
            node = self._node_at(gw[1]) if gw else None
            if node is None:
                action = r.action = "kill"
            else:
                r.note = f"gateway of writer {w.wid}"
                victims = [node]
        if action == "kill":
            victims = [self.rnd.choice(self.c.nodes)]
        elif action == "double":
            victims = self.rnd.sample(self.c.nodes, 2)
        elif action == "stop":
            victims = [self.rnd.choice(self.c.nodes)]
        r.victims = [v.idx for v in victims]
        if action == "stop":
            secs = self.rnd.uniform(1.0, 4.0)
            r.note = f"stopped {secs:.1f}s"
            self.c.sigstop(victims[0])
            deadline = time.monotonic() + secs  # the length of the fault, not a wait
            while time.monotonic() < deadline:
                time.sleep(0.05)
            self.c.sigcont(victims[0])
        else:
            for v in victims:  # at once: both signals before waiting for either
                try:
                    os.kill(v.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for v in victims:
                v.kill(signal.SIGKILL)  # returns once it is really gone
            self._restart(victims, r)
        self.c.wait_all(MEMBERS_TIMEOUT)
        self._progress()
        if self.wait_recovery:
            wait_for(self.c.recovery_idle, RECOVERY_TIMEOUT, interval=0.2,
                     what="recovery to finish on every node")
        r.seconds = time.time() - r.t0
        return r

    def run(self, rounds: int) -> None:
        for n in range(1, rounds + 1):
            try:
                r = self.one(n)
            except (AssertionError, RuntimeError, OSError) as e:
                self.stalls.append(f"round {n}: {e}")
                self.log(f"round {n}: STALL {e}")
                return
            self.rounds.append(r)
            self.log(r.line() + f"  acked {[w.acked() for w in self.writers]}")
