"""``--json`` on every collie listing/status command, and ``qemu_client.list_vdis``,
against one real 3-node cluster.

Each document is parsed with ``json.loads``; its fields are checked against
what the test put into the cluster (VDIs, snapshot, clone, data written,
an attribute, a lock holder, a removed replica) and against the numbers of
the same command's text (``-r``) output.  collie runs in-process
(``collie.__main__.main``, what the ``collie`` script calls), except for one
subprocess run per output kind to cover the installed entry point.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
from harness import SERVER_BLOCKER, Cluster, collie_ok, wait_for

import qemu_client
from collie.__main__ import main as collie_main
from sheep import proto
from sheep.proto.placement import Ring

pytestmark = pytest.mark.cluster

MiB = 1 << 20
OBJ = proto.SD_DATA_OBJ_SIZE
COPIES = 2


def dog(port: int, *argv: str, ok: bool = True) -> str:
    """``collie ARGV -p PORT`` in-process; its stdout (exit 0 asserted unless ok=False)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = collie_main([*argv, "-p", str(port)])
    if ok:
        assert code == 0, (argv, code, err.getvalue())
    return out.getvalue()


def dogj(port: int, *argv: str, ok: bool = True):
    return json.loads(dog(port, *argv, "--json", ok=ok))


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("json"), 3)
    try:
        c.wait_members(3)
        h = c.nodes[0].client()
        try:
            h.format(COPIES, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES
                     | proto.SD_CLUSTER_FLAG_USE_LOCK)
        finally:
            h.close()
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in c.nodes), 10, what="cluster running")
        port = c.nodes[0].port
        qemu_client.create("base", 12 * MiB, port=port)
        with qemu_client.bdrv_open("base", port=port) as bs:
            bs.bdrv_pwrite(0, b"a" * 4096)
            bs.bdrv_pwrite(2 * OBJ + 100, b"b" * 100)
            bs.bdrv_snapshot_create("snap1")
            bs.bdrv_pwrite(OBJ, b"c" * 10)
        qemu_client.create("clone1", None, port=port, backing="base", snapshot="snap1")
        qemu_client.create("plain", 4 * MiB, port=port)
        dog(port, "vdi", "setattr", "plain", "owner", "alice")
        yield c
    finally:
        c.close()


def test_vdi_list_and_python_list_vdis(cl):
    port = cl.nodes[1].port
    rows = dogj(port, "vdi", "list")
    by = {(r["name"], r["id"]): r for r in rows}
    assert set(by) == {("base", 0), ("base", 1), ("clone1", 0), ("plain", 0)}
    snap = by[("base", 1)]
    assert snap["snapshot"] is True and snap["type"] == "snapshot" and snap["tag"] == "snap1"
    assert by[("clone1", 0)]["clone"] is True and by[("clone1", 0)]["type"] == "clone"
    assert by[("clone1", 0)]["parent_vid"] == snap["vid"]
    assert by[("base", 0)]["size"] == 12 * MiB and isinstance(by[("base", 0)]["size"], int)
    # the snapshot owns the objects of index 0 and 2, the working VDI index 1
    assert snap["used"] == 2 * OBJ and by[("base", 0)]["used"] == OBJ
    assert by[("base", 0)]["shared"] == 2 * OBJ
    assert all(r["copies"] == COPIES for r in rows)
    # text -r: "= name id size used shared time vid copies tag shift", sizes in bytes
    text = {}
    for line in dog(port, "vdi", "list", "-r").splitlines():
        f = line.split(" ")
        text[(f[1], int(f[2]))] = (int(f[3]), int(f[4]), int(f[5]), int(f[7], 16))
    assert text == {k: (r["size"], r["used"], r["shared"], r["vid"]) for k, r in by.items()}
    # the Python API lists the same VDIs with the same fields
    infos = qemu_client.list_vdis(port=port)
    assert {(v.name, v.id): (v.size, v.vid, v.snapshot, v.clone, v.tag) for v in infos} == {
        k: (r["size"], r["vid"], r["snapshot"], r["clone"], r["tag"]) for k, r in by.items()}
    assert [v.vid for v in infos] == sorted(v.vid for v in infos)


