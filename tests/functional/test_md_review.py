"""Adversarial review of multi-disk nodes: disk-set changes (plug, unplug)
racing with a running writer, kill -9 in the middle of the moves, then the
loss of another replica — every acknowledged write must survive."""

import os
import random
import subprocess
import threading

import pytest
from harness import vdi_oids, wait_for

import qemu_client
from sheep import proto
from sheep.store import md

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]
MiB = 1 << 20
SIZE = 96 * MiB


def _md_node(c, disks):
    node = c.add_node(start=False)
    argv = node.argv()
    node.set_disks = lambda ds: setattr(node, "argv", lambda: argv[:-1] + [",".join([node.store] + ds)])
    node.set_disks(disks)
    node.start()
    return node


def _md_call(node, op, paths):
    cl = node.client()
    try:
        rsp, _ = cl.call(op, payload=",".join(paths).encode() + b"\0", check=False)
        return rsp.result
    finally:
        cl.close()


def _recovery_idle(n):
    cl = n.client()
    try:
        return cl.call(proto.Op.STAT_RECOVERY, data_length=24)[1][0] == 0
    finally:
        cl.close()


class Writer(threading.Thread):
    def __init__(self, port, nodes, model):
        super().__init__(daemon=True)
        self.port, self.nodes, self.model = port, nodes, model
        self.n = 0
        self.error = None
        self.stop = threading.Event()

    def run(self):
        rnd = random.Random(11)
        try:
            with qemu_client.open("mdr", port=self.port, nodes=self.nodes) as v:
                while not self.stop.is_set():
                    off = rnd.randrange(0, SIZE - 16384) & ~511
                    data = rnd.randbytes(16384)
                    try:
                        v.pwrite(off, data)
                    except BaseException as e:  # noqa: BLE001 - seen before the close
                        self.error = e
                        raise
                    self.model[off:off + len(data)] = data  # acknowledged
                    self.n += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = self.error or e


def _check_all(c, model):
    for n in c.live():
        with qemu_client.open("mdr", port=n.port, readonly=True) as v:
            got = v.pread(0, SIZE)
        if got != bytes(model):
            bad = next(i for i in range(0, SIZE, 4096) if got[i:i + 4096] != model[i:i + 4096])
            raise AssertionError(f"node {n.idx} reads other data at {bad:#x}")


def _new_disk(tmp_path, disks, oids, k0=0):
    for k in range(k0, k0 + 30):
        cand = str(tmp_path / f"new{k}")
        os.makedirs(cand)
        spaces = [(d, md.disk_space(d)) for d in disks + [cand]]
        if sum(md.Placement(spaces).disk_of(o) == len(disks) for o in oids) >= 4:
            return cand
    raise AssertionError("no disk name that takes objects")


@pytest.mark.parametrize("restart_with", ["plugged-disk-too", "command-line"])
def test_kill_during_plug_moves_then_lose_a_replica(make_cluster, tmp_path, restart_with):
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(2)]
    node = _md_node(c, disks)
    c.format(copies=2)
    vid = c.nodes[0].client().new_vdi("mdr", SIZE)
    model = bytearray(os.urandom(SIZE))
    with qemu_client.open("mdr", port=c.nodes[0].port) as v:
        v.pwrite(0, bytes(model))
    oids = vdi_oids(vid, SIZE)
    new = _new_disk(tmp_path, disks, oids)
    w = Writer(c.nodes[0].port, [("127.0.0.1", n.port) for n in c.nodes[1:]], model)
    w.start()
    try:
        wait_for(lambda: w.n >= 20 or w.error, 60, what="the writer under way")
        assert _md_call(node, proto.Op.MD_PLUG, [new]) == 0
        wait_for(lambda: any(len(n) == 16 for n in os.listdir(new)) or w.error, 60,
                 what="a first object moved to the plugged disk")
        node.kill()  # in the middle of the moves
        c.wait_members(2, timeout=30)
        mark = w.n
        wait_for(lambda: w.n >= mark + 20 or w.error, 60, what="writes while it is away")
        if restart_with == "plugged-disk-too":
            node.set_disks(disks + [new])
        node.start()
        c.wait_members(3, timeout=30)
        mark = w.n
        wait_for(lambda: w.n >= mark + 20 or w.error, 60, what="writes after the restart")
    finally:
        w.stop.set()
        w.join(60)
    assert w.error is None, repr(w.error)
    wait_for(lambda: all(_recovery_idle(n) for n in c.live()), 120, what="recovery done")
    _check_all(c, model)
    # every object has its 2 copies again: losing any one other node keeps the data
    for victim in c.nodes[:2]:
        victim.kill()
        c.wait_members(2, timeout=30)
        _check_all(c, model)
        victim.start()
        c.wait_members(3, timeout=30)
        wait_for(lambda: all(_recovery_idle(n) for n in c.live()), 120, what="recovery done")


