"""``collie cluster``: format, info, shutdown (dog/cluster.c)."""

from __future__ import annotations

import sys
import time

from collie import cluster_snapshot, vdi_backup, vdi_check
from collie.args import parse_copy, parse_shift, redundancy
from collie.client import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    EXIT_USAGE,
    Client,
    CollieError,
    bitmap_bits,
)
from collie.output import JSON_HELP, Out, ctime_str, strftime_local
from collie.prog import prog_name
from collie.prompt import FORMAT_PRINT, confirm
from collie.queries import stat_cluster
from collie.zones import nr_zones, warn_short
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, result_name, strerror

DEFAULT_STORE = "plain"


def _use_lock(args) -> bool:
    """collie locks by default (``--no-lock`` turns it off); dog, as Sheepdog 1.0,
    only with ``-l``."""
    if getattr(args, "no_lock", False):
        return False
    if args.lock:
        return True
    return prog_name() != "dog"


def cluster_format(args, client: Client, out: Out) -> int:
    copies, policy = parse_copy(args.copies) if args.copies else (0, 0)
    shift = parse_shift(args.block_size_shift) if args.block_size_shift else 0
    store = args.store or DEFAULT_STORE
    if len(store.encode()) >= proto.SD_STORE_NAME_LEN:
        raise CollieError(f"Store name too long: {store}", code=EXIT_USAGE)
    nodes = client.update_node_list()

    for n in nodes:
        rsp, data = client.node_exec(n, Request(Op.CLUSTER_INFO,
                                                data_length=proto.CLUSTER_INFO_SIZE))
        if rsp.result != 0:
            raise CollieError(strerror(rsp.result), code=EXIT_FAILURE)
        cinfo = proto.ClusterInfoHeader.unpack(data.ljust(48, b"\0"))
        if n.nr_vnodes:
            auto = bool(cinfo.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES)
            if auto and args.fixed_vnodes:
                raise CollieError("Can not apply the option of '-V', because there "
                                  "are vnode strategy of sheep is auto in the cluster")
            if not auto and not args.fixed_vnodes:
                raise CollieError("Need to specify the option of '-V', because there "
                                  "are vnode strategy of sheep is fixed in the cluster")

    warn_short(out, copies or proto.SD_DEFAULT_COPIES, nodes)
    if copies > len(nodes) and not args.force:
        confirm(out, f"Number of copies ({copies}) is larger than number of nodes "
                     f"({len(nodes)}).\nAre you sure you want to continue? [yes/no]: ")

    inuse = client.read_vdis()
    if next(bitmap_bits(inuse), None) is not None and not args.force:
        confirm(out, FORMAT_PRINT)

    flags = 0
    if args.strict:
        flags |= proto.SD_CLUSTER_FLAG_STRICT
    if not args.fixed_vnodes:
        flags |= proto.SD_CLUSTER_FLAG_AUTO_VNODES
    if _use_lock(args):
        flags |= proto.SD_CLUSTER_FLAG_USE_LOCK
    if args.recycle_vid:
        flags |= proto.SD_CLUSTER_FLAG_RECYCLE_VID
    if args.avoid_diskfull:
        flags |= proto.SD_CLUSTER_FLAG_AVOID_DISKFULL
    payload = store.encode() + b"\0"
    req = Request(Op.MAKE_FS, flags=proto.SD_FLAG_CMD_WRITE, data_length=len(payload))
    a = req.args
    a.ctime = proto.sd_time(time.time())
    a.copies, a.copy_policy, a.flags, a.block_size_shift = copies, policy, flags, shift

    out.line(f"using backend {store} store")
    rsp, _ = client.exec(req, payload)
    if rsp.result != 0:
        out.err(f"Format failed: {strerror(rsp.result)}")
        if rsp.result == CODES["NO_STORE"]:
            return list_store(client, out)
        return EXIT_SYSFAIL
    return EXIT_SUCCESS


