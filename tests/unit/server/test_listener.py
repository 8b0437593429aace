"""The listener (sheep.server.listener): framing of the Sheepdog protocol,
many requests in flight per connection, each reply written whole, bounded
buffering, and an oversized announcement closing only its own connection.

Two levels: ``SheepProtocol`` fed bytes through a fake transport (what is
read, paused, written — deterministic), and ``start_servers`` on a loopback
TCP port and a UNIX socket with raw clients.  Requests run through the real
``ops.dispatch``; only the gateway behind READ_OBJ & co. is a fake whose
handlers the tests hold and release.
"""

import asyncio
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fake_node import EPOCH, FakeSheep, blocking, read_req, until, write_req  # noqa: E402

from sheep import proto
from sheep.proto.errors import CODES
from sheep.server import listener
from sheep.vdi import locks

pytestmark = pytest.mark.quick

HDR = proto.HDR_SIZE


class FakeTransport:
    """The asyncio.Transport calls the protocol makes; each write call is one unit."""

    def __init__(self):
        self.units: list[bytes] = []
        self.paused = False
        self.pauses = 0
        self.closing = False

    def write(self, data):
        assert not self.closing
        self.units.append(bytes(data))

    def writelines(self, parts):
        assert not self.closing
        self.units.append(b"".join(bytes(p) for p in parts))

    def pause_reading(self):
        assert not self.paused
        self.paused = True
        self.pauses += 1

    def resume_reading(self):
        assert self.paused
        self.paused = False

    def close(self):
        self.closing = True

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name, default=None):
        return default

    def replies(self):
        """Each unit parsed as exactly one reply: [(Response, body)]."""
        out = []
        for u in self.units:
            rsp = proto.Response.unpack(u)
            assert len(u) == HDR + rsp.data_length, "a unit is not one whole reply"
            out.append((rsp, u[HDR:]))
        return out


@pytest.fixture
def node():
    sheep = FakeSheep()
    conn = listener.SheepProtocol(sheep)
    tr = FakeTransport()
    conn.connection_made(tr)
    return sheep, conn, tr


def frames(*reqs_payloads) -> bytes:
    out = b""
    for r in reqs_payloads:
        req, payload = r if isinstance(r, tuple) else (r, b"")
        out += req.pack() + payload
    return out


