"""Hostile and malformed input over raw sockets against a formatted 3-node
cluster: every bad request gets an error reply (or the connection is closed),
the byte stream stays in sync where the protocol allows it, and afterwards
the daemon still serves other clients with their data intact.
"""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest
from harness import Cluster, wait_for

from sheep import proto

pytestmark = pytest.mark.cluster

SUCCESS, NO_OBJ, INVALID_PARMS, NO_VDI = 0x00, 0x02, 0x05, 0x08
VER_MISMATCH, WAIT_FOR_FORMAT = 0x14, 0x16
OBJ = proto.SD_DATA_OBJ_SIZE
REQ = struct.Struct("<BBHIII")
RSP = struct.Struct("<BBHIIII")
UNKNOWN_OPCODES = [op for op in range(0x20, 0x80) if op not in set(proto.Op)]


# ---------------------------------------------------------------------------
# raw wire helpers


def hdr(opcode, union=b"", flags=0, data_length=0, id=0, ver=None) -> bytes:
    if ver is None:
        ver = proto.proto_ver_for(opcode)
    union = union.ljust(32, b"\0")
    assert len(union) == 32
    return REQ.pack(ver, opcode, flags, 0, id, data_length) + union


def obj_union(oid, offset=0) -> bytes:
    return struct.pack("<QQBBBBIII", oid, 0, 0, 0, 0, 0, 0, offset, 0)


def vdi_union(size=0, base=0, snapid=0) -> bytes:
    return struct.pack("<QIBBBBII8x", size, base, 0, 0, 0, 0, snapid, 0)


def read_req(oid, offset, length, id=0, ver=None) -> bytes:
    return hdr(proto.Op.READ_OBJ, obj_union(oid, offset), data_length=length, id=id, ver=ver)


def write_req(oid, offset, data, id=0, op=proto.Op.WRITE_OBJ, ver=None) -> bytes:
    return hdr(op, obj_union(oid, offset), proto.SD_FLAG_CMD_WRITE, len(data), id, ver) + data


def connect(node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.port), timeout=15)


def recv_exact(sock, n) -> bytes | None:
    """``n`` bytes, or None if the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class Reply:
    def __init__(self, raw: bytes, body: bytes):
        (self.ver, self.opcode, self.flags, self.epoch, self.id, self.data_length,
         self.result) = RSP.unpack_from(raw)
        self.raw, self.body = raw, body

    def __repr__(self):
        return f"Reply(op={self.opcode:#x}, id={self.id}, result={self.result:#x}, len={self.data_length})"


def recv_reply(sock) -> Reply | None:
    raw = recv_exact(sock, 48)
    if raw is None:
        return None
    rsp = Reply(raw, b"")
    body = recv_exact(sock, rsp.data_length) if rsp.data_length else b""
    assert body is not None, "connection closed inside a reply payload"
    rsp.body = body
    return rsp


def closed_by_peer(sock) -> bool:
    """True once the server has closed its end (EOF or reset)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def call(sock, req: bytes) -> Reply:
    sock.sendall(req)
    rsp = recv_reply(sock)
    assert rsp is not None, "server closed the connection"
    return rsp


def name_payload(name: str) -> bytes:
    return proto.vdi_name_payload(name)


# ---------------------------------------------------------------------------
# the shared cluster: formatted, copies 3, one VDI with known content


class Env:
    def __init__(self, cluster: Cluster):
        self.c = cluster
        self.nodes = cluster.nodes
        cl = self.nodes[0].client()
        try:
            self.vid = cl.new_vdi("baseline", 8 * OBJ)
            self.data = {0: os.urandom(64 * 1024), 1: os.urandom(8192)}
            for idx, d in self.data.items():
                write_vdi_obj(cl, self.vid, idx, d)
        finally:
            cl.close()

    def new_vdi(self, name, size=8 * OBJ) -> int:
        cl = self.nodes[0].client()
        try:
            return cl.new_vdi(name, size)
        finally:
            cl.close()

    def assert_intact(self, node=None):
        """Every given node is alive and serves the baseline data on a new connection."""
        for n in [node] if node is not None else self.nodes:
            assert n.alive(), f"sheep {n.idx} died"
            cl = n.client()
            try:
                for idx, d in self.data.items():
                    assert cl.read_obj(proto.vid_to_data_oid(self.vid, idx), 0, len(d)) == d
                    assert cl.read_obj(proto.vid_to_data_oid(self.vid, idx), 100, 33) == d[100:133]
            finally:
                cl.close()


