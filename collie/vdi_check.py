"""``collie vdi check``, ``collie cluster check`` and ``collie vdi track``
(dog/vdi.c do_vdi_check, do_vdi_check_exist, vdi_track; dog/cluster.c
cluster_check).

Check and repair, per object of a VDI (its inode, then every allocated data
object), like dog:

* every replica the ring names (N = min(copies, zones)) is asked for the
  SHA-1 of its copy with GET_HASH, on a direct connection to that node, and
  (pysheepdog's extension, ``SD_FLAG_CMD_SESSION``) for the copy's version;
* **the newest copy wins**: writes are acknowledged only once every replica
  has them, so a copy with a greater version holds every acknowledged write
  an older one holds — a majority of old copies must never outvote it.
  Among copies of the same, greatest version (they may differ only in writes
  that were never acknowledged), the most common hash wins.  Only a daemon
  that reports no versions (Sheepdog 1.0) gets dog's majority vote
  (Boyer-Moore);
* a copy that fails its own checksum (the daemon answers EIO instead of a
  hash) is never chosen and is always repaired;
* each replica that is missing, damaged or different is told to fetch the
  chosen copy with REPAIR_REPLICA (the daemon itself refuses to replace a
  newer copy by an older one);
* "fixed replica OID" / "fixed missing OID" per repair, then
  "finish check&repair NAME".

Objects are checked concurrently (a small thread pool with its own
connections per thread); lines are printed in object order.
"""

from __future__ import annotations

import io
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from collie import json_vdi, progress
from collie.args import NO_INDEX, parse_index, snapshot_arg
from collie.client import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    EXIT_USAGE,
    Client,
    CollieError,
)
from collie.output import JSON_HELP, Out
from collie.queries import inode_index, stat_cluster
from collie.zones import under_replicated_warning
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, strerror
from sheep.proto.placement import Ring

NR_WORKERS = 8
DASHES = "-" * 51

# replica states after GET_HASH
FOUND, MISSING, DAMAGED = "found", "missing", "damaged"
# vote results
NO_OBJ_FOUND, NO_MAJORITY_FOUND, CHECK_SUCCESS = range(3)


@dataclass
class Replica:
    node: proto.SdNode
    state: str = MISSING
    digest: bytes = b""
    version: int = 0  # 0: unknown (a daemon without versions, or a copy of unknown age)


@dataclass
class ObjectReport:
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def vote_majority(replicas: list[Replica]) -> tuple[int, int | None]:
    """(result, index of a majority replica) — dog's vote_majority_object.

    Only FOUND copies vote.  A hash wins if more than half of them carry it
    (Boyer-Moore majority vote, then a counting pass)."""
    count, live, major = 0, 0, None
    for i, r in enumerate(replicas):
        if r.state != FOUND:
            continue
        live += 1
        if not count:
            major = i
        if replicas[major].digest == r.digest:
            count += 1
        else:
            count -= 1
    if major is None:
        return NO_OBJ_FOUND, None
    count = sum(1 for r in replicas if r.state == FOUND
                and r.digest == replicas[major].digest)
    if count > live // 2:
        return CHECK_SUCCESS, major
    return NO_MAJORITY_FOUND, None


def choose_newest(replicas: list[Replica]) -> tuple[int, int | None]:
    """(result, index of the copy to keep): the greatest version, then the most
    common hash among the copies of that version; dog's majority vote when no
    copy reports a version."""
    found = [i for i, r in enumerate(replicas) if r.state == FOUND]
    if not found:
        return NO_OBJ_FOUND, None
    top = max(replicas[i].version for i in found)
    if not top:
        return vote_majority(replicas)
    best = [i for i in found if replicas[i].version == top]
    counts: dict[bytes, int] = {}
    for i in best:
        counts[replicas[i].digest] = counts.get(replicas[i].digest, 0) + 1
    winner = max(best, key=lambda i: counts[replicas[i].digest])
    return CHECK_SUCCESS, winner


