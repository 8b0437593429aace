"""VDI creation errors as Sheepdog 1.0 reports them (docs/protocol.md §12.4):
when the new VDI's inode cannot be written — here because the disk is full — the
daemon answers VDI_WRITE and collie prints dog's "Failed to create VDI NAME:
Failed to write to requested VDI" with exit code 1, for a create, a snapshot
and a clone alike; nothing of the failed VDI is left behind."""

import os
import subprocess
import sys

import pytest
from harness import fill_disk, tmpfs

from sheep import proto

pytestmark = pytest.mark.cluster
MiB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    with tmpfs(tmp_path / "small", "24m") as mnt:
        yield mnt


def collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          capture_output=True, text=True, timeout=120)


def test_full_disk_create_snapshot_clone_report_vdi_write(make_cluster, small_fs):
    c = make_cluster(1, store_root=str(small_fs))
    c.format(copies=1)
    port = c.nodes[0].port
    assert collie(port, "vdi", "create", "base", "8M").returncode == 0
    assert collie(port, "vdi", "snapshot", "-s", "s1", "base").returncode == 0
    filler = small_fs / "filler"
    fill_disk(filler)
    for argv, name in ((("vdi", "create", "newvdi", "1G"), "newvdi"),
                       (("vdi", "snapshot", "-s", "s2", "base"), "base"),
                       (("vdi", "clone", "-s", "s1", "base", "cl"), "cl")):
        r = collie(port, *argv)
        assert r.returncode == 1, (argv, r.returncode, r.stderr)
        assert r.stderr == f"Failed to create VDI {name}: Failed to write to requested VDI\n", \
            (argv, r.stderr)
    cl = c.nodes[0].client()
    rsp, _ = cl.call(proto.Op.NEW_VDI, flags=proto.SD_FLAG_CMD_WRITE,
                     payload=proto.vdi_name_payload("raw"), check=False)
    assert rsp.result == 0x0B  # SD_RES_VDI_WRITE on the wire
    cl.close()
    os.unlink(filler)
    # nothing was registered: the names are free, and only base and its snapshot exist
    r = collie(port, "vdi", "list", "-r")
    assert r.returncode == 0, r.stderr
    names = sorted(line.split()[1] for line in r.stdout.splitlines())
    assert names == ["base", "base"], r.stdout
    assert collie(port, "vdi", "create", "newvdi", "1G").returncode == 0
    assert collie(port, "vdi", "clone", "-s", "s1", "base", "cl").returncode == 0
    assert collie(port, "vdi", "snapshot", "-s", "s2", "base").returncode == 0
    assert c.nodes[0].alive()


def test_full_disk_during_preallocation_reports_the_object(make_cluster, small_fs):
    c = make_cluster(1, store_root=str(small_fs))
    c.format(copies=1)
    port = c.nodes[0].port
    r = collie(port, "vdi", "create", "-P", "pre", "64M")  # 16 objects on 24 MiB
    assert r.returncode == 1, r.stderr
    vid = proto.vdi_name_hash("pre")
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    prefix = "Failed to write object "
    assert lines[0].startswith(prefix), r.stderr
    oid = int(lines[0][len(prefix):].split(":")[0], 16)  # dog: %PRIx64, no padding
    assert lines[0] == f"Failed to write object {oid:x}: Server has no space for new objects"
    assert proto.oid_to_vid(oid) == vid and 0 < proto.data_oid_to_idx(oid) < 16
    assert c.nodes[0].alive()
