"""Real sheep clusters for tests: start, kill -9, wait on conditions, clean up.

``Cluster`` starts real ``sheep`` daemons (the installed console program's
module, daemonizing like a user would run it) on free loopback ports in the
7000+ range, each with its own store under a temporary directory and a
private ``local:`` cluster directory, and kills every process it started in
``close()``.  Nothing here sleeps a fixed time: ``wait_for`` polls a condition
until a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import random
import shlex
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
DATA = pathlib.Path(__file__).parent / "data"


def cli_sections() -> dict[str, dict]:
    """label -> {"cmd": argv after 'dog', "out": expected text, "exit": code, "raw": text}
    for every ``### label`` section of tests/data/cli.txt (the captured dog session)."""
    text = (DATA / "cli.txt").read_text()
    out = {}
    for block in text.split("### ")[1:]:
        label, rest = block.split("\n", 1)
        cmd_line, body = rest.split("\n", 1)
        assert cmd_line.startswith("$ dog ")
        cmd = cmd_line[len("$ dog "):].split("|")[0]
        idx = body.index("[exit ")
        code = int(body[idx + 6:body.index("]", idx)])
        out[label.strip()] = {"cmd": shlex.split(cmd), "out": body[:idx],
                              "exit": code, "raw": body}
    return out


def free_port(lo: int = 7000, hi: int = 7999) -> int:
    """A currently free TCP port on 127.0.0.1 in [lo, hi], not handed out before."""
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
        nbd_port = free_port(10809, 11808) if self.nbd else None
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


def write_vdi(client, vid, offset, data):
    """Write like dog does: create each object, then record it in the inode."""
    obj = proto.SD_DATA_OBJ_SIZE
    pos = 0
    while pos < len(data):
        idx, o = divmod(offset + pos, obj)
        n = min(len(data) - pos, obj - o)
        client.call(proto.Op.CREATE_AND_WRITE_OBJ,
                    proto.ObjArgs(oid=proto.vid_to_data_oid(vid, idx), offset=o), data[pos:pos + n])
        client.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid),
                                                      offset=proto.data_vdi_id_offset(idx)),
                    vid.to_bytes(4, "little"))
        pos += n


def read_vdi(client, vid, offset, length):
    """Read a byte range of a VDI object by object (allocated objects only)."""
    obj = proto.SD_DATA_OBJ_SIZE
    out = b""
    while len(out) < length:
        idx, o = divmod(offset + len(out), obj)
        n = min(length - len(out), obj - o)
        out += client.read_obj(proto.vid_to_data_oid(vid, idx), o, n)
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def push(sock: socket.socket, frames, seconds: float = 4.0) -> int:
    """Send ``frames`` without reading anything; return how many bytes the
    daemon accepted before the connection stopped taking more."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    for frame in frames:
        view = memoryview(frame)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return sent
                time.sleep(0.01)
                continue
            sent += n
            view = view[n:]
    return sent


def collie_run(port: int, *argv, stdin=None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``collie ARGV -p PORT`` as a user runs it; bytes in, bytes out."""
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          input=stdin, capture_output=True, timeout=timeout, check=False)


def collie_ok(port: int, *argv, stdin=None, ok: bool = True) -> subprocess.CompletedProcess:
    """:func:`collie_run`, asserting exit 0 unless ``ok=False``."""
    r = collie_run(port, *argv, stdin=stdin, timeout=120)
    if ok:
        assert r.returncode == 0, (argv, r.stderr.decode())
    return r


def epoch_lines(port: int) -> list[str]:
    """``collie cluster info``'s epoch table (newest first): "EPOCH [nodes]"."""
    out = collie_run(port, "cluster", "info").stdout.decode()
    return [ln.split(None, 2)[2] for ln in out.splitlines() if ln[:4].isdigit()]


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` (created) for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def vdi_ids(port: int) -> dict[str, list[int]]:
    """name -> sorted vids of ``collie vdi list -r`` (working and snapshots)."""
    out: dict[str, list[int]] = {}
    for line in collie_ok(port, "vdi", "list", "-r").stdout.decode().splitlines():
        f = line.split()
        out.setdefault(f[1], []).append(int(f[7], 16))
    return {k: sorted(v) for k, v in out.items()}


def recovery_done(cluster) -> bool:
    """Every live node reports no recovery in progress (STAT_RECOVERY)."""
    return all(n.client().call(proto.Op.STAT_RECOVERY, data_length=24)[1][0] == 0
               for n in cluster.live())


#: Python code that makes the server's packages look uninstalled (a meta-path
#: finder raising ModuleNotFoundError): run first in a subprocess, it shows what
#: a client-only install (no ``server`` extra) can do.
SERVER_BLOCKER = """
import sys
class _NotInstalled:
    BLOCK = {"numpy", "zmq", "kazoo", "uvloop", "crcmod", "crc32c", "prometheus_client", "tqdm"}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""
