"""Disk errors (issue 4): a vanished store takes its node out of the cluster and
its objects are recovered elsewhere; a full disk gives the client NO_SPACE."""

import os
import shutil
import subprocess

import pytest
from harness import placement_ok, vdi_oids, wait_for

import qemu_client
from sheep.errors import SdError

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]
MiB = 1 << 20


def test_vanished_store_leaves_and_is_recovered(make_cluster):
    c = make_cluster(4)
    c.format(copies=3)
    vid = c.nodes[0].client().new_vdi("data", 16 * MiB)
    blob = os.urandom(16 * MiB)
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    victim = c.nodes[3]
    shutil.rmtree(victim.store)
    wait_for(lambda: not victim.alive(), 10, what="the node with the vanished store to exit")
    c.wait_members(3)
    wait_for(lambda: placement_ok(c, vdi_oids(vid, 16 * MiB)), 60, what="objects recovered")
    for n in c.live():
        with qemu_client.open("data", port=n.port) as v:
            assert v.pread(0, 16 * MiB) == blob


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_no_space(make_cluster, small_fs):
    c = make_cluster(1, store_root=str(small_fs))
    c.format(copies=1)
    c.nodes[0].client().new_vdi("big", 64 * MiB)
    first = os.urandom(4 * MiB)
    with qemu_client.open("big", port=c.nodes[0].port) as v:
        v.pwrite(0, first)
        with pytest.raises(SdError) as e:
            for i in range(1, 16):
                v.pwrite(i * 4 * MiB, os.urandom(4 * MiB))
        assert e.value.code == 0x15  # NO_SPACE
        assert v.pread(0, 4 * MiB) == first  # earlier data intact
    assert c.nodes[0].alive()
    with qemu_client.open("big", port=c.nodes[0].port) as v:  # still serving
        assert v.pread(0, 4 * MiB) == first


def test_failing_epoch_change_takes_the_node_out(make_cluster):
    """Data-safety issue, point 7: an I/O error half-way through a membership
    change must not leave a half-updated node serving.  Node 3's epoch log
    directory is replaced by a file, so writing the next epoch log fails: the
    node stops serving and exits; the others go on, with every write intact."""
    c = make_cluster(4)
    c.format(copies=3)
    vid = c.nodes[0].client().new_vdi("data", 8 * MiB)
    blob = os.urandom(8 * MiB)
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    victim = c.nodes[3]
    epoch_dir = os.path.join(victim.store, "epoch")
    shutil.rmtree(epoch_dir)
    with open(epoch_dir, "w") as f:
        f.write("not a directory")
    c.nodes[2].kill()  # an epoch change everybody must log
    wait_for(lambda: not victim.alive(), 15, what="the node that cannot log the epoch to exit")
    assert "leaving the cluster" in victim.log()
    c.wait_members(2)
    wait_for(lambda: placement_ok(c, vdi_oids(vid, 8 * MiB), copies=2), 60,
             what="objects recovered on the two nodes left")
    for n in c.live():
        with qemu_client.open("data", port=n.port) as v:
            assert v.pread(0, 8 * MiB) == blob