def list_store(client: Client, out: Out) -> int:
    rsp, data = client.exec(Request(Op.GET_STORE_LIST, data_length=512))
    if rsp.result != 0:
        raise CollieError(f"Restore failed: {strerror(rsp.result)}", code=EXIT_FAILURE)
    out.line("Available stores:")
    out.line("---------------------------------------")
    out.line(proto.cstr(data))
    return EXIT_SYSFAIL


def _nodes_text(nodes) -> str:
    return ", ".join(f"{n.host}:{n.port}:{n.nr_vnodes}" for n in nodes)


def cluster_info(args, client: Client, out: Out) -> int:
    """``cluster info``; when the copies exceed the zones a warning with the
    effective redundancy goes to stderr (``--json``: ``zones`` and
    ``effective_copies`` always), see collie.zones."""
    nodes = client.update_node_list()
    rsp, logs = stat_cluster(client)
    first = logs[0][0] if logs else proto.EpochLogHeader()
    ok = rsp.result == 0
    if ok:
        status = "running, auto-recovery " + ("disabled" if first.disable_recovery
                                              else "enabled")
    else:
        status = strerror(rsp.result)

    if args.json:
        out.json({
            "status": "running" if ok else result_name(rsp.result).lower(),
            "status_text": status,
            "auto_recovery": ok and not first.disable_recovery,
            "result": rsp.result,
            "created": first.ctime >> 32 if logs else 0,
            "disable_recovery": bool(first.disable_recovery),
            "store": proto.cstr(first.drv_name),
            "copies": first.nr_copies,
            "copy_policy": first.copy_policy,
            "redundancy": redundancy(first.nr_copies, first.copy_policy),
            "flags": first.flags,
            "zones": nr_zones(nodes),
            "effective_copies": min(first.nr_copies, nr_zones(nodes)),
            "epochs": [{"epoch": h.epoch, "time": h.time,
                        "nodes": [{"host": n.host, "port": n.port,
                                   "nr_vnodes": n.nr_vnodes, "zone": n.zone}
                                  for n in members]}
                       for h, members in logs],
        })
        return EXIT_SUCCESS

    out.line(("" if out.raw else "Cluster status: ") + status)
    if args.verbose:
        prefix = "" if out.raw else "Cluster store: "
        if ok:
            out.line(f"{prefix}{proto.cstr(first.drv_name)} with "
                     f"{redundancy(first.nr_copies, first.copy_policy)} "
                     f"redundancy policy")
            auto = first.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES
            out.line(("" if out.raw else "Cluster vnodes strategy: ")
                     + ("auto" if auto else "fixed"))
        else:
            out.line(prefix + strerror(rsp.result))
        out.line(("" if out.raw else "Cluster vnode mode: ")
                 + ("disk" if first.flags & proto.SD_CLUSTER_FLAG_DISKMODE else "node"))
    else:
        out.line()

    if not out.raw and logs:
        out.line(f"Cluster created at {ctime_str(first.ctime >> 32)}")
        out.line()
        out.line("Epoch Time           Version [Host:Port:V-Nodes,,,]")
    for hdr, members in logs:
        if out.raw:
            out.line(f"{hdr.time} {hdr.epoch} [{_nodes_text(members)}]")
        else:
            t = strftime_local("%Y-%m-%d %H:%M:%S", hdr.time)
            out.line(f"{t} {hdr.epoch:6d} [{_nodes_text(members)}]")
    if ok:
        warn_short(out, first.nr_copies, nodes)
    return EXIT_SUCCESS


