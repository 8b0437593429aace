"""``collie cluster snapshot save|list|load`` (docs/collie-dog-compat.md) against a real
cluster: a VDI family (working VDI, snapshot, clone) saved to a local
directory, the cluster wiped, and the family loaded back with the same data;
dog 1.0's messages (dog/cluster.c save_snapshot/load_snapshot/list_snapshot)."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster

MB = 1 << 20


def collie(port, *argv, stdin=None):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          input=stdin, capture_output=True, timeout=300)


def ok(port, *argv, stdin=None):
    r = collie(port, *argv, stdin=stdin)
    assert r.returncode == 0, (argv, r.stderr.decode())
    return r.stdout


def family(port):
    """(flag, name, snapid, tag) of every VDI, from ``vdi list -r``."""
    rows = set()
    for ln in ok(port, "vdi", "list", "-r").decode().splitlines():
        f = ln.split()
        rows.add((f[0], f[1], f[2], f[9] if len(f) == 11 else ""))
    return rows


def test_snapshot_save_list_load(make_cluster, tmp_path):
    c = make_cluster(3)
    c.format(copies=2)
    port = c.nodes[0].port
    farm = str(tmp_path / "farm")
    a1, a2, b1 = b"A" * MB, b"B" * 5000, b"C" * 3000
    ok(port, "vdi", "create", "disk", "12M")
    ok(port, "vdi", "write", "disk", "0", str(MB), stdin=a1)
    ok(port, "vdi", "write", "disk", str(8 * MB), "5000", stdin=a2)
    ok(port, "vdi", "snapshot", "-s", "snap1", "disk")
    ok(port, "vdi", "write", "disk", str(4 * MB + 7), "3000", stdin=b1)  # working only
    ok(port, "vdi", "clone", "-s", "snap1", "disk", "clone")
    ok(port, "vdi", "write", "clone", "100", "5", stdin=b"clone")
    # a chain of two snapshots, and a family whose working VDI was deleted
    ok(port, "vdi", "create", "chain", "8M")
    for i, tag in enumerate(("c1", "c2")):
        ok(port, "vdi", "write", "chain", str(i * 4 * MB), "9", stdin=f"chain-{tag}".encode())
        ok(port, "vdi", "snapshot", "-s", tag, "chain")
    ok(port, "vdi", "write", "chain", "3", "4", stdin=b"tail")
    ok(port, "vdi", "create", "gone", "4M")
    ok(port, "vdi", "write", "gone", "0", "4", stdin=b"kept")
    ok(port, "vdi", "snapshot", "-s", "g1", "gone")
    ok(port, "vdi", "delete", "gone")
    want = {
        ("disk", ""): ok(port, "vdi", "read", "disk"),
        ("disk", "snap1"): ok(port, "vdi", "read", "-s", "snap1", "disk"),
        ("clone", ""): ok(port, "vdi", "read", "clone"),
        ("chain", ""): ok(port, "vdi", "read", "chain"),
        ("chain", "c1"): ok(port, "vdi", "read", "-s", "c1", "chain"),
        ("chain", "c2"): ok(port, "vdi", "read", "-s", "c2", "chain"),
        ("gone", "g1"): ok(port, "vdi", "read", "-s", "g1", "gone"),
    }
    assert want[("disk", "snap1")] != want[("disk", "")]
    rows = family(port)
    assert ("s", "disk", "1", "snap1") in rows and ("c", "clone", "0", "") in rows

    r = collie(port, "cluster", "snapshot", "save", "1st", farm)
    assert r.returncode == 64 and r.stderr.decode() == "Tag should not start with number.\n"
    r = collie(port, "cluster", "snapshot", "save", "t1")
    assert r.returncode == 64
    assert r.stderr.decode() == "Please specify the path to save snapshot.\n"
    ok(port, "cluster", "snapshot", "save", "t1", farm)
    r = collie(port, "cluster", "snapshot", "save", "t1", farm)
    assert r.returncode == 2
    assert r.stderr.decode() == ("Snapshot tag has already been used for another snapshot, "
                                 "please, use another one.\n"
                                 f"Fail to save snapshot to path: {farm}.\n")
    lines = ok(port, "cluster", "snapshot", "list", farm).decode().splitlines()
    assert lines[0] == "Index\t\tTag\t\tSnapshot Time"
    assert re.fullmatch(r"1\t\tt1\t\t\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", lines[1])
    assert len(lines) == 2

    # change everything, then load the snapshot back
    ok(port, "vdi", "write", "disk", "0", "4", stdin=b"junk")
    ok(port, "vdi", "delete", "clone")
    ok(port, "vdi", "create", "other", "4M")
    r = collie(port, "cluster", "snapshot", "load", "nosuch", farm)
    assert r.returncode == 2
    assert r.stderr.decode() == "Snapshot index or tag does not exist.\nFail to load snapshot\n"
    r = collie(port, "cluster", "snapshot", "load", "t1", farm, stdin=b"no\n")
    assert r.returncode == 0 and b"Caution! The cluster is not empty." in r.stdout
    assert ("=", "other", "0", "") in {x[:3] + ("",) for x in family(port)}  # untouched
    r = collie(port, "cluster", "snapshot", "load", "1", farm, stdin=b"yes\n")
    assert r.returncode == 0, r.stderr.decode()

    assert family(port) == rows
    for (name, tag), data in want.items():
        assert ok(port, "vdi", "read", *(("-s", tag) if tag else ()), name) == data, (name, tag)
    # the restored family still works: write to the clone, the snapshot is unchanged
    ok(port, "vdi", "write", "clone", "0", "3", stdin=b"new")
    assert ok(port, "vdi", "read", "clone", "0", "3") == b"new"
    assert ok(port, "vdi", "read", "-s", "snap1", "disk", "0", "3") == b"AAA"