def write_vdi_obj(client, vid, idx, data, offset=0):
    client.call(proto.Op.CREATE_AND_WRITE_OBJ,
                proto.ObjArgs(oid=proto.vid_to_data_oid(vid, idx), offset=offset), data)
    client.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid),
                                                  offset=proto.data_vdi_id_offset(idx)),
                vid.to_bytes(4, "little"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("bad-input"), 3)
    try:
        c.format(copies=3)
        yield Env(c)
        # bad input must cost one request, never hit an unexpected exception
        for n in c.nodes:
            assert "Traceback" not in n.log(), f"sheep {n.idx} logged an internal error"
    finally:
        c.close()


# ---------------------------------------------------------------------------
# malformed headers


def test_garbage_headers_get_errors_and_stream_stays_usable(env):
    node = env.nodes[0]
    rnd = random.Random(0x5EED)
    good_oid = proto.vid_to_data_oid(env.vid, 0)
    with connect(node) as s:
        for i in range(20):
            raw = bytearray(rnd.randbytes(48))
            raw[1] = rnd.choice(UNKNOWN_OPCODES)
            raw[2] &= ~proto.SD_FLAG_CMD_WRITE  # no payload follows
            struct.pack_into("<I", raw, 8, 1000 + i)  # id
            rsp = call(s, bytes(raw))
            assert rsp.id == 1000 + i and rsp.opcode == raw[1], rsp
            assert rsp.result in (INVALID_PARMS, VER_MISMATCH), rsp
            assert rsp.data_length == 0 and rsp.body == b""
        # the same connection still answers a real request correctly
        rsp = call(s, read_req(good_oid, 0, 4096, id=7))
        assert rsp.result == SUCCESS and rsp.id == 7 and rsp.body == env.data[0][:4096]
    env.assert_intact(node)


def test_huge_payload_announced_is_refused_and_closed(env):
    node = env.nodes[1]
    with connect(node) as s:
        s.sendall(hdr(proto.Op.WRITE_OBJ, obj_union(proto.vid_to_data_oid(env.vid, 0)),
                      proto.SD_FLAG_CMD_WRITE, 0xFFFFFFFF, id=42) + b"x" * 1000)
        rsp = recv_reply(s)
        assert rsp is not None and rsp.id == 42 and rsp.result == INVALID_PARMS, rsp
        assert rsp.data_length == 0
        assert closed_by_peer(s)
    env.assert_intact(node)


def test_short_garbage_then_close(env):
    node = env.nodes[2]
    with connect(node) as s:
        s.sendall(os.urandom(20))
    with connect(node) as s:
        s.sendall(b"\xff" * 47)
        s.shutdown(socket.SHUT_WR)
        assert closed_by_peer(s)  # nothing half-received is answered
    env.assert_intact(node)


def test_unknown_opcode_with_payload_is_drained(env):
    node = env.nodes[0]
    good_oid = proto.vid_to_data_oid(env.vid, 0)
    # The payload looks like requests: if the server did not skip it, it would
    # answer them (ids 0xBAD) and then misparse the real request that follows.
    fake = hdr(proto.Op.GET_NODE_LIST, data_length=80 * 8, id=0xBAD)
    payload = (fake * 30)[:1000]
    with connect(node) as s:
        s.sendall(hdr(UNKNOWN_OPCODES[0], b"", proto.SD_FLAG_CMD_WRITE, len(payload), id=1)
                  + payload + read_req(good_oid, 4096, 8192, id=2))
        got = {}
        while len(got) < 2:
            rsp = recv_reply(s)
            assert rsp is not None and rsp.id in (1, 2), rsp
            got[rsp.id] = rsp
        assert got[1].result == INVALID_PARMS and got[1].data_length == 0
        assert got[1].opcode == UNKNOWN_OPCODES[0]
        assert got[2].result == SUCCESS and got[2].body == env.data[0][4096:4096 + 8192]
        # and one more round trip: nothing extra is queued on the stream
        rsp = call(s, read_req(good_oid, 0, 16, id=3))
        assert rsp.id == 3 and rsp.body == env.data[0][:16]
    env.assert_intact(node)


