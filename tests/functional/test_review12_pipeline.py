"""Adversarial review of the server's backpressure with a framer that holds
the rest of a chunk once the connection pauses (128 requests in flight,
64 MiB charged, or replies not read): every pipelined request gets exactly
one reply, nothing is lost or executed twice, data reads back right, and a
connection that goes away while frames are held leaves a healthy daemon.

Real 2-node cluster (copies 2), so every write also crosses a sheep-to-sheep
connection; the big-write case runs on both nodes at once (each one's peer
connection to the other is loaded both ways).

Two sheep that both pause a peer connection (the last test, 3 nodes): a
sheep stops reading a connection with 128 requests in progress
(``sheep.server.listener``).  Writes a gateway forwards to a replica that lacks the
object wait there for on-access recovery, which fetches the object from
another node -- and the fetch used to travel on the same peer connection
as the forwarded I/O.  With recovery disabled after a node loss, a client on
A writing objects B lacks and a client on B writing objects A lacks (each
pipelining more than 128 requests) filled both connections with waiting
writes: each side's fetches sat unread behind them until the 15 s stall
watchdog tore both connections down (300 writes each way: 22 s instead of
about 1 s; logs "no reply for 15s").  Found by this review; now recovery
traffic (fetches, object lists, repairs -- served from the local store only,
never waiting on the network) has its own connection to each peer
(``Gateway.recovery_peers``)."""

import os
import signal
import socket
import threading
import time

import pytest
from harness import Cluster, collie_ok, push, read_vdi, wait_for, write_vdi

from sheep import proto
from sheep.datapath import gateway

pytestmark = [pytest.mark.cluster]

OBJ = proto.SD_DATA_OBJ_SIZE
N_OBJ = 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("review12pipe"), 2)
    try:
        c.format(copies=2)
        cl = c.nodes[0].client()
        vids = [cl.new_vdi(f"p{k}", N_OBJ * OBJ) for k in range(2)]
        for vid in vids:
            for i in range(N_OBJ):
                write_vdi(cl, vid, i * OBJ, b"\0" * 512)  # allocate every object
        cl.close()
        c.vids = vids
        yield c
    finally:
        c.close()


def _replies(sock, n, got, errors):
    buf = bytearray()
    try:
        while len(got) < n:
            d = sock.recv(1 << 20)
            if not d:
                return
            buf += d
            while len(buf) >= proto.HDR_SIZE:
                r = proto.Response.unpack(bytes(buf[:proto.HDR_SIZE]))
                if len(buf) < proto.HDR_SIZE + r.data_length:
                    break
                if r.id in got:
                    errors.append(f"second reply for id {r.id}")
                got[r.id] = (r.result, bytes(buf[proto.HDR_SIZE:proto.HDR_SIZE + r.data_length]))
                del buf[:proto.HDR_SIZE + r.data_length]
    except OSError as e:
        errors.append(repr(e))


def pipeline(port, frames, already_sent=0, sock=None):
    """Send all ``frames`` in one stream while reading replies: {id: (result, data)}."""
    s = sock or socket.create_connection(("127.0.0.1", port))
    s.setblocking(True)
    s.settimeout(60)
    got, errors = {}, []
    t = threading.Thread(target=_replies, args=(s, len(frames), got, errors))
    t.start()
    s.sendall(b"".join(frames)[already_sent:])
    t.join(90)
    s.close()
    assert not errors, errors
    return got


def write_frame(vid, idx, off, data, rid):
    return proto.Request(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(vid, idx),
                                                           offset=off),
                         id=rid, flags=proto.SD_FLAG_CMD_WRITE, data_length=len(data)).pack() + data


def read_frame(vid, idx, off, n, rid):
    return proto.Request(proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(vid, idx),
                                                          offset=off),
                         id=rid, data_length=n).pack()


def block(i):
    return bytes([i % 251 + 1]) * 4096


def test_500_small_writes_then_5000_reads_pipelined(cluster):
    vid, port = cluster.vids[0], cluster.nodes[0].port
    frames = [write_frame(vid, *divmod(i * 4096, OBJ), block(i), i + 1) for i in range(500)]
    got = pipeline(port, frames)
    assert sorted(got) == list(range(1, 501))
    assert all(r == 0 for r, _ in got.values())
    cl = cluster.nodes[1].client()
    data = read_vdi(cl, vid, 0, 500 * 4096)
    cl.close()
    assert [i for i in range(500) if data[i * 4096:(i + 1) * 4096] != block(i)] == []
    # header-only frames: one 256 KiB read from the socket holds ~5000 of them
    n = 5000
    frames = [read_frame(vid, *divmod((i % 500) * 4096, OBJ), 512, i + 1) for i in range(n)]
    got = pipeline(port, frames)
    assert sorted(got) == list(range(1, n + 1))
    assert [i for i in range(n) if got[i + 1] != (0, block(i % 500)[:512])] == []


