"""Real sheep clusters for tests: start, kill -9, wait on conditions, clean up.

The daemons themselves come from ``bench.daemons`` (installed with the
``bench`` package, shared with the benchmarks): ``Cluster`` starts real
``sheep`` daemons (the installed console program's module, daemonizing like
a user would run it) on free loopback ports in the 7000+ range, each with
its own store under a temporary directory and a private ``local:`` cluster
directory, and kills every process it started in ``close()``.  Nothing here
sleeps a fixed time: ``wait_for`` polls a condition until a deadline.  This
module adds what only the tests use: the captured dog session, object I/O
helpers, collie runs, tmpfs mounts, the client-only import blocker.
"""

from __future__ import annotations

import contextlib
import errno
import pathlib
import shlex
import socket
import subprocess
import sys
import time

from bench.daemons import (  # noqa: F401 - re-exported for the tests
    Client,
    Cluster,
    Node,
    free_port,
    placement_ok,
    vdi_oids,
    wait_for,
)
from sheep import proto

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


def fill_disk(path) -> None:
    """Write ``path`` until its filesystem has no block left, the last partial
    block included (a full disk for the store next to it)."""
    with open(path, "ab", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 512):
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC


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
