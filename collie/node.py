"""``collie node``: list, info, recovery, kill, stat, log level, vnodes
(dog/node.c); ``node md`` is in :mod:`collie.node_md`."""

from __future__ import annotations

import struct
import time

from collie import json_node
from collie.client import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    EXIT_USAGE,
    Client,
    CollieError,
)
from collie.node_md import register as register_md
from collie.output import JSON_HELP, Out
from collie.zones import warn_short, warn_short_cluster
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import strerror


def node_list(args, client: Client, out: Out) -> int:
    nodes = client.update_node_list()
    try:
        return _node_list(args, client, out, nodes)
    finally:
        # stderr: copies > zones.  The copies come from the STAT_CLUSTER record
        # update_node_list read (dog's own requests); --json asks CLUSTER_INFO
        # when that record had none
        if client.cluster_copies:
            warn_short(out, client.cluster_copies, nodes)
        elif args.json:
            warn_short_cluster(client, out, nodes)


def _node_list(args, client: Client, out: Out, nodes) -> int:
    if args.json:
        out.json([{"id": i, "host": n.host, "port": n.port,
                   "nr_vnodes": n.nr_vnodes, "zone": n.zone, "space": n.space,
                   "io_port": n.io_port}
                  for i, n in enumerate(nodes)])
        return EXIT_SUCCESS
    if not out.raw:
        out.line("  Id   Host:Port         V-Nodes       Zone")
    for i, n in enumerate(nodes):
        host = f"{n.host}:{n.port}"
        if out.raw:
            out.line(f"{i} {host} {n.nr_vnodes} {n.zone}")
        else:
            out.line(f"{i:4d}   {host:<20s}\t{n.nr_vnodes:2d}{n.zone:11d}")
    return EXIT_SUCCESS


def _ratio(used: int, size: int) -> int:
    return int(used / size * 100) if size else 0


def node_info(args, client: Client, out: Out) -> int:
    if args.json:
        return json_node.node_info(args, client, out)
    nodes = client.update_node_list()
    if not out.raw:
        out.line("Id\tSize\tUsed\tAvail\tUse%")
    total_size = total_avail = 0
    success = 0
    for i, n in enumerate(nodes):
        try:
            rsp, _ = client.node_exec(n, Request(Op.STAT_SHEEP))
        except CollieError as e:
            for m in e.messages:
                out.err(m)
            continue
        size, free = rsp.args.store_size, rsp.args.store_free
        if rsp.result == 0:
            used = size - free
            if out.raw:
                out.line(f"{i} {out.size(size)} {out.size(used)} {out.size(free)} "
                         f"{_ratio(used, size)}%")
            else:
                out.line(f"{i:2d}\t{out.size(size)}\t{out.size(used)}\t"
                         f"{out.size(free)}\t{_ratio(used, size):3d}%")
            success += 1
        else:
            out.err(f"Response's result: {strerror(rsp.result)}")
        total_size += size
        total_avail += free
    if not success:
        raise CollieError("Cannot get information from any nodes", code=EXIT_SYSFAIL)

    total_vdi_size = sum(e.inode.vdi_size
                         for e in client.parse_vdi(with_index=False)
                         if not e.inode.is_snapshot)
    used = total_size - total_avail
    if out.raw:
        out.line(f"Total {out.size(total_size)} {out.size(used)} "
                 f"{out.size(total_avail)} {_ratio(used, total_size)}% "
                 f"{out.size(total_vdi_size)}")
    else:
        out.line(f"Total\t{out.size(total_size)}\t{out.size(used)}\t"
                 f"{out.size(total_avail)}\t{_ratio(used, total_size):3d}%")
        out.line()
        out.line(f"Total virtual image size\t{out.size(total_vdi_size)}")
    return EXIT_SUCCESS


def _recovery_state(client: Client, n: proto.SdNode | None) -> proto.RecoveryState:
    req = Request(Op.STAT_RECOVERY, data_length=proto.RecoveryState.SIZE)
    rsp, data = client.exec(req) if n is None else client.node_exec(n, req)
    if rsp.result != 0:
        raise CollieError(f"Failed to get recovery state: {strerror(rsp.result)}",
                          code=EXIT_SYSFAIL)
    return proto.RecoveryState.unpack(data.ljust(proto.RecoveryState.SIZE, b"\0"))


