"""``--json`` output of the ``vdi`` inspection commands and ``cluster check``.

Each function here answers one command when ``--json`` is given; the text
output of the command stays in its own module, untouched.  The documents and
their field names are described in docs/json-output.md: sizes are integers
(bytes), times UNIX seconds, vids and oids integers, yes/no values booleans,
and every ``status`` one of a few fixed lowercase words.
"""

from __future__ import annotations

import base64
import re
import time

from collie.args import NO_INDEX
from collie.client import (
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    Client,
    CollieError,
    VdiEntry,
)
from collie.output import Out
from collie.queries import (
    LOCK_KINDS,
    PARTICIPANT_STATES,
    get_vdi_state,
    inode_index,
    stat_cluster,
)
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, strerror
from sheep.proto.placement import Ring


def kind_of(e: VdiEntry) -> str:
    """"snapshot", "clone" or "vdi" (collie vdi list's s / c / blank mark)."""
    return "snapshot" if e.inode.is_snapshot else ("clone" if e.is_clone else "vdi")


def _node(n) -> dict:
    return {"host": n.host, "port": n.port}


# ---------------------------------------------------------------------------
# vdi tree


def vdi_tree(args, client: Client, out: Out) -> int:
    """The VDI trees of the text view as nested objects, one root per tree:
    a VDI's ``children`` are the VDIs *of the same name* whose ``parent_vid``
    is its vid (as dog's tree: a clone, of another name, starts a tree of its
    own; its ``parent_vid`` still names the snapshot it was cloned from)."""
    entries = client.parse_vdi(with_index=False)
    by_vid = {e.vid: {"name": e.name, "vid": e.vid, "id": e.snapid, "tag": e.tag,
                      "type": kind_of(e), "snapshot": e.inode.is_snapshot,
                      "current": not e.inode.is_snapshot,
                      "size": e.inode.vdi_size, "created": e.inode.create_time >> 32,
                      "parent_vid": e.inode.parent_vdi_id, "children": []}
              for e in entries}
    roots = []
    for e in entries:
        parent = by_vid.get(e.inode.parent_vdi_id)
        if parent is not None and parent is not by_vid[e.vid] and parent["name"] == e.name:
            parent["children"].append(by_vid[e.vid])
        else:
            roots.append(by_vid[e.vid])
    out.json(roots)
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# vdi object map / location


def vdi_object_map(args, client: Client, out: Out, name: str, inode, raw: bytes,
                   idx) -> int:
    """``objects``: index and vid of every allocated data object (or of the
    one ``-i`` names, allocated or not: vid 0 is unallocated)."""
    if idx is not NO_INDEX:
        off = proto.data_vdi_id_offset(idx)
        objs = [(idx, int.from_bytes(raw[off:off + 4], "little"))]
    else:
        objs = [(i, v) for i, v in enumerate(inode_index(raw, inode)) if v]
    out.json({"name": name, "vid": inode.vdi_id, "object_size": inode.object_size,
              "objects": [{"index": i, "vid": v, "allocated": bool(v),
                           "oid": proto.vid_to_data_oid(v, i) if v else None}
                          for i, v in objs]})
    return EXIT_SUCCESS


def _object_nodes(client: Client, oid: int) -> list[dict]:
    rows = []
    for n in client.nodes:
        req = Request(Op.EXIST)
        req.args.oid = oid
        row = _node(n)
        try:
            rsp, _ = client.node_exec(n, req)
        except CollieError as e:
            row.update(has_object=None, status="unreachable", error=" ".join(e.messages))
            rows.append(row)
            continue
        if rsp.result == 0:
            row.update(has_object=True, status="ok")
        elif rsp.result == CODES["NO_OBJ"]:
            row.update(has_object=False, status="ok")
        else:
            row.update(has_object=None, status="error", error=strerror(rsp.result))
        rows.append(row)
    return rows


def vdi_object_location(args, client: Client, out: Out, name: str, inode, raw: bytes,
                        idx) -> int:
    """Which node has the object (EXIST on each), and where the ring puts it."""
    vid = inode.vdi_id
    doc = {"name": name, "vid": vid, "index": None if idx is NO_INDEX else idx,
           "copies": inode.nr_copies, "nr_nodes": len(client.nodes)}
    if idx is NO_INDEX:
        oid = proto.vid_to_vdi_oid(vid)
    else:
        if idx >= proto.MAX_DATA_OBJS:
            raise CollieError("The offset is too large!", code=EXIT_FAILURE)
        off = proto.data_vdi_id_offset(idx)
        data_vid = int.from_bytes(raw[off:off + 4], "little")
        if not data_vid:
            doc.update(oid=None, allocated=False, nodes=[], expected=[])
            out.json(doc)
            return EXIT_SUCCESS
        oid = proto.vid_to_data_oid(data_vid, idx)
    if len(client.nodes) < inode.nr_copies:
        expected = client.nodes
    else:
        expected = Ring(client.nodes).replicas(oid, inode.nr_copies)
    doc.update(oid=oid, allocated=True, nodes=_object_nodes(client, oid),
               expected=[_node(n) for n in expected])
    out.json(doc)
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# vdi lock list, getattr