def cluster_shutdown(args, client: Client, out: Out) -> int:
    rsp, _ = client.exec(Request(Op.SHUTDOWN))
    if rsp.result != 0:
        raise CollieError(f"Response's result: {strerror(rsp.result)}",
                          "failed to execute request", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def _simple(args, client: Client, opcode: int, what: str, payload: bytes = b""):
    flags = proto.SD_FLAG_CMD_WRITE if payload else 0
    rsp, body = client.exec(Request(opcode, flags=flags, data_length=len(payload)), payload)
    if rsp.result != 0:
        raise CollieError(f"failed to {what}: {strerror(rsp.result)}", code=EXIT_FAILURE)
    return body


def cluster_recover(args, client: Client, out: Out) -> int:
    if args.action == "force":
        if not args.force:
            sys.stdout.write("Caution! Please make sure all the nodes of the last epoch that "
                             "are still alive have joined: they will be left out.\n"
                             "Are you sure you want to continue? [yes/no]: ")
            sys.stdout.flush()
            if sys.stdin.readline().strip() != "yes":
                return EXIT_FAILURE
        _simple(args, client, Op.FORCE_RECOVER, "force recover")
        print("The cluster is recovered.") if not args.raw else None
    elif args.action == "enable":
        _simple(args, client, Op.ENABLE_RECOVER, "enable recovery")
        print("Cluster recovery: enable")
    else:
        _simple(args, client, Op.DISABLE_RECOVER, "disable recovery")
        print("Cluster recovery: disable")
    return EXIT_SUCCESS


def cluster_reweight(args, client: Client, out: Out) -> int:
    _simple(args, client, Op.REWEIGHT, "reweight the cluster")
    return EXIT_SUCCESS


def register(reg) -> None:
    _, sub = reg.group("cluster", "cluster management (format, info, shutdown, recover, reweight)")
    p = reg.add("format", cluster_format, "create a Sheepdog store", subparsers=sub)
    p.add_argument("-b", "--store", metavar="STORE", help="specify backend store")
    p.add_argument("-c", "--copies", metavar="COPIES",
                   help="specify the default data redundancy (number of copies, "
                        "or DATA:PARITY for erasure coding)")
    p.add_argument("-f", "--force", action="store_true",
                   help="do not prompt for confirmation")
    p.add_argument("-l", "--lock", action="store_true",
                   help="enforce VDI locking (SD_CLUSTER_FLAG_USE_LOCK); collie does "
                        "by default, dog only with -l")
    p.add_argument("--no-lock", dest="no_lock", action="store_true",
                   help="do not enforce VDI locking (LOCK_VDI/RELEASE_VDI behave as in "
                        "a Sheepdog 1.0 cluster formatted without -l)")
    p.add_argument("-t", "--strict", action="store_true",
                   help="do not serve write request if number of nodes is not "
                        "sufficient")
    p.add_argument("-z", "--block_size_shift", metavar="SHIFT",
                   help="specify the shift num of default data object size")
    p.add_argument("-V", "--fixedvnodes", dest="fixed_vnodes", action="store_true",
                   help="disable automatic vnodes calculation")
    p.add_argument("-R", "--recycle-vid", dest="recycle_vid", action="store_true",
                   help="reuse the vids of fully deleted VDI families")
    p.add_argument("-F", "--avoid-diskfull", dest="avoid_diskfull",
                   action="store_true", help="avoid disk full")

    p = reg.add("info", cluster_info, "show cluster information (a warning with the "
                "effective redundancy on stderr when the copies exceed the zones)",
                raw=True, subparsers=sub)
    p.add_argument("--json", action="store_true",
                   help=JSON_HELP + " (with zones and effective_copies)")

    reg.add("shutdown", cluster_shutdown, "stop Sheepdog", subparsers=sub)
    p = reg.add("recover", cluster_recover,
                "force: start the cluster with the nodes present (when nodes of the last "
                "epoch are lost); enable/disable: automatic recovery", raw=True, subparsers=sub)
    p.add_argument("action", choices=["force", "enable", "disable"])
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    reg.add("reweight", cluster_reweight, "re-measure node capacities and update node weights",
            subparsers=sub)
    vdi_backup.register_cluster(reg, sub)
    vdi_check.register_cluster(reg, sub)
    cluster_snapshot.register(reg, sub)
