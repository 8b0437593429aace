"""``collie node md info|plug|unplug`` (dog/node.c ``node md``).

Registered by ``collie.node.register``.  Output and messages follow 1.0's
dog: ``md info`` prints ``Id Size Used Avail Use% Path`` per disk of the
-a/-p node (``-A``: of every node, each under ``Node N:``); ``plug`` and
``unplug`` send the comma-separated directory list and ask for confirmation
first unless ``-f``.
"""

from __future__ import annotations

from sheep import proto
from sheep.errors import strerror
from sheep.proto import Op, Request
from sheep.store.md import MD_INFO_SIZE, unpack_md_info

from collie.client import EXIT_FAILURE, EXIT_SUCCESS, EXIT_USAGE, Client, CollieError
from collie.cluster import confirm
from collie.output import Out

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


def _node_md_info(client: Client, node: proto.SdNode | None, out: Out) -> None:
    req = Request(Op.MD_INFO, data_length=MD_INFO_SIZE)
    if node is None:
        rsp, body = client.exec(req)
        where = f"{client.host}:{client.port}"
    else:
        rsp, body = client.node_exec(node, req)
        where = f"{node.host}:{node.port}"
    if rsp.result:
        raise CollieError(f"failed to get multi-disk information: {strerror(rsp.result)}",
                          code=EXIT_FAILURE)
    for idx, path, free, used in unpack_md_info(body.ljust(MD_INFO_SIZE, b"\0")):
        size = free + used
        ratio = int(used / size * 100) if size else 0
        if out.raw:
            out.line(f"{where} {idx} {out.size(size)} {out.size(used)} {out.size(free)} "
                     f"{ratio}% {path}")
        else:
            out.line(f"{idx:2d}\t{out.size(size)}\t{out.size(used)}\t{out.size(free)}\t"
                     f"{ratio:3d}%\t{path}")


def md_info(args, client: Client, out: Out) -> int:
    if not out.raw:
        out.line("Id\tSize\tUsed\tAvail\tUse%\tPath")
    if not args.all:
        _node_md_info(client, None, out)
        return EXIT_SUCCESS
    for i, n in enumerate(client.update_node_list()):
        if not out.raw:
            out.line(f"Node {i}:")
        _node_md_info(client, n, out)
    return EXIT_SUCCESS


def _plug_unplug(args, client: Client, out: Out, plug: bool) -> int:
    if not args.disks:
        raise CollieError(f"usage: node md {'plug' if plug else 'unplug'} <disks>",
                          code=EXIT_USAGE)
    if not args.force:
        confirm(out, PLUG_PRINT if plug else UNPLUG_PRINT)
    payload = args.disks.encode() + b"\0"
    rsp, _ = client.exec(Request(Op.MD_PLUG if plug else Op.MD_UNPLUG,
                                 flags=proto.SD_FLAG_CMD_WRITE, data_length=len(payload)),
                         payload)
    if rsp.result:
        raise CollieError("Failed to execute request, look for sheep.log for more "
                          "information", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def node_md(args, client: Client, out: Out) -> int:
    if args.action == "info":
        return md_info(args, client, out)
    return _plug_unplug(args, client, out, args.action == "plug")


def register(reg, sub) -> None:
    """Add ``md`` to the ``node`` subcommands."""
    p = reg.add("md", node_md, "show multi-disk information (info), plug more disk(s) "
                "into the node (plug <disks>) or unplug disk(s) from it (unplug <disks>); "
                "<disks>: comma-separated directories", raw=True, subparsers=sub)
    p.add_argument("action", choices=["info", "plug", "unplug"])
    p.add_argument("disks", nargs="?", metavar="<disks>")
    p.add_argument("-A", "--all", action="store_true",
                   help="show md information of all the nodes")
    p.add_argument("-f", "--force", action="store_true", help="ignore the confirmation")
