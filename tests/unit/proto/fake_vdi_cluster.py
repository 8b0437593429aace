"""An in-memory cluster behind the connection interface the VDI I/O engine
uses (``connect``, ``call``, ``close``, ``on_reconnect``), for the unit tests
of ``sheep.proto.vdi_io`` (no daemons, no sockets).

It answers what a gateway answers: GET_VDI_INFO, READ_OBJ, WRITE_OBJ,
CREATE_AND_WRITE_OBJ (with copy-on-write), DISCARD_OBJ, LOCK_VDI with
sessions (write, read, renew/confirm, reattach), RELEASE_VDI, NEW_VDI of a
snapshot (optionally losing its reply once, as a gateway that dies after
applying it).  Writes carrying a generation other than the current holder's are
refused FENCED; writes to a snapshot's objects are refused READONLY.  Every
request is recorded in ``log`` as ``(op name, oid or name)``.
"""

from __future__ import annotations

import asyncio

from sheep import proto
from sheep.proto.errors import CODES, error_for
from sheep.proto.failover import GatewayLost
from sheep.proto.inode import split_name_tag

Op = proto.Op
SHIFT = 12  # 4 KiB objects: small ranges cross objects
OBJ = 1 << SHIFT


class FakeCluster:
    def __init__(self):
        self.objs: dict[int, bytearray] = {}
        self.working: dict[str, int] = {}  # name -> working vid
        self.holder: tuple[int, int] | None = None  # (session, generation) of the writer
        self.generation = 0
        self.granted_since_drop = False  # somebody else was granted the VDI after a drop
        self.log: list[tuple[str, object]] = []
        self.delay = 0.0  # seconds each object request takes (to overlap requests)
        self.lose_reply_of: str | None = None  # op name: apply it once, then GatewayLost
        self._next_vid = 0x100

    # -- set-up --------------------------------------------------------------

    def new_vdi(self, name: str, size: int, parent: int = 0) -> int:
        vid = self._next_vid
        self._next_vid += 1
        hdr = proto.InodeHeader(name=proto.pad(name, proto.SD_MAX_VDI_LEN), vdi_size=size,
                                nr_copies=3, block_size_shift=SHIFT, vdi_id=vid,
                                parent_vdi_id=parent, create_time=1)
        index = bytearray(4 * hdr.nr_objects)
        if parent:
            pidx = self.index(parent)
            index[:4 * len(pidx)] = b"".join(v.to_bytes(4, "little") for v in pidx)
        self.objs[proto.vid_to_vdi_oid(vid)] = bytearray(hdr.pack()) + index
        self.working[name] = vid
        return vid

    def header(self, vid: int) -> proto.InodeHeader:
        return proto.InodeHeader.unpack(bytes(self.objs[proto.vid_to_vdi_oid(vid)]))

    def index(self, vid: int) -> list[int]:
        raw = self.objs[proto.vid_to_vdi_oid(vid)][proto.SD_INODE_HEADER_SIZE:]
        return list(memoryview(bytes(raw)).cast("I"))

    def snapshot_under(self, name: str) -> int:
        """Another client snapshots ``name``: its vid becomes read-only, the name
        moves to a new working VDI whose index points at the snapshot's objects."""
        old = self.working[name]
        hdr = self.header(old)
        hdr.snap_ctime = 1 << 32
        self.objs[proto.vid_to_vdi_oid(old)][:proto.SD_INODE_HEADER_SIZE] = hdr.pack()
        return self.new_vdi(name, hdr.vdi_size, parent=old)

    def take_over(self, session: int = 0xBAD) -> None:
        """Another writer is granted the lock (an operator's unlock, a takeover)."""
        self.generation += 1
        self.holder = (session, self.generation)
        self.granted_since_drop = True

    def drop(self) -> None:
        """The holder's gateway left the cluster for a moment: its lock is gone."""
        self.holder = None
        self.granted_since_drop = False

    def data(self, vid: int, idx: int) -> bytes | None:
        buf = self.objs.get(proto.vid_to_data_oid(vid, idx))
        return None if buf is None else bytes(buf)

    def ops(self, name: str) -> list:
        return [x for op, x in self.log if op == name]

    def conn(self) -> FakeConnection:
        return FakeConnection(self)

    # -- requests ------------------------------------------------------------

    def _fenced(self, flags: int, args) -> None:
        if flags & proto.SD_FLAG_CMD_SESSION and self.holder is not None \
                and args.pad != self.holder[1]:
            raise error_for(CODES["FENCED"])
        if flags & proto.SD_FLAG_CMD_SESSION and self.holder is None and args.pad:
            raise error_for(CODES["FENCED"])

    async def call(self, op: int, args=None, payload: bytes = b"", data_length: int = 0,
                   flags: int = 0):
        op = Op(op)
        rsp = proto.Response(op)
        body = b""
        if op in (Op.READ_OBJ, Op.WRITE_OBJ, Op.CREATE_AND_WRITE_OBJ, Op.DISCARD_OBJ):
            self.log.append((op.name, args.oid))
            if self.delay:
                await asyncio.sleep(self.delay)
            body = self._object_op(op, args, payload, data_length, flags)
        elif op == Op.GET_VDI_INFO:
            name, tag = split_name_tag(payload)
            self.log.append((op.name, proto.cstr(name)))
            vid = self.working.get(proto.cstr(name))
            if vid is None:
                raise error_for(CODES["NO_VDI"])
            if tag.strip(b"\0") or (args is not None and args.snapid):
                raise error_for(CODES["NO_TAG"])
            rsp.args.vdi_id = vid
        elif op == Op.LOCK_VDI:
            self._lock(rsp, args, payload, flags)
        elif op == Op.NEW_VDI:
            rsp.args.vdi_id = self._new_vdi(args, payload)
            if self.lose_reply_of == op.name:  # applied, then the gateway died
                self.lose_reply_of = None
                raise GatewayLost("the gateway went away")
        elif op == Op.RELEASE_VDI:
            self.log.append((op.name, args.base_vdi_id))
            self.holder = None
        else:
            raise error_for(CODES["NO_SUPPORT"])
        return rsp, body

    def _new_vdi(self, args, payload) -> int:
        """NEW_VDI of a name's new working VDI; ``snapid`` 1: its base becomes
        a snapshot (what a snapshot and a rebase do)."""
        name = proto.cstr(split_name_tag(payload, allow_tag=False)[0])
        self.log.append(("NEW_VDI", name))
        base = args.base_vdi_id
        if args.snapid and base:
            hdr = self.header(base)
            hdr.snap_ctime, hdr.snap_id = 1 << 32, hdr.snap_id + 1
            self.objs[proto.vid_to_vdi_oid(base)][:proto.SD_INODE_HEADER_SIZE] = hdr.pack()
        return self.new_vdi(name, args.vdi_size, parent=base)

    def _object_op(self, op, args, payload, data_length, flags) -> bytes:
        oid = args.oid
        vid = proto.oid_to_vid(oid)
        if op == Op.READ_OBJ:
            if flags & proto.SD_FLAG_CMD_SESSION:
                self._fenced(flags, args)
            buf = self.objs.get(oid)
            if buf is None:
                raise error_for(CODES["NO_OBJ"])
            return bytes(buf[args.offset:args.offset + data_length]).ljust(data_length, b"\0")
        self._fenced(flags, args)
        if proto.is_data_obj(oid) and self.header(vid).is_snapshot:
            raise error_for(CODES["READONLY"])
        if op == Op.CREATE_AND_WRITE_OBJ:
            base = bytearray(OBJ)
            if flags & proto.SD_FLAG_CMD_COW:
                base[:] = self.objs[args.cow_oid]
            base[args.offset:args.offset + len(payload)] = payload
            self.objs[oid] = base
        elif op == Op.WRITE_OBJ:
            buf = self.objs.get(oid)
            if buf is None:
                raise error_for(CODES["NO_OBJ"])
            buf[args.offset:args.offset + len(payload)] = payload
        else:  # DISCARD_OBJ: unlink from the inode
            ino = self.objs[proto.vid_to_vdi_oid(vid)]
            off = proto.data_vdi_id_offset(proto.data_oid_to_idx(oid))
            ino[off:off + 4] = bytes(4)
        return b""

    def _lock(self, rsp, args, payload, flags) -> None:
        sid, mode, gen = proto.lock_session(args)
        self.log.append(("LOCK_VDI", mode))
        status = proto.LOCK_STATUS_SESSION | proto.LOCK_STATUS_ENFORCED
        holds = int(self.holder is not None and self.holder[0] == sid)
        if mode == proto.LOCK_MODE_RENEW:
            if args.base_vdi_id and self.holder == (sid, gen):
                status |= proto.LOCK_STATUS_HELD
            proto.set_session_reply(rsp.args, status, 0, 6000, holds)
            return
        if payload:
            name = proto.cstr(split_name_tag(payload)[0])
            rsp.args.vdi_id = self.working[name]
        rsp.args.copies, rsp.args.block_size_shift = 3, SHIFT
        granted = 0
        if mode == proto.LOCK_MODE_WRITE:
            if self.holder is not None and self.holder[0] != sid:
                raise error_for(CODES["VDI_LOCKED"])
            self.generation += 1
            self.holder = (sid, self.generation)
            granted = self.generation
        elif mode == proto.LOCK_MODE_REATTACH:
            if self.holder == (sid, gen):
                granted = gen
            elif self.holder is None and not self.granted_since_drop:
                self.generation += 1
                self.holder = (sid, self.generation)
                granted = self.generation
            else:
                raise error_for(CODES["FENCED"])
        elif mode == proto.LOCK_MODE_READ and self.holder is not None:
            raise error_for(CODES["VDI_LOCKED"])
        proto.set_session_reply(rsp.args, status, granted, 6000, holds)


class FakeConnection:
    """One client's connection to a :class:`FakeCluster`."""

    def __init__(self, cluster: FakeCluster):
        self.cluster = cluster
        self.on_reconnect: list = []
        self.closed = False

    async def connect(self) -> None:
        pass

    async def call(self, op, args=None, payload=b"", data_length=0, flags=0, **_):
        if self.closed:
            raise ConnectionError("closed")
        return await self.cluster.call(op, args, payload, data_length, flags)

    def close(self) -> None:
        self.closed = True
