"""The multi-host walkthrough (docs/multi-host.md), run as written.

Every sheep runs in its own network namespace with its own address on a
private bridge (``probelib.netns.Net``; the test process and, for the
ZooKeeper driver, a real ZooKeeper server are in the root namespace, on
the bridge address).  Each ``nodeN$ CMD`` line of the walkthrough's section
for the driver runs in node N's namespace, through ``bash -o pipefail``,
with only the example addresses, the ZooKeeper port and the store
directory replaced (``tests/walkthrough.py``): start 3 sheep with ``-b``
and ``-y`` their own address, ``collie node list``, format, create a VDI,
write through node1, read through node2 (``| cmp - demo.img``), add node4,
``collie node kill 2``, read through node4.  Every line must exit 0; after
each ``sheep`` and ``node kill`` the test waits until every live node lists
exactly the live nodes, at the addresses they were given.

The zmq variant then restarts the killed node from
``contrib/systemd/sheep@.service``'s ``ExecStart=`` (instance ``node3``,
the walkthrough's conf file with node3's address) and reads through it.
A last test checks the advertised-address default (``sheep.advertise``)
inside a namespace: the address on the route to the ZooKeeper server.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
from harness import Client, wait_for
from walkthrough import (
    ROOT,
    env_file,
    localize,
    section,
    steps,
    unit_exec_start,
    unit_setting,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "probe"))
from probelib.netns import Net  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

BIN = pathlib.Path(sys.executable).parent  # the venv's sheep and collie
SHEEP_PORT = 7000  # the walkthrough's: each namespace has its own ports


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def _daemons(marker: str) -> list[int]:
    """Pids of the processes whose command line holds ``marker`` (our dirs)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{d}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if marker in cmd and "sheep" in cmd:
            pids.append(int(d))
    return pids


def _members(host: str) -> set[str] | None:
    try:
        c = Client(SHEEP_PORT, host)
    except OSError:
        return None
    try:
        return {n.host for n in c.nodes() if n.port == SHEEP_PORT}
    except (OSError, ConnectionError):
        return None
    finally:
        c.close()


class Walk:
    """One walkthrough run: namespaces, stores, the commands' outcomes."""

    def __init__(self, tmp: pathlib.Path, net: Net, zk=None):
        self.tmp, self.net, self.zk = tmp, net, zk
        self.live: set[int] = set()
        self.killed: int | None = None
        self.times: list[tuple[str, float, float]] = []
        self.demo = os.urandom(1 << 20)
        (tmp / "demo.img").write_bytes(self.demo)

    def addr(self, n: int) -> str:
        return self.net.addr(n - 1)

    def store(self, n: int) -> pathlib.Path:
        return self.tmp / f"node{n}"

    def run(self, n: int, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*self.net.prefix(n - 1), *argv], cwd=self.tmp, env=_env(),
                              capture_output=True, text=True, errors="replace", timeout=60)

    def wait_members(self) -> None:
        want = {self.addr(n) for n in self.live}
        wait_for(lambda: all(_members(self.addr(n)) == want for n in self.live), 30,
                 interval=0.05, what=f"every live node to list {sorted(want)}")

    def step(self, n: int, cmd: str) -> subprocess.CompletedProcess:
        zk_host, zk_port = (self.zk.host, self.zk.port) if self.zk else (None, None)
        local = localize(cmd, n, self.addr, zk_host, zk_port, self.store)
        t0 = time.monotonic()
        r = self.run(n, ["bash", "-o", "pipefail", "-c", local])
        t1 = time.monotonic()
        assert r.returncode == 0, (f"node{n}$ {cmd}\n  ran as: {local}\n  exit {r.returncode}"
                                   f"\n  stdout: {r.stdout[-2000:]}\n  stderr: {r.stderr[-2000:]}")
        if cmd.startswith("sheep "):
            self.live.add(n)
            self.wait_members()
        elif " node list" in f" {cmd}":
            for m in self.live:
                assert re.search(rf"\b{re.escape(self.addr(m))}:{SHEEP_PORT}\b", r.stdout), \
                    (self.addr(m), r.stdout)
        elif " node kill " in f" {cmd}":
            kid = int(cmd.split("node kill", 1)[1].split()[0])
            victim = sorted(self.live, key=lambda m: tuple(map(int, self.addr(m).split("."))))[kid]
            wait_for(lambda: not _daemons(str(self.store(victim))), 30,
                     what=f"node{victim}'s daemon to exit")
            self.live.discard(victim)
            self.wait_members()
            self.killed = victim
        self.times.append((f"node{n}$ {cmd[:40]}", round(t1 - t0, 2),
                           round(time.monotonic() - t1, 2)))
        return r

    def walk(self, title: str) -> list[str]:
        done = []
        for n, cmd in steps(title):
            self.step(n, cmd)
            done.append(f"node{n}$ {cmd}")
        for line, ran, waited in self.times:  # figures: seconds per step (-s shows them)
            print(f"{ran:6.2f} s + {waited:5.2f} s wait  {line}")
        return done

    def close(self) -> None:
        for pid in _daemons(str(self.tmp)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not _daemons(str(self.tmp)), 10, what="the daemons to die")


