"""Bounded memory per connection (docs/data-safety.md "Bounded memory").

A client that sends writes faster than the cluster completes them (here: a
replica is stopped, so every write stays in progress) must not make the
daemon buffer all of it: the Sheepdog port and the NBD export stop reading a
connection once its requests in progress hold ``MAX_BUFFERED`` bytes.  Before,
a payload was read before an in-flight slot was taken: up to 128 x 65 MiB
(Sheepdog) or 128 x 32 MiB (NBD) per connection.
"""

import os
import signal
import socket
import struct

import pytest
from harness import Cluster, push, rss_mib, wait_for
from nbd_raw import RawNbd

from sheep import proto
from sheep.nbd import codec, export
from sheep.server import listener

pytestmark = [pytest.mark.cluster]

MiB = 1 << 20
OBJ = proto.SD_DATA_OBJ_SIZE


def _kernel_buffers() -> int:
    """The most the kernel may buffer on one loopback connection: the
    receiver's autotuned receive buffer plus the sender's send buffer
    (``tcp_rmem`` / ``tcp_wmem`` maxima; 32 MiB + 4 MiB on some machines)."""
    total = 0
    for name, default in (("tcp_rmem", 6 * MiB), ("tcp_wmem", 4 * MiB)):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as f:
                total += int(f.read().split()[2])
        except (OSError, ValueError, IndexError):
            total += default
    return total


def allowance(max_buffered: int, max_frame: int) -> int:
    """What a flooding client can get the daemon's side to take in when the
    daemon stops reading at ``max_buffered``: that, the frame being read, the
    stream reader's buffer (2 x 1 MiB) and the kernel's buffers."""
    return max_buffered + max_frame + 2 * MiB + _kernel_buffers()


@pytest.fixture
def stalled(tmp_path):
    """2 nodes, copies 2, a VDI; node 1 stopped so every write to it hangs."""
    c = Cluster(tmp_path, 2, nbd=True)
    try:
        c.wait_members(2)
        cl = c.nodes[0].client()
        cl.format(2)
        wait_for(lambda: c.nodes[1].client().cluster_info().status == proto.SD_STATUS_OK, 10)
        vid = cl.new_vdi("big", 64 * OBJ)
        cl.close()
        c.nodes[1].kill(signal.SIGSTOP)
        yield c, vid
    finally:
        c.nodes[1].kill(signal.SIGCONT)
        c.close()


def test_sheepdog_port_stops_reading_a_flooding_connection(stalled):
    c, vid = stalled
    node = c.nodes[0]
    payload = os.urandom(OBJ)
    frames = []
    for i in range(40):  # 160 MiB offered
        req = proto.Request(proto.Op.CREATE_AND_WRITE_OBJ,
                            proto.ObjArgs(oid=proto.vid_to_data_oid(vid, i)),
                            flags=proto.SD_FLAG_CMD_WRITE, id=i + 1, data_length=OBJ)
        frames.append(req.pack() + payload)
    before = rss_mib(node.pid)
    s = socket.create_connection(("127.0.0.1", node.port))
    try:
        sent = push(s, frames)
        assert listener.MAX_BUFFERED == 64 * MiB
        bound = allowance(listener.MAX_BUFFERED, OBJ + proto.HDR_SIZE)
        assert bound < 160 * MiB  # else this test proves nothing on this machine
        assert sent < bound, f"{sent / MiB:.0f} of 160 MiB taken in (bound {bound / MiB:.0f})"
        assert rss_mib(node.pid) - before < 150
    finally:
        s.close()
    assert node.alive()


def test_nbd_export_stops_reading_a_flooding_connection(stalled):
    c, vid = stalled
    node = c.nodes[0]
    raw = RawNbd(node)
    try:
        raw.greet()
        raw.go("big")
        payload = os.urandom(4 * MiB)
        frames = [struct.pack(">IHHQQI", codec.REQUEST_MAGIC, 0, codec.CMD_WRITE, i + 1, i * OBJ,
                              len(payload)) + payload for i in range(40)]
        before = rss_mib(node.pid)
        sent = push(raw.s, frames)
        assert export.MAX_BUFFERED == 64 * MiB
        bound = allowance(export.MAX_BUFFERED, len(frames[0]))
        assert bound < 160 * MiB  # else this test proves nothing on this machine
        assert sent < bound, f"{sent / MiB:.0f} of 160 MiB taken in (bound {bound / MiB:.0f})"
        assert rss_mib(node.pid) - before < 150
    finally:
        raw.close()
    assert node.alive()
