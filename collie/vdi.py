"""``collie vdi``: image management (dog/vdi.c).

Subcommands that inspect objects, attributes and locks live in
:mod:`collie.vdi_extra`; this module holds the image life cycle and I/O and
registers every ``vdi`` subcommand.
"""

from __future__ import annotations

from collie import json_vdi, progress, vdi_backup, vdi_check, vdi_extra, vdi_image
from collie.args import parse_copy, parse_shift, redundancy, size_arg, snapshot_arg
from collie.client import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_USAGE,
    Client,
    CollieError,
    VdiEntry,
    check_vdi_name,
)
from collie.output import JSON_HELP, Out, strftime_local
from collie.prompt import confirm
from collie.queries import inode_index
from collie.vdi_delete import NR_BATCHED_RECLAMATION_DEFAULT, do_vdi_delete
from collie.vdi_rw import vdi_read, vdi_write
from collie.zones import warn_short
from sheep import proto
from sheep.proto.errors import CODES, strerror

OLD_MAX_DATA_OBJS = 1 << 20
SD_MAX_VDI_SIZE = (1 << 22) * (1 << 32)


# ---------------------------------------------------------------------------
# create / snapshot / clone / resize / delete / rollback


def vdi_create(args, client: Client, out: Out) -> int:
    check_vdi_name(args.name)
    client.update_node_list()
    size = size_arg(args.size)
    copies, policy = parse_copy(args.copies) if args.copies else (0, 0)
    store_policy = 1 if args.hyper else 0
    shift = parse_shift(args.block_size_shift) if args.block_size_shift else 0
    default_copies = 0  # the cluster's, when its info is read anyway (no extra request)
    if shift:
        object_size = 1 << shift
    elif store_policy == 1:
        shift = proto.SD_DEFAULT_BLOCK_SIZE_SHIFT
        object_size = 1 << shift
    else:
        rsp, data = client.cluster_info()
        cinfo = proto.ClusterInfoHeader.unpack(data.ljust(48, b"\0"))
        if not cinfo.ctime:
            raise CollieError(f"Failed to create VDI {args.name}: "
                              f"{strerror(CODES['WAIT_FOR_FORMAT'])}", code=EXIT_FAILURE)
        if rsp.result != 0:
            raise CollieError(strerror(rsp.result), code=EXIT_FAILURE)
        object_size = 1 << cinfo.block_size_shift
        default_copies = cinfo.nr_copies
    old_max = object_size * OLD_MAX_DATA_OBJS
    if size > old_max and store_policy == 0:
        raise CollieError(f"VDI size is larger than {out.size(old_max)} bytes, please "
                          f"use '-y' to create a hyper volume with size up to "
                          f"{out.size(SD_MAX_VDI_SIZE)} bytes or use '-z' to create "
                          f"larger object size volume", code=EXIT_USAGE)
    if size > SD_MAX_VDI_SIZE:
        raise CollieError("VDI size is too large", code=EXIT_USAGE)

    vid = client.do_vdi_create(args.name, size, 0, False, copies, policy,
                               store_policy, shift)
    warn_short(out, copies or getattr(client, "last_new_vdi_copies", 0) or default_copies,
               client.nodes)
    if args.prealloc:
        try:
            raw = client.read_object(proto.vid_to_vdi_oid(vid), proto.SD_INODE_SIZE,
                                     0, direct=True)
        except CollieError as e:
            raise CollieError(*e.messages, "Failed to read a newly created VDI object",
                              code=EXIT_FAILURE) from None
        inode = proto.InodeHeader.unpack(raw)
        nr = (size + inode.object_size - 1) // inode.object_size
        with progress.bar(args, nr, f"preallocate {args.name}", unit="obj") as bar:
            for idx in range(nr):
                client.write_object(proto.vid_to_data_oid(vid, idx), b"", 0,
                                    copies=inode.nr_copies, copy_policy=inode.copy_policy,
                                    create=True, direct=True)
                client.write_inode_vid(inode, vid, idx, vid, direct=True)
                bar.update(1)
    if args.verbose:
        out.line(f"{vid:x}" if out.raw else f"VDI ID of newly created VDI: {vid:x}")
    return EXIT_SUCCESS


