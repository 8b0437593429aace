"""The failover connection (sheep.proto.failover) against fake gateways: tiny
asyncio servers that speak the framing and answer from a script.  Transient
refusals are retried, a gateway stuck in HALT is failed over, other errors
reach the caller."""

import asyncio

import pytest

from sheep import proto
from sheep.proto import failover as connection
from sheep.proto.errors import CODES, SdError
from sheep.proto.failover import Connection


class FakeGateway:
    """Answers READ_OBJ with the next result of ``results`` (then SUCCESS) and
    GET_NODE_LIST with ``nodes``."""

    def __init__(self, results=()):
        self.results = list(results)
        self.reads = 0
        self.nodes: list[proto.SdNode] = []
        self.server = None
        self.port = 0

    async def start(self):
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, r, w):
        try:
            while True:
                req = proto.Request.unpack(await r.readexactly(proto.HDR_SIZE))
                if req.flags & proto.SD_FLAG_CMD_WRITE:
                    await r.readexactly(req.data_length)
                rsp, body = proto.Response(req.opcode, id=req.id), b""
                if req.opcode == proto.Op.GET_NODE_LIST:
                    body = proto.pack_nodes(self.nodes)
                    rsp.args = proto.NodeRsp(nr_nodes=len(self.nodes))
                elif req.opcode == proto.Op.READ_OBJ:
                    self.reads += 1
                    rsp.result = self.results.pop(0) if self.results else 0
                    if not rsp.result:
                        body = b"x" * req.data_length
                rsp.data_length = len(body)
                w.write(rsp.pack() + body)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    def close(self):
        self.server.close()


async def _pair(first_results, second_results=()):
    a = await FakeGateway(first_results).start()
    b = await FakeGateway(second_results).start()
    nodes = [proto.SdNode.make("127.0.0.1", g.port) for g in (a, b)]
    a.nodes = b.nodes = nodes
    return a, b


async def _read(conn):
    return await conn.call(proto.Op.READ_OBJ, proto.ObjArgs(oid=1), data_length=4)


def test_halt_and_again_are_retried_invisibly():
    async def main():
        a, b = await _pair([CODES["HALT"], CODES["AGAIN"], CODES["HALT"]])
        conn = Connection("127.0.0.1", a.port)
        await conn.connect()
        try:
            _rsp, body = await _read(conn)
            assert body == b"xxxx" and a.reads == 4 and conn.failovers == 0
        finally:
            conn.close()
            a.close()
            b.close()
    asyncio.run(main())


def test_a_gateway_stuck_in_halt_is_failed_over(monkeypatch):
    monkeypatch.setattr(connection, "HALT_FAILOVER", 0.3)

    async def main():
        a, b = await _pair([CODES["HALT"]] * 1000)  # a minority node: HALT forever
        conn = Connection("127.0.0.1", a.port)
        await conn.connect()
        try:
            _rsp, body = await _read(conn)
            assert body == b"xxxx" and conn.gateway == ("127.0.0.1", b.port)
            assert conn.failovers == 1 and b.reads == 1
        finally:
            conn.close()
            a.close()
            b.close()
    asyncio.run(main())


def test_other_errors_reach_the_caller_at_once():
    async def main():
        a, b = await _pair([CODES["NO_VDI"]])
        conn = Connection("127.0.0.1", a.port)
        await conn.connect()
        try:
            with pytest.raises(SdError) as e:
                await _read(conn)
            assert e.value.code == CODES["NO_VDI"] and a.reads == 1
        finally:
            conn.close()
            a.close()
            b.close()
    asyncio.run(main())