@pytest.mark.parametrize("opcode,ver", [
    (proto.Op.GET_NODE_LIST, 0x02),   # internal op with the public version
    (proto.Op.CLUSTER_INFO, 0x00),
    (proto.Op.STAT_CLUSTER, 0x0B),
    (proto.Op.READ_OBJ, 0x03),        # public op with a newer version
    (proto.Op.READ_OBJ, 0x0A),
])
def test_wrong_protocol_version(env, opcode, ver):
    node = env.nodes[1]
    oid = proto.vid_to_data_oid(env.vid, 0)
    union = obj_union(oid) if opcode == proto.Op.READ_OBJ else b""
    with connect(node) as s:
        rsp = call(s, hdr(opcode, union, data_length=4096, id=9, ver=ver))
        assert rsp.result == VER_MISMATCH and rsp.id == 9 and rsp.opcode == opcode, rsp
        assert rsp.data_length == 0
        # the right version on the same connection works
        rsp = call(s, hdr(opcode, union, data_length=proto.CLUSTER_INFO_SIZE
                          if opcode != proto.Op.READ_OBJ else 4096, id=10))
        assert rsp.result == SUCCESS and rsp.id == 10, rsp
    env.assert_intact(node)


def test_write_with_wrong_version_is_drained_and_not_applied(env):
    node = env.nodes[2]
    oid = proto.vid_to_data_oid(env.vid, 1)
    with connect(node) as s:
        rsp = call(s, write_req(oid, 0, b"\xee" * 4096, id=5, ver=0x07))
        assert rsp.result == VER_MISMATCH and rsp.id == 5, rsp
        rsp = call(s, read_req(oid, 0, 8192, id=6))
        assert rsp.id == 6 and rsp.result == SUCCESS and rsp.body == env.data[1]
    env.assert_intact()


def test_truncated_payload_then_close(env):
    node = env.nodes[0]
    oid = proto.vid_to_data_oid(env.vid, 1)
    with connect(node) as s:
        s.sendall(hdr(proto.Op.WRITE_OBJ, obj_union(oid), proto.SD_FLAG_CMD_WRITE, 4096, id=1)
                  + b"\xaa" * 100)
    # nothing half-received is executed: the object is unchanged everywhere
    env.assert_intact()
    vid2 = env.new_vdi("truncated-create")
    oid2 = proto.vid_to_data_oid(vid2, 0)
    with connect(node) as s:
        s.sendall(hdr(proto.Op.CREATE_AND_WRITE_OBJ, obj_union(oid2), proto.SD_FLAG_CMD_WRITE,
                      65536, id=2) + b"\xbb" * 65000)
    for n in env.nodes:
        with connect(n) as s:
            assert call(s, read_req(oid2, 0, 512)).result == NO_OBJ
    env.assert_intact()


# ---------------------------------------------------------------------------
# semantic errors


def test_write_beyond_vdi_or_object_size(env):
    node = env.nodes[1]
    vid = env.new_vdi("small", 2 * OBJ)
    with connect(node) as s:
        for idx in (2, 3, 1000, proto.MAX_DATA_OBJS - 1):
            oid = proto.vid_to_data_oid(vid, idx)
            rsp = call(s, write_req(oid, 0, b"z" * 512, id=idx, op=proto.Op.CREATE_AND_WRITE_OBJ))
            assert rsp.result == INVALID_PARMS and rsp.id == idx, (idx, rsp)
        # inside the VDI works
        inside = proto.vid_to_data_oid(vid, 1)
        assert call(s, write_req(inside, 0, b"ok" * 256, op=proto.Op.CREATE_AND_WRITE_OBJ)
                    ).result == SUCCESS
        for off, length in ((OBJ - 10, 100), (OBJ, 1), (OBJ - 4096, 8192)):
            rsp = call(s, write_req(inside, off, b"y" * length, id=off))
            assert rsp.result == INVALID_PARMS and rsp.id == off, (off, rsp)
        rsp = call(s, read_req(inside, OBJ - 10, 100))
        assert rsp.result == INVALID_PARMS and rsp.data_length == 0
        # the valid object is unharmed: start and tail of the object
        assert call(s, read_req(inside, 0, 512)).body == b"ok" * 256
        assert call(s, read_req(inside, OBJ - 4096, 4096)).body == bytes(4096)
    for n in env.nodes:
        names = set(os.listdir(n.obj_dir))
        for idx in (2, 3, 1000):
            assert f"{proto.vid_to_data_oid(vid, idx):016x}" not in names
    env.assert_intact()


