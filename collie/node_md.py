"""``collie node md info|plug|unplug``: multi-disk management (dog/node.c).

The SD_OP_MD_INFO reply (``struct sd_md_info``) is decoded by
:func:`collie.queries.unpack_md_info`.  MD_PLUG / MD_UNPLUG carry the
comma-separated directory list, NUL-terminated, with SD_FLAG_CMD_WRITE.
Output and messages
are dog's: the table header is printed first (also before a failure), ``-A``
prints a ``Node <i>:`` line before each node's rows, ``-r`` prints
``HOST:PORT idx size used avail use% path`` lines instead; ``plug`` and
``unplug`` ask for confirmation first unless ``-f``.
"""

from __future__ import annotations

from collie import json_node
from collie.client import EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, Client, CollieError
from collie.output import JSON_HELP, Out
from collie.prompt import confirm
from collie.queries import MD_INFO_SIZE, unpack_md_info
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import strerror

PLUG_PRINT = ("    __\n"
              "   ()'`;\n"
              "   /\\|`\n"
              "  /  |   Caution! The directories to be plugged will be purged.\n"
              "(/_)_|_  Are you sure you want to continue? [yes/no]: ")
UNPLUG_PRINT = ("    __\n"
                "   ()'`;\n"
                "   /\\|`\n"
                "  /  |   Caution! Recovery will be triggered after unplugging.\n"
                "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


def _node_md_info(client: Client, out: Out, node: proto.SdNode | None) -> None:
    req = Request(Op.MD_INFO, data_length=MD_INFO_SIZE)
    rsp, data = client.exec(req) if node is None else client.node_exec(node, req)
    where = f"{client.host}:{client.port}" if node is None else f"{node.host}:{node.port}"
    if rsp.result:
        raise CollieError(f"failed to get multi-disk infomation: {strerror(rsp.result)}",
                          code=EXIT_FAILURE)
    for idx, free, used, path in unpack_md_info(data):
        size = free + used
        ratio = int(used / size * 100) if size else 0
        if out.raw:
            out.line(f"{where} {idx} {out.size(size)} {out.size(used)} {out.size(free)} "
                     f"{ratio}% {path}")
        else:
            out.line(f"{idx:2d}\t{out.size(size)}\t{out.size(used)}\t{out.size(free)}\t"
                     f"{ratio:3d}%\t{path}")


def md_info(args, client: Client, out: Out) -> int:
    if args.json:
        return json_node.md_info(args, client, out)
    nodes = client.update_node_list()
    if not out.raw:
        out.line("Id\tSize\tUsed\tAvail\tUse%\tPath")
    if not args.all:
        _node_md_info(client, out, None)
        return EXIT_SUCCESS
    for i, n in enumerate(nodes):
        if not out.raw:
            out.line(f"Node {i}:")
        _node_md_info(client, out, n)
    return EXIT_SUCCESS


def _plug(client: Client, out: Out, args, plug: bool) -> int:
    disks = args.disks
    if disks is None:
        raise CollieError(f"Usage: node md {'plug' if plug else 'unplug'} <disks>",
                          code=EXIT_USAGE)
    if not disks:
        raise CollieError("Empty path isn't allowed", code=EXIT_FAILURE)
    if not args.force:
        confirm(out, PLUG_PRINT if plug else UNPLUG_PRINT)
    payload = disks.encode() + b"\0"
    rsp, _ = client.exec(Request(Op.MD_PLUG if plug else Op.MD_UNPLUG,
                                 flags=proto.SD_FLAG_CMD_WRITE,
                                 data_length=len(payload)), payload)
    if rsp.result:
        raise CollieError("Failed to execute request, look for sheep.log for more "
                          "information", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def md_plug(args, client: Client, out: Out) -> int:
    return _plug(client, out, args, True)


def md_unplug(args, client: Client, out: Out) -> int:
    return _plug(client, out, args, False)


def register(reg, sub) -> None:
    _, msub = reg.group("md", "See 'dog node md' for more information", subparsers=sub)
    p = reg.add("info", md_info, "show multi-disk information", raw=True, subparsers=msub)
    p.add_argument("-A", "--all", action="store_true",
                   help="show md information of all the nodes")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    for name, func, help in (("plug", md_plug, "plug more disk(s) into node"),
                             ("unplug", md_unplug, "unplug disk(s) from node")):
        p = reg.add(name, func, help, subparsers=msub)
        p.add_argument("disks", nargs="?", metavar="<disks>",
                       help="comma-separated directories")
        p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