def _expected_steps(walked: list[str]) -> None:
    """The walkthrough covers what the issue asks, in this order."""
    kinds = []
    for line in walked:
        cmd = line.split("$ ", 1)[1]
        for key in ("sheep ", "cluster format", "vdi create", "vdi write", "vdi read",
                    "node kill"):
            if cmd.startswith(key) or f"collie {key}" in cmd:
                kinds.append(key.strip())
    assert kinds == ["sheep"] * 3 + ["cluster format", "vdi create", "vdi write", "vdi read",
                                     "sheep", "node kill", "vdi read"], kinds
    for line in walked:
        if " sheep " in f" {line} ":
            n = line.split("$")[0][len("node"):]
            assert f"-b 10.0.0.{n} -y 10.0.0.{n} " in line, line


@pytest.fixture
def net():
    n = Net(4).setup()
    try:
        yield n
    finally:
        n.close()


def test_zmq_walkthrough_then_systemd_restart(tmp_path, net):
    w = Walk(tmp_path, net)
    try:
        walked = w.walk("The zmq driver")
        _expected_steps(walked)
        assert w.killed == 3 and w.live == {1, 2, 4}

        # node3 comes back under the systemd unit: ExecStart with instance
        # node3 and the walkthrough's conf file given node3's own address
        unit = (ROOT / "contrib/systemd/sheep@.service").read_text()
        conf = section("Running the nodes under systemd").split("```sh\n", 1)[1].split("```")[0]
        conf = re.sub(r"^(SHEEP_BIND|SHEEP_ADVERTISE)=10\.0\.0\.1$", r"\1=10.0.0.3", conf,
                      flags=re.M)
        env = env_file(localize(conf, 3, w.addr, store=w.store))
        argv = unit_exec_start(unit, "node3", env)
        assert argv[0] == "/usr/local/bin/sheep"
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        argv = [str(BIN / "sheep")] + [a.replace("/run/pysheepdog", str(run_dir)) for a in argv[1:]]
        r = w.run(3, argv)
        assert r.returncode == 0, r.stderr
        pidfile = unit_setting(unit, "PIDFile").replace("%i", "node3").replace(
            "/run/pysheepdog", str(run_dir))
        pid = int(wait_for(lambda: open(pidfile).read().strip(), 10, what="the unit's PIDFile"))
        assert pid in _daemons(str(w.store(3)))
        w.live.add(3)
        w.wait_members()
        r = w.run(3, ["bash", "-o", "pipefail", "-c",
                      f"collie vdi read demo 0 1M -a {w.addr(3)} | cmp - demo.img"])
        assert r.returncode == 0, (r.stdout, r.stderr)
    finally:
        w.close()


def test_zookeeper_walkthrough(tmp_path, net):
    from zkserver import ZooKeeperServer

    zk = ZooKeeperServer(host=net.root_addr)
    zk.start()
    w = Walk(tmp_path, net, zk=zk)
    try:
        walked = w.walk("The ZooKeeper driver")
        _expected_steps(walked)
        assert w.live == {1, 2, 4}
        # what the daemons advertise without -y: the route to ZooKeeper
        # (sheep.advertise), checked in node1's namespace
        code = ("from sheep.advertise import resolve; "
                f"print(resolve(None, None, 'zookeeper:{zk.address}'))")
        r = w.run(1, [sys.executable, "-c", code])
        assert r.stdout.strip() == w.addr(1), r
        r = w.run(1, [sys.executable, "-c", code.replace("None, None", "None, '0.0.0.0'")])
        assert r.stdout.strip() == w.addr(1), r
    finally:
        w.close()
        zk.stop()


def test_advertised_default_in_namespace(tmp_path, net):
    """``sheep -b 0.0.0.0 -c zmq:...`` without ``-y`` in a namespace
    advertises its namespace address (it used to advertise 127.0.0.1, which
    no other host can reach)."""
    w = Walk(tmp_path, net)
    try:
        spec = f"zmq:{w.addr(1)}:7100,{w.addr(2)}:7100"
        for n in (1, 2):
            r = w.run(n, [str(BIN / "sheep"), "-c", spec, str(w.store(n))])
            assert r.returncode == 0, r.stderr
            w.live.add(n)
        w.wait_members()
    finally:
        w.close()