def test_unknown_vdi_and_missing_object(env):
    node = env.nodes[2]
    with connect(node) as s:
        rsp = call(s, hdr(proto.Op.GET_VDI_INFO, vdi_union(), proto.SD_FLAG_CMD_WRITE, 256, 11)
                   + name_payload("no-such-vdi"))
        assert rsp.result == NO_VDI and rsp.id == 11, rsp
        rsp = call(s, hdr(proto.Op.LOCK_VDI, vdi_union(), proto.SD_FLAG_CMD_WRITE, 256, 12)
                   + name_payload("no-such-vdi"))
        assert rsp.result == NO_VDI and rsp.id == 12, rsp
        # a data object of an existing VDI that was never written
        rsp = call(s, read_req(proto.vid_to_data_oid(env.vid, 7), 0, 4096, id=13))
        assert rsp.result == NO_OBJ and rsp.data_length == 0 and rsp.id == 13, rsp
        # the inode of a VDI that does not exist
        rsp = call(s, read_req(proto.vid_to_vdi_oid(0x123456), 0, 4096, id=14))
        assert rsp.result == NO_OBJ and rsp.data_length == 0, rsp
        rsp = call(s, write_req(proto.vid_to_data_oid(env.vid, 7), 0, b"w" * 10, id=15))
        assert rsp.result != SUCCESS, rsp
        rsp = call(s, read_req(proto.vid_to_data_oid(env.vid, 7), 0, 10, id=16))
        assert rsp.result == NO_OBJ, rsp
    env.assert_intact(node)


def test_new_vdi_bad_payload_and_snapshot(env):
    node = env.nodes[0]
    with connect(node) as s:
        for i, payload in enumerate((b"", b"short", b"n" * 255, b"n" * 257,
                                     name_payload("x") * 2)):
            flags = proto.SD_FLAG_CMD_WRITE if payload else 0
            rsp = call(s, hdr(proto.Op.NEW_VDI, vdi_union(OBJ), flags, len(payload), i)
                       + payload)
            assert rsp.result == INVALID_PARMS and rsp.id == i, (len(payload), rsp)
        # a snapshot request rebasing onto a vid that does not exist, or a snapshot
        # of a name that does not exist: an error, never success
        rsp = call(s, hdr(proto.Op.NEW_VDI, vdi_union(8 * OBJ, 0xABCDEF, snapid=1),
                          proto.SD_FLAG_CMD_WRITE, 256, 20) + name_payload("baseline"))
        assert rsp.result != SUCCESS and rsp.id == 20, rsp
        assert rsp.result in set(proto_codes()), rsp
        rsp = call(s, hdr(proto.Op.NEW_VDI, vdi_union(8 * OBJ, 0, snapid=5),
                          proto.SD_FLAG_CMD_WRITE, 256, 21) + name_payload("snap-of-nothing"))
        assert rsp.result != SUCCESS and rsp.id == 21, rsp
        # nothing was created and the working VDI is unchanged
        rsp = call(s, hdr(proto.Op.GET_VDI_INFO, vdi_union(), proto.SD_FLAG_CMD_WRITE, 256, 22)
                   + name_payload("snap-of-nothing"))
        assert rsp.result == NO_VDI, rsp
        rsp = call(s, hdr(proto.Op.GET_VDI_INFO, vdi_union(), proto.SD_FLAG_CMD_WRITE, 256, 23)
                   + name_payload("baseline"))
        assert rsp.result == SUCCESS and struct.unpack_from("<I", rsp.raw, 24)[0] == env.vid
    env.assert_intact()


def proto_codes():
    from sheep.proto.errors import CODES
    return CODES.values()


