"""A connection to one sheep for qemu_client: pipelined, typed errors.

Guarantees: many requests may be in flight at once (replies matched by id);
a non-zero result raises the typed :class:`sheep.errors.SdError` subclass for
that code; a broken connection raises :class:`ConnectionError`.
"""

from __future__ import annotations

from sheep import proto
from sheep.errors import error_for
from sheep.net import AsyncConnection


class Connection:
    def __init__(self, host: str = "127.0.0.1", port: int = proto.SD_PORT):
        self.host, self.port = host, port
        self._conn: AsyncConnection | None = None

    async def connect(self) -> None:
        self._conn = await AsyncConnection.open(self.host, self.port)

    async def call(self, op: int, args=None, payload=b"", data_length: int = 0,
                   flags: int = 0) -> tuple[proto.Response, bytes]:
        if self._conn is None or self._conn.closed:
            await self.connect()
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            data_length = len(payload)
        req = proto.Request(op, args, flags=flags, data_length=data_length)
        rsp, body = await self._conn.request(req, payload)
        if rsp.result:
            raise error_for(rsp.result)
        return rsp, body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
