"""VDI access in the style of QEMU's block driver (asyncio).

:class:`AsyncVdi` opens a VDI by name, reads its inode, and turns byte-range
reads and writes into object I/O:

* reads of objects the VDI has never written return zeros without asking
  the cluster; other reads go to ``vid_to_data_oid(data_vdi_id[i], i)``;
* the first write to an object creates it (CREATE_AND_WRITE_OBJ, with
  copy-on-write from the ancestor's object when the index points elsewhere)
  and then records it in the inode's ``data_vdi_id`` entry (WRITE_OBJ), as
  QEMU does; later writes are WRITE_OBJ in place;
* concurrent writes to an object that is still being created wait for the
  creation, so no write is lost to a second creation;
* I/O of any size and alignment is split across objects and issued in
  parallel; a write returns only when every replica acknowledged every part.
"""

from __future__ import annotations

import asyncio

from sheep import proto
from sheep.errors import CODES, error_for

from qemu_client.connection import Connection


class AsyncVdi:
    def __init__(self, conn: Connection, name: str):
        self.conn = conn
        self.name = name
        self.vid = 0
        self.inode: proto.InodeHeader | None = None
        self.index: list[int] = []
        self._creating: dict[int, asyncio.Future] = {}

    @classmethod
    async def open(cls, name: str, host: str = "127.0.0.1", port: int = proto.SD_PORT) -> "AsyncVdi":
        conn = Connection(host, port)
        await conn.connect()
        self = cls(conn, name)
        try:
            await self._load()
        except BaseException:
            conn.close()
            raise
        return self

    async def _load(self) -> None:
        rsp, _ = await self.conn.call(proto.Op.GET_VDI_INFO,
                                      payload=proto.vdi_name_payload(self.name, ""))
        self.vid = rsp.args.vdi_id
        _, hdr = await self.conn.call(proto.Op.READ_OBJ,
                                      proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid)),
                                      data_length=proto.SD_INODE_HEADER_SIZE)
        self.inode = proto.InodeHeader.unpack(hdr)
        n = self.inode.nr_objects
        self.index = [0] * n
        if n:
            _, raw = await self.conn.call(
                proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                                 offset=proto.SD_INODE_HEADER_SIZE),
                data_length=4 * n)
            self.index = list(memoryview(raw).cast("I"))

    @property
    def size(self) -> int:
        return self.inode.vdi_size

    @property
    def object_size(self) -> int:
        return self.inode.object_size

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise error_for(CODES["INVALID_PARMS"],
                            f"range {offset}+{length} is outside VDI {self.name} "
                            f"of {self.size} bytes")

    def _split(self, offset: int, length: int):
        s = self.object_size
        pos = 0
        while pos < length:
            idx, o = divmod(offset + pos, s)
            n = min(length - pos, s - o)
            yield idx, o, pos, n
            pos += n

    async def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        out = bytearray(length)

        async def part(idx, o, pos, n):
            owner = self.index[idx]
            if owner:
                _, data = await self.conn.call(
                    proto.Op.READ_OBJ, proto.ObjArgs(oid=proto.vid_to_data_oid(owner, idx),
                                                     offset=o, copies=self.inode.nr_copies),
                    data_length=n)
                out[pos:pos + n] = data
        await asyncio.gather(*(part(*p) for p in self._split(offset, length)))
        return bytes(out)

    async def pwrite(self, offset: int, data) -> None:
        data = bytes(data)
        self._check(offset, len(data))
        await asyncio.gather(*(self._write_part(idx, o, data[pos:pos + n])
                               for idx, o, pos, n in self._split(offset, len(data))))

    async def _write_part(self, idx: int, o: int, chunk: bytes) -> None:
        while idx in self._creating:
            await asyncio.shield(self._creating[idx])
        oid = proto.vid_to_data_oid(self.vid, idx)
        copies = self.inode.nr_copies
        if self.index[idx] == self.vid:
            await self.conn.call(proto.Op.WRITE_OBJ,
                                 proto.ObjArgs(oid=oid, offset=o, copies=copies), chunk)
            return
        fut = self._creating[idx] = asyncio.get_running_loop().create_future()
        try:
            parent = self.index[idx]
            flags = 0
            args = proto.ObjArgs(oid=oid, offset=o, copies=copies)
            if parent:
                flags = proto.SD_FLAG_CMD_COW
                args.cow_oid = proto.vid_to_data_oid(parent, idx)
            await self.conn.call(proto.Op.CREATE_AND_WRITE_OBJ, args, chunk, flags=flags)
            await self.conn.call(proto.Op.WRITE_OBJ,
                                 proto.ObjArgs(oid=proto.vid_to_vdi_oid(self.vid),
                                               offset=proto.data_vdi_id_offset(idx)),
                                 self.vid.to_bytes(4, "little"))
            self.index[idx] = self.vid
        finally:
            del self._creating[idx]
            fut.set_result(None)

    async def close(self) -> None:
        try:
            await self.conn.call(proto.Op.RELEASE_VDI, proto.VdiArgs(base_vdi_id=self.vid))
        finally:
            self.conn.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