def echo(req):
    return None, req.id.to_bytes(4, "little") * (req.data_length // 4)


# ---------------------------------------------------------------------------
# framing, through a fake transport


async def test_the_payload_is_read_iff_the_write_flag_is_set(node):
    sheep, conn, tr = node
    got = []

    async def record(req, payload):
        got.append((req.opcode, req.id, bytes(payload)))
        return None, b""
    sheep.gateway.script["handle_read"] = sheep.gateway.script["handle_write"] = record
    stream = frames(read_req(1, length=100),  # no WRITE: 100 is the reply buffer, no bytes follow
                    (write_req(2, 5), b"hello"), read_req(3, length=7))
    for i in range(len(stream)):  # one byte at a time: framing does not depend on chunks
        conn.data_received(stream[i:i + 1])
    await until(lambda: len(tr.units) == 3)
    assert sorted(got, key=lambda g: g[1]) == [
        (proto.Op.READ_OBJ, 1, b""), (proto.Op.WRITE_OBJ, 2, b"hello"), (proto.Op.READ_OBJ, 3, b"")]
    assert sorted(r.id for r, _ in tr.replies()) == [1, 2, 3]


async def test_requests_of_one_connection_run_concurrently_and_replies_are_whole(node):
    sheep, conn, tr = node
    started, release = blocking(sheep.gateway, "handle_read", echo)
    conn.data_received(frames(*(read_req(i, length=4 * i) for i in range(1, 11))))
    await until(lambda: len(started) == 10)  # all ten in progress at once
    assert tr.units == []
    for i in range(10, 0, -1):  # finish in reverse order
        release(i)
    await until(lambda: len(tr.units) == 10)
    reps = tr.replies()
    assert [r.id for r, _ in reps] == list(range(10, 0, -1))
    for rsp, body in reps:
        assert rsp.opcode == proto.Op.READ_OBJ and rsp.epoch == EPOCH
        assert body == echo(read_req(rsp.id, length=4 * rsp.id))[1]
    assert not conn.tasks and conn.buffered == 0


async def test_in_flight_cap_stops_reading_and_holds_the_rest_of_the_chunk(node, monkeypatch):
    monkeypatch.setattr(listener, "MAX_IN_FLIGHT", 4)
    sheep, conn, tr = node
    started, release = blocking(sheep.gateway, "handle_read")
    conn.data_received(frames(*(read_req(i) for i in range(1, 11))))  # ten in one chunk
    assert len(conn.tasks) == 4 and tr.paused
    await until(lambda: len(started) == 4)
    release(started[0].id)
    await until(lambda: len(started) == 5)  # one finished: one more of the chunk runs
    assert len(conn.tasks) == 4 and tr.paused
    for i in range(1, 11):
        release(i)
    await until(lambda: len(tr.units) == 10)
    await until(lambda: not tr.paused)
    assert sorted(r.id for r, _ in tr.replies()) == list(range(1, 11))
    assert not conn.framer.holding


async def test_buffered_bytes_cap_counts_payloads_and_reply_buffers(node, monkeypatch):
    monkeypatch.setattr(listener, "MAX_BUFFERED", 10_000)
    sheep, conn, tr = node
    _, release_w = blocking(sheep.gateway, "handle_write")
    _, release_r = blocking(sheep.gateway, "handle_read")
    conn.data_received(frames((write_req(1, 4000), b"a" * 4000), read_req(2, length=5000)))
    assert conn.buffered == 9000 and not tr.paused
    # a read announcing more than any reply can hold is charged MAX_PAYLOAD at most
    conn.data_received(frames(read_req(3, length=0xFFFFFFFF), read_req(4, length=1)))
    assert conn.buffered == 9000 + listener.MAX_PAYLOAD and tr.paused
    assert len(conn.tasks) == 3 and conn.framer.holding  # request 4 waits in the framer
    release_r(3)
    await until(lambda: len(conn.tasks) == 3 and not conn.framer.holding)
    assert conn.buffered == 9001 and not tr.paused
    for i in (1, 2, 4):
        release_w(i)
        release_r(i)
    await until(lambda: len(tr.units) == 4)
    assert conn.buffered == 0


async def test_a_copy_on_write_create_is_charged_two_parent_objects(node, monkeypatch):
    monkeypatch.setattr(listener, "MAX_BUFFERED", 10 << 20)
    sheep, conn, tr = node
    sheep.vdis.size = 4 << 20
    started, release = blocking(sheep.gateway, "handle_create")
    req = write_req(1, 512, flags=proto.SD_FLAG_CMD_COW, op=proto.Op.CREATE_AND_WRITE_OBJ)
    conn.data_received(frames((req, b"z" * 512)))
    assert conn.buffered == 8 << 20 and not tr.paused
    conn.data_received(frames((write_req(2, 512, op=proto.Op.CREATE_AND_WRITE_OBJ),
                               b"y" * 512)))
    assert conn.buffered == (8 << 20) + 512
    conn.data_received(frames((req, b"z" * 512)))
    assert tr.paused
    for i in (1, 2):
        release(i)
    await until(lambda: len(tr.units) == 3)


async def test_a_client_not_reading_its_replies_is_not_read_either(node):
    sheep, conn, tr = node
    conn.pause_writing()
    assert tr.paused
    conn.data_received(frames(read_req(1), read_req(2)))  # bytes already on their way
    assert len(conn.tasks) == 1 and conn.framer.holding
    conn.resume_writing()
    assert not tr.paused
    await until(lambda: len(tr.units) == 2)


async def test_an_oversized_payload_is_refused_and_the_connection_closed(node):
    sheep, conn, tr = node
    called = []
    sheep.gateway.script["handle_write"] = lambda req, p: called.append(req) or None
    big = write_req(77, listener.MAX_PAYLOAD + 1)
    sheep.group.epoch = 31
    conn.data_received(frames(read_req(1)) + big.pack() + b"x" * 100 + read_req(2).pack())
    assert tr.closing and conn.closed
    (rsp, body), = tr.replies()  # the refusal; nothing else of the chunk is run
    assert (rsp.result, rsp.id, rsp.opcode, rsp.epoch, body) == (
        CODES["INVALID_PARMS"], 77, proto.Op.WRITE_OBJ, 31, b"")
    conn.data_received(read_req(3).pack())  # the transport may still deliver: ignored
    conn.connection_lost(None)
    await until(lambda: not conn.tasks)
    assert [c[1].id for c in sheep.gateway.calls] == [1]  # only the request before it
    assert called == [] and len(tr.units) == 1


async def test_a_payload_of_exactly_max_payload_is_accepted(node):
    sheep, conn, tr = node
    n = listener.MAX_PAYLOAD
    conn.data_received(frames((write_req(5, n), b"\1" * n)))
    await until(lambda: len(tr.units) == 1)
    (rsp, _), = tr.replies()
    assert (rsp.id, rsp.result) == (5, 0) and not tr.closing
    assert len(sheep.gateway.calls[0][2]) == n


async def test_a_request_half_received_when_the_connection_closes_is_not_run(node):
    sheep, conn, tr = node
    conn.data_received(write_req(1, 1000).pack() + b"x" * 999)
    conn.connection_lost(ConnectionResetError())
    conn.data_received(b"x")
    await asyncio.sleep(0)
    assert sheep.gateway.calls == [] and not conn.tasks
    assert conn not in sheep.connections


async def test_a_reply_finished_after_the_connection_closed_is_dropped(node):
    sheep, conn, tr = node
    started, release = blocking(sheep.gateway, "handle_read", echo)
    conn.data_received(read_req(1, length=8).pack())
    await until(lambda: started)
    conn.connection_lost(None)
    release(1)
    await until(lambda: not conn.tasks)
    assert tr.units == []


async def test_requests_see_their_connection_and_lock_sessions_are_told(node):
    sheep, conn, tr = node
    seen = []

    async def read(req, payload):
        seen.append(locks.CURRENT_CONN.get(None))
        return None, b""
    sheep.gateway.script["handle_read"] = read
    conn.data_received(read_req(1).pack())
    await until(lambda: len(tr.units) == 1)
    assert seen == [conn] and sheep.locks.touched == []  # no session: nothing to renew
    conn.lock_sessions = {1}
    conn.data_received(read_req(2).pack())
    await until(lambda: len(tr.units) == 2)
    assert seen == [conn, conn] and sheep.locks.touched == [conn]
    assert locks.CURRENT_CONN.get(None) is None  # set in the request's task only
    conn.connection_lost(None)
    assert sheep.locks.closed_conns == [conn] and conn not in sheep.connections


# ---------------------------------------------------------------------------
# over real sockets


async def _exchange(reader, writer, reqs):
    writer.write(frames(*reqs))
    await writer.drain()
    out = {}
    for _ in reqs:
        hdr = await reader.readexactly(HDR)
        rsp = proto.Response.unpack(hdr)
        out[rsp.id] = (rsp, await reader.readexactly(rsp.data_length))
    return out


@pytest.fixture
async def servers(tmp_path):
    sheep = FakeSheep(tmp_path)
    (tmp_path / "sock").write_text("stale")  # a socket file left by a crashed daemon
    srvs = await listener.start_servers(sheep)
    yield sheep, srvs
    for s in srvs:
        s.close()
    for c in list(sheep.connections):
        c.close()
    for s in srvs:
        await s.wait_closed()


def tcp_port(srvs):
    return srvs[0].sockets[0].getsockname()[1]


async def test_many_large_replies_in_flight_on_tcp_never_interleave(servers):
    sheep, srvs = servers
    n = 24
    size = lambda i: 40_000 + 7919 * i  # noqa: E731
    started, release = blocking(sheep.gateway, "handle_read",
                                lambda req: (None, bytes([req.id]) * req.data_length))
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(srvs))
    task = asyncio.ensure_future(_exchange(reader, writer,
                                           [read_req(i, length=size(i)) for i in range(n)]))
    await until(lambda: len(started) == n)  # every request in progress on one connection
    for i in range(n):
        release(i)  # all finish together: their writes race
    out = await asyncio.wait_for(task, 10)
    assert sorted(out) == list(range(n))
    for i, (rsp, body) in out.items():
        assert (rsp.result, rsp.epoch, rsp.opcode) == (0, EPOCH, proto.Op.READ_OBJ)
        assert body == bytes([i]) * size(i)
    (conn,) = sheep.connections
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    writer.close()


