"""``collie vdi`` inspection subcommands: object map/location, track,
setattr/getattr, lock list, plus the tree renderer used by ``vdi tree``."""

from __future__ import annotations

import sys
import time

from collie import json_vdi
from collie.args import NO_INDEX, parse_index, snapshot_arg
from collie.client import (
    EXIT_EXISTS,
    EXIT_FAILURE,
    EXIT_MISSING,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    Client,
    CollieError,
)
from collie.output import JSON_HELP, TEXT_BOLD, TEXT_NORMAL, Out
from collie.prog import prog_name
from collie.queries import (
    LOCK_KINDS,
    PARTICIPANT_STATES,
    get_locks,
    get_vdi_state,
    inode_index,
)
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, strerror
from sheep.proto.placement import Ring


def _snap(args):
    return snapshot_arg(getattr(args, "snapshot", None))


# ---------------------------------------------------------------------------
# tree view (dog/treeview.c)


class _Node:
    __slots__ = ("name", "label", "vid", "pvid", "highlight", "children")

    def __init__(self, name, label, vid, pvid, highlight):
        self.name, self.label, self.vid, self.pvid = name, label, vid, pvid
        self.highlight = highlight
        self.children: list[_Node] = []


class VdiTree:
    def __init__(self):
        self.root = _Node("", "", 0, 0, False)

    def _find(self, parent: _Node, vid: int, name: str):
        for c in parent.children:
            if c.vid == vid and c.name == name:
                return c
            r = self._find(c, vid, name)
            if r is not None:
                return r
        return None

    def add(self, name, label, vid, pvid, highlight=False):
        node = _Node(name, label, vid, pvid, highlight)
        parent = self._find(self.root, pvid, name) or self.root
        parent.children.append(node)

    def _compact(self, parent: _Node):
        for c in list(parent.children):
            new_parent = self._find(self.root, c.pvid, c.name)
            if new_parent is not None and new_parent is not parent:
                parent.children.remove(c)
                new_parent.children.append(c)
            self._compact(c)

    def dump(self) -> str:
        self._compact(self.root)
        out: list[str] = []
        width: dict[int, int] = {}
        more: dict[int, bool] = {}

        def indent(level, first, last):
            if first:
                out.append("---" if last else "-+-")
                return
            for lvl in range(level - 1):
                out.append(" " * (width[lvl] + 1))
                out.append("| " if more.get(lvl + 1) else "  ")
            out.append(" " * (width[level - 1] + 1))
            out.append("`-" if last else "|-")

        def walk(cur: _Node, level, first, last):
            indent(level, first, last)
            out.append(TEXT_BOLD + cur.label + TEXT_NORMAL if cur.highlight else cur.label)
            if not cur.children:
                out.append("\n")
                return
            more[level] = not last
            width[level] = len(cur.label)
            n = len(cur.children)
            for i, c in enumerate(cur.children):
                walk(c, level + 1, i == 0, i == n - 1)

        for top in self.root.children:
            out.append(top.name)
            more[0] = False
            width[0] = len(top.name)
            walk(top, 1, True, True)
        return "".join(out)


# ---------------------------------------------------------------------------
# object map / location / track


def vdi_object_map(args, client: Client, out: Out) -> int:
    snapid, tag = _snap(args)
    idx = parse_index(args.index)
    try:
        _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_SIZE)
    except CollieError as e:
        raise CollieError(*e.messages, f"FATAL: {args.name} not found",
                          code=e.code) from None
    if args.json:
        return json_vdi.vdi_object_map(args, client, out, args.name, inode, raw, idx)
    out.line("Index       VID")
    vids = inode_index(raw, inode)
    if idx is not NO_INDEX:
        off = proto.data_vdi_id_offset(idx)
        vid = int.from_bytes(raw[off:off + 4], "little")
        out.line(f"{idx:08d} {vid:8x}")
    else:
        for i, vid in enumerate(vids):
            if vid:
                out.line(f"{i:08d} {vid:8x}")
    return EXIT_SUCCESS


