"""The ``sheep`` program as a user runs it: daemonizing, ``-f``, the store
lock, option validation, SIGTERM, a busy port and gateway-only nodes.

Every daemon started here is recorded (pid file or Popen) and SIGKILLed at
teardown; every directory lives under pytest's ``tmp_path``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from harness import Client, free_port, wait_for

from sheep import proto

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _serves(port: int) -> bool:
    c = Client(port)
    try:
        return len(c.nodes()) >= 1
    finally:
        c.close()


def _objects(store: str) -> list[str]:
    """Object file names in STORE/obj (dot-entries are bookkeeping, not objects)."""
    return [n for n in os.listdir(os.path.join(store, "obj")) if not n.startswith(".")]


def _store_unlocked(store: str) -> bool:
    fd = os.open(os.path.join(store, "lock"), os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # also drops our lock again
    return True


class Sheeps:
    """Starts ``sheep`` processes in one private local cluster; kills them all at the end."""

    def __init__(self, root):
        self.root = str(root)
        self.cdir = os.path.join(self.root, "cluster")
        self.pidfiles: list[str] = []
        self.pids: set[int] = set()
        self.popens: list[subprocess.Popen] = []
        self._n = 0

    def new_store(self) -> str:
        self._n += 1
        return os.path.join(self.root, f"store{self._n}")

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "sheep", *map(str, args)]

    def node_argv(self, store: str, port: int, *extra, pidfile: str | None = None) -> list[str]:
        pidfile = pidfile or os.path.join(self.root, f"sheep-{port}.pid")
        self.pidfiles.append(pidfile)
        return self.argv("-n", "-c", f"local:{self.cdir}", "-p", port, "-P", pidfile,
                         *extra, store)

    def run(self, argv, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the launcher to completion; remember the daemon's pid if it wrote one."""
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True,
                                  timeout=timeout)
        finally:
            self._collect()

    def popen(self, argv) -> subprocess.Popen:
        # a file, not a pipe: ``-f`` also logs to stderr and must never block on it
        with open(os.path.join(self.root, f"stderr{len(self.popens)}"), "w") as err:
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.popens.append(p)
        return p

    def start(self, store: str, port: int, *extra) -> int:
        """Start a daemonized node; return the daemon's pid."""
        argv = self.node_argv(store, port, *extra)
        r = self.run(argv)
        assert r.returncode == 0, r.stderr
        pidfile = argv[argv.index("-P") + 1]
        pid = int(wait_for(lambda: _read(pidfile), 10, what="pid file"))
        self.pids.add(pid)
        return pid

    def _collect(self) -> None:
        for pf in self.pidfiles:
            try:
                with open(pf) as f:
                    self.pids.add(int(f.read().strip()))
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._collect()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for pid in self.pids:
            wait_for(lambda pid=pid: not _alive(pid), 10, what=f"pid {pid} to die")


@pytest.fixture
def sheeps(tmp_path):
    s = Sheeps(tmp_path)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------


