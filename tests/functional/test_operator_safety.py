"""Operator safety traps (docs/operations-safety.md, points 1-6), with real daemons.

1. copies > zones: format/create/info/list warn on stderr, check counts the
   under-replicated objects (stdout stays dog's);
2. a VDI in use (a qemu_client writer holds its lock) is not deleted or
   rolled back, neither by collie/dog nor by a bare DEL_VDI; ``--force``
   breaks the lock first;
3. a bad restore stream changes nothing;
4. ``localcluster stop`` stops only the daemons of its data directory;
5. over-long VDI names and input past the VDI end are refused;
6. ``sheep`` without a store directory refuses to start.

Two module-scoped clusters (two nodes each) keep it fast.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from harness import Client, Cluster, collie_run, free_port, wait_for
from locking import collie as collie_as

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES

pytestmark = pytest.mark.cluster

MB = 1024 * 1024


@pytest.fixture(scope="module")
def one_zone(tmp_path_factory):
    """Two sheep in the same zone (as several sheep on one host without -z)."""
    c = Cluster(tmp_path_factory.mktemp("onezone"), n=0)
    for _ in range(2):
        c.add_node(zone=0)
    c.wait_members(2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """Two nodes in two zones, formatted by collie (VDI locks enforced), 2 copies."""
    c = Cluster(tmp_path_factory.mktemp("locked"), n=2)
    c.wait_members(2)
    r = collie_run(c.nodes[0].port, "cluster", "format", "-c", "2")
    assert r.returncode == 0, r.stderr
    assert b"zone" not in r.stderr  # 2 copies, 2 zones: no warning
    wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in c.nodes), 10,
             what="cluster running")
    yield c
    c.close()


def ok(port, *argv, stdin=None):
    r = collie_run(port, *argv, stdin=stdin)
    assert r.returncode == 0, (argv, r.stderr.decode())
    return r


def vdi_names(port):
    r = ok(port, "vdi", "list", "-r")
    return [ln.split()[1] for ln in r.stdout.decode().splitlines()]


# ---------------------------------------------------------------------------
# 1. copies claimed but not stored


def test_copies_beyond_zones_are_reported(one_zone):
    p = one_zone.nodes[0].port
    r = ok(p, "cluster", "format", "-f", "-c", "3")  # -f: 3 copies > 2 nodes asks
    assert r.stdout == b"using backend plain store\n"  # dog's stdout
    assert b"only 1 zone for 3 copies" in r.stderr and b"effective redundancy 1" in r.stderr
    wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in one_zone.nodes), 10,
             what="cluster running")
    r = ok(p, "vdi", "create", "t", "8M")
    assert r.stdout == b"" and b"only 1 zone for 3 copies" in r.stderr
    r = ok(p, "vdi", "create", "-z", "22", "t2", "8M")  # no cluster info read: NEW_VDI
    assert b"only 1 zone for 3 copies" in r.stderr
    assert b"zone" not in ok(p, "vdi", "create", "-c", "1", "t1", "8M").stderr
    ok(p, "vdi", "write", "t", "0", str(MB), stdin=os.urandom(MB) * 1)
    # really one copy: one node holds data object 0
    oid = proto.vid_to_data_oid(proto.vdi_name_hash("t") & 0xFFFFFF, 0)
    holders = [n for n in one_zone.nodes
               if any(f.startswith(f"{oid:016x}") for f in os.listdir(n.obj_dir))]
    assert len(holders) == 1
    for argv in (("node", "list", "--json"), ("node", "list"), ("cluster", "info")):
        r = ok(p, *argv)
        assert b"only 1 zone for 3 copies" in r.stderr, argv
        assert b"effective redundancy 1" in r.stderr, argv
        assert b"only 1 zone" not in r.stdout  # stdout stays dog's
    info = json.loads(ok(p, "cluster", "info", "--json").stdout)
    assert (info["copies"], info["zones"], info["effective_copies"]) == (3, 1, 1)
    r = ok(p, "vdi", "check", "t")
    assert r.stdout.decode().endswith("finish check&repair t\n")
    assert b"Warning: 2 objects of t are under-replicated: stored in 1 zone, 3 copies" \
        in r.stderr  # the inode and data object 0
    r = ok(p, "cluster", "check")
    assert b"2 objects of t are under-replicated" in r.stderr


def test_enough_zones_no_warning(locked):
    p = locked.nodes[0].port
    for argv in (("node", "list", "--json"), ("node", "list"), ("cluster", "info")):
        assert b"zone" not in ok(p, *argv).stderr


# ---------------------------------------------------------------------------
# 2. deleting a VDI in use


def test_vdi_in_use_is_not_deleted(locked):
    p = locked.nodes[0].port
    ok(p, "vdi", "create", "busy", "4M")
    ok(p, "vdi", "snapshot", "-s", "s1", "busy")
    w = qemu_client.bdrv_open("busy", port=p)  # read-write: holds the lock
    try:
        w.bdrv_pwrite(0, b"live data")
        for prog in ("collie", "dog"):
            r = collie_as(p, "vdi", "delete", "busy", prog=prog)
            assert r.returncode == 1, (prog, r.stderr)
            assert b"VDI busy is in use (write lock via 127.0.0.1:" in r.stderr
        r = collie_run(p, "vdi", "rollback", "-f", "-s", "s1", "busy")
        assert r.returncode == 1 and b"in use" in r.stderr and b"--break-lock" in r.stderr
        empty = ok(p, "vdi", "backup", "-F", "s1", "-s", "s1", "busy").stdout  # valid
        r = collie_run(p, "vdi", "restore", "-s", "s1", "busy", stdin=empty)
        assert r.returncode == 1 and b"VDI busy is in use" in r.stderr
        # a bare DEL_VDI (any client, e.g. a 1.0 dog) is refused by the daemon
        cl = Client(locked.nodes[1].port)
        try:
            rsp, _ = cl.call(proto.Op.DEL_VDI, payload=proto.vdi_name_payload("busy", ""),
                             check=False)
        finally:
            cl.close()
        assert rsp.result == CODES["VDI_LOCKED"]
        w.bdrv_pwrite(512, b"still mine")  # the writer lost nothing
        assert w.bdrv_pread(0, 9) == b"live data"
        assert vdi_names(p).count("busy") == 2  # s1 and the working VDI
        # the holder itself may replace its VDI (loadvm: DEL_VDI + NEW_VDI, no rebase)
        w.snapshot_goto("s1")
        assert vdi_names(p).count("busy") == 2
        r = collie_run(p, "vdi", "delete", "busy")  # ... still in use by it
        assert r.returncode == 1 and b"in use" in r.stderr
        # --force: the lock is broken, then the VDI deleted
        r = collie_run(p, "vdi", "delete", "--force", "busy")
        assert r.returncode == 0, r.stderr
        assert b"lock broken (--force)" in r.stderr
        assert vdi_names(p).count("busy") == 1  # only the snapshot s1 is left
        with pytest.raises(Exception):
            w.bdrv_pwrite(0, b"x")
    finally:
        try:
            w.close()
        except Exception:
            pass
    # unlocked: dog deletes as before, silently
    ok(p, "vdi", "create", "idle", "4M")
    r = collie_as(p, "vdi", "delete", "idle", prog="dog")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert "idle" not in vdi_names(p)


# ---------------------------------------------------------------------------
# 3. a bad restore destroys nothing


def test_bad_restore_changes_nothing(locked, tmp_path):
    p = locked.nodes[0].port
    ok(p, "vdi", "create", "r1", "4M")
    ok(p, "vdi", "write", "r1", "0", "5", stdin=b"first")
    ok(p, "vdi", "snapshot", "-s", "a", "r1")
    ok(p, "vdi", "write", "r1", "0", "6", stdin=b"second")
    before = ok(p, "vdi", "list", "-r", "r1").stdout
    good = ok(p, "vdi", "backup", "-F", "a", "-s", "a", "r1").stdout  # header + end
    hdr = good[:8]
    bad_streams = {
        "empty": b"",
        "garbage": b"not a backup at all",
        "no end marker": hdr + (0).to_bytes(16, "little"),  # record 0, 0 bytes, then EOF
        "cut data": hdr + bytes.fromhex("00000000" "00000000" "00100000" "00000000") + b"x",
        "outside": hdr + bytes.fromhex("ff000000" "00000000" "01000000" "00000000") + b"x"
        + bytes.fromhex("ffffffff") + bytes(12),
    }
    for what, stream in bad_streams.items():
        f = tmp_path / "stream"
        f.write_bytes(stream)
        runs = [collie_run(p, "vdi", "restore", "-s", "a", "r1", stdin=stream)]  # a pipe
        if what in ("empty", "outside"):  # and a regular file (validated, then rewound)
            with open(f, "rb") as src:
                runs.append(subprocess.run([sys.executable, "-m", "collie", "vdi", "restore",
                                            "-s", "a", "r1", "-p", str(p)], stdin=src,
                                           capture_output=True))
        for r in runs:
            assert r.returncode != 0, what
            assert b"The backup file is corrupted" in r.stderr, (what, r.stderr)
            assert b"nothing was changed" in r.stderr
        assert ok(p, "vdi", "list", "-r", "r1").stdout == before, what
    assert ok(p, "vdi", "read", "r1", "0", "6").stdout == b"second"
    # a valid stream still restores (dog's behaviour: the restored state is a snapshot)
    r = collie_run(p, "vdi", "restore", "-s", "a", "r1", stdin=good)
    assert r.returncode == 0, r.stderr
    assert ok(p, "vdi", "read", "r1", "0", "5").stdout == b"first"


# ---------------------------------------------------------------------------
# 4. localcluster stop leaves other clusters alone


def test_localcluster_stop_only_its_own(locked, tmp_path):
    other = locked.nodes[0].port  # "someone else's" cluster on --base-port
    lc = [sys.executable, "-m", "sheep.launcher", "--dir", str(tmp_path / "lc")]
    r = subprocess.run(lc + ["stop", "--base-port", str(other)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "nothing stopped" in r.stdout, r.stdout + r.stderr
    assert all(n.alive() for n in locked.nodes)
    base = free_port()
    r = subprocess.run(lc + ["start", "--nodes", "1", "--copies", "1", "-n",
                             "--base-port", str(base)],
                       capture_output=True, text=True, timeout=120)
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        rec = json.loads((tmp_path / "lc" / "nodes.json").read_text())["nodes"]
        assert [(n["node"], n["port"]) for n in rec] == [(0, base)]
        pid = rec[0]["pid"]
        r = subprocess.run(lc + ["stop", "--base-port", str(other)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "stopped 1 node(s)" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, what="own sheep gone")
        pid = None
        assert all(n.alive() for n in locked.nodes)
        assert locked.nodes[0].status() == proto.SD_STATUS_OK
    finally:
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)


# ---------------------------------------------------------------------------
# 5. silent truncation


def test_long_names_and_oversized_input_refused(locked, tmp_path):
    p = locked.nodes[0].port
    name = "n" * 256
    r = collie_run(p, "vdi", "create", name, "4M")
    assert r.returncode == 64
    assert b"VDI name is too long: 256 bytes, at most 255" in r.stderr
    assert not any(v.startswith("nnnn") for v in vdi_names(p))
    cl = Client(p)
    try:  # a client that cut the name to 256 bytes (no NUL): refused by the daemon
        rsp, _ = cl.call(proto.Op.NEW_VDI, proto.VdiArgs(vdi_size=MB),
                         proto.vdi_name_payload(name), check=False)
    finally:
        cl.close()
    assert rsp.result == CODES["INVALID_PARMS"]
    ok(p, "vdi", "create", "n" * 255, "4M")  # the longest name 1.0 allows
    ok(p, "vdi", "delete", "n" * 255)
    # input past the end of the VDI
    ok(p, "vdi", "create", "small", "1M")
    big = tmp_path / "big"
    big.write_bytes(b"B" * (MB + 1))
    with open(big, "rb") as src:  # a regular file: refused before writing anything
        r = subprocess.run([sys.executable, "-m", "collie", "vdi", "write", "small", "0",
                            "-p", str(p)], stdin=src, capture_output=True)
    assert r.returncode == 1, r.stderr
    assert b"Input is larger than the VDI: 1048577 bytes" in r.stderr
    assert b"nothing was written" in r.stderr
    assert ok(p, "vdi", "read", "small", "0", "4").stdout == bytes(4)
    # a pipe: refused once it passes the end; nothing past the end, message says how much
    r = collie_run(p, "vdi", "write", "small", str(MB - 4096), stdin=b"P" * 5000)
    assert r.returncode == 1
    assert b"Input is larger than the VDI (size 1048576): 0 bytes were written" in r.stderr
    assert ok(p, "vdi", "read", "small", str(MB - 4096), "4096").stdout == bytes(4096)
    r = collie_run(p, "vdi", "write", "small", str(MB), stdin=b"x")
    assert r.returncode == 1 and b"nothing was written" in r.stderr
    ok(p, "vdi", "write", "small", str(MB - 4), stdin=b"fits")  # exactly to the end: fine
    assert ok(p, "vdi", "read", "small", str(MB - 4), "4").stdout == b"fits"


# ---------------------------------------------------------------------------
# 6. sheep without a store


def test_sheep_without_store_refuses(tmp_path):
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "sheep", "-p", str(port)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "sheep: no store directory given" in r.stderr
    assert "Try 'sheep --help'" in r.stderr
    assert os.listdir(tmp_path) == []  # no log, no obj/, nothing
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