def test_vdi_tree(cl):
    port = cl.nodes[0].port
    roots = dogj(port, "vdi", "tree")
    by_name = {r["name"]: r for r in roots}
    assert set(by_name) == {"base", "plain", "clone1"}
    snap = by_name["base"]
    assert snap["snapshot"] is True and snap["current"] is False and snap["tag"] == "snap1"
    assert [(k["name"], k["type"], k["current"], k["parent_vid"]) for k in snap["children"]] \
        == [("base", "vdi", True, snap["vid"])]
    # a clone starts its own tree (as in the text view), linked by parent_vid
    clone = by_name["clone1"]
    assert clone["type"] == "clone" and clone["parent_vid"] == snap["vid"]
    assert by_name["plain"]["children"] == [] and by_name["plain"]["current"] is True
    # the text tree has the same families: one line per top-level name
    text = dog(port, "vdi", "tree")
    assert [ln.split("-")[0] for ln in text.splitlines() if ln[:1].strip()] == \
        [r["name"] for r in roots]
    assert text.count("(you are here)") == 3


def test_object_map_and_location(cl):
    port = cl.nodes[2].port
    snap_vid = {r["tag"]: r["vid"] for r in dogj(port, "vdi", "list")}["snap1"]
    m = dogj(port, "vdi", "object", "map", "base")
    objs = [(o["index"], o["vid"]) for o in m["objects"]]
    text = [(int(a), int(b, 16)) for a, b in
            (ln.split() for ln in dog(port, "vdi", "object", "map", "base").splitlines()[1:])]
    assert objs == text
    assert [i for i, _ in objs] == [0, 1, 2] and objs[0][1] == snap_vid
    assert objs[1][1] == m["vid"] != snap_vid
    one = dogj(port, "vdi", "object", "map", "plain", "-i", "0")["objects"]
    assert one == [{"index": 0, "vid": 0, "allocated": False, "oid": None}]

    loc = dogj(port, "vdi", "object", "location", "base", "-i", "1")
    oid = proto.vid_to_data_oid(m["vid"], 1)
    assert loc["oid"] == oid and loc["allocated"] is True and loc["copies"] == COPIES
    ring = Ring(cl.nodes[0].client().nodes())
    want = {n.port for n in ring.replicas(oid, COPIES)}
    assert {n["port"] for n in loc["expected"]} == want
    assert {n["port"] for n in loc["nodes"] if n["has_object"] is True} == want
    assert all(n["has_object"] is False for n in loc["nodes"] if n["port"] not in want)
    text = dog(port, "vdi", "object", "location", "base", "-i", "1")
    assert {int(p) for p in re.findall(r":(\d+) has the object", text)} == want
    ino = dogj(port, "vdi", "object", "location", "base")
    assert ino["index"] is None and ino["oid"] == proto.vid_to_vdi_oid(m["vid"])
    none = dogj(port, "vdi", "object", "location", "plain", "-i", "0")
    assert none["allocated"] is False and none["nodes"] == []


def test_lock_list_and_getattr(cl):
    port = cl.nodes[0].port
    assert dogj(port, "vdi", "lock", "list") == []
    with qemu_client.bdrv_open("clone1", port=cl.nodes[1].port) as bs:
        rows = dogj(port, "vdi", "lock", "list")
        assert len(rows) == 1
        r = rows[0]
        assert (r["name"], r["type"], r["kind"]) == ("clone1", "clone", "write")
        assert r["vid"] == bs.vid and r["generation"] == bs.generation > 0
        assert r["session"] == bs.session_id and r["owner"].endswith(f":{cl.nodes[1].port}")
        assert isinstance(r["age"], int) and r["age"] >= 0
        text = dog(port, "vdi", "lock", "list").splitlines()[1:]
        assert len(text) == 1 and f"{bs.vid:x}" in text[0] and str(bs.generation) in text[0]
    a = dogj(port, "vdi", "getattr", "plain", "owner")
    assert a == {"name": "plain", "key": "owner", "value": "alice",
                 "value_base64": "YWxpY2U=", "length": 5}