def vdi_lock_list(args, client: Client, out: Out, locks) -> int:
    """One object per lock holder (GET_LOCKS), or, from a Sheepdog 1.0 sheep,
    per locked VDI with its owners (GET_VDI_COPIES)."""
    rows = []
    if locks is not None:
        by_vid: dict[int, list] = {}
        for r in locks:
            by_vid.setdefault(r.vid, []).append(r)
        now = time.time()
        for e in client.parse_vdi(with_index=False):
            for r in by_vid.get(e.vid, []):
                rows.append({"name": e.name, "id": e.snapid, "vid": e.vid, "tag": e.tag,
                             "type": kind_of(e), "kind": LOCK_KINDS.get(r.kind, "unknown"),
                             "owner": proto.nid_to_str(r.owner),
                             "session": r.session or None, "generation": r.generation,
                             "since": r.since, "age": max(int(now - r.since), 0)})
        out.json(rows)
        return EXIT_SUCCESS
    states = {s.vid: s for s in get_vdi_state(client)}
    for e in client.parse_vdi(with_index=False):
        st = states.get(e.vid)
        if st is None or st.lock_state == proto.LOCK_STATE_UNLOCKED:
            continue
        row = {"name": e.name, "id": e.snapid, "vid": e.vid, "tag": e.tag,
               "type": kind_of(e)}
        if st.lock_state == proto.LOCK_STATE_LOCKED:
            row.update(kind="write", owners=[{"owner": proto.nid_to_str(st.lock_owner),
                                              "state": "locked"}])
        else:
            owners = []
            for j in range(st.nr_participants):
                pst = int.from_bytes(st.participants_state[4 * j:4 * j + 4], "little")
                owners.append({"owner": proto.nid_to_str(st.participants[40 * j:40 * j + 40]),
                               "state": PARTICIPANT_STATES.get(pst, "(unknown)").strip("()")})
            row.update(kind="shared", owners=owners)
        rows.append(row)
    out.json(rows)
    return EXIT_SUCCESS


def vdi_getattr(args, out: Out, value: bytes) -> int:
    """The value as text (``value``, null when it is not UTF-8) and base64."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    out.json({"name": args.name, "key": args.key, "value": text,
              "value_base64": base64.b64encode(value).decode(), "length": len(value)})
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# vdi check, cluster check

_FIXED = re.compile(r"^fixed (missing|replica) ([0-9a-f]+)$")
_MISSING = re.compile(r"^\[([^\]]+):(\d+)\] oid ([0-9a-f]+) is missing\.$")


def check_report(inode, vids, exist: bool, lines: list[str], errs: list[str]) -> dict:
    """One VDI's check as a document, from the text its check printed
    (``lines`` on stdout, ``errs`` on stderr; collie.vdi_check runs it);
    ``status``: "ok" (nothing to do), "repaired" (replicas fixed), "missing"
    (``-e`` found objects missing) or "failed" (objects that could not be
    checked or repaired, see ``errors``)."""
    doc = {"name": inode.name_str, "vid": inode.vdi_id,
           "id": inode.snap_id if inode.is_snapshot else 0, "tag": inode.tag_str,
           "snapshot": inode.is_snapshot, "nr_objects": 1 + sum(1 for v in vids if v)}
    if exist:
        missing = [{"host": m[1], "port": int(m[2]), "oid": int(m[3], 16)}
                   for m in map(_MISSING.match, lines) if m]
        doc.update(status="missing" if missing else "ok", missing=missing, errors=errs)
        return doc
    fixed = [{"oid": int(m[2], 16), "what": m[1]} for m in map(_FIXED.match, lines) if m]
    status = "failed" if errs else ("repaired" if fixed else "ok")
    doc.update(status=status, fixed=fixed, errors=errs)
    return doc


def cluster_check(out: Out, reports: list[dict]) -> int:
    """Every VDI's check report (:func:`check_report`); ``status`` "ok" /
    "repaired" / "failed" overall."""
    states = {r["status"] for r in reports}
    status = "failed" if "failed" in states else ("repaired" if "repaired" in states
                                                  else "ok")
    out.json({"status": status, "vdis": reports})
    return EXIT_SUCCESS


# ---------------------------------------------------------------------------
# vdi track


def vdi_track(args, client: Client, out: Out, inode, raw: bytes, idx, oid: int) -> int:
    """Where the object was placed at each epoch (newest first): the ring's
    replicas among that epoch's members (every member when fewer than copies)."""
    if not oid:
        if idx is NO_INDEX:
            oid = proto.vid_to_vdi_oid(inode.vdi_id)
        elif idx >= proto.MAX_DATA_OBJS:
            raise CollieError("The offset is too large!", code=EXIT_FAILURE)
        else:
            off = proto.data_vdi_id_offset(idx)
            oid = proto.vid_to_data_oid(int.from_bytes(raw[off:off + 4], "little"), idx)
    rsp, logs = stat_cluster(client)
    if rsp.result != 0:
        raise CollieError(strerror(rsp.result), code=EXIT_SYSFAIL)
    epochs = []
    for hdr, members in logs:
        where = (members if len(members) < inode.nr_copies
                 else Ring(members).replicas(oid, inode.nr_copies))
        epochs.append({"epoch": hdr.epoch, "nodes": [_node(n) for n in where]})
    out.json({"name": args.name, "vid": inode.vdi_id, "oid": oid,
              "index": None if idx is NO_INDEX else idx, "copies": inode.nr_copies,
              "epochs": epochs})
    return EXIT_SUCCESS
