"""Helpers of the lock and fencing tests: a locked cluster, lock holders as
a node sees them, collie, and qemu_client in a process of its own
(tests/lock_client.py)."""

import os
import pathlib
import select
import subprocess
import sys
import threading
import time

from harness import wait_for

import qemu_client
from sheep import proto
from sheep.proto.errors import VdiLockedError

GRACE = 3.0
MB = 1024 * 1024
CLIENT = str(pathlib.Path(__file__).with_name("lock_client.py"))


def locked_cluster(make_cluster, n=3, copies=3, grace=GRACE):
    c = make_cluster(n, extra=["--lock-grace", str(grace)])
    c.wait_members(n)
    cl = c.nodes[0].client()
    try:
        cl.format(copies, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
    finally:
        cl.close()
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 10, what="cluster running")
    return c


def new_vdi(c, name="vm", size=16 * MB):
    cl = c.nodes[0].client()
    try:
        return cl.new_vdi(name, size)
    finally:
        cl.close()


def lock_holders(node, vid=None):
    """Lock holders as seen by ``node`` (GET_LOCKS)."""
    cl = node.client()
    try:
        _, body = cl.call(proto.Op.GET_LOCKS, data_length=1 << 20)
    finally:
        cl.close()
    size = proto.LockRecord.SIZE
    recs = [proto.LockRecord.unpack(body, o) for o in range(0, len(body) - size + 1, size)]
    return [r for r in recs if vid is None or r.vid == vid]


def collie(port, *argv, prog="collie", stdin=None):
    if prog == "dog":
        code = ("import sys; sys.argv[0] = 'dog'; from collie.__main__ import main; "
                "sys.exit(main())")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, "-m", "collie"]
    return subprocess.run([*cmd, *argv, "-p", str(port)], input=stdin, capture_output=True,
                          timeout=60)


def open_eventually(port, name="vm", timeout=GRACE + 5, **kw):
    """Open read-write, retrying while VDI_LOCKED; returns (vdi, seconds waited)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        try:
            return qemu_client.open(name, port=port, **kw), time.monotonic() - t0
        except VdiLockedError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


class ClientProc:
    """tests/lock_client.py in its own process."""

    def __init__(self, port, name="vm", mode="rw"):
        self.p = subprocess.Popen([sys.executable, CLIENT, str(port), name, mode],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        first = self.line(20).split()
        assert first[0] == "READY", first
        self.generation, self.session = int(first[1]), int(first[2], 16)

    def line(self, timeout=20.0) -> str:
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert r, "client process did not answer in time"
        return self.p.stdout.readline().strip()

    def cmd(self, text, timeout=30.0) -> str:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self.line(timeout)

    def signal(self, sig):
        os.kill(self.p.pid, sig)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)


def in_thread(fn):
    """Run ``fn`` in a daemon thread: (thread, {"v": result} or {"e": exception})."""
    out = {}

    def run():
        try:
            out["v"] = fn()
        except Exception as e:  # noqa: BLE001 - reported to the test
            out["e"] = e
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def peer_write(node, oid, data, gen, gateway_index):
    """A WRITE_PEER as gateway ``gateway_index`` forwards (or retries) a fenced client
    write (sheep.gateway); returns (result, epoch)."""
    cl = node.client()
    try:
        epoch = cl.cluster_info().epoch
        args = proto.ObjArgs(oid=oid, cow_oid=1 + gateway_index)
        proto.set_fence(args, gen)
        req = proto.Request(proto.Op.WRITE_PEER, args, epoch=epoch, data_length=len(data),
                            flags=proto.SD_FLAG_CMD_SESSION | proto.SD_FLAG_CMD_WRITE)
        rsp, _ = cl.conn.request(req, data)
        return rsp.result, epoch
    finally:
        cl.close()