def test_before_format_only_force_ops(make_cluster):
    c = make_cluster(3)
    c.wait_members(3)
    n = c.nodes[1]
    with connect(n) as s:
        rsp = call(s, hdr(proto.Op.NEW_VDI, vdi_union(OBJ), proto.SD_FLAG_CMD_WRITE, 256, 1)
                   + name_payload("early"))
        assert rsp.result == WAIT_FOR_FORMAT and rsp.id == 1, rsp
        rsp = call(s, read_req(proto.vid_to_data_oid(0x42, 0), 0, 4096, id=2))
        assert rsp.result == WAIT_FOR_FORMAT and rsp.data_length == 0, rsp
        rsp = call(s, write_req(proto.vid_to_data_oid(0x42, 0), 0, b"q" * 512, id=3,
                                op=proto.Op.CREATE_AND_WRITE_OBJ))
        assert rsp.result == WAIT_FOR_FORMAT and rsp.id == 3, rsp
        # force ops are served
        rsp = call(s, hdr(proto.Op.GET_NODE_LIST, data_length=80 * 16, id=4))
        assert rsp.result == SUCCESS and struct.unpack_from("<I", rsp.raw, 20)[0] == 3
        assert sorted(x.port for x in proto.unpack_nodes(rsp.body)) == sorted(
            x.port for x in c.nodes)
        rsp = call(s, hdr(proto.Op.CLUSTER_INFO, data_length=proto.CLUSTER_INFO_SIZE, id=5))
        assert rsp.result == SUCCESS and rsp.data_length == proto.CLUSTER_INFO_SIZE
        info = proto.unpack_cluster_info(rsp.body)[0]
        assert info.status == proto.SD_STATUS_WAIT and info.ctime == 0 and info.nr_nodes == 3
        # STAT_CLUSTER is admitted; its result reports the status (§18.2): no
        # epoch yet, so no records
        rsp = call(s, hdr(proto.Op.STAT_CLUSTER, struct.pack("<QQBBHIIB3x", 0, 0, 0, 0, 0, 0,
                                                             4, 0),
                          data_length=(48 + 80 * 4) * 8, id=6))
        assert rsp.result == WAIT_FOR_FORMAT and rsp.id == 6 and rsp.data_length == 0, rsp
        rsp = call(s, hdr(proto.Op.GET_CLUSTER_DEFAULT, data_length=0, id=7))
        assert rsp.result == SUCCESS, rsp
    c.format(copies=3)
    with connect(n) as s:
        rsp = call(s, hdr(proto.Op.STAT_CLUSTER, struct.pack("<QQBBHIIB3x", 0, 0, 0, 0, 0, 0,
                                                             4, 0),
                          data_length=(48 + 80 * 4) * 8, id=8))
        assert rsp.result == SUCCESS and rsp.data_length == 48 + 80 * 4, rsp
        rsp = call(s, hdr(proto.Op.NEW_VDI, vdi_union(OBJ), proto.SD_FLAG_CMD_WRITE, 256, 9)
                   + name_payload("early"))
        assert rsp.result == SUCCESS, rsp


# ---------------------------------------------------------------------------
# pipelining


def test_pipelined_requests_matched_by_id(env):
    node = env.nodes[1]
    vid = env.new_vdi("pipeline")
    src, dst = proto.vid_to_data_oid(vid, 0), proto.vid_to_data_oid(vid, 1)
    src_data = os.urandom(40 * 4096)
    cl = node.client()
    try:
        write_vdi_obj(cl, vid, 0, src_data)
        write_vdi_obj(cl, vid, 1, b"")
    finally:
        cl.close()
    blocks = {i: os.urandom(4096) for i in range(32)}
    reads = {}  # id -> expected body
    stream = bytearray()
    for i in range(32):
        stream += write_req(dst, i * 4096, blocks[i], id=100 + i)
        off, length = i * 4096 + 17 * i, 512 * (i % 8 + 1)
        reads[200 + i] = src_data[off:off + length]
        stream += read_req(src, off, length, id=200 + i)
    with connect(node) as s:
        s.sendall(bytes(stream))  # all 64 in flight before any reply is read
        got = {}
        for _ in range(64):
            rsp = recv_reply(s)
            assert rsp is not None, f"closed after {len(got)} replies"
            assert rsp.id not in got, f"duplicate reply id {rsp.id}"
            got[rsp.id] = rsp
    assert set(got) == set(reads) | {100 + i for i in range(32)}
    for i in range(32):
        w = got[100 + i]
        assert w.result == SUCCESS and w.opcode == proto.Op.WRITE_OBJ and w.data_length == 0, w
    for rid, want in reads.items():
        r = got[rid]
        assert r.result == SUCCESS and r.opcode == proto.Op.READ_OBJ, r
        assert r.body == want, f"reply {rid} carries the wrong data"
    for n in env.nodes:
        cl = n.client()
        try:
            assert cl.read_obj(dst, 0, 32 * 4096) == b"".join(blocks[i] for i in range(32))
        finally:
            cl.close()
    env.assert_intact(node)


