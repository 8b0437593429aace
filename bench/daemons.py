"""Real sheep daemons on loopback for the benchmarks and the tests.

Installed with the ``bench`` package (no repository checkout needed), and
re-exported by the tests' ``tests/harness.py``, so the benchmarks and the
tests start daemons with the same code.  What is guaranteed:

* :class:`Cluster` starts real ``sheep`` daemons as a user runs them:
  ``sys.executable -m sheep`` (the module behind the installed ``sheep``
  console program), daemonizing, each on a loopback port, with its own store
  under one directory and a private ``local:`` cluster directory unless
  another ``-c`` value is given; :meth:`Cluster.close` SIGKILLs every process
  it started, waits until each is gone and removes the directory (kept when
  ``SHEEP_KEEP_TEST_DIRS`` is set).
* :func:`free_port` hands out a port that was free on 127.0.0.1 when asked
  and that no live process using this module claimed: claims are files
  under ``$TMPDIR/pysheepdog-test-ports`` holding the claimer's pid, shared
  by every benchmark and test process on the machine, released at exit.
* :func:`wait_for` polls a condition until a deadline and fails with what it
  waited for; nothing here sleeps a fixed time.
* :func:`placement_ok` is true only when every object is on exactly the
  nodes the current ring names and no live node is still recovering.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from sheep import proto
from sheep.proto.connection import BlockingConnection
from sheep.proto.errors import error_for

_used_ports: set[int] = set()
# ports handed out by any test process on this machine (one file per port,
# holding the claimer's pid), so that parallel test runs do not pick the same
# port between "found free" and "the daemon binds it"
_PORT_DIR = os.path.join(tempfile.gettempdir(), "pysheepdog-test-ports")


def free_port(lo: int = 7000, hi: int = 7999) -> int:
    """A currently free TCP port on 127.0.0.1 in [lo, hi), not handed out before."""
    start = random.randrange(lo, hi)
    for k in range(hi - lo):
        port = lo + (start - lo + k) % (hi - lo)
        if port in _used_ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not _claim(port):
            continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def _claim(port: int) -> bool:
    """Claim ``port`` machine-wide for this process; False if a live test
    process holds it.  Claims are released when this process exits."""
    os.makedirs(_PORT_DIR, exist_ok=True)
    path = os.path.join(_PORT_DIR, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    os.kill(int(f.read() or 0) or -1, 0)
                return False  # its holder is alive
            except (ValueError, ProcessLookupError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # a dead holder's claim
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


@atexit.register
def _release_claims() -> None:
    for port in _used_ports:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_PORT_DIR, str(port)))
    with contextlib.suppress(OSError):
        os.rmdir(_PORT_DIR)  # only if no other process holds a claim


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``pred()`` until it returns a truthy value; return it or fail."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


class Client:
    """Blocking protocol client with helpers for tests."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.conn = BlockingConnection(host, port, timeout=60)

    def call(self, op, args=None, payload=b"", data_length=0, flags=0, check=True):
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            data_length = len(payload)
        rsp, body = self.conn.request(
            proto.Request(op, args, flags=flags, data_length=data_length), payload)
        if check and rsp.result:
            raise error_for(rsp.result)
        return rsp, body

    def nodes(self) -> list[proto.SdNode]:
        rsp, body = self.call(proto.Op.GET_NODE_LIST, data_length=proto.SD_MAX_NODES * 80)
        return proto.unpack_nodes(body, rsp.args.nr_nodes)

    def cluster_info(self) -> proto.ClusterInfoHeader:
        _, body = self.call(proto.Op.CLUSTER_INFO, data_length=proto.CLUSTER_INFO_SIZE)
        return proto.unpack_cluster_info(body)[0]

    def format(self, copies: int = 3, flags: int = proto.SD_CLUSTER_FLAG_AUTO_VNODES):
        self.call(proto.Op.MAKE_FS, proto.ClusterArgs(ctime=proto.sd_time(time.time()),
                                                      copies=copies, flags=flags), b"plain\0")

    def new_vdi(self, name: str, size: int, copies: int = 0) -> int:
        rsp, _ = self.call(proto.Op.NEW_VDI, proto.VdiArgs(vdi_size=size, copies=copies),
                           proto.vdi_name_payload(name))
        return rsp.args.vdi_id

    def read_obj(self, oid: int, offset: int, length: int) -> bytes:
        return self.call(proto.Op.READ_OBJ, proto.ObjArgs(oid=oid, offset=offset),
                         data_length=length)[1]

    def close(self):
        self.conn.close()


