"""Multi-disk nodes (``sheep BASE,DIR1,DIR2``, docs/operations.md "Disks"):
objects on 1.0's md placement, MD_INFO / MD_PLUG / MD_UNPLUG, a lost disk dropped while a
writer runs, and the node re-weighted each time."""

import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
from harness import vdi_oids, wait_for

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES
from sheep.store import md

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]
MiB = 1 << 20
SIZE = 12 * MiB


def _md_node(c, disks):
    """A node started with ``store,disk1,disk2,...``."""
    node = c.add_node(start=False)
    argv = node.argv()
    node.argv = lambda: argv[:-1] + [",".join([node.store] + disks)]
    node.start()
    return node


def _md_info(node):
    cl = node.client()
    try:
        _, body = cl.call(proto.Op.MD_INFO, data_length=md.MD_INFO_SIZE)
    finally:
        cl.close()
    return md.unpack_md_info(body)


def _md_call(node, op, paths):
    cl = node.client()
    try:
        rsp, _ = cl.call(op, payload=",".join(paths).encode() + b"\0", check=False)
        return rsp.result
    finally:
        cl.close()


def _vnodes(node):
    cl = node.client()
    try:
        return {n.port: n.nr_vnodes for n in cl.nodes()}
    finally:
        cl.close()


def _placed(node, disks, oids):
    """Every oid is on exactly its 1.0 md home among ``disks`` (and not in
    BASE/obj), and recovery is idle."""
    place = md.Placement([(d, md.disk_space(d)) for d in disks])
    for oid in oids:
        name = "%016x" % oid
        have = [d for d in disks if os.path.exists(os.path.join(d, name))]
        if have != [disks[place.disk_of(oid)]]:
            return False
        if os.path.exists(os.path.join(node.obj_dir, name)):
            return False
    cl = node.client()
    try:
        return cl.call(proto.Op.STAT_RECOVERY, data_length=24)[1][0] == 0
    finally:
        cl.close()


def _read_all(node, name):
    with qemu_client.open(name, port=node.port) as v:
        return v.pread(0, SIZE)