def _recovery_progress(client: Client, out: Out) -> int:
    st = _recovery_state(client, None)
    if not st.in_recovery:
        return EXIT_SUCCESS
    while True:
        prev_total = st.nr_total
        st = _recovery_state(client, None)
        if not st.in_recovery:
            out.line(f"\r{100.0:5.1f} % {prev_total} / {prev_total}")
            break
        if st.state == 0:
            out.write("\rpreparing a checked object list...")
        elif st.state == 2:
            out.write("\rnotifying a completion of recovery...")
        else:
            pct = 100.0 * st.nr_finished / st.nr_total if st.nr_total else 0.0
            out.write(f"\r{pct:5.1f} % {st.nr_finished} / {st.nr_total}")
        out.stdout.flush()
        time.sleep(1)
    return EXIT_SUCCESS


def node_recovery(args, client: Client, out: Out) -> int:
    nodes = client.update_node_list()
    action = args.action or "info"
    if action == "set-throttle":
        return node_recovery_set(args, client, out)
    if action == "get-throttle":
        return node_recovery_get(args, client, out)
    if args.values:
        raise CollieError(f"unexpected argument: {args.values[0]}", code=EXIT_USAGE)
    if args.json:
        return json_node.node_recovery(args, client, out)
    if args.progress:
        return _recovery_progress(client, out)
    if not out.raw:
        out.line("Nodes In Recovery:")
        out.line("  Id   Host:Port         V-Nodes       Zone       Progress")
    for i, n in enumerate(nodes):
        req = Request(Op.STAT_RECOVERY, data_length=proto.RecoveryState.SIZE)
        rsp, data = client.node_exec(n, req)
        if rsp.result != 0:
            raise CollieError(strerror(rsp.result), code=EXIT_FAILURE)
        st = proto.RecoveryState.unpack(data.ljust(proto.RecoveryState.SIZE, b"\0"))
        if not st.in_recovery:
            continue
        host = f"{n.host}:{n.port}"
        if out.raw:
            out.line(f"{i} {host} {n.nr_vnodes} {n.zone} {st.nr_finished} "
                     f"{st.nr_total}")
        else:
            pct = 100.0 * st.nr_finished / st.nr_total if st.nr_total else 0.0
            out.line(f"{i:4d}   {host:<20s}{n.nr_vnodes:5d}{n.zone:11d}{pct:11.1f}%")
    return EXIT_SUCCESS


def parse_throttle(values: list[str]) -> proto.RecoveryThrottling:
    """``set-throttle <max> <interval>``: max recoveries in flight (u32) and the
    pause in milliseconds after each (u64); both zero (no throttle) or both set."""
    if len(values) != 2:
        raise CollieError("Please specify <max> and <interval>", code=EXIT_USAGE)
    text_max, text_interval = values

    def num(text, limit, what):
        if not text.isdigit() or int(text) >= limit:
            raise CollieError(f"Invalid {what} ({text})", code=EXIT_USAGE)
        return int(text)
    mx = num(text_max, 1 << 32, "max")
    interval = num(text_interval, 1 << 64, "interval")
    if (mx == 0) != (interval == 0):
        raise CollieError(f"Invalid interval max ({mx}), interval ({interval})",
                          code=EXIT_USAGE)
    return proto.RecoveryThrottling(max_exec_count=mx, queue_work_interval=interval,
                                    throttling=mx != 0)


