"""Memory of copy-on-write creates (found by an adversarial review): memory per connection is
bounded by what requests
*carry* (payload, announced reply size), not by what serving them costs.

* A copy-on-write CREATE_AND_WRITE_OBJ with a 4 KiB payload makes the gateway
  read the whole 4 MiB parent object and fan 4 MiB out to every replica
  (``Gateway.handle_create``); it is charged 4 KiB.

With a replica stopped (requests stay in progress) one connection's 64
small requests hold hundreds of MiB.  (On-access recovery has the same
shape -- a 4 KiB read fetches a 4 MiB copy -- but completes fast enough here
not to show.)

Now a copy-on-write create is charged twice the object size, peer connections make senders wait once 8 MiB are buffered, and the framer stops handing over frames of a chunk already read once the connection is paused (CI once saw all 64 creates of one 256 KiB read admitted: 255 MiB).
"""

import signal
import socket
import threading
import time

import pytest
from harness import Cluster, push, rss_mib, write_vdi
from locking import collie

from sheep import proto

pytestmark = [pytest.mark.cluster]

MiB = 1 << 20
OBJ = proto.SD_DATA_OBJ_SIZE
N = 64


class Peak:
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0.0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.02)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def test_cow_creates_of_4k_hold_4m_each(tmp_path):
    c = Cluster(tmp_path, 2)
    try:
        c.format(copies=2)
        node = c.nodes[0]
        cl = node.client()
        base = cl.new_vdi("base", N * OBJ)
        for i in range(N):
            write_vdi(cl, base, i * OBJ, b"P" * OBJ)
        cl.close()
        assert collie(node.port, "vdi", "snapshot", "-s", "snap", "base").returncode == 0
        r = collie(node.port, "vdi", "clone", "-s", "snap", "base", "child")
        assert r.returncode == 0, r.stderr
        cl = node.client()
        rsp, _ = cl.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload("child"))
        child = rsp.args.vdi_id
        rsp, _ = cl.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload("base", "snap"))
        snap = rsp.args.vdi_id
        cl.close()
        c.nodes[1].kill(signal.SIGSTOP)  # every fan-out stays in progress
        frames = []
        for i in range(N):
            args = proto.ObjArgs(oid=proto.vid_to_data_oid(child, i),
                                 cow_oid=proto.vid_to_data_oid(snap, i))
            req = proto.Request(proto.Op.CREATE_AND_WRITE_OBJ, args, id=i + 1,
                                flags=proto.SD_FLAG_CMD_WRITE | proto.SD_FLAG_CMD_COW,
                                data_length=4096)
            frames.append(req.pack() + b"C" * 4096)
        before = rss_mib(node.pid)
        peak = Peak(node.pid)
        s = socket.create_connection(("127.0.0.1", node.port))
        try:
            sent = push(s, frames, seconds=2)
            time.sleep(4)
        finally:
            grown = peak.done() - before
            s.close()
        print(f"{N} COW creates, {sent / 1024:.0f} KiB sent: RSS grew by {grown:.0f} MiB")
        assert grown < 100, f"one connection's {sent // 1024} KiB of requests hold {grown:.0f} MiB"
    finally:
        c.nodes[1].kill(signal.SIGCONT)
        c.close()