def needs_repair(replicas: list[Replica], major: int) -> list[int]:
    """Indices of the replicas to fix from ``replicas[major]``."""
    good = replicas[major].digest
    return [i for i, r in enumerate(replicas)
            if i != major and (r.state != FOUND or r.digest != good)]


def node_str(n) -> str:
    return f"{n.host}:{n.port}"


class _Conns:
    """Per-thread connections to the nodes (BlockingConnection is single-threaded)."""

    def __init__(self, client: Client):
        self.client = client
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def exec(self, node, req: Request, payload: bytes = b""):
        if node.io_port:
            host, port = proto.addr_to_str(node.io_addr), node.io_port
        else:
            host, port = node.host, node.port
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get((host, port))
        if conn is None:
            conn = conns[(host, port)] = self.client._open(host, port)
            with self._lock:
                self._all.append(conn)
        return Client._do(conn, req, payload, f"{host}:{port}")

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()
            self._all.clear()


def object_list(inode: proto.InodeHeader, vids: list[int]) -> list[int]:
    """The inode oid, then the data oid of every allocated index."""
    oids = [proto.vid_to_vdi_oid(inode.vdi_id)]
    for idx, vid in enumerate(vids[:inode.nr_objects]):
        if vid:
            oids.append(proto.vid_to_data_oid(vid, idx))
    return oids


class Checker:
    def __init__(self, client: Client, conns: _Conns, inode: proto.InodeHeader):
        self.client, self.conns, self.inode = client, conns, inode
        self.ring = Ring(client.nodes)
        self.copies = min(inode.nr_copies, client.nr_zones)

    def _hash(self, oid: int, node) -> Replica:
        req = Request(Op.GET_HASH, flags=proto.SD_FLAG_CMD_SESSION)
        req.args.oid, req.args.tgt_epoch = oid, self.client.epoch
        rsp, _ = self.conns.exec(node, req)
        if rsp.result == 0:
            return Replica(node, FOUND, bytes(rsp.args.digest), proto.hash_version(rsp.args))
        if rsp.result == CODES["NO_OBJ"]:
            return Replica(node, MISSING)
        if rsp.result == CODES["EIO"]:  # the copy fails its checksum
            return Replica(node, DAMAGED)
        raise CollieError(f"failed to read {oid:x} from {node_str(node)}, "
                          f"{strerror(rsp.result)}", code=EXIT_FAILURE)

    def _repair(self, oid: int, src, dst) -> bool:
        req = Request(Op.REPAIR_REPLICA, epoch=self.client.epoch)
        a = req.args
        a.oid, a.addr, a.port = oid, bytes(src.addr), src.port
        rsp, _ = self.conns.exec(dst, req)
        return rsp.result == 0

    def check(self, oid: int) -> ObjectReport:
        rep = ObjectReport()
        replicas = [self._hash(oid, n) for n in self.ring.replicas(oid, self.copies)]
        result, major = choose_newest(replicas)
        if major is None:
            rep.errors.append(f"no node has {oid:x}" if result == NO_OBJ_FOUND
                              else f"no majority of {oid:x}")
            return rep
        src = replicas[major].node
        for i in needs_repair(replicas, major):
            r = replicas[i]
            if self._repair(oid, src, r.node):
                rep.lines.append(f"fixed {'missing' if r.state == MISSING else 'replica'} "
                                 f"{oid:x}")
            else:
                rep.errors.append(f"failed to repair object {oid:016x} from "
                                  f"{node_str(src)} to {node_str(r.node)}")
        return rep


