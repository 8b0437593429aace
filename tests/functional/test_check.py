"""Replica checks and repair (docs/data-safety.md "Check and repair"):
``collie vdi check``, ``collie cluster check``, ``collie vdi track`` and the recovery throttle on a
real 3-node cluster with 3 copies.  Replicas are deleted or corrupted behind
the daemons' backs, directly in their object directories."""

import hashlib
import os
import re
import signal
import subprocess
import sys

import pytest
from harness import Cluster, cli_sections, wait_for

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]

MiB = 1 << 20
SIZE = 16 * MiB


def collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          check=False, capture_output=True, timeout=120, text=True)


def obj_path(node, oid):
    return os.path.join(node.obj_dir, f"{oid:016x}")


def file_sha1(node, oid):
    with open(obj_path(node, oid), "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def holders(c, oid, copies=3):
    ring = Ring(c.nodes[0].client().nodes())
    by_port = {n.port: n for n in c.nodes}
    return [by_port[n.port] for n in ring.replicas(oid, copies)]


def remove_replica(node, oid):
    os.unlink(obj_path(node, oid))
    os.unlink(os.path.join(node.store, "meta", f"{oid:016x}"))


def corrupt_replica(node, oid, offset=5000):
    with open(obj_path(node, oid), "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def assert_identical(c, oid):
    sums = {file_sha1(n, oid) for n in holders(c, oid)}
    assert len(sums) == 1, f"replicas of {oid:016x} differ"


def assert_reads(c, name, blob):
    for n in c.nodes:
        with qemu_client.open(name, port=n.port) as v:
            assert v.pread(0, len(blob)) == blob, f"data differs through {n.port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("check"), 3)
    try:
        c.format(copies=3)
        port = c.nodes[0].port
        blobs, vids = {}, {}
        for name, size in (("data", SIZE), ("two", 8 * MiB)):
            vids[name] = c.nodes[0].client().new_vdi(name, size)
            blobs[name] = os.urandom(size)
            with qemu_client.open(name, port=port) as v:
                v.pwrite(0, blobs[name])
        c.blobs, c.vids = blobs, vids
        yield c
    finally:
        c.close()


def test_missing_replica_is_restored(cluster):
    c = cluster
    port = c.nodes[0].port
    oid = proto.vid_to_data_oid(c.vids["data"], 1)
    victim = holders(c, oid)[1]
    remove_replica(victim, oid)

    r = collie(port, "vdi", "check", "-e", "data")
    assert r.returncode == 1, r.stderr
    assert r.stdout == (f"[127.0.0.1:{victim.port}] oid {oid:016x} is missing.\n"
                        "data lost 1 object(s).\n")

    r = collie(port, "vdi", "check", "data")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"fixed missing {oid:x}\nfinish check&repair data\n"
    assert r.stderr == ""
    assert os.path.exists(obj_path(victim, oid))
    assert_identical(c, oid)

    r = collie(port, "vdi", "check", "-e", "data")
    assert (r.returncode, r.stdout) == (0, "data is fine, no object is missing.\n")
    # a second check finds nothing to do
    r = collie(port, "vdi", "check", "data")
    assert r.stdout == "finish check&repair data\n"


def test_corrupted_replica_is_repaired(cluster):
    c = cluster
    port = c.nodes[0].port
    oid = proto.vid_to_data_oid(c.vids["data"], 2)
    victim = holders(c, oid)[2]
    corrupt_replica(victim, oid)
    # the damaged copy answers GET_HASH with an error, never with a hash
    cl = victim.client()
    try:
        rsp, _ = cl.call(proto.Op.GET_HASH, proto.ObjArgs(oid=oid), check=False)
        assert rsp.result == CODES["EIO"]
    finally:
        cl.close()

    r = collie(port, "vdi", "check", "data")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"fixed replica {oid:x}\nfinish check&repair data\n"
    assert_identical(c, oid)
    assert_reads(c, "data", c.blobs["data"])


def test_corrupted_inode_replica_is_repaired(cluster):
    c = cluster
    oid = proto.vid_to_vdi_oid(c.vids["data"])
    victim = holders(c, oid)[0]
    corrupt_replica(victim, oid, offset=4664 + 4)  # inside data_vdi_id
    # check through a node with a good local copy: a read that lands on the
    # damaged copy schedules its repair in the background, and the check
    # would then race it (both end with identical replicas, but only the
    # check says "fixed replica")
    gateway = next(n for n in c.nodes if n is not victim)
    r = collie(gateway.port, "vdi", "check", "data")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"fixed replica {oid:x}\nfinish check&repair data\n"
    assert_identical(c, oid)
    assert_reads(c, "data", c.blobs["data"])


def test_cluster_check_repairs_every_vdi(cluster):
    c = cluster
    oid = proto.vid_to_data_oid(c.vids["two"], 0)
    victim = holders(c, oid)[0]
    remove_replica(victim, oid)
    r = collie(c.nodes[2].port, "cluster", "check")
    assert r.returncode == 0, r.stderr
    expect = {"data": "fix vdi data\nfinish check&repair data\n",
              "two": f"fix vdi two\nfixed missing {oid:x}\nfinish check&repair two\n"}
    order = sorted(c.vids, key=c.vids.get)  # parse_vdi walks the bitmap by vid
    assert r.stdout == "".join(expect[name] for name in order)
    assert_identical(c, oid)
    assert_reads(c, "two", c.blobs["two"])


def test_recovery_throttle_round_trip(cluster):
    port = cluster.nodes[1].port
    r = collie(port, "node", "recovery", "get-throttle")
    assert (r.returncode, r.stdout) == (0, "max (0), interval (0)\n")
    r = collie(port, "node", "recovery", "set-throttle", "4", "100")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = collie(port, "node", "recovery", "get-throttle")
    assert (r.returncode, r.stdout) == (0, "max (4), interval (100)\n")
    r = collie(port, "node", "recovery", "set-throttle", "0", "5")
    assert r.returncode == 64
    assert "Invalid interval max (0), interval (5)" in r.stderr
    r = collie(port, "node", "recovery", "set-throttle", "x", "5")
    assert r.returncode == 64 and "Invalid max (x)" in r.stderr
    r = collie(port, "node", "recovery", "set-throttle", "0", "0")
    assert r.returncode == 0
    r = collie(port, "node", "recovery", "get-throttle")
    assert r.stdout == "max (0), interval (0)\n"
    # nothing is recovering: the header only, as in the capture
    r = collie(port, "node", "recovery")
    assert (r.returncode, r.stdout) == (0, cli_sections()["node_recovery"]["out"])


def _track_shape(text):
    text = re.sub(r"127\.0\.0\.1:\d+", "HOST", text)
    text = re.sub(r"\b[0-9a-f]{16}\b", "OID", text)
    return re.sub(r"0x[0-9a-f]+", "VID", text)


def test_vdi_track_matches_dog(cluster):
    c = cluster
    port = c.nodes[0].port
    r = collie(port, "vdi", "track", "-i", "1", "data")
    assert r.returncode == 0, r.stderr
    want = cli_sections()["vdi_track"]["out"]
    assert _track_shape(r.stdout) == _track_shape(want)
    vid = c.vids["data"]
    oid = proto.vid_to_data_oid(vid, 1)
    lines = r.stdout.splitlines()
    assert lines[0] == f"Tracking the object {oid:016x} (the inode vid 0x{vid:x} idx 1) with 3 nodes"
    assert lines[-3:] == [f"127.0.0.1:{n.port}" for n in holders(c, oid)]
    r = collie(port, "vdi", "track", "data")
    assert r.stdout.splitlines()[0] == f"Tracking the inode object 0x{vid:x} with 3 nodes"
    ioid = proto.vid_to_vdi_oid(vid)
    assert r.stdout.splitlines()[-3:] == [f"127.0.0.1:{n.port}" for n in holders(c, ioid)]
    r = collie(port, "vdi", "track", "-o", f"{oid:x}", "data")
    assert r.stdout.splitlines()[0] == (f"Tracking the object {oid:016x} (the inode vid "
                                        f"0x{vid:x}) with 3 nodes")


def test_vdi_track_follows_epochs(make_cluster):
    c = make_cluster(4)
    c.format(copies=2)
    port = c.nodes[0].port
    vid = c.nodes[0].client().new_vdi("t", 4 * MiB)
    oid = proto.vid_to_vdi_oid(vid)
    old_ports = [n.port for n in holders(c, oid, 2)]
    victim = c.nodes[3]
    victim.kill(signal.SIGKILL)
    c.wait_members(3)
    wait_for(lambda: c.nodes[1].client().cluster_info().epoch == 2, 10, what="epoch 2")
    r = collie(port, "vdi", "track", "t")
    assert r.returncode == 0, r.stderr
    new = Ring([n for n in c.nodes[1].client().nodes()]).replicas(oid, 2)
    assert r.stdout == (f"Tracking the inode object 0x{vid:x} with 3 nodes\n"
                        f"\nobj {oid:016x} locations at epoch 2, copies = 2\n"
                        + "-" * 51 + "\n"
                        + "".join(f"127.0.0.1:{n.port}\n" for n in new)
                        + f"\nobj {oid:016x} locations at epoch 1, copies = 2\n"
                        + "-" * 51 + "\n"
                        + "".join(f"127.0.0.1:{p}\n" for p in old_ports))
