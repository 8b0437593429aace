"""VDI ids, bitmaps, lookup, create, delete and attributes (docs/protocol.md §12, §13).

Theory of operation: every node keeps the two 2^24-bit bitmaps (in use,
deleted) and a state record per vid (copies, policy, object size shift,
snapshot/deleted flags, parent).  They change only in ``apply_*`` main steps,
which the group layer delivers to every node in the same order, so all nodes
hold the same table.  ``*_work`` steps run on one node while the cluster is
blocked (see ``sheep.cluster.group``): they look names up by reading inode headers
through the gateway and write inode/attribute objects, then return the main
message that registers the result everywhere.

Lookup follows §12.3 (default mode) exactly so that clients which compute
name hashes themselves (dog, QEMU) agree with us.  NEW_VDI creates, clones
(§12.4) and snapshots/rebases (§12.5); beyond Sheepdog 1.0, the base of a
clone or rebase must be a live snapshot, so a backing image is always
read-only.  Deletion goes beyond 1.0 too: the server releases every data
reference the deleted VDI still holds (reclaiming objects nobody else holds,
see ``sheep.vdi.refcount``) and clears the inode's name, so a deleted name can
always be created again.  In clusters formatted with ``-R`` ids are
allocated from 1 and the ids of fully deleted families are reused
(``sheep.vdi.recycle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from sheep import proto
from sheep.cluster import events as ev
from sheep.proto.errors import CODES, SdError, error_for, sd_error
from sheep.vdi import recycle
from sheep.vdi.lookup import Lookup
from sheep.vdi.refcount import Refs

log = logging.getLogger("sheep.vdi.table")

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
    replaced: int = 0  # the working VDI this one replaced by a snapshot (0: not known)
    src: int = 0  # epoch this record is known from (ids recycling: sheep.vdi.recycle)

    def record(self) -> proto.VdiStateRecord:
        return proto.VdiStateRecord(
            vid=self.vid, nr_copies=self.copies, snapshot=int(self.snapshot),
            deleted=int(self.deleted), copy_policy=self.copy_policy,
            block_size_shift=self.block_size_shift, parent_vid=self.parent,
            lock_state=proto.LOCK_STATE_UNLOCKED)


class VdiTable:
    """This node's copy of the VDI table (the theory above).

    ``store`` this node's objects (the start-up scan, tombstones); ``group``
    the membership (cluster config, epoch, cluster ops); ``nosync`` the
    node's ``-n`` (tombstones written without fsync).  The object I/O and
    the lock table are bound afterwards with :meth:`bind` (they need the
    table themselves)."""

    def __init__(self, *, store, group, nosync: bool = False):
        self.store, self.group, self.nosync = store, group, nosync
        self.gateway = None  # the object I/O (bind)
        self.locks = None  # the lock table (bind)
        self.refs = Refs(self)
        self.tombs: dict[int, int] = {}  # collected vid -> epoch (sheep.vdi.recycle)
        self.clear()

    def bind(self, *, gateway, locks) -> None:
        """The parts that need this table too: ``gateway`` reads and writes
        inode and attribute objects; ``locks`` is asked before a VDI changes
        hands (snapshot, delete)."""
        self.gateway, self.locks = gateway, locks

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

    async def await_state(self, vid: int, timeout: float = 3.0) -> VdiState | None:
        """The state of ``vid``; if unknown, wait up to ``timeout`` for it.

        A cluster op is applied by its origin before it replies, and by the
        other nodes a moment later: a request for a VDI created a
        millisecond ago through another node must not see "no such VDI"."""
        st = self.states.get(vid)
        if st is None:
            await self.group.wait_until(lambda: vid in self.states, timeout)
            st = self.states.get(vid)
        return st

    @property
    def recycling(self) -> bool:
        """The cluster reuses the ids of deleted families (``format -R``)."""
        return bool(self.group.config.flags & proto.SD_CLUSTER_FLAG_RECYCLE_VID)

    def copies_of(self, vid: int) -> int:
        st = self.states.get(vid)
        return st.copies if st else self.group.config.copies or proto.SD_DEFAULT_COPIES

    def obj_size(self, oid: int) -> int:
        """The size of object ``oid`` (its VDI's object size; 4 MiB for a
        VDI-less object)."""
        return proto.object_size(oid, self.shift_of(proto.oid_to_vid(oid)))

    def shift_of(self, vid: int) -> int:
        st = self.states.get(vid)
        if st:
            return st.block_size_shift
        return self.group.config.block_size_shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT

    def snapshot(self) -> dict:
        """JSON-able copy of the whole table (sent to joining nodes)."""
        return {"states": [asdict(s) for s in self.states.values()],
                "inuse": self._vids(self.inuse), "deleted": self._vids(self.deleted),
                "tombs": recycle.tombs_json(self.tombs)}

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
        recycle.add_tombs(self, snap.get("tombs", {}))

    def subscribe(self, events: ev.Events) -> None:
        """Follow the cluster (:mod:`sheep.cluster.events`): the table travels in
        join replies; a joiner's VDIs are merged; a format empties it."""
        events.state("state", self.snapshot, self.restore)
        events.join_data("tombs", lambda: recycle.tombs_json(self.tombs))
        events.subscribe(ev.REJOINING, self._rejoining)
        events.subscribe(ev.NODE_JOINED,
                         lambda info: self.merge(info.get("vdis", []), info.get("tombs")))
        events.subscribe(ev.FORMATTED, self._formatted)

    def _rejoining(self, info: dict) -> None:
        if "tombs" in info:  # our tombstones as the cluster took them
            self.tombs = {int(k): e for k, e in info["tombs"].items()}
            recycle.save_tombs(self)

    def _formatted(self) -> None:
        self.clear()
        recycle.reset_tombs(self)

    def merge(self, entries: list[dict], tombs: dict | None = None) -> None:
        """Union in VDIs a node found on its own disk (deterministic on all nodes).

        When ids are recycled, the joiner's tombstones of collected ids are
        added first (records known from before a collection of their id are
        dead and dropped), then its records merged: a vid the table knows is
        left as it is (the record may be of a collected VDI whose id was
        reused), and a record known from before its id's collection is not
        added (see ``sheep.vdi.recycle``)."""
        recycling = self.recycling
        if recycling or tombs:
            recycle.add_tombs(self, tombs or {})
        for s in entries:
            vid = s["vid"]
            if recycling and (vid in self.states or recycle.dead(self, vid, s.get("src", 0))):
                continue
            self.set(self.inuse, vid)
            if s["deleted"]:
                self.set(self.deleted, vid)
            if vid not in self.states:
                self.states[vid] = VdiState(**s)

    def local_snapshot(self) -> list[dict]:
        """VDIs whose inode objects are in the local store (start-up scan):
        live copies, and, as 1.0's ``default_init`` (``for_each_object_in_stale``),
        inodes that only have stale copies (the newest one is read)."""
        store = self.store
        self.tombs = recycle.load_tombs(self.store)
        my_epoch = store.latest_epoch()
        out = []
        live = [o for o in store.list_oids() if proto.is_vdi_obj(o)]
        seen = set(live)
        stale = [o for o in store.list_stale() if proto.is_vdi_obj(o) and o not in seen]
        for oid in live + sorted(stale):
            try:
                if oid in seen:
                    head = store.read(oid, 0, proto.SD_INODE_HEADER_SIZE)
                else:
                    head = store.read_stale(oid, store.stale_epochs(oid)[0])[1]
                ino = proto.InodeHeader.unpack(head[:proto.SD_INODE_HEADER_SIZE])
            except (SdError, IndexError):
                continue
            vid = proto.oid_to_vid(oid)
            out.append(asdict(VdiState(
                vid=vid, copies=ino.nr_copies, copy_policy=ino.copy_policy,
                block_size_shift=ino.block_size_shift, snapshot=ino.is_snapshot,
                deleted=not ino.name.strip(b"\0"), parent=ino.parent_vdi_id,
                size=ino.vdi_size, src=my_epoch if oid in seen else 0)))
        return out

    # ------------------------------------------------------------------
    # lookup (§12.3, default mode)

    async def read_header(self, vid: int) -> proto.InodeHeader:
        data = await self.gateway.read(proto.vid_to_vdi_oid(vid), 0,
                                             proto.SD_INODE_HEADER_SIZE,
                                             copies=self.copies_of(vid))
        return proto.InodeHeader.unpack(data)

    async def lookup(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> Lookup:
        name = proto.pad(name, 256)
        tag = proto.pad(tag, 256)
        if self.recycling:
            return await recycle.lookup(self, name, tag, snapid)
        has_tag = tag != bytes(256) or snapid != 0
        start = proto.vdi_name_hash(name) or 1
        if not self.test(self.inuse, start):
            return Lookup(None, CODES["NO_VDI"], start)
        right = self.next_clear(start)
        if right == NR:
            right = self.next_clear(1)
            if right == NR:
                raise sd_error("FULL_VDI")
        ranges = [(start, right)] if start < right else [(1, right), (start, NR)]
        seen_name = False
        stopped: Lookup | None = None  # NO_VDI because the newest inode is a snapshot
        for lo, hi in ranges:
            for vid in range(hi - 1, lo - 1, -1):
                if vid == 0 or not (self.test(self.inuse, vid) or self.test(self.deleted, vid)):
                    continue
                # An inode we cannot read might be this name's: answering
                # "not found" could let a duplicate name be created, so the
                # error is returned instead (as Sheepdog 1.0 does).
                ino = await self.read_header(vid)
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
                    if not ino.is_snapshot:
                        return Lookup(vid, 0, right, ino.snap_id + 1)
                    # the working VDI of this name was deleted; with a wrapped
                    # scan the second range is still searched (§12.3 step 4)
                    stopped = stopped or Lookup(None, CODES["NO_VDI"], right,
                                                ino.snap_id + 1, vid)
                    break
        if stopped is not None:
            return stopped
        code = CODES["NO_TAG"] if has_tag and seen_name else CODES["NO_VDI"]
        return Lookup(None, code, right, 0)

    async def find(self, name: bytes, tag: bytes = b"", snapid: int = 0) -> int:
        """The vid for (name, tag/snapid) or raise NO_VDI / NO_TAG."""
        r = await self.lookup(name, tag, snapid)
        if r.vid is None:
            raise error_for(r.code)
        return r.vid

    # ------------------------------------------------------------------
    # NEW_VDI (§12.4 create and clone, §12.5 snapshot and rebase)

    def _live_state(self, vid: int, what: str) -> VdiState:
        st = self.states.get(vid)
        if st is None or not self.test(self.inuse, vid):
            raise sd_error("NO_BASE_VDI", f"{what} {vid:#x} does not exist")
        if st.deleted:
            raise sd_error("NO_BASE_VDI", f"{what} {vid:#x} has been deleted")
        return st

    async def _read_index(self, vid: int, n: int) -> bytes:
        if not n:
            return b""
        return await self.gateway.read(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE,
                                             4 * n, copies=self.copies_of(vid))

    async def _write_inode(self, ino: proto.InodeHeader, index: bytes = b"") -> None:
        """One create of the whole (sparse) inode object: header, then the index.

        Any failure (a full disk: NO_SPACE, EIO, ...) is VDI_WRITE, "Failed to
        write to requested VDI", as 1.0's ``create_vdi``/``clone_vdi``/
        ``snapshot_vdi`` report it; the cause goes to the log.  The vid is
        registered only after this succeeded, so a failed create leaves no
        trace in the bitmaps (1.0 leaves the vid allocated)."""
        try:
            await self.gateway.create_and_write(proto.vid_to_vdi_oid(ino.vdi_id), 0,
                                                      ino.pack() + index, copies=ino.nr_copies)
        except SdError as e:
            log.error("cannot write the inode of new VDI %s (%#x): %s",
                      proto.cstr(ino.name), ino.vdi_id, e.message)
            raise sd_error("VDI_WRITE", f"cannot write the inode of VDI {ino.vdi_id:#x}: "
                                    f"{e.message}") from None

    async def _derive(self, name: bytes, vid: int, base: int, args: proto.VdiArgs,
                      snap_id: int, copies: int, shift: int) -> proto.InodeHeader:
        """Write inode ``vid`` derived from ``base`` (same objects, parent = base)."""
        try:
            bino = await self.read_header(base)
        except SdError as e:
            raise sd_error("BASE_VDI_READ", f"cannot read base VDI {base:#x}: {e.message}") from None
        if bino.block_size_shift != shift:
            raise sd_error("INVALID_PARMS", f"object size of base VDI {base:#x} differs "
                                        f"(shift {bino.block_size_shift}, requested {shift})")
        size = args.vdi_size or bino.vdi_size
        n = min(bino.nr_objects, (size + (1 << shift) - 1) >> shift)
        try:
            index = await self._read_index(base, n)
        except SdError as e:
            raise sd_error("BASE_VDI_READ", f"cannot read base VDI {base:#x}: {e.message}") from None
        ino = proto.InodeHeader(
            name=proto.pad(name, 256), create_time=proto.sd_time(time.time()), vdi_size=size,
            copy_policy=0, store_policy=0, nr_copies=copies, block_size_shift=shift,
            snap_id=snap_id, vdi_id=vid, parent_vdi_id=base)
        await self._write_inode(ino, index)
        return ino

    async def new_vdi_work(self, name: bytes, args: proto.VdiArgs) -> dict:
        cfg = self.group.config
        if not name.strip(b"\0"):
            raise sd_error("INVALID_PARMS", "empty VDI name")
        copies, policy = args.copies, args.copy_policy
        if not copies:
            copies, policy = cfg.copies, cfg.copy_policy
        if policy:
            raise sd_error("INVALID_PARMS", "erasure coding is not supported")
        if not 1 <= copies <= proto.SD_MAX_COPIES:
            raise sd_error("INVALID_PARMS", f"invalid number of copies {copies}")
        shift = args.block_size_shift or cfg.block_size_shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT
        if not proto.SD_MIN_BLOCK_SIZE_SHIFT <= shift <= proto.SD_MAX_BLOCK_SIZE_SHIFT:
            raise sd_error("INVALID_PARMS", f"invalid block size shift {shift}")
        if args.store_policy:
            raise sd_error("INVALID_PARMS", "hyper volumes (store policy 1) are not supported")
        max_size = (1 << shift) * proto.MAX_DATA_OBJS
        if args.vdi_size > max_size:
            raise sd_error("INVALID_PARMS", f"VDI size {args.vdi_size} exceeds the maximum {max_size}")
        if args.snapid:
            return await self._snapshot_work(name, args)
        r = await self.lookup(name)
        if r.vid is not None:
            raise sd_error("VDI_EXIST", f"VDI {proto.cstr(name)} exists already")
        if r.code != CODES["NO_VDI"]:
            raise error_for(r.code)
        vid, snap_id = r.free, r.next_snap_id or 1
        base = args.base_vdi_id
        if base:  # clone (also rollback's re-create): only from a snapshot
            st = self._live_state(base, "base VDI")
            if not st.snapshot:
                raise sd_error("INVALID_PARMS", f"VDI {base:#x} is not a snapshot: only snapshots "
                                            f"can be cloned")
            ino = await self._derive(name, vid, base, args, snap_id, copies, shift)
        else:
            ino = proto.InodeHeader(
                name=proto.pad(name, 256), create_time=proto.sd_time(time.time()),
                vdi_size=args.vdi_size, copy_policy=policy, store_policy=0, nr_copies=copies,
                block_size_shift=shift, snap_id=snap_id, vdi_id=vid, parent_vdi_id=0)
            await self._write_inode(ino)
        return {"op": "new_vdi", "vid": vid, "copies": copies, "policy": policy,
                "shift": shift, "parent": base, "size": ino.vdi_size,
                "old": base or r.deleted_working}

    async def _snapshot_work(self, name: bytes, args: proto.VdiArgs) -> dict:
        """§12.5: the working VDI W becomes a snapshot; a new working VDI N takes the name."""
        r = await self.lookup(name)
        if r.vid is None:
            raise error_for(r.code, f"VDI {proto.cstr(name)} has no working VDI to snapshot")
        w = r.vid
        wst = self._live_state(w, "VDI")
        wino = await self.read_header(w)
        base = args.base_vdi_id or w
        if base != w:  # rebase (QEMU's goto when the delete failed): base must be a snapshot
            if not self._live_state(base, "base VDI").snapshot:
                raise sd_error("INVALID_PARMS", f"VDI {base:#x} is not a snapshot: only snapshots "
                                            f"can be used as a base")
            if wst.replaced == base:
                # W took the name by a snapshot of base: this request lost a snapshot
                # race (it names the former working VDI); one snapshot wins, not two
                raise sd_error("VDI_EXIST", f"VDI {base:#x} has been snapshotted already "
                                        f"(the working VDI of {proto.cstr(name)} is now {w:#x})")
        n = r.free
        copies = wst.copies
        locks = self.locks
        if base == w:
            # W's writer goes on until the main step moves its lock to N: its
            # writes stop (and the admitted ones land) before W's index is
            # copied, so N's index holds every object W has (lock_table)
            fid = await locks.freeze(w)
        try:
            if base == w:  # W may have grown before the freeze: its size now
                wino = await self.read_header(w)
            sub = proto.VdiArgs(vdi_size=max(args.vdi_size, wino.vdi_size) if base == w
                                else args.vdi_size or wino.vdi_size)
            nino = await self._derive(name, n, base, sub, wino.snap_id + 1, copies,
                                      wino.block_size_shift)
            # N exists before W is marked: a failure here leaves W the working VDI
            now = proto.sd_time(time.time())
            try:
                await self.gateway.write(proto.vid_to_vdi_oid(w),
                                               proto.INODE_SNAP_CTIME_OFF,
                                               now.to_bytes(8, "little"), copies=copies)
            except SdError as e:
                raise sd_error("VDI_WRITE",
                           f"cannot mark VDI {w:#x} as a snapshot: {e.message}") from None
        except BaseException:
            if base == w:
                await asyncio.shield(locks.thaw(w, fid))
            raise
        return {"op": "new_vdi", "vid": n, "copies": copies, "policy": 0,
                "shift": wino.block_size_shift, "parent": base, "size": nino.vdi_size,
                "old": w, "replaced": w}

    def apply_new_vdi(self, msg: dict) -> proto.VdiRsp:
        vid = msg["vid"]
        self.set(self.inuse, vid)
        self.states[vid] = VdiState(vid, msg["copies"], msg["policy"], msg["shift"],
                                    parent=msg["parent"], size=msg["size"],
                                    replaced=msg.get("replaced", 0), src=self.group.epoch)
        old = msg.get("old")
        if old and old in self.states:
            self.states[old].snapshot = True
        log.info("VDI %#x created (copies %d, parent %#x)", vid, msg["copies"], msg["parent"])
        return proto.VdiRsp(vdi_id=vid, copies=msg["copies"], block_size_shift=msg["shift"])

    # ------------------------------------------------------------------
    # DEL_VDI (§12.6, releasing what the VDI still references)

    def refuse_locked_delete(self, vid: int, conn=None) -> None:
        """DEL_VDI of a VDI somebody else holds open (a writer, shared or
        read lock; a standby is no open) is refused with VDI_LOCKED, as ``rbd
        rm`` refuses with watchers: the holder's next write would fail.  The
        holder itself may delete it (``qemu_client`` snapshot_goto: a session
        bound to ``conn``, the request's connection, through this gateway).
        Break the lock first (``collie vdi lock unlock``, or ``collie vdi
        delete --force``).  Without enforced locks (1.0 clusters) the table
        is empty."""
        locks = self.locks
        openers = [h for h in locks.table.holders(vid) if h.kind != "standby"]
        if openers:  # ... but the requester's own
            mine = getattr(conn, "lock_sessions", None) or set()
            openers = [h for h in openers
                       if not (h.session and h.session in mine and h.node == locks.me)]
        if openers:
            who = ", ".join(f"{h.kind} by {h.node}" for h in openers)
            raise sd_error("VDI_LOCKED", f"VDI {vid:#x} is in use ({who}): unlock it first")

    async def del_vdi_work(self, name: bytes, tag: bytes, snapid: int, conn=None) -> dict:
        """The work step of DEL_VDI (in the cluster-wide turn, so no lock is
        granted between the in-use check and the delete); ``conn``: the
        requester's connection (its own lock may be held)."""
        vid = await self.find(name, tag, snapid)
        self.refuse_locked_delete(vid, conn)
        copies = self.copies_of(vid)
        ino = await self.read_header(vid)
        if ino.vdi_size == 0 and not ino.name.strip(b"\0"):
            return await self._collect({"op": "del_vdi", "vid": vid})
        index = await self._read_index(vid, ino.nr_objects)
        dropped = [(v, i) for i, v in enumerate(memoryview(index).cast("I")) if v]
        ino.name = bytes(256)
        ino.vdi_size = 0
        # rewriting the header alone recreates the inode with an all-zero index
        await self.gateway.create_and_write(proto.vid_to_vdi_oid(vid), 0, ino.pack(),
                                                  copies=copies)
        await self.refs.reclaim_locked(dropped)
        return await self._collect({"op": "del_vdi", "vid": vid})

    async def _collect(self, msg: dict) -> dict:
        if self.recycling:
            msg["gc"] = await recycle.collect_work(self, msg["vid"])
        return msg

    def apply_del_vdi(self, msg: dict) -> proto.VdiRsp:
        vid = msg["vid"]
        self.set(self.deleted, vid)
        st = self.states.get(vid)
        if st:
            st.deleted = True
        log.info("VDI %#x deleted", vid)
        recycle.apply_collect(self, msg.get("gc") or [])
        return proto.VdiRsp(vdi_id=vid)

    # ------------------------------------------------------------------
    # GET_VDI_ATTR (§13)

    async def attr_work(self, req: proto.Request, payload: bytes) -> dict:
        if len(payload) != proto.SD_ATTR_OBJ_SIZE:
            raise sd_error("INVALID_PARMS", "attribute payload must be 66320 bytes")
        gw = self.gateway
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
                raise sd_error("NO_OBJ")
            if (existing.name, existing.tag, existing.snap_id, existing.key) == \
                    (attr.name, attr.tag, attr.snap_id, attr.key):
                if excl:
                    raise sd_error("VDI_EXIST")
                if flags & proto.SD_FLAG_CMD_DEL:
                    await gw.write(oid, 0, b"\0", copies=copies)
                elif creat:
                    await gw.write(oid, 0, data, copies=copies)
                break
            slot = (slot + 1) & 0xFFFFFFFF
            if slot == start:
                raise sd_error("FULL_VDI")
        return {"op": "attr", "vid": vid, "attr_id": slot, "copies": copies}

    # ------------------------------------------------------------------
    # replies

    def copies_records(self) -> bytes:
        return b"".join(self.states[v].record().pack() for v in sorted(self.states))