async def test_the_unix_socket_speaks_the_same_framing(servers, tmp_path):
    sheep, srvs = servers
    assert len(srvs) == 2
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "sock"))
    sheep.gateway.script["handle_write"] = lambda req, p: asyncio.sleep(0, (None, b"ok"))
    out = await asyncio.wait_for(_exchange(reader, writer, [
        (write_req(1, 3, flags=proto.SD_FLAG_CMD_PIGGYBACK), b"abc"),
        proto.Request(proto.Op.GET_LOGLEVEL, id=2, data_length=4)]), 5)
    assert out[1][1] == b"ok"[:3] and out[2][1] == (6).to_bytes(4, "little")
    assert sheep.gateway.calls[0][2] == b"abc"
    writer.close()


async def test_an_oversized_announcement_closes_only_its_connection(servers):
    sheep, srvs = servers
    port = tcp_port(srvs)
    started, release = blocking(sheep.gateway, "handle_read", echo)
    good_r, good_w = await asyncio.open_connection("127.0.0.1", port)
    pending = asyncio.ensure_future(_exchange(good_r, good_w, [read_req(1, length=8)]))
    await until(lambda: len(started) == 1)  # the good connection has a request in flight
    bad_r, bad_w = await asyncio.open_connection("127.0.0.1", port)
    bad_w.write(write_req(9, listener.MAX_PAYLOAD + 1).pack() + b"junk")
    hdr = await asyncio.wait_for(bad_r.readexactly(HDR), 5)
    rsp = proto.Response.unpack(hdr)
    assert (rsp.id, rsp.result) == (9, CODES["INVALID_PARMS"])
    assert await asyncio.wait_for(bad_r.read(), 5) == b""  # then the server closed it
    release(1)
    out = await asyncio.wait_for(pending, 5)
    assert out[1][0].result == 0 and out[1][1] == echo(read_req(1, length=8))[1]
    # the good connection goes on, and new ones are accepted
    sheep.gateway.script.clear()
    out = await asyncio.wait_for(_exchange(good_r, good_w, [read_req(2)]), 5)
    assert out[2][0].result == 0
    r3, w3 = await asyncio.open_connection("127.0.0.1", port)
    assert (await asyncio.wait_for(_exchange(r3, w3, [read_req(3)]), 5))[3][0].result == 0
    for w in (good_w, bad_w, w3):
        w.close()


async def test_a_client_that_disconnects_mid_payload_runs_nothing(servers):
    sheep, srvs = servers
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(srvs))
    writer.write(write_req(1, 10_000).pack() + b"x" * 5000)
    await writer.drain()
    await until(lambda: len(sheep.connections) == 1)
    writer.close()
    await until(lambda: not sheep.connections)
    assert sheep.gateway.calls == []