def test_node_list_info_stat_md(cl):
    port = cl.nodes[0].port
    nodes = dogj(port, "node", "list")
    assert [n["port"] for n in nodes] == [n.port for n in cl.nodes]
    assert [n["zone"] for n in nodes] == [0, 1, 2]
    info = dogj(port, "node", "info")
    assert [r["port"] for r in info["nodes"]] == [n.port for n in cl.nodes]
    assert all(r["status"] == "ok" and r["size"] == r["used"] + r["avail"] > 0
               for r in info["nodes"])
    assert info["total"]["size"] == sum(r["size"] for r in info["nodes"])
    assert info["total_vdi_size"] == (12 + 12 + 4) * MiB  # working VDIs, not the snapshot
    raw = [ln.split() for ln in dog(port, "node", "info", "-r").splitlines()]
    assert [int(f[1]) for f in raw[:-1]] == [r["size"] for r in info["nodes"]]
    assert int(raw[-1][1]) == info["total"]["size"] and int(raw[-1][5]) == info["total_vdi_size"]

    st = dogj(port, "node", "stat")
    assert st["port"] == port and set(st) == {"host", "port", "client", "peer"}
    assert all(isinstance(v, int) for v in st["client"].values())
    later = [int(x) for x in dog(port, "node", "stat", "-r").splitlines()[0].split("\t")[:2]]
    assert later[1] >= st["client"]["total"] > 0  # totals only grow

    md = dogj(port, "node", "md", "info")
    assert md["port"] == port and len(md["disks"]) == 1
    d = md["disks"][0]
    assert os.path.realpath(d["path"]).startswith(os.path.realpath(cl.nodes[0].store))
    assert d["size"] == d["used"] + d["avail"] > 0
    mall = dogj(port, "node", "md", "info", "-A")
    assert [x["port"] for x in mall] == [n.port for n in cl.nodes]
    assert [x["id"] for x in mall] == [0, 1, 2]


def test_recovery_and_cluster_info(cl):
    port = cl.nodes[1].port
    rec = dogj(port, "node", "recovery")
    assert rec["in_recovery"] is False and len(rec["nodes"]) == 3
    assert all(r["status"] == "done" and r["in_recovery"] is False for r in rec["nodes"])
    assert dog(port, "node", "recovery", "-r") == ""  # the text lists nodes in recovery only
    thr = dogj(port, "node", "recovery", "get-throttle")
    assert thr == {"throttling": False, "max": 0, "interval": 0}

    ci = dogj(port, "cluster", "info")
    assert ci["status"] == "running" and ci["auto_recovery"] is True
    assert ci["copies"] == COPIES and ci["disable_recovery"] is False
    assert sorted(n["port"] for n in ci["epochs"][0]["nodes"]) == [n.port for n in cl.nodes]
    text = dog(port, "cluster", "info").splitlines()
    assert text[0] == f"Cluster status: {ci['status_text']}"
    assert len([ln for ln in text if ln[:4].isdigit()]) == len(ci["epochs"])


def test_track_vnodes_loglevel(cl):
    port = cl.nodes[0].port
    vid = dogj(port, "vdi", "object", "map", "base")["vid"]
    tr = dogj(port, "vdi", "track", "base", "-i", "1")
    oid = proto.vid_to_data_oid(vid, 1)
    assert tr["oid"] == oid and tr["index"] == 1 and tr["copies"] == COPIES
    ring = Ring(cl.nodes[0].client().nodes())
    assert [e["epoch"] for e in tr["epochs"]] == [1]
    assert [n["port"] for n in tr["epochs"][0]["nodes"]] == \
        [n.port for n in ring.replicas(oid, COPIES)]
    text = dog(port, "vdi", "track", "base", "-i", "1").splitlines()
    assert [int(x.split(":")[1]) for x in text[4:]] == \
        [n["port"] for n in tr["epochs"][0]["nodes"]]
    vn = dogj(port, "node", "vnodes", "get")
    assert vn == {"vnodes": int(dog(port, "node", "vnodes", "get"))}
    lv = dogj(port, "node", "log", "level", "get")
    assert dog(port, "node", "log", "level", "get").strip() == f"{lv['level']} ({lv['value']})"