class Node:
    def __init__(self, cluster: "Cluster", idx: int, port: int, store: str, zone: int,
                 extra: list[str]):
        self.cluster, self.idx, self.port, self.store, self.zone = cluster, idx, port, store, zone
        self.extra = extra
        self.pid: int | None = None
        self.nbd_port: int | None = None  # with Cluster(nbd=True): its --nbd port

    @property
    def pidfile(self) -> str:
        return os.path.join(self.cluster.root, f"sheep{self.idx}.pid")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "sheep", "-c", self.cluster.driver_spec,
                "-p", str(self.port), "-z", str(self.zone), "-P", self.pidfile,
                *self.extra, self.store]

    def start(self) -> None:
        r = subprocess.run(self.argv(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sheep {self.idx} failed to start: {r.stderr.strip()}")
        self.pid = int(wait_for(lambda: open(self.pidfile).read().strip(), 10, what="pidfile"))

    def launch(self) -> subprocess.Popen:
        """Run the launcher without waiting for it (parallel starts); then ``launched``."""
        return subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def launched(self, p: subprocess.Popen) -> None:
        """Finish a ``launch``: the launcher exited 0 and the daemon's pid is known."""
        _, err = p.communicate(timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"sheep {self.idx} failed to start: {err.strip()}")
        self.pid = int(wait_for(lambda: open(self.pidfile).read().strip(), 10, what="pidfile"))

    def start_refused(self, expect: str, timeout: float = 30.0) -> str:
        """Start a node that is refused (its join, or its restart): as in 1.0
        the launcher exits 0, the daemon logs why and exits.  Waits until the
        reason ``expect`` is in its log and the daemon is gone (port closed,
        pid file removed); returns the log."""
        r = subprocess.run(self.argv(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"launcher of sheep {self.idx} exited {r.returncode}: "
                                 f"{r.stderr.strip()}")
        wait_for(lambda: expect in self.log(), timeout, what=f"{expect!r} in sheep {self.idx} log")

        def gone():
            if os.path.exists(self.pidfile):
                return False
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) != 0
        wait_for(gone, timeout, what=f"refused sheep {self.idx} to exit")
        self.pid = None
        return self.log()

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie is not alive
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig``; for SIGKILL, return once the process is really gone."""
        if self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL:
                wait_for(lambda: not self.alive(), 10, what=f"sheep {self.idx} to die")

    def client(self) -> Client:
        return Client(self.port)

    def status(self) -> int:
        """The cluster status this node reports (SD_STATUS_*)."""
        cl = self.client()
        try:
            return cl.cluster_info().status
        finally:
            cl.close()

    @property
    def obj_dir(self) -> str:
        return os.path.join(self.store, "obj")

    def log(self) -> str:
        try:
            with open(os.path.join(self.store, "sheep.log")) as f:
                return f.read()
        except OSError:
            return ""


class Cluster:
    """``n`` sheep daemons in zones 0..n-1 sharing one private local cluster."""

    #: [lo, hi) of the --nbd ports handed to the nodes (with ``nbd=True``)
    nbd_ports: tuple[int, int] = (10809, 11808)

    def __init__(self, root: str, n: int = 3, nosync: bool = True, extra: list[str] | None = None,
                 driver_spec: str | None = None, store_root: str | None = None,
                 nbd: bool = False):
        self.root = str(root)
        self.nbd = nbd  # give every node --nbd 127.0.0.1:PORT (a free port >= 10809)
        self.store_root = store_root or self.root  # where the stores go (e.g. a small fs)
        os.makedirs(self.root, exist_ok=True)
        self.cdir = os.path.join(self.root, "cluster")
        # the sheep -c value; default a private local cluster under root
        self.driver_spec = driver_spec or f"local:{self.cdir}"
        self.nodes: list[Node] = []
        self.extra = (["-n"] if nosync else []) + (extra or [])
        # ascending ports, so node order (address, port) matches index and zone order
        for port in sorted(free_port() for _ in range(n)):
            self.add_node(port=port)

    def add_node(self, start: bool = True, zone: int | None = None,
                 port: int | None = None) -> Node:
        idx = len(self.nodes)
        extra = list(self.extra)
        nbd_port = free_port(*self.nbd_ports) if self.nbd else None
        if nbd_port:
            extra += ["--nbd", f"127.0.0.1:{nbd_port}"]
        node = Node(self, idx, port or free_port(), os.path.join(self.store_root, f"store{idx}"),
                    idx if zone is None else zone, extra)
        node.nbd_port = nbd_port
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive()]

    def wait_members(self, count: int | None = None, timeout: float = 10.0) -> None:
        """Wait until every live node sees exactly the live nodes."""
        def ok():
            live = self.live()
            want = sorted(n.port for n in live)
            if count is not None and len(want) != count:
                return False
            for n in live:
                c = n.client()
                try:
                    if sorted(x.port for x in c.nodes()) != want:
                        return False
                finally:
                    c.close()
            return True
        wait_for(ok, timeout, what=f"{count} members")

    def wait_running(self, timeout: float = 30.0, nodes=None) -> None:
        """Wait until every node (of ``nodes``) reports the cluster running."""
        wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in (nodes or self.nodes)),
                 timeout, what="cluster running")

    def restart_all(self, order=None, timeout: float = 30.0) -> None:
        """kill -9 every node, start them again (in ``order``, default node
        order) and wait until all are members and the cluster runs."""
        for n in self.nodes:
            n.kill()
        for n in order or self.nodes:
            n.start()
        self.wait_members(len(self.nodes), timeout=timeout)
        self.wait_running(timeout)

    def format(self, copies: int = 3) -> None:
        self.wait_members(len(self.live()))
        c = self.live()[0].client()
        try:
            c.format(copies)
        finally:
            c.close()
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in self.live()), 10, what="cluster running")

    def close(self) -> None:
        for n in self.nodes:
            n.kill(signal.SIGKILL)
        for n in self.nodes:
            if n.pid is not None:
                wait_for(lambda: not n.alive(), 10, what=f"sheep {n.idx} to die")
        if not os.environ.get("SHEEP_KEEP_TEST_DIRS"):  # set it to look at logs afterwards
            shutil.rmtree(self.root, ignore_errors=True)
            if self.store_root != self.root:
                for n in self.nodes:
                    shutil.rmtree(n.store, ignore_errors=True)


def vdi_oids(vid: int, size: int, shift: int = proto.SD_DEFAULT_BLOCK_SIZE_SHIFT) -> list[int]:
    """The inode oid and every data oid of a fully written VDI."""
    return [proto.vid_to_vdi_oid(vid)] + [proto.vid_to_data_oid(vid, i)
                                          for i in range(-(-size >> shift))]


def placement_ok(c: Cluster, oids, copies: int = 3) -> bool:
    """Every object is on exactly the nodes the current ring names, and no
    live node is still recovering."""
    from sheep.proto.placement import Ring

    live = c.live()
    ring = Ring(live[0].client().nodes())
    for oid in oids:
        want = {n.port for n in ring.replicas(oid, copies)}
        have = {n.port for n in live if os.path.exists(os.path.join(n.obj_dir, "%016x" % oid))}
        if have != want:
            return False
    return all(n.client().call(proto.Op.STAT_RECOVERY, data_length=24)[1][0] == 0 for n in live)