def test_md_placement_plug_unplug_reweight(make_cluster, tmp_path):
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    node = _md_node(c, disks[:2])
    c.format(copies=3)
    vid = c.nodes[0].client().new_vdi("md", SIZE)
    blob = os.urandom(SIZE)
    with qemu_client.open("md", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    oids = vdi_oids(vid, SIZE)
    info = _md_info(node)
    assert [(i, p) for i, p, _, _ in info] == [(0, disks[0]), (1, disks[1])]
    assert all(free > 0 for _, _, free, _ in info) and sum(u for *_, u in info) > 0
    wait_for(lambda: _placed(node, disks[:2], oids), 30, what="objects on their md homes")
    assert all(os.listdir(d) for d in disks[:2])  # spread over both disks
    before = _vnodes(node)[node.port]

    # plug: the node weighs more, objects move to their new homes.  Pick a
    # new disk name that takes some of the objects (its space is recorded
    # here first, and the daemon keeps the recorded value, as 1.0 does)
    for k in range(20):
        cand = str(tmp_path / f"new{k}")
        os.makedirs(cand)
        spaces = [(d, md.disk_space(d)) for d in disks[:2] + [cand]]
        if any(md.Placement(spaces).disk_of(o) == 2 for o in oids):
            break
    disks[2] = cand
    assert _md_call(node, proto.Op.MD_PLUG, [disks[2], disks[0]]) == 0
    assert [p for _, p, _, _ in _md_info(node)] == disks
    wait_for(lambda: _vnodes(node)[node.port] > before, 30, what="more vnodes after plug")
    wait_for(lambda: _placed(node, disks, oids), 60, what="objects moved to the new disk")
    assert any(os.path.exists(os.path.join(disks[2], "%016x" % o)) for o in oids)
    assert _read_all(node, "md") == blob
    # plugging only a known disk changes nothing: UNKNOWN, as in 1.0
    assert _md_call(node, proto.Op.MD_PLUG, [disks[1]]) == CODES["UNKNOWN"]

    # unplug: drained first, then gone; weight goes back down
    plugged = _vnodes(node)[node.port]
    assert _md_call(node, proto.Op.MD_UNPLUG, [disks[0]]) == 0
    assert [p for _, p, _, _ in _md_info(node)] == disks[1:]
    assert not any(n for n in os.listdir(disks[0]) if not n.startswith("."))
    wait_for(lambda: _vnodes(node)[node.port] < plugged, 30, what="fewer vnodes after unplug")
    wait_for(lambda: _placed(node, disks[1:], oids), 60, what="objects placed after unplug")
    for n in c.live():
        assert _read_all(n, "md") == blob
    assert _md_call(node, proto.Op.MD_UNPLUG, [disks[0]]) == CODES["UNKNOWN"]


def _remount_ro(path):
    """Bind-mount ``path`` on itself and make that mount read-only.  The
    kernel refuses the read-only remount (EBUSY) while a file on the mount is
    open for writing -- the running writer's object writes have one open for
    a moment -- so it is retried until it goes through."""
    subprocess.run(["mount", "--bind", path, path], check=True)
    errors = []

    def remount():
        r = subprocess.run(["mount", "-o", "remount,bind,ro", path],
                           capture_output=True, text=True, check=False)
        errors[:] = [r.stderr.strip()]
        return r.returncode == 0
    try:
        wait_for(remount, 30, what=f"the read-only remount of {path}")
    except AssertionError as e:
        raise AssertionError(f"{e}: {errors}") from None


@pytest.mark.parametrize("via", ["md", "peer"])
@pytest.mark.parametrize("how", ["vanish", "readonly"])
def test_lost_disk_with_running_writer(make_cluster, tmp_path, how, via):
    """The disk vanishes (directory removed) or turns read-only (EROFS on
    writes, what a filesystem does after an I/O error with errors=remount-ro);
    the writer talks to the multi-disk node itself, or to another node (the
    multi-disk node then only sees peer requests)."""
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    node = _md_node(c, disks)
    c.format(copies=3)
    vid = node.client().new_vdi("lost", SIZE)
    model = bytearray(os.urandom(SIZE))
    with qemu_client.open("lost", port=node.port) as v:
        v.pwrite(0, bytes(model))
    oids = vdi_oids(vid, SIZE)
    wait_for(lambda: _placed(node, disks, oids), 30, what="objects on their md homes")
    victim = max(disks, key=lambda d: len(os.listdir(d)))
    on_victim = [o for o in oids if os.path.exists(os.path.join(victim, "%016x" % o))]
    assert on_victim
    before = _vnodes(node)[node.port]
    epoch = node.client().cluster_info().epoch

    stop = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def writer():
        rnd = random.Random(7)
        try:
            port = node.port if via == "md" else c.nodes[0].port
            with qemu_client.open("lost", port=port) as v:
                while not stop.is_set():
                    off = rnd.randrange(0, SIZE - 8192) & ~511
                    data = rnd.randbytes(8192)
                    v.pwrite(off, data)
                    model[off:off + len(data)] = data
                    writes[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: writes[0] >= 20 or errors, 30, what="the writer to run")
        if how == "vanish":
            gone = victim + ".gone"
            os.rename(victim, gone)  # the disk vanishes at once
            shutil.rmtree(gone)
        else:
            _remount_ro(victim)
        keep = [d for d in disks if d != victim]
        wait_for(lambda: [p for _, p, _, _ in _md_info(node)] == keep, 30,
                 what="the lost disk dropped")
        wait_for(lambda: _vnodes(node).get(node.port, before) < before, 30,
                 what="the node re-weighted")
        mark = writes[0]
        wait_for(lambda: writes[0] >= mark + 20 or errors, 30, what="writes after the loss")
    finally:
        stop.set()
        t.join(60)
        if how == "readonly":
            subprocess.run(["umount", "-l", victim], check=False)
    assert not errors, errors
    assert node.alive() and len(_vnodes(c.nodes[0])) == 3  # the node stayed
    assert node.client().cluster_info().epoch > epoch
    wait_for(lambda: _placed(node, keep, oids), 60, what="the lost disk's objects recovered")
    for o in on_victim:
        assert any(os.path.exists(os.path.join(d, "%016x" % o)) for d in keep)
    for n in c.live():
        assert _read_all(n, "lost") == bytes(model)
    assert os.path.exists(victim) == (how == "readonly")


def _collie(port, *argv, stdin=""):
    return subprocess.run([sys.executable, "-m", "collie", "node", "md", *argv, "-p", str(port)],
                          capture_output=True, text=True, input=stdin, timeout=60,
                          check=False)


def test_collie_node_md(make_cluster, tmp_path):
    c = make_cluster(1)
    disks = [str(tmp_path / f"disk{i}") for i in range(3)]
    node = _md_node(c, disks[:2])
    c.format(copies=2)
    r = _collie(node.port, "info")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Id\tSize\tUsed\tAvail\tUse%\tPath"
    assert [ln.split("\t")[0] for ln in lines[1:]] == [" 0", " 1"]
    assert [ln.split("\t")[-1] for ln in lines[1:]] == disks[:2]
    r = _collie(c.nodes[0].port, "info", "-A", "-r")
    assert r.returncode == 0, r.stderr
    raw = r.stdout.splitlines()
    want = {c.nodes[0].port: [os.path.join(c.nodes[0].store, "obj")], node.port: disks[:2]}
    assert [(ln.split()[0], ln.split()[-1]) for ln in raw] == [
        (f"127.0.0.1:{port}", path) for port in sorted(want) for path in want[port]]
    # plug asks first: anything but "yes" changes nothing
    r = _collie(node.port, "plug", disks[2], stdin="no\n")
    assert r.returncode == 0 and "will be purged" in r.stdout
    assert len(_md_info(node)) == 2
    r = _collie(node.port, "plug", disks[2], "-f")
    assert r.returncode == 0, r.stderr
    assert [p for _, p, _, _ in _md_info(node)] == disks
    r = _collie(node.port, "unplug", f"{disks[0]},{disks[1]}", "-f")
    assert r.returncode == 0, r.stderr
    assert [p for _, p, _, _ in _md_info(node)] == [disks[2]]
    r = _collie(node.port, "unplug", disks[2], "-f")  # never the last disk
    assert r.returncode == 1
    assert "Failed to execute request, look for sheep.log" in r.stderr


def test_md_node_restart_keeps_placement(make_cluster, tmp_path):
    """A killed multi-disk node restarted with the same disks rejoins; its
    objects end up on their md homes again and read back intact."""
    c = make_cluster(2)
    disks = [str(tmp_path / f"disk{i}") for i in range(2)]
    node = _md_node(c, disks)
    c.format(copies=3)
    vid = node.client().new_vdi("rs", SIZE)
    blob = os.urandom(SIZE)
    with qemu_client.open("rs", port=node.port) as v:
        v.pwrite(0, blob)
    oids = vdi_oids(vid, SIZE)
    wait_for(lambda: _placed(node, disks, oids), 30, what="objects on their md homes")
    node.kill()
    c.wait_members(2)
    with qemu_client.open("rs", port=c.nodes[0].port) as v:  # written while it is away
        v.pwrite(0, blob[:MiB][::-1])
    blob = blob[:MiB][::-1] + blob[MiB:]
    node.start()
    c.wait_members(3)
    wait_for(lambda: _placed(node, disks, oids), 60, what="objects placed after restart")
    assert [p for _, p, _, _ in _md_info(node)] == disks
    for n in c.live():
        assert _read_all(n, "rs") == blob