def do_vdi_check(client: Client, out: Out, inode: proto.InodeHeader,
                 vids: list[int], bar: progress.Progress = progress.NULL) -> int:
    if inode.copy_policy and client.nr_zones < inode.nr_copies:
        raise CollieError("ABORT: Not enough active zones for consistency-checking "
                          "erasure coded VDI", code=EXIT_FAILURE)
    conns = _Conns(client)
    checker = Checker(client, conns, inode)
    try:
        with ThreadPoolExecutor(NR_WORKERS) as pool:
            futures = [pool.submit(checker.check, oid) for oid in object_list(inode, vids)]
            try:
                for f in futures:
                    rep = f.result()
                    if rep.lines or rep.errors:
                        with bar.write_mode():
                            for line in rep.lines:
                                out.line(line)
                            for line in rep.errors:
                                out.err(line)
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        conns.close()
    with bar.write_mode():
        out.line(f"finish check&repair {inode.name_str}")
        under_replicated_warning(out, inode.name_str, len(object_list(inode, vids)),
                                 inode.nr_copies, client.nr_zones)
    return EXIT_SUCCESS


def do_vdi_check_exist(client: Client, out: Out, inode: proto.InodeHeader,
                       vids: list[int]) -> int:
    ring = Ring(client.nodes)
    copies = min(inode.nr_copies, client.nr_zones)
    per_node: dict[tuple, list[int]] = {(n.host, n.port): [] for n in client.nodes}
    for oid in object_list(inode, vids):
        for n in ring.replicas(oid, copies):
            per_node[(n.host, n.port)].append(oid)
    under_replicated_warning(out, inode.name_str, len(object_list(inode, vids)),
                             inode.nr_copies, client.nr_zones)
    total = 0
    for n in client.nodes:
        oids = per_node[(n.host, n.port)]
        payload = struct.pack(f"<{len(oids)}Q", *oids)
        req = Request(Op.OIDS_EXIST, flags=proto.SD_FLAG_CMD_WRITE | proto.SD_FLAG_CMD_PIGGYBACK,
                      data_length=len(payload))
        rsp, data = client.node_exec(n, req, payload)
        if rsp.result not in (0, CODES["NO_OBJ"]):
            raise CollieError(f"failed to check objects on {node_str(n)}: "
                              f"{strerror(rsp.result)}", code=EXIT_SYSFAIL)
        missing = struct.unpack(f"<{len(data) // 8}Q", data[:len(data) // 8 * 8])
        total += len(missing)
        for oid in missing:
            out.line(f"[{node_str(n)}] oid {oid:016x} is missing.")
    if total == 0:
        out.line(f"{inode.name_str} is fine, no object is missing.")
        return EXIT_SUCCESS
    out.line(f"{inode.name_str} lost {total} object(s).")
    return EXIT_FAILURE


def _snap(args):
    return snapshot_arg(getattr(args, "snapshot", None))


def _check_report(client: Client, inode: proto.InodeHeader, vids: list[int],
                  exist: bool) -> tuple[int, dict]:
    """Run one VDI's check (``-e``: the existence check) with its text output
    captured, rendered by :func:`collie.json_vdi.check_report`: (exit code,
    the document)."""
    buf, ebuf = io.StringIO(), io.StringIO()
    check = do_vdi_check_exist if exist else do_vdi_check
    code = check(client, Out(stdout=buf, stderr=ebuf), inode, vids)
    return code, json_vdi.check_report(inode, vids, exist, buf.getvalue().splitlines(),
                                       ebuf.getvalue().splitlines())


def vdi_check(args, client: Client, out: Out) -> int:
    client.update_node_list()
    snapid, tag = _snap(args)
    try:
        _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_SIZE)
    except CollieError as e:
        raise CollieError(*e.messages, "FATAL: no inode objects", code=e.code) from None
    vids = inode_index(raw, inode)
    if args.json:
        code, doc = _check_report(client, inode, vids, args.exist)
        out.json(doc)
        return code
    if args.exist:
        return do_vdi_check_exist(client, out, inode, vids)
    with progress.bar(args, len(object_list(inode, vids)), f"check {args.name}",
                      unit="obj") as bar:
        return do_vdi_check(client, out, inode, vids, bar)


def cluster_check(args, client: Client, out: Out) -> int:
    client.update_node_list()
    if args.json:
        reports = [_check_report(client, e.inode, e.data_vdi_id, False)[1]
                   for e in client.parse_vdi(with_index=True)]
        return json_vdi.cluster_check(out, reports)
    entries = client.parse_vdi(with_index=True)
    total = sum(len(object_list(e.inode, e.data_vdi_id)) for e in entries)
    with progress.bar(args, total, "check cluster", unit="obj") as bar:
        for e in entries:
            with bar.write_mode():
                if e.inode.is_snapshot:
                    out.line(f'fix snapshot {e.name} (id: {e.snapid}, tag: "{e.tag}")')
                else:
                    out.line(f"fix vdi {e.name}")
            do_vdi_check(client, out, e.inode, e.data_vdi_id, bar)
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# track


def track_lines(oid: int, nr_copies: int,
                logs: list[tuple[proto.EpochLogHeader, list[proto.SdNode]]]) -> list[str]:
    """dog's do_track_object output for the STAT_CLUSTER records (newest first)."""
    lines = []
    for hdr, members in logs:
        lines.append("")
        lines.append(f"obj {oid:016x} locations at epoch {hdr.epoch}, copies = {nr_copies}")
        lines.append(DASHES)
        if len(members) < nr_copies:  # every member holds what is left
            lines.extend(node_str(n) for n in members)
            continue
        lines.extend(node_str(n) for n in Ring(members).replicas(oid, nr_copies))
    return lines


def parse_oid(text: str | None) -> int:
    if not text:
        return 0
    try:
        return int(text, 16)
    except ValueError:
        raise CollieError(f"Invalid object id '{text}'", code=EXIT_USAGE) from None


def vdi_track(args, client: Client, out: Out) -> int:
    client.update_node_list()
    snapid, tag = _snap(args)
    idx = parse_index(args.index)
    oid = parse_oid(args.oid)
    try:
        _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_SIZE)
    except CollieError as e:
        raise CollieError(*e.messages, "FATAL: no inode objects", code=e.code) from None
    vid, nodes_nr = inode.vdi_id, len(client.nodes)
    if args.json:
        return json_vdi.vdi_track(args, client, out, inode, raw, idx, oid)
    if not oid:
        if idx is NO_INDEX:
            out.line(f"Tracking the inode object 0x{vid:x} with {nodes_nr} nodes")
            oid = proto.vid_to_vdi_oid(vid)
        elif idx >= proto.MAX_DATA_OBJS:
            out.line("The offset is too large!")
            return EXIT_FAILURE
        else:
            off = proto.data_vdi_id_offset(idx)
            data_vid = int.from_bytes(raw[off:off + 4], "little")
            oid = proto.vid_to_data_oid(data_vid, idx)
            out.line(f"Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx {idx}) "
                     f"with {nodes_nr} nodes")
    else:
        out.line(f"Tracking the object {oid:016x} (the inode vid 0x{vid:x}) "
                 f"with {nodes_nr} nodes")
    rsp, logs = stat_cluster(client)
    if rsp.result != 0:
        out.line(strerror(rsp.result))
        return EXIT_SYSFAIL
    for line in track_lines(oid, inode.nr_copies, logs):
        out.line(line)
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------


def register_vdi(reg, sub, cmd) -> None:
    p = cmd("check", vdi_check, "check and repair image's consistency", ("name",), snap=True)
    p.add_argument("-e", "--exist", action="store_true",
                   help="only check objects exist or not, neither comparing nor repairing")
    progress.add_option(p)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = cmd("track", vdi_track, "show the object epoch trace in the image", ("name",),
            snap=True)
    p.add_argument("-i", "--index", metavar="INDEX",
                   help="specify the index of data objects")
    p.add_argument("-o", "--oid", metavar="OID",
                   help="specify the object id of the tracking object")
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def register_cluster(reg, sub) -> None:
    p = reg.add("check", cluster_check, "check and repair cluster", subparsers=sub)
    progress.add_option(p)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
