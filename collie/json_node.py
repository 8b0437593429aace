"""``--json`` output of the ``node`` status commands and ``cluster snapshot list``.

Field names are described in docs/json-output.md; sizes are integer bytes,
percentages integers (as the text's Use% column), booleans true/false.
"""

from __future__ import annotations

from collie.client import EXIT_SUCCESS, EXIT_SYSFAIL, Client, CollieError
from collie.output import Out
from collie.queries import MD_INFO_SIZE, unpack_md_info
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import strerror


def _ratio(used: int, size: int) -> int:
    return int(used / size * 100) if size else 0


def _space(size: int, free: int) -> dict:
    used = size - free
    return {"size": size, "used": used, "avail": free, "use_percent": _ratio(used, size)}


def node_info(args, client: Client, out: Out) -> int:
    """Store size / used / available of each node (STAT_SHEEP), the totals and
    the total virtual size of the working VDIs.  A node that cannot answer is
    listed with ``status`` "error" (and counts nothing, as in the text)."""
    nodes = client.update_node_list()
    rows, total_size, total_avail = [], 0, 0
    for i, n in enumerate(nodes):
        row = {"id": i, "host": n.host, "port": n.port}
        try:
            rsp, _ = client.node_exec(n, Request(Op.STAT_SHEEP))
        except CollieError as e:
            row.update(status="unreachable", error=" ".join(e.messages))
            rows.append(row)
            continue
        size, free = rsp.args.store_size, rsp.args.store_free
        if rsp.result == 0:
            row.update(status="ok", **_space(size, free))
        else:
            row.update(status="error", error=strerror(rsp.result))
        total_size += size
        total_avail += free
        rows.append(row)
    if not any(r["status"] == "ok" for r in rows):
        raise CollieError("Cannot get information from any nodes", code=EXIT_SYSFAIL)
    total_vdi = sum(e.inode.vdi_size for e in client.parse_vdi(with_index=False)
                    if not e.inode.is_snapshot)
    out.json({"nodes": rows, "total": _space(total_size, total_avail),
              "total_vdi_size": total_vdi})
    return EXIT_SUCCESS


_RECOVERY_STATE = {0: "preparing", 1: "running", 2: "notifying"}


def recovery_row(i: int, n, st: proto.RecoveryState) -> dict:
    """``status``: "done" (not in recovery) or, in recovery, "preparing" (the
    object list is being built), "running" or "notifying" (finishing)."""
    status = _RECOVERY_STATE.get(st.state, "running") if st.in_recovery else "done"
    return {"id": i, "host": n.host, "port": n.port, "nr_vnodes": n.nr_vnodes,
            "zone": n.zone, "in_recovery": bool(st.in_recovery), "status": status,
            "finished": st.nr_finished, "total": st.nr_total,
            "progress": round(100.0 * st.nr_finished / st.nr_total, 1)
            if st.nr_total else (0.0 if st.in_recovery else 100.0)}


def node_recovery(args, client: Client, out: Out) -> int:
    """Every node (not only those in recovery, unlike the text) with its state;
    ``in_recovery`` true for the nodes the text lists."""
    rows = []
    for i, n in enumerate(client.nodes):
        req = Request(Op.STAT_RECOVERY, data_length=proto.RecoveryState.SIZE)
        rsp, data = client.node_exec(n, req)
        if rsp.result != 0:
            raise CollieError(strerror(rsp.result))
        rows.append(recovery_row(i, n, proto.RecoveryState.unpack(
            data.ljust(proto.RecoveryState.SIZE, b"\0"))))
    out.json({"in_recovery": any(r["in_recovery"] for r in rows), "nodes": rows})
    return EXIT_SUCCESS


def node_stat(args, client: Client, out: Out, st: proto.SdStat) -> int:
    """The request counters of the node given by -a/-p; rx/tx in bytes."""
    doc = {"host": client.host, "port": client.port}
    for pre, title in (("gw", "client"), ("peer", "peer")):
        doc[title] = {k: getattr(st, f"{pre}_{k}")
                      for k in ("active", "total", "read", "write", "remove", "rx", "tx")}
        doc[title]["flush"] = st.gw_flush if pre == "gw" else 0
    out.json(doc)
    return EXIT_SUCCESS


def md_info(args, client: Client, out: Out) -> int:
    """The disks of the node given by -a/-p (or, with -A, of every node)."""
    nodes = client.update_node_list()
    targets = nodes if args.all else [None]
    docs = []
    for i, n in enumerate(targets):
        req = Request(Op.MD_INFO, data_length=MD_INFO_SIZE)
        rsp, data = client.exec(req) if n is None else client.node_exec(n, req)
        if rsp.result:
            raise CollieError(f"failed to get multi-disk infomation: {strerror(rsp.result)}")
        host, port = (client.host, client.port) if n is None else (n.host, n.port)
        docs.append({"id": i if n is not None else None, "host": host, "port": port,
                     "disks": [{"id": idx, "path": path, **_space(free + used, free)}
                               for idx, free, used, path in unpack_md_info(data)]})
    out.json(docs if args.all else docs[0])
    return EXIT_SUCCESS


def snapshot_list(args, out: Out, snaps: list[dict]) -> int:
    """The snapshots of a cluster snapshot directory: index, tag, UNIX time."""
    out.json([{"index": s["idx"], "tag": s["tag"], "time": s["time"]} for s in snaps])
    return EXIT_SUCCESS