def test_unplug_under_load_then_lose_a_replica(make_cluster, tmp_path):
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    node = _md_node(c, disks)
    c.format(copies=2)
    c.nodes[0].client().new_vdi("mdr", SIZE)
    model = bytearray(os.urandom(SIZE))
    with qemu_client.open("mdr", port=c.nodes[0].port) as v:
        v.pwrite(0, bytes(model))
    w = Writer(node.port, [("127.0.0.1", n.port) for n in c.nodes[:2]], model)
    w.start()
    try:
        wait_for(lambda: w.n >= 20 or w.error, 60, what="the writer under way")
        assert _md_call(node, proto.Op.MD_UNPLUG, [disks[0]]) == 0
        mark = w.n
        wait_for(lambda: w.n >= mark + 10 or w.error, 60, what="writes after the first unplug")
        assert _md_call(node, proto.Op.MD_UNPLUG, [disks[1]]) == 0  # the last but one
        mark = w.n
        wait_for(lambda: w.n >= mark + 20 or w.error, 60, what="writes after the unplugs")
    finally:
        w.stop.set()
        w.join(60)
    assert w.error is None, repr(w.error)
    assert not [n for d in disks[:2] for n in os.listdir(d) if not n.startswith(".")]
    wait_for(lambda: all(_recovery_idle(n) for n in c.live()), 120, what="recovery done")
    _check_all(c, model)
    for victim in c.nodes[:2]:
        victim.kill()
        c.wait_members(2, timeout=30)
        _check_all(c, model)
        victim.start()
        c.wait_members(3, timeout=30)
        wait_for(lambda: all(_recovery_idle(n) for n in c.live()), 120, what="recovery done")


def _mount_tmpfs(path):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", path],
                       capture_output=True, check=False)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")


@pytest.mark.parametrize("via", ["md", "peer"])
def test_unmounted_disk_leaves_an_empty_mountpoint(make_cluster, tmp_path, via):
    """A disk of a multi-disk node is a filesystem of its own; it fails and
    is unmounted (umount -l, what an operator or a udev rule does): its
    directory is still there, empty, on the parent filesystem, and writable.
    That is a lost disk too — it must be dropped, and the writer must see no
    error (no write may fail because its copy was on that disk)."""
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    mounted = []
    try:
        for d in disks:
            _mount_tmpfs(d)
            mounted.append(d)
        node = _md_node(c, disks)
        c.format(copies=3)
        vid = c.nodes[0].client().new_vdi("mdr", SIZE)
        model = bytearray(os.urandom(SIZE))
        with qemu_client.open("mdr", port=c.nodes[0].port) as v:
            v.pwrite(0, bytes(model))
        oids = vdi_oids(vid, SIZE)
        victim = max(disks, key=lambda d: len(os.listdir(d)))
        assert [o for o in oids if os.path.exists(os.path.join(victim, "%016x" % o))]
        port = node.port if via == "md" else c.nodes[0].port
        w = Writer(port, [("127.0.0.1", n.port) for n in c.nodes if n.port != port], model)
        w.start()
        try:
            wait_for(lambda: w.n >= 20 or w.error, 60, what="the writer under way")
            subprocess.run(["umount", "-l", victim], check=True)
            mounted.remove(victim)
            keep = [d for d in disks if d != victim]
            wait_for(lambda: [p for _, p, _, _ in _md_info(node)] == keep or w.error, 30,
                     what="the unmounted disk dropped")
            mark = w.n
            wait_for(lambda: w.n >= mark + 30 or w.error, 60, what="writes after the loss")
        finally:
            w.stop.set()
            w.join(60)
        assert w.error is None, repr(w.error)
        assert node.alive()
        wait_for(lambda: all(_recovery_idle(n) for n in c.live()), 120, what="recovery done")
        _check_all(c, model)
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", d], check=False)