def _each_node_exist(client: Client, out: Out, oid: int) -> None:
    for n in client.nodes:
        req = Request(Op.EXIST)
        req.args.oid = oid
        try:
            rsp, _ = client.node_exec(n, req)
        except CollieError:
            continue
        sheep = f"{n.host}:{n.port}"
        if rsp.result == 0:
            out.line(f"{sheep} has the object")
        elif rsp.result == CODES["NO_OBJ"]:
            out.line(f"{sheep} doesn't have the object")
        elif rsp.result in (CODES["OLD_NODE_VER"], CODES["NEW_NODE_VER"]):
            out.err("The node list has changed: please try again")
        else:
            out.err(f"{sheep}: hit an unexpected error ({strerror(rsp.result)})")


def _expected_location(client: Client, out: Out, oid: int, copies: int) -> None:
    if len(client.nodes) < copies:
        out.line(f"\nBecause number of nodes ({len(client.nodes)}) is less than number "
                 f"of copies ({copies}), the object should be located at every nodes.")
        return
    ring = Ring(client.nodes)
    out.line("\nAccording to sheepdog algorithm, the object should be located at:")
    out.line(" ".join(f"{n.host}:{n.port}" for n in ring.replicas(oid, copies)))


def vdi_object_location(args, client: Client, out: Out) -> int:
    client.update_node_list()
    snapid, tag = _snap(args)
    idx = parse_index(args.index)
    try:
        _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_SIZE)
    except CollieError as e:
        raise CollieError(*e.messages, "FATAL: no inode objects", code=e.code) from None
    if args.json:
        return json_vdi.vdi_object_location(args, client, out, args.name, inode, raw, idx)
    vid = inode.vdi_id
    if idx is NO_INDEX:
        out.line(f"Looking for the inode object 0x{vid:x} with {len(client.nodes)} "
                 f"nodes\n")
        _each_node_exist(client, out, proto.vid_to_vdi_oid(vid))
        _expected_location(client, out, proto.vid_to_vdi_oid(vid), inode.nr_copies)
        return EXIT_SUCCESS
    if idx >= proto.MAX_DATA_OBJS:
        out.line("The offset is too large!")
        return EXIT_FAILURE
    off = proto.data_vdi_id_offset(idx)
    data_vid = int.from_bytes(raw[off:off + 4], "little")
    if not data_vid:
        out.line(f"The inode object 0x{vid:x} idx {idx} is not allocated")
        return EXIT_SUCCESS
    oid = proto.vid_to_data_oid(data_vid, idx)
    out.line(f"Looking for the object {oid:016x} (vid 0x{vid:x} idx {idx}, "
             f"{inode.nr_copies} copies) with {len(client.nodes)} nodes\n")
    _each_node_exist(client, out, oid)
    _expected_location(client, out, oid, inode.nr_copies)
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# attributes


def find_vdi_attr_oid(client: Client, name: str, tag: str, snapid: int, key: str,
                      value: bytes | None, create: bool, excl: bool, delete: bool):
    attr = proto.VdiAttr(name=proto.pad(name, 256), tag=proto.pad(tag, 256),
                         snap_id=snapid, key=proto.pad(key, 256))
    if value:
        attr.value_len = len(value)
        attr.value = proto.pad(value, proto.SD_MAX_VDI_ATTR_VALUE_LEN)
    flags = proto.SD_FLAG_CMD_WRITE
    if create:
        flags |= proto.SD_FLAG_CMD_CREAT
    if excl:
        flags |= proto.SD_FLAG_CMD_EXCL
    if delete:
        flags |= proto.SD_FLAG_CMD_DEL
    req = Request(Op.GET_VDI_ATTR, flags=flags, data_length=proto.SD_ATTR_OBJ_SIZE)
    req.args.snapid = snapid
    rsp, _ = client.exec(req, attr.pack())
    if rsp.result != 0:
        return rsp.result, 0
    return 0, proto.vid_to_attr_oid(rsp.args.vdi_id, rsp.args.attr_id)


