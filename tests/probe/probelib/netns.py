"""Network namespaces for partition probes: one namespace per sheep.

:class:`Net` makes ``n`` namespaces, each with a veth pair whose outer end
is on one bridge in the root namespace; namespace ``i`` has address
``10.A.B.(i+1)/24`` on its ``eth0``, the root namespace has ``10.A.B.254`` on
the bridge, so the test process reaches every node at any time (it is
never part of a partition).  :meth:`Net.cut` partitions the nodes into
groups by adding, inside each namespace, a ``blackhole`` route for every
address of another group: packets between groups vanish silently in both
directions (TCP connections stay open and stall, as across a real network
partition), while nodes of one group still talk.  :meth:`Net.heal`
removes those routes.  :meth:`Net.close` removes every veth, namespace
and the bridge it made, also after a failure.  Needs root and iproute2
(``ip``); both are part of the test environment (scripts/setup.sh).
"""

from __future__ import annotations

import os
import random
import subprocess


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Net:
    def __init__(self, n: int):
        self.n = n
        self.tag = f"{os.getpid() % 1000:03d}{random.randrange(100):02d}"
        used = ip("-4", "addr").stdout
        while True:
            self.net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
            if f"inet {self.net}." not in used:
                break
        self.bridge = f"sdpb{self.tag}"
        self.spaces: list[str] = []
        self._veths: list[str] = []
        self._blackholes: list[tuple[str, str]] = []
        self._made_bridge = False

    def addr(self, i: int) -> str:
        return f"{self.net}.{i + 1}"

    @property
    def root_addr(self) -> str:
        return f"{self.net}.254"

    def prefix(self, i: int) -> list[str]:
        """Command prefix that runs a program in namespace ``i``."""
        return ["ip", "netns", "exec", self.spaces[i]]

    def setup(self) -> Net:
        """Make the bridge and the namespaces (raises CalledProcessError with
        ip's message if the host cannot)."""
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            ip("addr", "add", f"{self.root_addr}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(self.n):
                ns, veth = f"sdpn{self.tag}{i}", f"sdpv{self.tag}{i}"
                ip("netns", "add", ns)
                self.spaces.append(ns)
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._veths.append(veth)
                ip("link", "set", veth, "master", self.bridge, "up")
                ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def cut(self, groups: list[list[int]]) -> None:
        """Partition: nodes of different groups cannot reach each other."""
        side = {i: g for g, members in enumerate(groups) for i in members}
        for a in range(self.n):
            for b in range(self.n):
                if a != b and side.get(a) != side.get(b):
                    ip("-n", self.spaces[a], "route", "add", "blackhole", f"{self.addr(b)}/32")
                    self._blackholes.append((self.spaces[a], self.addr(b)))

    def heal(self) -> None:
        for ns, addr in self._blackholes:
            ip("-n", ns, "route", "del", "blackhole", f"{addr}/32", check=False)
        self._blackholes.clear()

    def close(self) -> None:
        self.heal()
        for veth in self._veths:  # the veth goes at once, the namespace lazily
            ip("link", "del", veth, check=False)
        for ns in self.spaces:
            ip("netns", "del", ns, check=False)
        if self._made_bridge:
            ip("link", "del", self.bridge, check=False)
        self._veths.clear()
        self.spaces.clear()
        self._made_bridge = False
