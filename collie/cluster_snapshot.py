"""``collie cluster snapshot save|load|list``: the whole cluster to and from a
local directory, in the spirit of 1.0's farm (dog/farm/).

Format (our decision; 1.0's farm files are C structs we do not reproduce)::

    <path>/objects/<xx>/<sha1>   object bodies, content-addressed (sha1 hex,
                                 xx = its first two digits): identical objects
                                 are stored once, across snapshots too
    <path>/snap_log.json         {"magic": "pysheepdog-farm", "version": 1,
                                  "snapshots": [{"idx", "tag", "time", "trunk"}]}

``trunk`` names an object (JSON) describing one saved cluster: its defaults
(``copies``, ``copy_policy``, ``block_size_shift``, ``flags``) and every live
VDI -- working VDIs too, where farm keeps only snapshots -- with ``vid``,
``name``, ``tag``, ``snap_id``, ``snapshot``, ``parent``, ``size``, ``copies``,
``shift``, ``ctime`` and ``index``: ``[[idx, owner vid, sha1], ...]`` for each
allocated data object (the body read through the VDI).

``save <tag> <path>``: the tag must not start with a number ("Tag should not
start with number.") nor be taken; indexes count from 1.  ``list <path>``
prints farm's table (``Index\\t\\tTag\\t\\tSnapshot Time``, ctime dates).
``load <tag|idx> <path>`` formats the cluster (asking first if it is not
empty, as ``cluster format``) with the saved defaults, then rebuilds every
VDI family through ordinary client requests, parents first: a VDI with no
saved parent is created afresh; a snapshot is written while still working and
then snapshotted (its tag set, NEW_VDI snapid 1), the new working VDI being
its first same-name child (or deleted when that child was not saved); other
children (clones) are created on the restored snapshot.  Each VDI's objects
are written unless the index entry it inherited already names the restored
owner of the same object, so shared objects stay shared and the result is
read back identical.  VDI ids change (they are allocated anew); vmstate and
attribute objects are not saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from collie import json_node
from collie.client import (
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    EXIT_USAGE,
    Client,
    CollieError,
    bitmap_bits,
    unpack_vids,
)
from collie.output import JSON_HELP, Out, ctime_str
from collie.prompt import FORMAT_PRINT, confirm
from collie.vdi_delete import do_vdi_delete
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import strerror

MAGIC, VERSION = "pysheepdog-farm", 1


class Farm:
    """The local directory: content-addressed objects and the snapshot log."""

    def __init__(self, path: str):
        self.path = path
        try:
            os.makedirs(os.path.join(path, "objects"), exist_ok=True)
        except OSError as e:
            raise CollieError(f"Fail to create directory: {e.strerror}",
                              code=EXIT_SYSFAIL) from None
        self.log_path = os.path.join(path, "snap_log.json")

    def _obj(self, sha: str) -> str:
        return os.path.join(self.path, "objects", sha[:2], sha)

    def put(self, data: bytes) -> str:
        sha = hashlib.sha1(data).hexdigest()
        p = self._obj(sha)
        if not os.path.exists(p):
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        return sha

    def get(self, sha: str) -> bytes:
        with open(self._obj(sha), "rb") as f:
            data = f.read()
        if hashlib.sha1(data).hexdigest() != sha:
            raise CollieError(f"Fail to load object, damaged slice {sha}", code=EXIT_SYSFAIL)
        return data

    def log(self) -> list[dict]:
        try:
            with open(self.log_path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return []
        if doc.get("magic") != MAGIC or doc.get("version") != VERSION:
            raise CollieError(f"{self.log_path} is not a snapshot log", code=EXIT_SYSFAIL)
        return doc["snapshots"]

    def append(self, tag: str, trunk: str) -> int:
        snaps = self.log()
        idx = len(snaps) + 1
        snaps.append({"idx": idx, "tag": tag, "time": int(time.time()), "trunk": trunk})
        tmp = self.log_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"magic": MAGIC, "version": VERSION, "snapshots": snaps}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.log_path)
        return idx

    def find(self, text: str) -> dict | None:
        """By index when ``text`` starts with a number (farm's strtol), else by tag."""
        digits = len(text) - len(text.lstrip("0123456789"))
        idx = int(text[:digits]) if digits else 0
        for s in self.log():
            if (idx and s["idx"] == idx) or (not idx and s["tag"] == text):
                return s
        return None


def _vdi_record(client: Client, farm: Farm, e) -> dict:
    ino = e.inode
    osize = ino.object_size
    index = []
    for idx, owner in enumerate(e.data_vdi_id):
        if owner:
            data = client.read_object(proto.vid_to_data_oid(owner, idx), osize)
            index.append([idx, owner, farm.put(data)])
    return {"vid": e.vid, "name": e.name, "tag": e.tag, "snap_id": ino.snap_id,
            "snapshot": bool(ino.is_snapshot), "parent": ino.parent_vdi_id,
            "size": ino.vdi_size, "copies": ino.nr_copies, "policy": ino.copy_policy,
            "shift": ino.block_size_shift, "ctime": ino.create_time, "index": index}


def snapshot_save(args, client: Client, out: Out) -> int:
    tag = args.tag
    head = tag.lstrip()
    if head[:1].isdigit() or (head[:1] in ("+", "-") and head[1:2].isdigit()):  # strtol
        raise CollieError("Tag should not start with number.", code=EXIT_USAGE)
    if args.path is None:
        raise CollieError("Please specify the path to save snapshot.", code=EXIT_USAGE)
    client.update_node_list()
    try:
        farm = Farm(args.path)
        if any(s["tag"] == tag for s in farm.log()):
            raise CollieError("Snapshot tag has already been used for another snapshot, "
                              "please, use another one.", code=EXIT_SYSFAIL)
        rsp, data = client.cluster_info()
        if rsp.result:
            raise CollieError(strerror(rsp.result), code=EXIT_SYSFAIL)
        c = proto.ClusterInfoHeader.unpack(data.ljust(proto.ClusterInfoHeader.SIZE, b"\0"))
        vdis = [_vdi_record(client, farm, e) for e in client.parse_vdi(with_index=True)
                if not args.vdis or e.name in args.vdis]
        if not vdis:
            raise CollieError("Cannot execute. It may be caused by:",
                              "1. The specified VDIs are not found." if args.vdis else
                              "1. The cluster is empty.", code=EXIT_SYSFAIL)
        trunk = farm.put(json.dumps({
            "copies": c.nr_copies, "copy_policy": c.copy_policy,
            "block_size_shift": c.block_size_shift, "flags": c.flags,
            "vdis": vdis}, sort_keys=True).encode())
        farm.append(tag, trunk)
    except CollieError as e:
        raise CollieError(*e.messages, f"Fail to save snapshot to path: {args.path}.",
                          code=e.code) from None
    return EXIT_SUCCESS


def snapshot_list(args, client: Client, out: Out) -> int:
    try:
        snaps = Farm(args.tag_or_path).log()
    except CollieError as e:
        raise CollieError(*e.messages, "Fail to list snapshot.", code=e.code) from None
    if args.json:
        return json_node.snapshot_list(args, out, snaps)
    out.line("Index\t\tTag\t\tSnapshot Time")
    for s in snaps:
        out.line(f"{s['idx']}\t\t{s['tag']}\t\t{ctime_str(s['time'])}")
    return EXIT_SUCCESS


def _format(client: Client, out: Out, trunk: dict) -> None:
    rsp, data = client.cluster_info()
    cur = proto.ClusterInfoHeader.unpack(data.ljust(proto.ClusterInfoHeader.SIZE, b"\0"))
    if next(bitmap_bits(client.read_vdis()), None) is not None:
        confirm(out, FORMAT_PRINT)
    flags = trunk["flags"] & ~proto.SD_CLUSTER_FLAG_AUTO_VNODES
    flags |= cur.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES  # the nodes' strategy
    payload = b"plain\0"
    req = Request(Op.MAKE_FS, flags=proto.SD_FLAG_CMD_WRITE, data_length=len(payload))
    a = req.args
    a.ctime, a.copies, a.copy_policy = proto.sd_time(time.time()), trunk["copies"], 0
    a.flags, a.block_size_shift = flags, trunk["block_size_shift"]
    out.line("using backend plain store")
    rsp, _ = client.exec(req, payload)
    if rsp.result:
        raise CollieError(f"Format failed: {strerror(rsp.result)}", code=EXIT_SYSFAIL)


def _header(client: Client, vid: int) -> tuple[proto.InodeHeader, list[int]]:
    raw = client.read_object(proto.vid_to_vdi_oid(vid), proto.SD_INODE_INDEX_END, 0,
                             direct=True)
    ino = proto.InodeHeader.unpack(raw)
    return ino, unpack_vids(raw[proto.SD_INODE_HEADER_SIZE:], ino.nr_objects)


def _fill(client: Client, farm: Farm, r: dict, vid: int, new_of: dict) -> None:
    """Make ``vid``'s content ``r``'s: write what it did not inherit, unmap the rest."""
    ino, have = _header(client, vid)
    want = {idx: (owner, sha) for idx, owner, sha in r["index"]}
    for idx in range(ino.nr_objects):
        cur = have[idx] if idx < len(have) else 0
        if idx not in want:
            if cur:
                client.write_inode_vid(ino, vid, idx, 0)
            continue
        owner, sha = want[idx]
        if cur and cur == new_of.get(owner):
            continue  # shared with the restored owner, as it was
        data = farm.get(sha)
        oid = proto.vid_to_data_oid(vid, idx)
        client.write_object(oid, data, 0, cow_oid=proto.vid_to_data_oid(cur, idx) if cur
                            and cur != vid else 0, copies=ino.nr_copies,
                            copy_policy=ino.copy_policy, create=cur != vid)
        if cur != vid:
            client.write_inode_vid(ino, vid, idx, vid)


def _restore(client: Client, farm: Farm, vdis: list[dict]) -> None:
    by_vid = {r["vid"]: r for r in vdis}
    children: dict[int, list[dict]] = {}
    for r in sorted(vdis, key=lambda r: (r["ctime"], r["snap_id"])):
        p = r["parent"] if r["parent"] in by_vid else 0
        children.setdefault(p, []).append(r)
    new_of: dict[int, int] = {}
    pending: dict[int, int] = {}  # old vid -> new working vid made by a snapshot
    todo = list(children.get(0, []))
    done = 0
    while todo:
        r = todo.pop(0)
        old = r["vid"]
        if old in pending:
            vid = pending.pop(old)
        else:
            base = new_of.get(r["parent"], 0)
            vid = client.do_vdi_create(r["name"], r["size"], base, False, r["copies"],
                                       0, 0, r["shift"])
        new_of[old] = vid
        _fill(client, farm, r, vid, new_of)
        kids = children.get(old, [])
        if r["snapshot"]:
            ino, _ = _header(client, vid)
            client.write_object(proto.vid_to_vdi_oid(vid), proto.pad(r["tag"], 256),
                                proto.INODE_TAG_OFF, copies=ino.nr_copies)
            nxt = client.do_vdi_create(r["name"], ino.vdi_size, vid, True, ino.nr_copies,
                                       0, 0, ino.block_size_shift)
            succ = next((k for k in kids if k["name"] == r["name"]), None)
            if succ is not None:
                pending[succ["vid"]] = nxt
            else:
                do_vdi_delete(client, r["name"], 0, "")
        todo.extend(kids)
        done += 1
    if done != len(vdis):
        raise CollieError(f"restored {done} of {len(vdis)} VDIs", code=EXIT_SYSFAIL)


def snapshot_load(args, client: Client, out: Out) -> int:
    if args.path is None:
        raise CollieError("Please specify the path to save snapshot.", code=EXIT_USAGE)
    client.update_node_list()
    try:
        farm = Farm(args.path)
        snap = farm.find(args.tag)
        if snap is None:
            raise CollieError("Snapshot index or tag does not exist.", code=EXIT_SYSFAIL)
        trunk = json.loads(farm.get(snap["trunk"]))
        _format(client, out, trunk)
        vdis = [r for r in trunk["vdis"] if not args.vdis or r["name"] in args.vdis]
        _restore(client, farm, vdis)
    except CollieError as e:
        if e.code == EXIT_SUCCESS:  # answered "no"
            raise
        raise CollieError(*e.messages, "Fail to load snapshot", code=e.code) from None
    return EXIT_SUCCESS


def register(reg, sub) -> None:
    _, ssub = reg.group("snapshot", "snapshot/restore the cluster", subparsers=sub)
    p = reg.add("save", snapshot_save, "save snapshot to localpath", subparsers=ssub)
    p.add_argument("tag", metavar="<tag>")
    p.add_argument("path", nargs="?", metavar="<path>")
    p.add_argument("vdis", nargs="*", metavar="vdi")
    p = reg.add("load", snapshot_load, "load snapshot from localpath", subparsers=ssub)
    p.add_argument("tag", metavar="<tag|idx>")
    p.add_argument("path", nargs="?", metavar="<path>")
    p.add_argument("vdis", nargs="*", metavar="vdi")
    p = reg.add("list", snapshot_list, "list snapshot of localpath", subparsers=ssub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("tag_or_path", metavar="<path>")