def test_check_reports_repair(cl):
    port = cl.nodes[0].port
    m = dogj(port, "vdi", "object", "map", "base")
    oid = proto.vid_to_data_oid(m["vid"], 1)
    ring = Ring(cl.nodes[0].client().nodes())
    holder = next(n for n in cl.nodes if n.port == ring.replicas(oid, COPIES)[0].port)
    os.unlink(os.path.join(holder.obj_dir, f"{oid:016x}"))
    os.unlink(os.path.join(holder.store, "meta", f"{oid:016x}"))

    ex = dogj(port, "vdi", "check", "base", "-e", ok=False)  # exit 1, as the text's
    assert ex["status"] == "missing"
    assert ex["missing"] == [{"host": "127.0.0.1", "port": holder.port, "oid": oid}]

    doc = dogj(port, "cluster", "check")
    assert doc["status"] == "repaired"
    names = {(v["name"], v["id"]) for v in doc["vdis"]}
    assert names == {(r["name"], r["id"]) for r in dogj(port, "vdi", "list")}
    base = next(v for v in doc["vdis"] if (v["name"], v["id"]) == ("base", 0))
    assert base["status"] == "repaired" and base["fixed"] == [{"oid": oid, "what": "missing"}]
    assert all(v["status"] == "ok" for v in doc["vdis"] if v is not base)
    assert os.path.exists(os.path.join(holder.obj_dir, f"{oid:016x}"))
    again = dogj(port, "vdi", "check", "base")
    assert again["status"] == "ok" and again["fixed"] == [] and again["errors"] == []
    assert again["nr_objects"] == 1 + 3  # the inode and the three allocated objects
    assert dog(port, "vdi", "check", "base") == "finish check&repair base\n"


def test_cluster_snapshot_list(cl, tmp_path):
    port = cl.nodes[0].port
    dog(port, "cluster", "snapshot", "save", "t1", str(tmp_path), "plain")
    snaps = dogj(port, "cluster", "snapshot", "list", str(tmp_path))
    assert [(s["index"], s["tag"]) for s in snaps] == [(1, "t1")]
    assert isinstance(snaps[0]["time"], int) and snaps[0]["time"] > 1_600_000_000


def test_json_through_the_installed_command(cl):
    """The ``collie`` entry point prints the same documents (one run per kind)."""
    port = cl.nodes[0].port
    for argv in (("vdi", "tree"), ("vdi", "lock", "list"), ("cluster", "info")):
        r = collie_ok(port, *argv, "--json")
        assert json.loads(r.stdout) == dogj(port, *argv)
    r = collie_ok(port, "node", "info", "--json")
    assert [n["port"] for n in json.loads(r.stdout)["nodes"]] == [n.port for n in cl.nodes]
    r = collie_ok(port, "node", "stat", "-w", "--json", ok=False)
    assert r.returncode == 64 and b"--json and -w" in r.stderr


LEAN = SERVER_BLOCKER + """
import qemu_client
port = int(sys.argv[1])
qemu_client.create("lean", 4 << 20, port=port)
with qemu_client.bdrv_open("lean", port=port) as bs:
    bs.bdrv_pwrite(4096, b"lean client")
    assert bs.bdrv_pread(4096, 11) == b"lean client"
    bs.bdrv_snapshot_create("s")
names = sorted(v.name for v in qemu_client.list_vdis(port=port))
try:
    qemu_client.create("lean", 4 << 20, port=port)
except qemu_client.VdiExistError as e:
    err = type(e).__name__
qemu_client.delete("lean", port=port)
qemu_client.delete("lean", port=port, snapshot="s")
bad = sorted(m for m in sys.modules if m.split(".")[0] in _NotInstalled.BLOCK
             or (m.startswith("sheep.") and not m.startswith("sheep.proto")))
print(names, err, bad)
"""


def test_client_works_without_the_server_packages(cl):
    """Create, open, write, read, snapshot, list, delete with numpy, pyzmq, kazoo,
    uvloop, crcmod and crc32c unimportable: none of them (nor a server module) loads."""
    r = subprocess.run([sys.executable, "-c", LEAN, str(cl.nodes[0].port)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("['base', 'base', 'clone1', 'lean', 'lean', 'plain'] "
                                "VdiExistError []")
    assert "lean" not in {v.name for v in qemu_client.list_vdis(port=cl.nodes[0].port)}
