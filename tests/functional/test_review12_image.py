"""Adversarial review of ``vdi write`` skipping all-zero unallocated objects
and of ``vdi import/export`` (2-node cluster, copies 2).

* ``vdi write`` reads the inode once, then streams standard input object by
  object.  An object another writer allocated in between (non-zero data)
  was still "unallocated" in that old table, so the user's zeros were
  skipped and the other writer's data stayed where the user wrote zeros.
  Found by this review; fixed (the entry is read again before skipping).
* zeros written into a clone of a snapshot land in every object shared with
  the parent, across allocated / unallocated objects, at offsets not
  aligned to objects;
* export of a clone includes its parent's data; holes at the start and end
  of an imported file survive a round trip;
* an import whose gateway dies midway exits non-zero and names the VDI.
"""

import os
import signal
import subprocess
import sys

import pytest
from harness import Client, Cluster, collie_ok, collie_run, wait_for

from sheep import proto

pytestmark = [pytest.mark.cluster, pytest.mark.vdi]

MiB = 1 << 20
OBJ = proto.SD_DATA_OBJ_SIZE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("review12img"), 2)
    try:
        c.format(copies=2)
        yield c
    finally:
        c.close()


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 31 + i * 7) & 0xFF for i in range(256)) * (n // 256)


def entry(port: int, name: str, idx: int) -> int:
    """The inode's data_vdi_id[idx] of VDI ``name``, read from the cluster."""
    cl = Client(port)
    try:
        rsp, _ = cl.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload(name))
        raw = cl.read_obj(proto.vid_to_vdi_oid(rsp.args.vdi_id),
                          proto.data_vdi_id_offset(idx), 4)
        return int.from_bytes(raw, "little")
    finally:
        cl.close()