def node_recovery_set(args, client: Client, out: Out) -> int:
    thr = parse_throttle(args.values)
    payload = thr.pack()
    rsp, _ = client.exec(Request(Op.SET_RECOVERY, flags=proto.SD_FLAG_CMD_WRITE,
                                 data_length=len(payload)), payload)
    if rsp.result != 0:
        raise CollieError("Failed to execute request", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def node_recovery_get(args, client: Client, out: Out) -> int:
    if args.values:
        raise CollieError(f"unexpected argument: {args.values[0]}", code=EXIT_USAGE)
    rsp, data = client.exec(Request(Op.GET_RECOVERY, data_length=proto.RecoveryThrottling.SIZE))
    if rsp.result != 0:
        raise CollieError("Failed to execute request", code=EXIT_FAILURE)
    thr = proto.RecoveryThrottling.unpack(data.ljust(proto.RecoveryThrottling.SIZE, b"\0"))
    if args.json:
        out.json({"throttling": bool(thr.max_exec_count), "max": thr.max_exec_count,
                  "interval": thr.queue_work_interval})
        return EXIT_SUCCESS
    out.line(f"max ({thr.max_exec_count}), interval ({thr.queue_work_interval})")
    return EXIT_SUCCESS


def node_kill(args, client: Client, out: Out) -> int:
    nodes = client.update_node_list()
    text = args.node_id
    if not text.isdigit():
        raise CollieError(f"Invalid node id '{text}', please specify a numeric value",
                          code=EXIT_USAGE)
    nid = int(text, 10)
    if nid >= len(nodes):
        raise CollieError(f"Invalid node id '{nid}'", code=EXIT_USAGE)
    rsp, _ = client.node_exec(nodes[nid], Request(Op.KILL_NODE))
    if rsp.result != 0:
        raise CollieError(f"Response's result: {strerror(rsp.result)}",
                          "Failed to execute request", code=EXIT_FAILURE)
    return EXIT_SUCCESS


def node_vnodes(args, client: Client, out: Out) -> int:
    if args.action == "get":
        rsp, body = client.exec(Request(Op.GET_VNODES, data_length=4))
        if rsp.result:
            raise CollieError(f"failed to get vnodes: {strerror(rsp.result)}", code=EXIT_FAILURE)
        if args.json:
            out.json({"vnodes": struct.unpack("<i", body[:4])[0]})
            return EXIT_SUCCESS
        print(struct.unpack("<i", body[:4])[0])
        return EXIT_SUCCESS
    if args.count is None:
        raise CollieError("usage: node vnodes set <count>", code=EXIT_USAGE)
    # as dog sends it: 8 bytes, the count little-endian (the daemon reads an i32)
    payload = struct.pack("<q", args.count)
    rsp, _ = client.exec(Request(Op.SET_VNODES, flags=proto.SD_FLAG_CMD_WRITE,
                                 data_length=len(payload)), payload)
    if rsp.result:
        raise CollieError(f"failed to set vnodes: {strerror(rsp.result)}", code=EXIT_FAILURE)
    return EXIT_SUCCESS


_STAT_HEAD = "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"


def _get_stat(client: Client) -> proto.SdStat:
    rsp, data = client.exec(Request(Op.STAT, data_length=proto.SdStat.SIZE))
    if rsp.result:
        raise CollieError(f"failed to get stat information: {strerror(rsp.result)}",
                          code=EXIT_FAILURE)
    return proto.SdStat.unpack(data.ljust(proto.SdStat.SIZE, b"\0"))


def stat_lines(st: proto.SdStat, out: Out, last: proto.SdStat | None = None) -> list[str]:
    """dog's two lines (client = gateway, peer); dog's header says "Write Read" but
    prints the read count first, and the peer's flush column is always 0.  With
    ``last`` (``-w``), the bytes and requests since then are appended."""
    rows = []
    for pre, title in (("gw", "Client"), ("peer", "Peer")):
        def g(name):
            return getattr(st, f"{pre}_{name}")
        flush = st.gw_flush if pre == "gw" else 0
        cols = [g("active"), g("total"), g("read"), g("write"), g("remove"), flush,
                out.size(g("rx")), out.size(g("tx"))]
        if last is not None:
            cols += [out.size(g("rx") - getattr(last, f"{pre}_rx")),
                     out.size(g("tx") - getattr(last, f"{pre}_tx")),
                     str(g("total") - getattr(last, f"{pre}_total"))]
        rows.append(("" if out.raw else title + "\t") + "\t".join(map(str, cols)))
    if not out.raw:
        head = _STAT_HEAD + ("\tWRBW\tRDBW\tRPS" if last is not None else "")
        rows[0] = head + "\n" + rows[0]
    return rows


def node_stat(args, client: Client, out: Out) -> int:
    """``node stat [-w]``: the counters of the node given by -a/-p (SD_OP_STAT)."""
    if args.json and args.watch:
        raise CollieError("--json and -w cannot be used together", code=EXIT_USAGE)
    st = _get_stat(client)
    if args.json:
        return json_node.node_stat(args, client, out, st)
    if not args.watch:
        for row in stat_lines(st, out):
            out.line(row)
        return EXIT_SUCCESS
    last = st
    while True:
        for row in stat_lines(st, out, last):
            out.line(row)
        out.stdout.flush()
        last = st
        time.sleep(1)
        st = _get_stat(client)


LOG_LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def node_log_level(args, client: Client, out: Out) -> int:
    """``node log level get|set <level>|list`` (dog's do_loglevel_get/set)."""
    if args.action == "list":
        for i, name in enumerate(LOG_LEVELS):
            out.line(f"{name}\t({i})")
        return EXIT_SUCCESS
    if args.action == "get":
        rsp, data = client.exec(Request(Op.GET_LOGLEVEL, data_length=4))
        if rsp.result or len(data) < 4:
            raise CollieError("Failed to execute request", code=255)
        level = struct.unpack_from("<i", data)[0]
        name = LOG_LEVELS[level] if 0 <= level < len(LOG_LEVELS) else "unknown loglevel"
        if args.json:
            out.json({"level": name if 0 <= level < len(LOG_LEVELS) else None, "value": level})
            return EXIT_SUCCESS
        out.line(f"{name} ({level})")
        return EXIT_SUCCESS
    if args.level is None:
        raise CollieError("Usage: node log level set <log level>", code=EXIT_USAGE)
    if args.level not in LOG_LEVELS:  # dog takes the names only
        raise CollieError(f"invalid loglevel: {args.level}", "available loglevels:",
                          *(f"{n}\t({i})" for i, n in enumerate(LOG_LEVELS)), code=255)
    payload = struct.pack("<i", LOG_LEVELS.index(args.level))
    rsp, _ = client.exec(Request(Op.SET_LOGLEVEL, flags=proto.SD_FLAG_CMD_WRITE,
                                 data_length=4), payload)
    if rsp.result:
        raise CollieError("Failed to execute request", code=255)
    return EXIT_SUCCESS


def register(reg) -> None:
    _, sub = reg.group("node", "node management (list, info, recovery, kill)")
    p = reg.add("kill", node_kill, "kill node", raw=True, subparsers=sub)
    p.add_argument("node_id", metavar="<node id>")
    p = reg.add("list", node_list, "list nodes (a warning with the effective redundancy on "
                "stderr when the cluster's copies exceed the zones)", raw=True, subparsers=sub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = reg.add("info", node_info, "show information about each node", raw=True,
                subparsers=sub)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = reg.add("vnodes", node_vnodes, "get or set the vnode count of the node given by -a/-p",
                subparsers=sub)
    p.add_argument("action", choices=["get", "set"])
    p.add_argument("count", nargs="?", type=int)
    p.add_argument("--json", action="store_true", help=JSON_HELP + " (get)")
    p = reg.add("recovery", node_recovery,
                "show recovery information (info, the default) or set/get recovery "
                "speed throttling (set-throttle <max> <interval>, get-throttle)",
                raw=True, subparsers=sub)
    p.add_argument("-P", "--progress", action="store_true",
                   help="show progress of recovery in the node")
    p.add_argument("action", nargs="?", choices=["info", "set-throttle", "get-throttle"],
                   metavar="{info,set-throttle,get-throttle}")
    p.add_argument("values", nargs="*", metavar="<max> <interval>")
    p.add_argument("--json", action="store_true", help=JSON_HELP + " (info, get-throttle)")
    p = reg.add("stat", node_stat, "show stat information about the node", raw=True,
                subparsers=sub)
    p.add_argument("-w", "--watch", action="store_true", help="watch the stat every second")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    _, lsub = reg.group("log", "show or set log level of the node", subparsers=sub)
    p = reg.add("level", node_log_level, "manipulate loglevel", subparsers=lsub)
    p.add_argument("action", choices=["get", "set", "list"])
    p.add_argument("level", nargs="?", metavar="<log level>")
    p.add_argument("--json", action="store_true", help=JSON_HELP + " (get)")
    register_md(reg, sub)  # node md info|plug|unplug (collie/node_md.py)
