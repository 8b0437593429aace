"""VDI ids, bitmaps, lookup, create, delete and attributes (PROTOCOL §12, §13).

Theory of operation: every node keeps the two 2^24-bit bitmaps (in use,
deleted) and a state record per vid (copies, policy, object size shift,
snapshot/deleted flags, parent).  They change only in ``apply_*`` main steps,
which the group layer delivers to every node in the same order, so all nodes
hold the same table.  ``*_work`` steps run on one node while the cluster is
blocked (see ``sheep.group``): they look names up by reading inode headers
through the gateway and write inode/attribute objects, then return the main
message that registers the result everywhere.

Lookup follows §12.3 (default mode) exactly so that clients which compute
name hashes themselves (dog, QEMU) agree with us.  Deletion goes beyond
Sheepdog 1.0: the server releases the data objects a deleted VDI still owns
and clears the inode's name, so a deleted name can always be created again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from sheep import proto
from sheep.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.vdi")

NR = proto.SD_NR_VDIS


@dataclass
class VdiState:
    vid: int
    copies: int
    copy_policy: int = 0
    block_size_shift: int = proto.SD_DEFAULT_BLOCK_SIZE_SHIFT
    snapshot: bool = False
    deleted: bool = False
    parent: int = 0
    size: int = 0  # last known vdi_size (a lower bound: VDIs only grow)

    def record(self) -> proto.VdiStateRecord:
        return proto.VdiStateRecord(
            vid=self.vid, nr_copies=self.copies, snapshot=int(self.snapshot),
            deleted=int(self.deleted), copy_policy=self.copy_policy,
            block_size_shift=self.block_size_shift, parent_vid=self.parent,
            lock_state=proto.LOCK_STATE_UNLOCKED)


@dataclass
class Lookup:
    """Result of §12.3: ``vid`` when found; else ``code`` (NO_VDI/NO_TAG)."""

    vid: int | None
    code: int
    free: int
    next_snap_id: int = 0
    deleted_working: int = 0  # snapshot vid whose working VDI was deleted


def _err(name: str, msg: str | None = None) -> SdError:
    return error_for(CODES[name], msg)


class VdiTable:
    def __init__(self, sheep):
        self.sheep = sheep
        self.clear()

    # ------------------------------------------------------------------
    # bitmaps and states

    def clear(self) -> None:
        self.inuse = bytearray(proto.VDI_BITMAP_SIZE)
        self.deleted = bytearray(proto.VDI_BITMAP_SIZE)
        self.states: dict[int, VdiState] = {}

    @staticmethod
    def test(bm: bytearray, vid: int) -> bool:
        return bool(bm[vid >> 3] >> (vid & 7) & 1)

    @staticmethod
    def set(bm: bytearray, vid: int) -> None:
        bm[vid >> 3] |= 1 << (vid & 7)

    def next_clear(self, start: int) -> int:
        """First vid >= start whose in-use bit is clear (NR if none)."""
        bm = self.inuse
        i = start
        while i < NR:
            byte = bm[i >> 3]
            if byte == 0xFF:
                i = (i | 7) + 1
            elif not byte >> (i & 7) & 1:
                return i
            else:
                i += 1
        return NR

    def state(self, vid: int) -> VdiState | None:
        return self.states.get(vid)

    def copies_of(self, vid: int) -> int:
        st = self.states.get(vid)
        return st.copies if st else self.sheep.group.config.copies or proto.SD_DEFAULT_COPIES

    def shift_of(self, vid: int) -> int:
        st = self.states.get(vid)
        if st:
            return st.block_size_shift
        return self.sheep.group.config.block_size_shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT

    def snapshot(self) -> dict:
        """JSON-able copy of the whole table (sent to joining nodes)."""
        return {"states": [asdict(s) for s in self.states.values()],
                "inuse": self._vids(self.inuse), "deleted": self._vids(self.deleted)}

    @staticmethod
    def _vids(bm: bytearray) -> list[int]:
        bits = np.unpackbits(np.frombuffer(bytes(bm), dtype=np.uint8), bitorder="little")
        return [int(v) for v in np.flatnonzero(bits)]

    def restore(self, snap: dict) -> None:
        self.clear()
        for v in snap["inuse"]:
            self.set(self.inuse, v)
        for v in snap["deleted"]:
            self.set(self.deleted, v)
        for s in snap["states"]:
            self.states[s["vid"]] = VdiState(**s)

    def merge(self, entries: list[dict]) -> None:
        """Union in VDIs a node found on its own disk (deterministic on all nodes)."""
        for s in entries:
            vid = s["vid"]
            self.set(self.inuse, vid)
            if s["deleted"]:
                self.set(self.deleted, vid)
            if vid not in self.states:
                self.states[vid] = VdiState(**s)

    def local_snapshot(self) -> list[dict]:
        """VDIs whose inode objects are in the local store (start-up scan)."""
        store = self.sheep.store
        out = []
        for oid in store.list_oids():
            if not proto.is_vdi_obj(oid):
                continue
            try:
                ino = proto.InodeHeader.unpack(store.read(oid, 0, proto.SD_INODE_HEADER_SIZE))
            except SdError:
                continue
            vid = proto.oid_to_vid(oid)
            out.append(asdict(VdiState(
                vid=vid, copies=ino.nr_copies, copy_policy=ino.copy_policy,
                block_size_shift=ino.block_size_shift, snapshot=ino.is_snapshot,
                deleted=not ino.name.strip(b"\0"), parent=ino.parent_vdi_id,
                size=ino.vdi_size)))
        return out

    # ------------------------------------------------------------------
    # lookup (§12.3, default mode)

    async def read_header(self, vid: int) -> proto.InodeHeader:
        data = await self.sheep.gateway.read(proto.vid_to_vdi_oid(vid), 0,
                                             proto.SD_INODE_HEADER_SIZE,
                                             copies=self.copies_of(vid))
        return proto.InodeHeader.unpack(data)

    async def lookup(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> Lookup:
        name = proto.pad(name, 256)
        tag = proto.pad(tag, 256)
        has_tag = tag != bytes(256) or snapid != 0
        start = proto.vdi_name_hash(name) or 1
        if not self.test(self.inuse, start):
            return Lookup(None, CODES["NO_VDI"], start)
        right = self.next_clear(start)
        if right == NR:
            right = self.next_clear(1)
            if right == NR:
                raise _err("FULL_VDI")
        ranges = [(start, right)] if start < right else [(1, right), (start, NR)]
        seen_name = False
        next_snap = 0
        for lo, hi in ranges:
            for vid in range(hi - 1, lo - 1, -1):
                if vid == 0 or not (self.test(self.inuse, vid) or self.test(self.deleted, vid)):
                    continue
                try:
                    ino = await self.read_header(vid)
                except SdError as e:
                    log.warning("lookup: cannot read inode of vid %#x: %s", vid, e)
                    continue
                if ino.name != name:
                    continue
                if has_tag:
                    if not ino.is_snapshot:
                        seen_name = True
                        continue
                    if (tag != bytes(256) and ino.tag == tag) or (snapid and ino.snap_id == snapid):
                        return Lookup(vid, 0, right)
                    seen_name = True
                else:
                    next_snap = ino.snap_id + 1
                    if ino.is_snapshot:
                        return Lookup(None, CODES["NO_VDI"], right, next_snap, vid)
                    return Lookup(vid, 0, right, next_snap)
        code = CODES["NO_TAG"] if has_tag and seen_name else CODES["NO_VDI"]
        return Lookup(None, code, right, next_snap)

    async def find(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> int:
        """The vid for (name, tag/snapid) or raise NO_VDI / NO_TAG."""
        r = await self.lookup(name, tag, snapid)
        if r.vid is None:
            raise error_for(r.code)
        return r.vid

    # ------------------------------------------------------------------
    # NEW_VDI (§12.4; snapshots and clones come with the VDI-lifecycle work)

    async def new_vdi_work(self, name: bytes, args: proto.VdiArgs) -> dict:
        cfg = self.sheep.group.config
        if not name.strip(b"\0"):
            raise _err("INVALID_PARMS", "empty VDI name")
        if args.snapid or args.base_vdi_id:
            raise _err("NO_SUPPORT", "snapshots and clones are not supported yet")
        copies, policy = args.copies, args.copy_policy
        if not copies:
            copies, policy = cfg.copies, cfg.copy_policy
        if policy:
            raise _err("INVALID_PARMS", "erasure coding is not supported")
        shift = args.block_size_shift or cfg.block_size_shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT
        if not 20 <= shift <= 31:
            raise _err("INVALID_PARMS", f"invalid block size shift {shift}")
        if args.store_policy:
            raise _err("INVALID_PARMS", "hyper volumes (store policy 1) are not supported")
        max_size = (1 << shift) * proto.MAX_DATA_OBJS
        if args.vdi_size > max_size:
            raise _err("INVALID_PARMS", f"VDI size {args.vdi_size} exceeds the maximum {max_size}")
        r = await self.lookup(name)
        if r.vid is not None:
            raise _err("VDI_EXIST")
        if r.code != CODES["NO_VDI"]:
            raise error_for(r.code)
        vid = r.free
        ino = proto.InodeHeader(
            name=proto.pad(name, 256), create_time=proto.sd_time(time.time()),
            vdi_size=args.vdi_size, copy_policy=policy, store_policy=0, nr_copies=copies,
            block_size_shift=shift, snap_id=r.next_snap_id or 1, vdi_id=vid, parent_vdi_id=0)
        await self.sheep.gateway.create_and_write(
            proto.vid_to_vdi_oid(vid), 0, ino.pack(), copies=copies)
        return {"op": "new_vdi", "vid": vid, "copies": copies, "policy": policy,
                "shift": shift, "parent": 0, "size": args.vdi_size,
                "old": r.deleted_working}

    def apply_new_vdi(self, msg: dict) -> proto.VdiRsp:
        vid = msg["vid"]
        self.set(self.inuse, vid)
        self.states[vid] = VdiState(vid, msg["copies"], msg["policy"], msg["shift"],
                                    parent=msg["parent"], size=msg["size"])
        if msg.get("old") and msg["old"] in self.states:
            self.states[msg["old"]].snapshot = True
        log.info("VDI %#x created (copies %d)", vid, msg["copies"])
        return proto.VdiRsp(vdi_id=vid, copies=msg["copies"], block_size_shift=msg["shift"])

    # ------------------------------------------------------------------
    # DEL_VDI (§12.6)

    async def del_vdi_work(self, name: bytes, tag: bytes, snapid: int) -> dict:
        gw = self.sheep.gateway
        vid = await self.find(name, tag, snapid)
        copies = self.copies_of(vid)
        ino = await self.read_header(vid)
        if ino.vdi_size == 0 and not ino.name.strip(b"\0"):
            return {"op": "del_vdi", "vid": vid}
        n = ino.nr_objects
        if n:
            index = await gw.read(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE, 4 * n,
                                  copies=copies)
            owned = [i for i in range(n)
                     if int.from_bytes(index[4 * i:4 * i + 4], "little") == vid]
            for i in owned:  # release what this VDI still owns (beyond 1.0's quirk)
                try:
                    await gw.remove(proto.vid_to_data_oid(vid, i), copies=copies)
                except SdError as e:
                    if e.code != CODES["NO_OBJ"]:
                        raise
        ino.name = bytes(256)
        ino.vdi_size = 0
        await gw.create_and_write(proto.vid_to_vdi_oid(vid), 0, ino.pack(), copies=copies)
        return {"op": "del_vdi", "vid": vid}

    def apply_del_vdi(self, msg: dict) -> proto.VdiRsp:
        vid = msg["vid"]
        self.set(self.deleted, vid)
        st = self.states.get(vid)
        if st:
            st.deleted = True
        log.info("VDI %#x deleted", vid)
        return proto.VdiRsp(vdi_id=vid)

    # ------------------------------------------------------------------
    # GET_VDI_ATTR (§13)

    async def attr_work(self, req: proto.Request, payload: bytes) -> dict:
        if len(payload) != proto.SD_ATTR_OBJ_SIZE:
            raise _err("INVALID_PARMS", "attribute payload must be 66320 bytes")
        gw = self.sheep.gateway
        attr = proto.VdiAttr.unpack(payload)
        found = await self.find(attr.name, attr.tag, req.args.snapid)
        ino = await self.read_header(found)
        vid = proto.vdi_name_hash(attr.name)
        copies = self.copies_of(vid)
        attr.ctime = ino.create_time
        data = attr.pack()
        flags = req.flags
        start = proto.attr_slot(attr.name, attr.tag, attr.snap_id, attr.key)
        slot = start
        while True:
            oid = proto.vid_to_attr_oid(vid, slot)
            creat = flags & proto.SD_FLAG_CMD_CREAT
            excl = flags & proto.SD_FLAG_CMD_EXCL
            existing = None
            if excl or not creat:
                try:
                    existing = proto.VdiAttr.unpack(await gw.read(oid, 0, proto.SD_ATTR_OBJ_SIZE,
                                                                  copies=copies))
                except SdError as e:
                    if e.code != CODES["NO_OBJ"]:
                        raise
            if existing is None:
                if creat:
                    await gw.create_and_write(oid, 0, data, copies=copies)
                    break
                raise _err("NO_OBJ")
            if (existing.name, existing.tag, existing.snap_id, existing.key) == \
                    (attr.name, attr.tag, attr.snap_id, attr.key):
                if excl:
                    raise _err("VDI_EXIST")
                if flags & proto.SD_FLAG_CMD_DEL:
                    await gw.write(oid, 0, b"\0", copies=copies)
                elif creat:
                    await gw.write(oid, 0, data, copies=copies)
                break
            slot = (slot + 1) & 0xFFFFFFFF
            if slot == start:
                raise _err("FULL_VDI")
        return {"op": "attr", "vid": vid, "attr_id": slot, "copies": copies}

    # ------------------------------------------------------------------
    # replies

    def copies_records(self) -> bytes:
        return b"".join(self.states[v].record().pack() for v in sorted(self.states))
