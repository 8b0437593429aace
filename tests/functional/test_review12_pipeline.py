"""Adversarial review of the server's backpressure with a framer that holds
the rest of a chunk once the connection pauses (128 requests in flight,
64 MiB charged, or replies not read): every pipelined request gets exactly
one reply, nothing is lost or executed twice, data reads back right, and a
connection that goes away while frames are held leaves a healthy daemon.

Real 2-node cluster (copies 2), so every write also crosses a sheep-to-sheep
connection; the big-write case runs on both nodes at once (each one's peer
connection to the other is loaded both ways)."""

import socket
import threading

import pytest
from harness import Cluster, push, read_vdi, wait_for, write_vdi

from sheep import proto

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
