"""Disk errors (docs/data-safety.md "Disk failures"): a vanished store takes its node out
of the cluster and its objects are recovered elsewhere, while a running writer
sees no error; a full disk gives the client NO_SPACE.

How a disk is failed here: its object directory is renamed away (one atomic
step; the daemon then meets ENOENT for every object while the directory no
longer exists, which it treats as a vanished disk, like 1.0's
``err_to_sderr``), or its filesystem (a tmpfs) is remounted read-only, so the
kernel answers EROFS — what ext4 does on a failing disk with
errors=remount-ro.  EIO itself would need a failing block device (dm-error is
not available in the CI containers); the daemon handles every device errno
(EIO, EROFS, ENODEV, ...) on the same path (``Sheep.disk_failed``)."""

import os
import shutil
import subprocess
import threading

import pytest
from harness import fill_disk, placement_ok, tmpfs, vdi_oids, wait_for

import qemu_client
from sheep.proto.errors import SdError

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
    with tmpfs(tmp_path / "small", "24m") as mnt:
        yield mnt


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


def test_a_full_disk_keeps_durable_overwrites_working(make_cluster, small_fs):
    """Durable (journaled) store on a disk too small for the journal's
    reservation: once the disk is full, new objects get NO_SPACE but
    overwrites of existing blocks still succeed (the journal, unable to
    grow, reuses its space after checkpoints), the node stays in (no journal
    failure), and every acknowledged overwrite survives kill -9."""
    c = make_cluster(1, store_root=str(small_fs), nosync=False)
    c.format(copies=1)
    c.nodes[0].client().new_vdi("big", 64 * MiB)
    first = bytearray(os.urandom(4 * MiB))
    with qemu_client.open("big", port=c.nodes[0].port) as v:
        v.pwrite(0, bytes(first))
        with pytest.raises(SdError) as e:
            for i in range(1, 16):
                v.pwrite(i * 4 * MiB, os.urandom(4 * MiB))
        assert e.value.code == 0x15  # NO_SPACE
        grown = os.path.getsize(os.path.join(c.nodes[0].store, "journal"))
        assert grown <= 8 * MiB
        fill_disk(small_fs / "filler")  # not a byte left for the journal to grow into
        for k in range(256):  # overwrites of the first object, each acknowledged,
            off = (k * 37 % 1000) * 4096 + k  # more than the journal's zeros hold
            data = os.urandom(16384 + k)
            v.pwrite(off, data)
            first[off:off + len(data)] = data
        assert v.pread(0, 4 * MiB) == first
    assert c.nodes[0].alive()
    journal = os.path.join(c.nodes[0].store, "journal")
    assert os.path.getsize(journal) == grown  # it could not grow: checkpoints reused it
    assert "journal" not in c.nodes[0].log().lower().replace("journal: no space", "")
    c.nodes[0].kill()
    os.unlink(small_fs / "filler")  # (a start rewrites small files: give it room)
    c.nodes[0].start()
    c.wait_running()
    with qemu_client.open("big", port=c.nodes[0].port) as v:
        assert v.pread(0, 4 * MiB) == first


def test_failing_epoch_change_takes_the_node_out(make_cluster):
    """An I/O error half-way through a membership
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


class Writer(threading.Thread):
    """Writes ``slots`` 64 KiB slots round-robin through ``qemu_client`` and
    keeps the image every acknowledged write leaves; ``error`` is the first
    error the client saw."""

    SLOT = 64 << 10

    def __init__(self, port: int, nodes, image: bytearray, slots: int):
        super().__init__(daemon=True)
        self.port, self.nodes, self.image = port, nodes, image
        self.stride = len(image) // slots
        self.slots = slots
        self.acked = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self):
        try:
            with qemu_client.open("data", port=self.port, nodes=self.nodes) as v:
                i = 0
                while not self.stop.is_set():
                    off = (i % self.slots) * self.stride + (i * 4096) % (self.stride - self.SLOT)
                    buf = os.urandom(self.SLOT)
                    v.pwrite(off, buf)
                    self.image[off:off + self.SLOT] = buf  # acknowledged
                    self.acked += 1
                    i += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _mount_tmpfs(path: str, like: str) -> None:
    """A tmpfs on ``path`` as large as the filesystem of ``like`` (a limit, not
    memory): with automatic vnodes the node gets its fair share of objects."""
    os.makedirs(path)
    vfs = os.statvfs(like)
    size = vfs.f_blocks * vfs.f_frsize
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, check=False)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")


def _remount_ro(path: str) -> bool:
    # EBUSY while the daemon has an object file open for writing: try again
    r = subprocess.run(["mount", "-o", "remount,ro", path], capture_output=True, check=False)
    return r.returncode == 0


@pytest.fixture
def mounts():
    made = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", m], check=False)


@pytest.mark.parametrize("victim_idx,how", [(3, "vanish"), (0, "vanish"), (3, "read-only")],
                         ids=["replica-vanished", "gateway-vanished", "replica-read-only"])
def test_disk_loss_under_a_running_writer(make_cluster, mounts, victim_idx, how):
    """One node's object directory vanishes (renamed away)
    or its filesystem turns read-only (EROFS, what ext4 does on a failing
    disk with errors=remount-ro) while a client writes; that node leaves, the
    writer sees no error (its gateway retries on the next epoch, or — when
    the gateway itself lost its disk — the client fails over), and every
    acknowledged write reads back from every node afterwards."""
    if how == "read-only":  # node 3's obj/ on a filesystem of its own
        c = make_cluster(3)
        n3 = c.add_node(start=False)
        _mount_tmpfs(n3.obj_dir, c.root)
        mounts.append(n3.obj_dir)
        n3.start()
    else:
        c = make_cluster(4)
    c.format(copies=3)
    size = 32 * MiB
    vid = c.nodes[0].client().new_vdi("data", size)
    image = bytearray(os.urandom(size))
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, bytes(image))
    nodes = [("127.0.0.1", n.port) for n in c.nodes[1:]]
    w = Writer(c.nodes[0].port, nodes, image, slots=64)
    w.start()
    victim = c.nodes[victim_idx]
    held = [n for n in os.listdir(victim.obj_dir) if len(n) == 16]
    assert len(held) >= 3, "the victim must hold some of the objects written"
    try:
        wait_for(lambda: w.acked >= 20 or w.error, 60, what="the writer under way")
        if how == "vanish":
            os.rename(victim.obj_dir, victim.obj_dir + ".gone")  # one step
        else:
            wait_for(lambda: _remount_ro(victim.obj_dir), 20, what="remount read-only")
        wait_for(lambda: not victim.alive(), 20, what="the node without its disk to leave")
        c.wait_members(3, timeout=20)
        mark = w.acked
        wait_for(lambda: w.acked >= mark + 40 or w.error, 90,
                 what="writes acknowledged after the node left")
    finally:
        w.stop.set()
        w.join(60)
    assert not w.is_alive()
    assert w.error is None, f"the writer saw {w.error!r}"
    assert "disk failure" in victim.log() and "leaving the cluster" in victim.log()
    expect = bytes(image)
    for n in c.live():
        with qemu_client.open("data", port=n.port, readonly=True) as v:
            assert v.pread(0, size) == expect, f"node {n.idx} reads other data"
    wait_for(lambda: placement_ok(c, vdi_oids(vid, size)), 60, what="objects recovered")