def vdi_snapshot(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    if snapid:
        raise CollieError("Please specify a non-integer value for a snapshot tag name",
                          code=EXIT_USAGE)
    ret, vid = client.find_vdi_name(args.name, 0, tag)
    if ret == CODES["NO_TAG"]:
        vid, inode, _ = client.read_vdi_obj(args.name, 0, "", proto.SD_INODE_HEADER_SIZE)
    elif ret == 0:
        raw = client.read_object(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE,
                                 0, direct=True)
        inode = proto.InodeHeader.unpack(raw)
        if inode.is_snapshot:
            raise CollieError(f"Failed to create snapshot for {args.name}, maybe "
                              f"snapshot id ({snapid}) or tag ({tag}) is existed")
    else:
        raise CollieError(f"Failed to create snapshot for {args.name}: {strerror(ret)}")
    if inode.store_policy:
        raise CollieError("creating a snapshot of hypervolume is not supported")
    if args.reduce_identical_snapshots:
        raw = client.read_object(proto.vid_to_vdi_oid(vid), proto.SD_INODE_SIZE, 0,
                                 direct=True)
        if vid not in inode_index(raw, proto.InodeHeader.unpack(raw)):
            if args.verbose:
                out.err(f"VDI {args.name} doesn't have its own objects, skipping "
                        f"creation of snapshot")
            return EXIT_SUCCESS
    client.write_object(proto.vid_to_vdi_oid(vid), proto.pad(tag, proto.SD_MAX_VDI_TAG_LEN),
                        proto.INODE_TAG_OFF, copies=inode.nr_copies,
                        copy_policy=inode.copy_policy)
    new_vid = client.do_vdi_create(args.name, inode.vdi_size, vid, True,
                                   inode.nr_copies, inode.copy_policy,
                                   inode.store_policy, inode.block_size_shift)
    if args.verbose:
        out.line(f"{new_vid:x} {vid:x}" if out.raw else
                 f"new VID of original VDI: {new_vid:x}, VDI ID of newly created "
                 f"snapshot: {vid:x}")
    return EXIT_SUCCESS


def vdi_clone(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    if not snapid and not tag:
        raise CollieError("Only snapshot VDIs can be cloned",
                          "Please specify the '-s' option", code=EXIT_USAGE)
    base_vid, inode, raw = client.read_vdi_obj(args.src, snapid, tag, proto.SD_INODE_SIZE)
    if args.no_share:
        base_vid = 0
    new_vid = client.do_vdi_create(args.dst, inode.vdi_size, base_vid, False,
                                   inode.nr_copies, inode.copy_policy,
                                   inode.store_policy, inode.block_size_shift)
    if args.prealloc or args.no_share:
        _, new_inode, _ = client.read_vdi_obj(args.dst, 0, "", proto.SD_INODE_HEADER_SIZE)
        osize = inode.object_size
        for idx, src_vid in enumerate(inode_index(raw, inode)):
            if src_vid:
                data = client.read_object(proto.vid_to_data_oid(src_vid, idx), osize,
                                          0, direct=True)
            elif args.no_share and not args.prealloc:
                continue
            else:
                data = b""
            client.write_object(proto.vid_to_data_oid(new_vid, idx), data, 0,
                                copies=inode.nr_copies, copy_policy=inode.copy_policy,
                                create=True, direct=True)
            client.write_inode_vid(new_inode, new_vid, idx, new_vid, direct=True)
    if args.verbose:
        out.line(f"{new_vid:x}" if out.raw else
                 f"VDI ID of newly created clone: {new_vid:x}")
    return EXIT_SUCCESS


def vdi_resize(args, client: Client, out: Out) -> int:
    new_size = size_arg(args.size)
    vid, inode, raw = client.read_vdi_obj(args.name, 0, "", proto.SD_INODE_HEADER_SIZE)
    old_max = inode.object_size * OLD_MAX_DATA_OBJS
    if inode.store_policy == 0 and new_size > old_max:
        raise CollieError(f"New VDI size is too large. This volume's max size is "
                          f"{old_max}", code=EXIT_USAGE)
    if inode.store_policy and new_size > SD_MAX_VDI_SIZE:
        raise CollieError(f"New VDI size is too large This volume's max size is "
                          f"{SD_MAX_VDI_SIZE}", code=EXIT_USAGE)
    if new_size < inode.vdi_size:
        raise CollieError("Shrinking VDIs is not implemented", code=EXIT_USAGE)
    inode.vdi_size = new_size
    try:
        client.write_object(proto.vid_to_vdi_oid(vid), inode.pack(), 0,
                            copies=inode.nr_copies, copy_policy=inode.copy_policy,
                            direct=True)
    except CollieError as e:
        raise CollieError(*e.messages, "Failed to update an inode header") from None
    return EXIT_SUCCESS


def vdi_delete(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    do_vdi_delete(client, args.name, snapid, tag,
                  args.nr_batched_reclamation or NR_BATCHED_RECLAMATION_DEFAULT,
                  force=args.force)
    return EXIT_SUCCESS


def vdi_rollback(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    if not snapid and not tag:
        raise CollieError("Please specify the '-s' option", code=EXIT_USAGE)
    base_vid, inode, _ = client.read_vdi_obj(args.name, snapid, tag,
                                             proto.SD_INODE_HEADER_SIZE)
    if not args.force:
        confirm(out, "This operation discards any changes made since the previous\n"
                     "snapshot was taken.  Continue? [yes/no]: ")
    try:
        do_vdi_delete(client, args.name, 0, "", force=args.break_lock,
                      force_option="--break-lock")
    except CollieError as e:
        raise CollieError(*e.messages, "Failed to delete the current state") from None
    new_vid = client.do_vdi_create(args.name, inode.vdi_size, base_vid, False,
                                   inode.nr_copies, inode.copy_policy,
                                   inode.store_policy, inode.block_size_shift)
    if args.verbose:
        out.line(f"{new_vid:x}" if out.raw else f"New VDI ID of rollbacked VDI: {new_vid:x}")
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# list / tree


def _vdi_row(e: VdiEntry, out: Out) -> dict:
    i = e.inode
    osize = i.object_size
    mine = sum(1 for v in e.data_vdi_id if v and v == i.vdi_id)
    cow = sum(1 for v in e.data_vdi_id if v and v != i.vdi_id)
    return {"type": "snapshot" if i.is_snapshot else ("clone" if e.is_clone else "vdi"),
            "snapshot": i.is_snapshot, "clone": e.is_clone,
            "name": e.name, "id": e.snapid, "size": i.vdi_size,
            "used": mine * osize, "shared": cow * osize,
            "created": i.create_time >> 32, "vid": e.vid,
            "copies": i.nr_copies, "copy_policy": i.copy_policy,
            "redundancy": redundancy(i.nr_copies, i.copy_policy),
            "tag": e.tag, "block_size_shift": i.block_size_shift,
            "parent_vid": i.parent_vdi_id}


def print_vdi_list(e: VdiEntry, out: Out) -> None:
    r = _vdi_row(e, out)
    mark = {"snapshot": "s", "clone": "c"}.get(r["type"])
    if out.raw:
        name = "".join("\\" + ch if ch.isspace() or ch == "\\" else ch
                       for ch in r["name"])
        out.line(f"{mark or '='} {name} {r['id']} {out.size(r['size'])} "
                 f"{out.size(r['used'])} {out.size(r['shared'])} {r['created']} "
                 f"{r['vid']:x} {r['redundancy']} {r['tag']} {r['block_size_shift']}")
    else:
        date = strftime_local("%Y-%m-%d %H:%M", r["created"])
        out.line(f"{mark or ' '} {r['name']:<8s} {r['id']:5d} {out.size(r['size']):>7s} "
                 f"{out.size(r['used']):>7s} {out.size(r['shared']):>7s} {date}  "
                 f"{r['vid']:7x} {r['redundancy']:>6s} {r['tag']:>13s} "
                 f"{r['block_size_shift']:3d}")


def vdi_list(args, client: Client, out: Out) -> int:
    if not out.raw and not args.json:
        out.line("  Name        Id    Size    Used  Shared    Creation time   VDI id  "
                 "Copies  Tag   Block Size Shift")
    errors: list[str] = []
    entries = client.parse_vdi(with_index=True, errors=errors)
    for m in errors:
        out.err(m)
    if args.name:
        entries = [e for e in entries if e.name == args.name]
    elif args.oid:
        try:
            oid = int(args.oid, 16)
        except ValueError:
            raise CollieError(f"Invalid object id {args.oid}") from None
        if not proto.is_data_obj(oid):
            return EXIT_FAILURE
        idx, ovid = proto.data_oid_to_idx(oid), proto.oid_to_vid(oid)
        entries = [e for e in entries
                   if idx < len(e.data_vdi_id) and e.data_vdi_id[idx] == ovid]
    if args.json:
        out.json([_vdi_row(e, out) for e in entries])
        return EXIT_SUCCESS
    for e in entries:
        print_vdi_list(e, out)
    return EXIT_SUCCESS


def vdi_tree(args, client: Client, out: Out) -> int:
    if args.json:
        return json_vdi.vdi_tree(args, client, out)
    entries = client.parse_vdi(with_index=False)
    highlight = out.isatty() and not out.raw
    tree = vdi_extra.VdiTree()
    for e in entries:
        if e.inode.is_snapshot:
            label = strftime_local("[%Y-%m-%d %H:%M]", e.inode.create_time >> 32)
        else:
            label = "(you are here)"
        tree.add(e.name, label, e.vid, e.inode.parent_vdi_id,
                 highlight and not e.inode.is_snapshot)
    out.write(tree.dump())
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# read / write


def vdi_graph(args, client: Client, out: Out) -> int:
    """``vdi graph``: the VDI family as a Graphviz digraph (dog's print_vdi_graph):
    an edge parent -> vid per VDI, the working VDIs red, ``Tag`` is parse_vdi's
    snap id in hex (0 for a working VDI), as dog prints it."""
    out.write('digraph G {\n  node [shape = "box", fontname = "Courier"];\n\n'
              '  "0" [shape = "ellipse", label = "root"];\n\n')
    for e in client.parse_vdi(with_index=False):
        ino = e.inode
        t = ino.create_time >> 32
        label = (f"Name: {e.name:>10s}\\nTag:  {e.snapid:10x}\\n"
                 f"Size: {out.size(ino.vdi_size):>10s}\\n"
                 f"Date: {strftime_local('%Y-%m-%d', t):>10s}\\n"
                 f"Time: {strftime_local('%H:%M:%S', t):>10s}")
        tail = '"\n  ];\n\n' if ino.is_snapshot else '",\n    color="red"\n  ];\n\n'
        out.write(f'  "{ino.parent_vdi_id:x}" -> "{e.vid:x}";\n'
                  f'  "{e.vid:x}" [\n    group = "{e.name}",\n    label = "{label}{tail}')
    out.write("}\n")
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------


def register(reg) -> None:
    _, sub = reg.group("vdi", "virtual disk image management")

    def cmd(name, func, help, args=(), raw=False, snap=False):
        p = reg.add(name, func, help, raw=raw, subparsers=sub)
        if snap:
            p.add_argument("-s", "--snapshot", metavar="SNAPSHOT",
                           help="specify a snapshot id or tag name")
        for a in args:
            if a.endswith("?"):
                p.add_argument(a[:-1], nargs="?")
            else:
                p.add_argument(a)
        return p

    p = cmd("create", vdi_create, "create an image", ("name", "size"), raw=True)
    p.add_argument("-P", "--prealloc", action="store_true",
                   help="preallocate all the data objects")
    p.add_argument("-y", "--hyper", action="store_true", help="create a hyper volume")
    p.add_argument("-c", "--copies", metavar="COPIES",
                   help="specify the data redundancy level")
    p.add_argument("-z", "--block_size_shift", metavar="SHIFT",
                   help="specify the bit shift num for data object size")
    progress.add_option(p)

    p = cmd("snapshot", vdi_snapshot, "create a snapshot", ("name",), raw=True, snap=True)
    p.add_argument("-R", "--reduce-identical-snapshots", action="store_true",
                   help="do not create snapshot if working VDI doesn't have its own "
                        "objects")

    p = cmd("clone", vdi_clone, "clone an image", ("src", "dst"), raw=True, snap=True)
    p.add_argument("-P", "--prealloc", action="store_true",
                   help="preallocate all the data objects")
    p.add_argument("-n", "--no-share", action="store_true",
                   help="share nothing with its parent")

    p = cmd("delete", vdi_delete, "delete an image", ("name",), snap=True)
    p.add_argument("-B", "--nr-batched-reclamation", type=int, default=0,
                   metavar="N", help="specify a number of batched reclamation "
                                     "during VDI deletion")
    p.add_argument("--force", action="store_true",
                   help="delete even while the VDI is in use (locked): break its lock "
                        "first; the holder's next write fails (without it, a VDI in use "
                        "is refused, exit 1)")

    p = cmd("rollback", vdi_rollback, "rollback to a snapshot", ("name",), raw=True,
            snap=True)
    p.add_argument("-f", "--force", action="store_true", help="do operation forcibly")
    p.add_argument("--break-lock", action="store_true",
                   help="roll back even while the VDI is in use (locked): break its lock "
                        "first (without it, a VDI in use is refused, even with -f)")

    p = cmd("list", vdi_list, "list images", ("name?",), raw=True)
    p.add_argument("-o", "--oid", metavar="OID",
                   help="specify the object id of the tracking object")
    p.add_argument("--json", action="store_true", help=JSON_HELP)

    p = cmd("tree", vdi_tree, "show images in tree view format")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    cmd("graph", vdi_graph, "show images in Graphviz dot format")
    cmd("resize", vdi_resize, "resize an image", ("name", "size"))
    p = cmd("read", vdi_read, "read data from an image",
            ("name", "offset?", "len?"), snap=True)
    progress.add_option(p)
    p = cmd("write", vdi_write, "write data to an image (all-zero data is not written "
            "into objects that are not allocated yet: they read as zeros)",
            ("name", "offset?", "len?"))
    p.add_argument("-w", "--writeback", action="store_true", help="use writeback mode")
    progress.add_option(p)

    vdi_extra.register(reg, sub, cmd)
    vdi_check.register_vdi(reg, sub, cmd)
    vdi_backup.register_vdi(cmd)
    vdi_image.register_vdi(cmd)