def test_requests_split_into_tiny_fragments(env):
    node = env.nodes[2]
    vid = env.new_vdi("fragments")
    oid = proto.vid_to_data_oid(vid, 0)
    data = os.urandom(3000)
    stream = (write_req(oid, 123, data, id=1, op=proto.Op.CREATE_AND_WRITE_OBJ)
              + read_req(oid, 100, 3100, id=2))
    rnd = random.Random(7)
    with connect(node) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while pos < len(stream):
            n = rnd.randint(1, 7)
            s.sendall(stream[pos:pos + n])
            pos += n
        got = {}
        for _ in range(2):
            rsp = recv_reply(s)
            assert rsp is not None
            got[rsp.id] = rsp
    assert got[1].result == SUCCESS, got[1]
    # the read may have been served before or after the create finished
    if got[2].result == SUCCESS:
        assert got[2].body == bytes(23) + data + bytes(77)
    else:
        assert got[2].result == NO_OBJ, got[2]
    cl = node.client()
    try:
        assert cl.read_obj(oid, 100, 3100) == bytes(23) + data + bytes(77)
    finally:
        cl.close()
    env.assert_intact(node)


def test_client_vanishes_with_requests_in_flight(env):
    node = env.nodes[0]
    oid = proto.vid_to_data_oid(env.vid, 0)
    with connect(node) as s:
        s.sendall(b"".join(read_req(oid, 0, 1 << 20, id=i) for i in range(32)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # closed with RST before reading any reply; the server must just drop them
    env.assert_intact(node)
    with connect(node) as s:  # and keeps serving big replies to others
        rsp = call(s, read_req(oid, 0, 1 << 20, id=99))
        assert rsp.id == 99 and rsp.body == env.data[0] + bytes((1 << 20) - len(env.data[0]))


# ---------------------------------------------------------------------------
# corruption behind the daemon's back


def test_corrupt_replica_is_skipped_and_logged(env):
    victim = env.nodes[2]
    vid = env.new_vdi("corrupt-me")
    data = os.urandom(128 * 1024)
    cl = env.nodes[0].client()
    try:
        write_vdi_obj(cl, vid, 0, data)
    finally:
        cl.close()
    oid = proto.vid_to_data_oid(vid, 0)
    path = os.path.join(victim.obj_dir, f"{oid:016x}")
    # warm the node's checksum cache, then flip bytes in place (same inode, same size)
    cv = victim.client()
    try:
        assert cv.read_obj(oid, 0, len(data)) == data
    finally:
        cv.close()
    with open(path, "r+b") as f:
        f.seek(5000)
        f.write(bytes(b ^ 0xFF for b in data[5000:5100]))
    with open(path, "rb") as f:
        f.seek(5000)
        assert f.read(100) != data[5000:5100]
    cv = victim.client()
    try:
        assert cv.read_obj(oid, 0, len(data)) == data
        assert cv.read_obj(oid, 4096, 4096) == data[4096:8192]
        assert cv.read_obj(oid, 0, 4096) == data[:4096]  # an untouched block still reads
    finally:
        cv.close()
    for n in env.nodes[:2]:
        c2 = n.client()
        try:
            assert c2.read_obj(oid, 0, len(data)) == data
        finally:
            c2.close()
    wait_for(lambda: "checksum" in victim.log() and f"{oid:016x}" in victim.log(), 5,
             what="the checksum error in the victim's log")
    env.assert_intact()