def vdi_setattr(args, client: Client, out: Out) -> int:
    snapid, tag = _snap(args)
    if args.value is not None:
        value = args.value.encode()
    elif not args.delete:
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        value = stream.read(proto.SD_MAX_VDI_ATTR_VALUE_LEN)
        if isinstance(value, str):
            value = value.encode()
    else:
        value = None
    if value is not None:
        value = value.split(b"\0", 1)[0]  # value_len = strlen(value)
    ret, _ = find_vdi_attr_oid(client, args.name, tag, snapid, args.key, value,
                               not args.delete, args.exclusive, args.delete)
    if ret == CODES["VDI_EXIST"]:
        raise CollieError(f"The attribute '{args.key}' already exists", code=EXIT_EXISTS)
    if ret == CODES["NO_OBJ"]:
        raise CollieError(f"Attribute '{args.key}' not found", code=EXIT_MISSING)
    if ret == CODES["NO_VDI"]:
        raise CollieError("VDI not found", code=EXIT_MISSING)
    if ret:
        raise CollieError(f"Failed to set attribute: {strerror(ret)}", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def vdi_getattr(args, client: Client, out: Out) -> int:
    snapid, tag = _snap(args)
    ret, oid = find_vdi_attr_oid(client, args.name, tag, snapid, args.key, None,
                                 False, False, False)
    if ret == CODES["NO_OBJ"]:
        raise CollieError(f"Attribute '{args.key}' not found", code=EXIT_MISSING)
    if ret == CODES["NO_VDI"]:
        raise CollieError("VDI not found", code=EXIT_MISSING)
    if ret:
        raise CollieError(f"Failed to find attribute oid: {strerror(ret)}",
                          code=EXIT_MISSING)
    try:
        data = client.read_object(oid, proto.SD_ATTR_OBJ_SIZE, 0, direct=True)
    except CollieError as e:
        raise CollieError(*e.messages, "Failed to read attribute oid",
                          code=EXIT_SYSFAIL) from None
    attr = proto.VdiAttr.unpack(data)
    if args.json:
        return json_vdi.vdi_getattr(args, out, bytes(attr.value[:attr.value_len]))
    out.write_bytes(attr.value[:attr.value_len])
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# locks


def _age(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _is_dog() -> bool:
    return prog_name() == "dog"


def vdi_lock_list(args, client: Client, out: Out) -> int:
    locks = None if _is_dog() else get_locks(client)
    if args.json:
        return json_vdi.vdi_lock_list(args, client, out, locks)
    if locks is None:
        return _vdi_lock_list_1_0(client, out)
    by_vid: dict[int, list[proto.LockRecord]] = {}
    for r in locks:
        by_vid.setdefault(r.vid, []).append(r)
    out.line("  Name         Id  VDI id  Tag            Type     Owner node             "
             "Session           Generation  Age")
    now = time.time()
    for e in client.parse_vdi(with_index=False):
        mark = "s" if e.inode.is_snapshot else ("c" if e.is_clone else " ")
        for r in by_vid.get(e.vid, []):
            session = f"{r.session:016x}" if r.session else "-"
            out.line(f"{mark} {e.name:<8s}  {e.snapid:5d}  {e.vid:6x}  {e.tag:<13s}  "
                     f"{LOCK_KINDS.get(r.kind, '?'):<7s}  {proto.nid_to_str(r.owner):<21s}  "
                     f"{session:<16s}  {r.generation:>10d}  {_age(now - r.since)}")
    return EXIT_SUCCESS


def _vdi_lock_list_1_0(client: Client, out: Out) -> int:
    states = {s.vid: s for s in get_vdi_state(client)}
    out.line("  Name         Id  VDI id  Tag            Owner node(s)")
    for e in client.parse_vdi(with_index=True):
        st = states.get(e.vid)
        if st is None or st.lock_state == proto.LOCK_STATE_UNLOCKED:
            continue
        mark = "s" if e.inode.is_snapshot else ("c" if e.is_clone else " ")
        line = f"{mark} {e.name:<8s}  {e.snapid:5d}  {e.vid:6x}  {e.tag:<13s} "
        if st.lock_state == proto.LOCK_STATE_LOCKED:
            line += " " + proto.nid_to_str(st.lock_owner)
        else:
            for j in range(st.nr_participants):
                pst = int.from_bytes(st.participants_state[4 * j:4 * j + 4], "little")
                line += " " + proto.nid_to_str(st.participants[40 * j:40 * j + 40])
                line += PARTICIPANT_STATES.get(pst, f"(UNKNOWN {pst}, BUG!)")
        out.line(line)
    return EXIT_SUCCESS


def vdi_lock_unlock(args, client: Client, out: Out) -> int:
    locks = None if _is_dog() else get_locks(client)
    if locks is None:
        return _vdi_lock_unlock_1_0(args, client, out)
    snapid, tag = _snap(args)
    ret, vid = client.find_vdi_name(args.name, snapid, tag)
    if ret != 0:
        raise CollieError(f"Failed to find VDI {args.name}: {strerror(ret)}")
    if not any(r.vid == vid and r.kind != proto.LOCK_KIND_STANDBY for r in locks):
        raise CollieError(f"VDI {args.name} is not locked")
    # forced unlock (session 0 with the session flag): every hold goes and the
    # generation moves on, so the former holder's writes are fenced
    req = Request(Op.RELEASE_VDI, flags=proto.SD_FLAG_CMD_SESSION)
    req.args.base_vdi_id = vid
    proto.set_release_session(req.args, 0)
    rsp, _ = client.exec(req)
    if rsp.result != 0:
        raise CollieError(f"Failed to unlock VDI {args.name}: {strerror(rsp.result)}")
    return EXIT_SUCCESS


def _vdi_lock_unlock_1_0(args, client: Client, out: Out) -> int:
    snapid, tag = _snap(args)
    ret, vid = client.find_vdi_name(args.name, snapid, tag)
    desc = args.name
    if ret != 0:
        raise CollieError(f"Failed to find VDI {desc}: {strerror(ret)}")
    st = {s.vid: s for s in get_vdi_state(client)}.get(vid)
    if st is None:
        raise CollieError(f"Failed to find VDI state {desc}", code=EXIT_SYSFAIL)
    if st.lock_state == proto.LOCK_STATE_UNLOCKED:
        raise CollieError(f"VDI {desc} is not locked")
    ltype = {proto.LOCK_STATE_LOCKED: proto.LOCK_TYPE_NORMAL,
             proto.LOCK_STATE_SHARED: proto.LOCK_TYPE_SHARED}.get(st.lock_state)
    if ltype is None:
        raise CollieError(f"VDI {desc} unknown lock state ({st.lock_state})",
                          code=EXIT_SYSFAIL)
    req = Request(Op.RELEASE_VDI)
    req.args.base_vdi_id, req.args.type = vid, ltype
    rsp, _ = client.exec(req)
    return EXIT_SUCCESS if rsp.result == 0 else EXIT_FAILURE


def register(reg, sub, cmd) -> None:
    p = cmd("setattr", vdi_setattr, "set a VDI attribute", ("name", "key", "value?"),
            snap=True)
    p.add_argument("-d", "--delete", action="store_true", help="delete a key")
    p.add_argument("-x", "--exclusive", action="store_true",
                   help="write in an exclusive mode")
    p = cmd("getattr", vdi_getattr, "get a VDI attribute", ("name", "key"), snap=True)
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    op = sub.add_parser("object", help="show object information in the image",
                        description="show object information in the image")
    osub_p = op.add_subparsers(dest="object_cmd", metavar="<subcommand>",
                               parser_class=type(op),
                               prog=f"{op.prog}")
    osub_p.required = True
    for name, func, help in (("map", vdi_object_map, "show object map information"),
                             ("location", vdi_object_location,
                              "show object location information")):
        p = reg.add(name, func, help, subparsers=osub_p)
        p.add_argument("-i", "--index", metavar="INDEX",
                       help="specify the index of data objects")
        p.add_argument("-s", "--snapshot", metavar="SNAPSHOT",
                       help="specify a snapshot id or tag name")
        p.add_argument("name")
        p.add_argument("--json", action="store_true", help=JSON_HELP)

    lp = sub.add_parser("lock", help="list or unlock VDI locks",
                        description="list or unlock VDI locks")
    lsub = lp.add_subparsers(dest="lock_cmd", metavar="<subcommand>",
                             parser_class=type(lp), prog=lp.prog)
    lsub.required = True
    p = reg.add("list", vdi_lock_list, "list locked VDIs", subparsers=lsub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = reg.add("unlock", vdi_lock_unlock, "unlock locked VDI forcibly", subparsers=lsub)
    p.add_argument("-s", "--snapshot", metavar="SNAPSHOT",
                   help="specify a snapshot id or tag name")
    p.add_argument("name")