def test_big_writes_both_ways_and_mixed_sizes(cluster):
    def frames_for(vid, seed):
        out = []
        for i in range(N_OBJ):  # 4 MiB payloads: 96 MiB > the 64 MiB budget per connection
            out.append(write_frame(vid, i, 0, bytes([(seed + i) % 256]) * OBJ, len(out) + 1))
            # then many small reads: the pause falls inside a chunk, the next
            # big payload arrives in pieces after it
            out += [read_frame(vid, i, 0, 64, len(out) + 1 + k) for k in range(150)]
        return out
    res = [None, None]
    threads = [threading.Thread(target=lambda k=k: res.__setitem__(
        k, pipeline(cluster.nodes[k].port, frames_for(cluster.vids[k], 40 * k + 3))))
        for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k in range(2):
        assert len(res[k]) == N_OBJ * 151 and all(r == 0 for r, _ in res[k].values())
    cl = cluster.nodes[0].client()
    for k in range(2):
        data = read_vdi(cl, cluster.vids[k], 0, N_OBJ * OBJ)
        assert all(data[i * OBJ:(i + 1) * OBJ] == bytes([(40 * k + 3 + i) % 256]) * OBJ
                   for i in range(N_OBJ))
    cl.close()


def test_replies_not_read_then_read(cluster):
    """The client sends 2000 reads of 64 KiB without reading replies (the
    server's write buffer fills: write-paused, frames held), then reads."""
    vid, port = cluster.vids[1], cluster.nodes[0].port
    cl = cluster.nodes[0].client()
    write_vdi(cl, vid, 0, b"R" * OBJ)
    cl.close()
    n = 2000
    frames = [read_frame(vid, 0, (i % 64) * 65536, 65536, i + 1) for i in range(n)]
    s = socket.create_connection(("127.0.0.1", port))
    sent = push(s, frames, seconds=2)
    got = pipeline(port, frames, already_sent=sent, sock=s)
    assert sorted(got) == list(range(1, n + 1))
    assert all(v == (0, b"R" * 65536) for v in got.values())


def test_connection_closed_while_frames_are_held(cluster):
    node = cluster.nodes[0]
    vid = cluster.vids[1]
    frames = [read_frame(vid, 0, 0, 65536, i + 1) for i in range(3000)]
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", node.port))
        push(s, frames, seconds=1)  # stalls: replies are not read
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()  # reset, with frames held and requests in flight
    # the daemon still serves, and its connections went away

    def served():
        cl = node.client()
        try:
            return cl.read_obj(proto.vid_to_data_oid(vid, 0), 0, 4) == b"RRRR"
        finally:
            cl.close()
    wait_for(served, 10, what="the daemon serves after the resets")
    assert node.alive()


DL_OBJ = 64
N_WRITES = 300  # per client: well past the 128 a connection keeps in progress


def test_pipelined_writes_both_ways_during_on_access_recovery(tmp_path):
    c = Cluster(tmp_path, 3)
    try:
        c.format(copies=2)
        a, b, lost = c.nodes
        cl = a.client()
        vid = cl.new_vdi("d", DL_OBJ * OBJ)
        for i in range(DL_OBJ):
            write_vdi(cl, vid, i * OBJ, b"x" * 4096)
        cl.close()
        collie_ok(a.port, "cluster", "recover", "disable")
        lost.kill(signal.SIGKILL)
        c.wait_members(2, timeout=20)

        def has(n, idx):
            return os.path.exists(os.path.join(n.obj_dir, "%016x" % proto.vid_to_data_oid(vid, idx)))
        b_lacks = [i for i in range(DL_OBJ) if has(a, i) and not has(b, i)]
        a_lacks = [i for i in range(DL_OBJ) if has(b, i) and not has(a, i)]
        assert b_lacks and a_lacks
        res, when = {}, {}

        def run(node, objs):
            frames = [write_frame(vid, objs[k % len(objs)], 8192 + 4096 * (k // len(objs)),
                                  bytes([k % 250 + 1]) * 4096, k + 1) for k in range(N_WRITES)]
            t0 = time.monotonic()
            res[node.idx] = pipeline(node.port, frames)
            when[node.idx] = time.monotonic() - t0
        threads = [threading.Thread(target=run, args=(a, b_lacks)),
                   threading.Thread(target=run, args=(b, a_lacks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for n in (a, b):
            assert len(res[n.idx]) == N_WRITES and all(r == 0 for r, _ in res[n.idx].values())
            assert "no reply for" not in n.log(), f"sheep {n.idx}: a peer connection stalled"
            assert when[n.idx] < gateway.PEER_STALL_TIMEOUT
        # every write reads back, through either node
        for n in (a, b):
            cl = n.client()
            for objs in (b_lacks, a_lacks):
                for k in range(N_WRITES):
                    got = cl.read_obj(proto.vid_to_data_oid(vid, objs[k % len(objs)]),
                                      8192 + 4096 * (k // len(objs)), 4096)
                    assert got == bytes([k % 250 + 1]) * 4096, (n.idx, k)
            cl.close()
    finally:
        c.close()