def _md_info(node):
    cl = node.client()
    try:
        _, body = cl.call(proto.Op.MD_INFO, data_length=md.MD_INFO_SIZE)
    finally:
        cl.close()
    return md.unpack_md_info(body)


def test_single_disk_unmounted_leaves_the_cluster(make_cluster):
    """A single-disk node whose obj/ is a filesystem of its own that is
    unmounted (leaving the empty mountpoint on the base filesystem) has lost
    its disk: it must leave (its objects are recovered elsewhere), not take
    writes into the mountpoint while its stale copies and records are gone."""
    c = make_cluster(2)
    n = c.add_node(start=False)
    _mount_tmpfs(n.obj_dir)
    try:
        n.start()
        c.format(copies=3)
        c.nodes[0].client().new_vdi("mdr", SIZE)
        model = bytearray(os.urandom(SIZE))
        with qemu_client.open("mdr", port=c.nodes[0].port) as v:
            v.pwrite(0, bytes(model))
        w = Writer(c.nodes[0].port, [("127.0.0.1", x.port) for x in c.nodes[1:]], model)
        w.start()
        try:
            wait_for(lambda: w.n >= 20 or w.error, 60, what="the writer under way")
            subprocess.run(["umount", "-l", n.obj_dir], check=True)
            wait_for(lambda: not n.alive(), 30, what="the node without its disk to leave")
            c.wait_members(2, timeout=30)
            mark = w.n
            wait_for(lambda: w.n >= mark + 30 or w.error, 60, what="writes after the loss")
        finally:
            w.stop.set()
            w.join(60)
        assert w.error is None, repr(w.error)
        _check_all(c, model)
    finally:
        subprocess.run(["umount", "-l", n.obj_dir], check=False, capture_output=True)


@pytest.mark.parametrize("via", ["md", "peer"])
def test_every_disk_of_a_multi_disk_node_lost_under_a_writer(make_cluster, tmp_path, via):
    """Every disk of a multi-disk node vanishes at once (a controller fails):
    the node leaves like a single-disk node, and the requests it was serving
    are answered so that the gateway retries (NETWORK_ERROR), never with an
    error the writer sees."""
    c = make_cluster(3)
    disks = [str(tmp_path / f"disk{i}") for i in range(2)]
    node = _md_node(c, disks)
    c.format(copies=3)
    c.nodes[0].client().new_vdi("mdr", SIZE)
    model = bytearray(os.urandom(SIZE))
    with qemu_client.open("mdr", port=c.nodes[0].port) as v:
        v.pwrite(0, bytes(model))
    port = node.port if via == "md" else c.nodes[0].port
    w = Writer(port, [("127.0.0.1", n.port) for n in c.nodes if n.port != port], model)
    w.start()
    try:
        wait_for(lambda: w.n >= 20 or w.error, 60, what="the writer under way")
        for d in disks:
            os.rename(d, d + ".gone")
        wait_for(lambda: not node.alive(), 30, what="the node without disks to leave")
        c.wait_members(3, timeout=30)
        mark = w.n
        wait_for(lambda: w.n >= mark + 30 or w.error, 60, what="writes after the loss")
    finally:
        w.stop.set()
        w.join(120)
    assert w.error is None, repr(w.error)
    _check_all(c, model)
