"""In-memory stand-ins for the VDI layer's collaborators (gateway, group,
locks) and NEW_VDI/DEL_VDI drivers, shared by the unit tests of ``sheep.vdi.table``
and ``sheep.vdi.recycle`` (no daemons)."""

import asyncio
import shutil
import tempfile
import types
import weakref

from sheep import proto
from sheep.proto.errors import CODES, SdError
from sheep.vdi.table import VdiTable


class FakeGateway:
    """Objects as sparse byte arrays in a dict (what the replicas would hold)."""

    def __init__(self):
        self.objs: dict[int, bytearray] = {}
        self.reads = 0

    async def read(self, oid, offset, length, copies=0):
        self.reads += 1
        if oid not in self.objs:
            raise SdError(CODES["NO_OBJ"])
        buf = self.objs[oid]
        return bytes(buf[offset:offset + length]).ljust(length, b"\0")

    async def write(self, oid, offset, data, copies=0):
        if oid not in self.objs:
            raise SdError(CODES["NO_OBJ"])
        buf = self.objs[oid]
        if len(buf) < offset + len(data):
            buf.extend(bytes(offset + len(data) - len(buf)))
        buf[offset:offset + len(data)] = data

    async def create_and_write(self, oid, offset, data, copies=0):
        self.objs[oid] = bytearray(offset) + bytearray(data)

    async def remove(self, oid, copies=0):
        if self.objs.pop(oid, None) is None:
            raise SdError(CODES["NO_OBJ"])


class FakeConfig:
    flags = 0  # no SD_CLUSTER_FLAG_RECYCLE_VID
    copies = 3
    copy_policy = 0
    block_size_shift = 22


class FakeGroup:
    config = FakeConfig()
    epoch = 1


class FakeLocks:
    """Locks not enforced (Sheepdog 1.0 mode): a snapshot freezes nothing."""

    def __init__(self):
        self.frozen = []
        self.table = types.SimpleNamespace(holders=lambda vid: [])  # nobody holds a VDI
        self.me = "127.0.0.1:7000"

    async def freeze(self, vid):
        self.frozen.append(vid)
        return ""

    async def thaw(self, vid, fid):
        pass


class FakeSheep:
    def __init__(self):
        base = tempfile.mkdtemp(prefix="vdi-fakes-")  # vid tombstones (-R) go here
        weakref.finalize(self, shutil.rmtree, base, True)
        self.store = types.SimpleNamespace(base_dir=base)
        self.gateway = FakeGateway()
        self.group = FakeGroup()
        self.locks = FakeLocks()
        self.vdis = VdiTable(store=self.store, group=self.group, nosync=True)
        self.vdis.bind(gateway=self.gateway, locks=self.locks)


def run(coro):
    return asyncio.run(coro)


def new_vdi(sheep, name, size=1 << 24, base=0, snapid=0, copies=0):
    """NEW_VDI as the cluster op does it: work step, then main step."""
    args = proto.VdiArgs(vdi_size=size, base_vdi_id=base, snapid=snapid, copies=copies)
    msg = run(sheep.vdis.new_vdi_work(proto.pad(name, 256), args))
    return sheep.vdis.apply_new_vdi(msg).vdi_id


def del_vdi(sheep, name, tag="", snapid=0):
    msg = run(sheep.vdis.del_vdi_work(proto.pad(name, 256), proto.pad(tag, 256), snapid))
    return sheep.vdis.apply_del_vdi(msg).vdi_id


def header(sheep, vid):
    return run(sheep.vdis.read_header(vid))


def snapshot(sheep, name, tag=""):
    w = run(sheep.vdis.find(proto.pad(name, 256)))
    if tag:
        run(sheep.gateway.write(proto.vid_to_vdi_oid(w), proto.INODE_TAG_OFF, proto.pad(tag, 256)))
    return w, new_vdi(sheep, name, base=w, snapid=1)