def test_zeros_land_in_an_object_another_writer_allocated_meanwhile(cluster):
    port = cluster.nodes[0].port
    collie_ok(port, "vdi", "create", "race", "8M")
    p = subprocess.Popen([sys.executable, "-m", "collie", "vdi", "write", "race", "0",
                          str(2 * OBJ), "-p", str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(pattern(1, OBJ))  # object 0; collie has read the inode by now
        p.stdin.flush()
        wait_for(lambda: entry(port, "race", 0), 30, what="object 0 written")
        # another writer allocates object 1 while collie waits for its data
        collie_ok(port, "vdi", "write", "race", str(OBJ), "4096", stdin=b"B" * 4096)
        p.stdin.write(bytes(OBJ))  # the user writes zeros over all of object 1
        p.stdin.close()
        assert p.wait(60) == 0, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    got = collie_ok(port, "vdi", "read", "race", "0", str(2 * OBJ)).stdout
    assert got[:OBJ] == pattern(1, OBJ)
    assert got[OBJ:OBJ + 4096] == bytes(4096), "the other writer's data survived the zeros"


def test_zeros_into_a_clone_of_a_snapshot(cluster):
    port = cluster.nodes[0].port
    collie_ok(port, "vdi", "create", "zbase", "16M")
    base = pattern(2, 3 * OBJ)  # objects 0-2 allocated, 3 not
    collie_ok(port, "vdi", "write", "zbase", "0", str(len(base)), stdin=base)
    collie_ok(port, "vdi", "snapshot", "-s", "s1", "zbase")
    collie_ok(port, "vdi", "clone", "-s", "s1", "zbase", "zclone")
    # zeros from the middle of object 0 to the middle of object 3: shared
    # objects 0-2 (copy-on-write) and unallocated object 3
    start, n = OBJ // 2 + 512, 3 * OBJ
    collie_ok(port, "vdi", "write", "zclone", str(start), str(n), stdin=bytes(n))
    want = bytearray(base + bytes(OBJ))
    want[start:start + n] = bytes(n)
    assert collie_ok(port, "vdi", "read", "zclone").stdout == bytes(want)
    # the parent is untouched, the clone's object 3 stays unallocated
    assert collie_ok(port, "vdi", "read", "-s", "s1", "zbase", "0", str(len(base))).stdout == base
    assert entry(port, "zclone", 3) == 0


def test_export_of_a_clone_includes_the_parent(cluster, tmp_path):
    port = cluster.nodes[0].port
    size = 4 * OBJ
    src = tmp_path / "holes.img"
    with open(src, "wb") as f:  # a hole at the start and at the end
        f.seek(OBJ + 12288)
        f.write(pattern(3, 8192))
        f.seek(2 * OBJ)
        f.write(pattern(4, OBJ))
        f.truncate(size - 1536)     # odd sized: the VDI is 512-rounded
    image = src.read_bytes()
    collie_ok(port, "vdi", "import", str(src), "pimg")
    out = tmp_path / "p.img"
    collie_ok(port, "vdi", "export", "pimg", str(out))
    assert out.read_bytes() == image  # 1536 short of 16 MiB: a multiple of 512
    collie_ok(port, "vdi", "snapshot", "-s", "t", "pimg")
    collie_ok(port, "vdi", "clone", "-s", "t", "pimg", "pclone")
    collie_ok(port, "vdi", "write", "pclone", "100", "5", stdin=b"hello")
    want = bytearray(image)
    want[100:105] = b"hello"
    cl = tmp_path / "clone.img"
    collie_ok(port, "vdi", "export", "pclone", str(cl))
    assert cl.read_bytes() == bytes(want)
    assert collie_ok(port, "vdi", "export", "pclone", "-").stdout == bytes(want)
    snap = tmp_path / "snap.img"
    collie_ok(port, "vdi", "export", "-s", "t", "pimg", str(snap))
    assert snap.read_bytes() == image


def test_import_whose_gateway_dies_fails_loudly(tmp_path):
    c = Cluster(tmp_path / "c", 1)
    try:
        c.format(copies=1)
        port = c.nodes[0].port
        p = subprocess.Popen([sys.executable, "-m", "collie", "vdi", "import", "--size",
                              "16M", "-", "dying", "-p", str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            p.stdin.write(pattern(5, OBJ))
            p.stdin.flush()
            wait_for(lambda: entry(port, "dying", 0), 30, what="object 0 imported")
            c.nodes[0].kill(signal.SIGKILL)
            try:
                p.stdin.write(pattern(6, 3 * OBJ))
                p.stdin.close()
            except BrokenPipeError:
                pass
            rc = p.wait(60)
            err = p.stderr.read().decode()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            for s in (p.stdout, p.stderr):
                s.close()
        assert rc != 0
        assert "dying" in err and "incomplete" in err, err
    finally:
        c.close()


def test_export_refuses_a_directory_target_without_touching_it(cluster, tmp_path):
    port = cluster.nodes[0].port
    collie_ok(port, "vdi", "create", "small", "1M")
    d = tmp_path / "dir"
    d.mkdir()
    r = collie_run(port, "vdi", "export", "small", str(d))
    assert r.returncode != 0 and d.is_dir() and not os.listdir(d)


def test_export_to_a_stdout_closed_early_fails(cluster):
    """``export NAME -`` promises every byte on standard output: a reader
    that goes away early (``| head -c 10``, a dropped ssh) must not leave a
    successful exit status behind (it used to exit 0: BrokenPipeError was
    taken for "the user only wanted the first lines")."""
    port = cluster.nodes[0].port
    collie_ok(port, "vdi", "create", "piped-out", "8M")
    p = subprocess.Popen([sys.executable, "-m", "collie", "vdi", "export", "piped-out", "-",
                          "-p", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(10) == bytes(10)
    p.stdout.close()
    rc = p.wait(60)
    err = p.stderr.read().decode()
    p.stderr.close()
    assert rc != 0 and "piped-out" in err and "Traceback" not in err, (rc, err)