def test_daemonizes_by_default(sheeps):
    store, port = sheeps.new_store(), free_port()
    pidfile = os.path.join(sheeps.root, "daemon.pid")
    argv = sheeps.node_argv(store, port, pidfile=pidfile)
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = launcher.communicate(timeout=60)
    finally:
        sheeps._collect()
    assert launcher.returncode == 0, err
    # The launcher only returns once the daemon is up: serving right away,
    # pid file written, the start-up line logged.
    assert _serves(port)
    pid = int(_read(pidfile))
    assert pid != launcher.pid
    assert _alive(pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().split(b"\0")
    assert store.encode() in cmdline, cmdline
    assert any(b"sheep" in a for a in cmdline), cmdline
    with open(os.path.join(store, "sheep.log")) as f:
        assert any("daemon" in line for line in f), "no start-up line in sheep.log"
    # detached: the daemon no longer belongs to the launcher's session
    assert os.getsid(pid) == pid != os.getsid(0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_serves_until_signal(sheeps, sig):
    store, port = sheeps.new_store(), free_port()
    p = sheeps.popen(sheeps.node_argv(store, port, "-f"))
    wait_for(lambda: _serves(port), 15, what="foreground sheep serving")
    assert p.poll() is None, "sheep -f exited instead of staying in the foreground"
    c = Client(port)
    try:
        info = c.cluster_info()
        assert info.nr_nodes == 1 and info.status == proto.SD_STATUS_WAIT
    finally:
        c.close()
    assert p.poll() is None
    p.send_signal(sig)
    assert p.wait(timeout=5) == 0


def test_second_sheep_on_same_store_refused(sheeps):
    store, port = sheeps.new_store(), free_port()
    pid = sheeps.start(store, port)
    r = sheeps.run(sheeps.node_argv(store, free_port()))
    assert r.returncode != 0
    assert "lock" in r.stderr and store in r.stderr, r.stderr
    assert _alive(pid)
    assert _serves(port)
    c = Client(port)
    try:
        assert [n.port for n in c.nodes()] == [port]
    finally:
        c.close()


def test_concurrent_launches_on_one_store(sheeps):
    """Two launchers racing for one store: exactly one daemon wins."""
    store = sheeps.new_store()
    ports = [free_port(), free_port()]
    launchers = [subprocess.Popen(sheeps.node_argv(store, p), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for p in ports]
    try:
        results = [(lp.wait(60), lp.stderr.read()) for lp in launchers]
    finally:
        for lp in launchers:
            if lp.poll() is None:
                lp.kill()
                lp.wait()
            lp.stderr.close()
        sheeps._collect()
    assert sorted(rc == 0 for rc, _ in results) == [False, True], results
    winner = ports[[rc for rc, _ in results].index(0)]
    loser_err = next(err for rc, err in results if rc != 0)
    assert "lock" in loser_err, loser_err
    assert _serves(winner)
    assert len(sheeps.pids) == 1 and all(_alive(pid) for pid in sheeps.pids)


@pytest.mark.parametrize("opt,value", [
    ("-p", "99999"), ("-p", "abc"), ("-z", "-1"), ("-V", "0"), ("-c", "bogus"),
    ("-y", "not-an-ip"), ("-l", "level=nonsense"),
])
def test_invalid_option_values(sheeps, opt, value):
    store = sheeps.new_store()
    pidfile = os.path.join(sheeps.root, "bad.pid")
    sheeps.pidfiles.append(pidfile)
    args = ["-n", "-P", pidfile]
    if opt != "-c":
        args += ["-c", f"local:{sheeps.cdir}"]
    if opt != "-p":
        args += ["-p", str(free_port())]
    r = sheeps.run(sheeps.argv(*args, opt, value, store))
    assert r.returncode != 0, f"sheep {opt} {value} was accepted"
    bad = value.split("=")[-1]
    assert bad in r.stderr and "nvalid" in r.stderr, r.stderr
    assert not os.path.exists(pidfile)


def test_help_lists_options(sheeps):
    r = sheeps.run(sheeps.argv("--help"))
    assert r.returncode == 0, r.stderr
    for opt in ("--port", "--zone", "--cluster", "--foreground", "--gateway", "--vnodes",
                "--pidfile", "--log", "--myaddr"):
        assert opt in r.stdout, opt


def test_sigterm_exits_fast_frees_port_and_leaves(sheeps):
    s1, s2 = sheeps.new_store(), sheeps.new_store()
    p1, p2 = free_port(), free_port()
    sheeps.start(s1, p1)
    pid2 = sheeps.start(s2, p2)

    def members(port):
        c = Client(port)
        try:
            return sorted(n.port for n in c.nodes())
        finally:
            c.close()
    wait_for(lambda: members(p1) == sorted([p1, p2]) == members(p2), 10, what="2 members")

    # a client keeps an idle connection open (as QEMU does): it must not delay the exit
    idle = Client(p2)
    try:
        assert len(idle.nodes()) == 2
        os.kill(pid2, signal.SIGTERM)
        t0 = time.monotonic()
        wait_for(lambda: not _alive(pid2), 2.0, interval=0.01, what="sheep to exit on SIGTERM")
        assert time.monotonic() - t0 < 2.0
        with pytest.raises((ConnectionError, OSError)):
            idle.nodes()
    finally:
        idle.close()

    def port_free():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", p2))
            s.listen()
        return True
    assert port_free()
    wait_for(lambda: members(p1) == [p1], 10, what="the survivor to see the node leave")


def test_port_in_use(sheeps):
    store, port = sheeps.new_store(), free_port()
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", port))
        busy.listen()
        r = sheeps.run(sheeps.node_argv(store, port))
    assert r.returncode != 0
    assert str(port) in r.stderr and "listen" in r.stderr, r.stderr
    # the daemon that could not listen is gone and has released the store
    wait_for(lambda: _store_unlocked(store), 5, what="store lock released")


def _write_vdi(client, vid, idx, data):
    client.call(proto.Op.CREATE_AND_WRITE_OBJ,
                proto.ObjArgs(oid=proto.vid_to_data_oid(vid, idx), offset=0), data)
    client.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid),
                                                  offset=proto.data_vdi_id_offset(idx)),
                vid.to_bytes(4, "little"))


def test_gateway_node_stores_nothing(make_cluster):
    c = make_cluster(2)
    gw = c.add_node(start=False)
    gw.extra.append("-g")
    gw.start()
    c.wait_members(3)
    c.format(copies=2)
    cg = gw.client()
    try:
        vnodes = {n.port: n.nr_vnodes for n in cg.nodes()}
        assert vnodes[gw.port] == 0
        assert all(vnodes[n.port] > 0 for n in c.nodes[:2])
        a, b = os.urandom(64 * 1024), os.urandom(4096)
        vid = cg.new_vdi("through-gateway", 64 * 1024 * 1024)
        _write_vdi(cg, vid, 0, a)
        c0 = c.nodes[0].client()
        try:
            _write_vdi(c0, vid, 5, b)
        finally:
            c0.close()
        assert cg.read_obj(proto.vid_to_data_oid(vid, 0), 0, len(a)) == a
        assert cg.read_obj(proto.vid_to_data_oid(vid, 5), 0, len(b)) == b
        _, ino = cg.call(proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid)),
                         data_length=proto.SD_INODE_HEADER_SIZE)
        assert proto.InodeHeader.unpack(ino).vdi_id == vid
    finally:
        cg.close()
    assert _objects(gw.store) == []
    want = {f"{proto.vid_to_vdi_oid(vid):016x}", f"{proto.vid_to_data_oid(vid, 0):016x}",
            f"{proto.vid_to_data_oid(vid, 5):016x}"}
    for n in c.nodes[:2]:
        assert want <= set(_objects(n.store)), n.store


def test_unwritable_pidfile_is_reported(sheeps):
    store = sheeps.new_store()
    bad = os.path.join(sheeps.root, "no-such-dir", "sheep.pid")
    for fg in ([], ["-f"]):
        r = sheeps.run(sheeps.node_argv(store, free_port(), *fg, pidfile=bad), timeout=30)
        assert r.returncode != 0
        assert "pid file" in r.stderr and bad in r.stderr, r.stderr
        wait_for(lambda: _store_unlocked(store), 5, what="store lock released")
