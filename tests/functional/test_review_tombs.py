"""Adversarial review of the tombstones of VID recycling (``collie cluster
format -R``, ``sheep.vdi.recycle``): a LIVE VDI on a collected id must never
be dropped from the table nor have its objects skipped by recovery."""

import os
import time

import pytest
from harness import collie_ok, recovery_done, vdi_ids, wait_for

import qemu_client
from sheep import proto
from sheep.proto import Op

pytestmark = pytest.mark.cluster
MB = 1 << 20


collie = collie_ok


vids = vdi_ids


_recovered = recovery_done


def _running(c, nodes=None):
    c.wait_running(60, nodes)


def _why(c) -> str:
    return "\n".join(f"node {n.idx}: {line}" for n in c.nodes for line in n.log().splitlines()
                     if "dropped" in line or "recycled" in line)


def _req(op, flags=0, data_length=0, **fields):
    r = proto.Request(op, flags=flags, data_length=data_length)
    for k, v in fields.items():
        setattr(r.args, k, v)
    return r


def test_farm_loaded_vdi_on_a_collected_id_survives_a_join(make_cluster):
    """Farm's snapshot load (dog/farm/farm.c ``notify_vdi_add``) registers a
    vid with NOTIFY_VDI_ADD, then writes its inode.  On a -R cluster the vid
    it registers may be a collected one (tombstoned).  The VDI is live and
    written to; a node that leaves and comes back must not make the cluster
    forget it."""
    c = make_cluster(3)
    c.wait_members(3)
    p = c.nodes[0].port
    collie(p, "cluster", "format", "-R", "-c", "2")
    _running(c)
    collie(p, "vdi", "create", "b", "8M")  # vid 1
    collie(p, "vdi", "delete", "b")  # family collected: tombstone for vid 1
    assert vids(p) == {}
    cl = c.nodes[0].client()
    rsp, _ = cl.conn.request(_req(Op.NOTIFY_VDI_ADD, new_vid=1, copies=2, set_bitmap=1))
    assert rsp.result == 0
    hdr = proto.InodeHeader(name=proto.pad(b"f", 256), vdi_size=8 * MB, nr_copies=2,
                            vdi_id=1, create_time=int(time.time()) << 32)
    payload = hdr.pack() + bytes(4 * 1024)  # data_vdi_id: all 0
    cl.call(Op.CREATE_AND_WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(1), copies=2),
            payload)
    assert vids(p) == {"f": [1]}
    mine = os.urandom(MB)
    with qemu_client.open("f", port=p) as v:
        v.pwrite(0, mine)  # acknowledged
        v.flush()
    wait_for(lambda: _recovered(c), 60, what="recovery")
    ino = proto.vid_to_vdi_oid(1)
    holders = [n for n in c.nodes if os.path.exists(os.path.join(n.obj_dir, "%016x" % ino))]
    assert len(holders) == 2
    other = next(n for n in c.nodes if n not in holders)  # its disk has no record of f
    other.kill()
    c.wait_members(2)
    wait_for(lambda: _recovered(c), 60, what="recovery without the node")
    other.start()
    c.wait_members(3)
    _running(c)
    wait_for(lambda: _recovered(c), 60, what="recovery with the node back")
    for n in c.nodes:
        assert vids(n.port) == {"f": [1]}, (f"the live VDI f is gone from node {n.idx}'s table: "
                                            + _why(c))
    # its id is not free: a new VDI must not take it (and replace f's inode)
    collie(p, "vdi", "create", "g", "8M")
    assert vids(p) == {"f": [1], "g": [2]}
    for n in c.nodes:
        with qemu_client.open("f", port=n.port) as v:
            assert v.pread(0, MB) == mine, f"f read through node {n.idx}"
            v.pwrite(MB * (n.idx + 1), mine)  # acknowledged
            v.flush()
    # and the loss of a holder afterwards: recovery must rebuild f's objects
    holders[0].kill()
    c.wait_members(2)
    wait_for(lambda: _recovered(c), 60, what="recovery without a holder of f")
    for n in c.live():
        with qemu_client.open("f", port=n.port) as v:
            got = v.pread(0, 4 * MB)
        assert got == mine * 4, f"f read through node {n.idx} after the loss of node {holders[0].idx}"


def test_tombstones_of_a_lost_history_do_not_drop_a_live_vdi(make_cluster):
    """Tombstone epochs are compared with record epochs across histories.
    C, alone, deletes VDI x (vid 1: collected, tombstone at C's epoch 3) and
    dies; A and B, which never saw that delete, are force-recovered to their
    own epoch 3 and keep writing x.  When C comes back its history differs
    (its copies are demoted to stale ones), but its tombstone of vid 1, at an
    epoch number of the lost history, must not drop the forced cluster's
    live x, whose record is known from epoch 1 or 2."""
    c = make_cluster(3)
    c.wait_members(3)
    a, b, cc = c.nodes
    collie(a.port, "cluster", "format", "-R", "-c", "3")
    _running(c)
    collie(a.port, "vdi", "create", "x", "8M")  # vid 1
    d0 = os.urandom(MB)
    collie(a.port, "vdi", "write", "x", "0", str(MB), stdin=d0)
    a.kill()
    c.wait_members(2)
    b.kill()
    c.wait_members(1)
    collie(cc.port, "vdi", "delete", "x")  # C alone: vid 1 collected
    assert vids(cc.port) == {}
    assert "recycled" in cc.log()
    cc.kill()
    a.start()
    b.start()
    wait_for(lambda: b.status() == proto.SD_STATUS_WAIT, 30, what="B waiting for C")
    r = collie(b.port, "cluster", "recover", "force", "-f", ok=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    _running(c, [a, b])
    assert vids(a.port) == {"x": [1]}
    d1 = os.urandom(MB)
    with qemu_client.open("x", port=a.port) as v:
        v.pwrite(0, d1)  # acknowledged by the forced cluster
        v.flush()
    cc.start()
    c.wait_members(3)
    _running(c)
    for n in c.nodes:
        assert vids(n.port) == {"x": [1]}, (f"the live VDI x is gone from node {n.idx}'s "
                                            "table: " + _why(c))
    collie(a.port, "vdi", "create", "y", "8M")
    assert vids(a.port) == {"x": [1], "y": [2]}
    for n in c.nodes:
        with qemu_client.open("x", port=n.port) as v:
            assert v.pread(0, MB) == d1, f"x read through node {n.idx}"


def test_reused_family_survives_restart_order_and_a_node_loss(make_cluster):
    """A family (snapshot + clone) collected at one epoch, its ids 1-3
    reused in the same epoch by a new family (working VDI, snapshot, clone,
    each written).  The whole cluster dies; the nodes holding none of the
    reused inodes start first (they have only the tombstones), then the
    holders.  Every VDI of the new family must be listed and read its own
    data, also after the loss of a holder (recovery must not skip them)."""
    c = make_cluster(4)
    c.wait_members(4)
    p = c.nodes[0].port
    collie(p, "cluster", "format", "-R", "-c", "2")
    _running(c)
    collie(p, "vdi", "create", "b", "8M")  # 1
    collie(p, "vdi", "snapshot", "-s", "s", "b")  # 1 snapshot, 2 working
    collie(p, "vdi", "clone", "-s", "s", "b", "bc")  # 3
    collie(p, "vdi", "delete", "bc")
    collie(p, "vdi", "delete", "b")
    collie(p, "vdi", "delete", "-s", "s", "b")  # the family is collected
    assert vids(p) == {}
    d = [os.urandom(MB) for _ in range(3)]
    collie(p, "vdi", "create", "n", "8M")  # 1
    collie(p, "vdi", "write", "n", "0", str(MB), stdin=d[0])
    collie(p, "vdi", "snapshot", "-s", "t", "n")  # 1 snapshot, 2 working
    collie(p, "vdi", "write", "n", str(MB), str(MB), stdin=d[1])
    collie(p, "vdi", "clone", "-s", "t", "n", "m")  # 3
    collie(p, "vdi", "write", "m", str(2 * MB), str(MB), stdin=d[2])
    want = {"n": [1, 2], "m": [3]}
    assert vids(p) == want
    wait_for(lambda: _recovered(c), 60, what="recovery")
    inodes = [proto.vid_to_vdi_oid(v) for v in (1, 2, 3)]
    holders = [n for n in c.nodes
               if any(os.path.exists(os.path.join(n.obj_dir, "%016x" % o)) for o in inodes)]
    others = [n for n in c.nodes if n not in holders]
    for n in c.nodes:
        n.kill()
    for n in others + holders:
        n.start()
    c.wait_members(4, timeout=60)
    _running(c)
    wait_for(lambda: _recovered(c), 60, what="recovery after the restart")

    def check(nodes):
        for n in nodes:
            assert vids(n.port) == want, f"node {n.idx}: " + _why(c)
            with qemu_client.open("n", port=n.port) as v:
                assert v.pread(0, 2 * MB) == d[0] + d[1], f"n through node {n.idx}"
            with qemu_client.open("m", port=n.port) as v:
                assert v.pread(0, 3 * MB) == d[0] + bytes(MB) + d[2], f"m through node {n.idx}"
    check(c.nodes)
    holders[0].kill()
    c.wait_members(3)
    wait_for(lambda: _recovered(c), 60, what="recovery without a holder")
    check(c.live())


def test_format_after_recycling_forgets_the_tombstones(make_cluster):
    """A tombstone taken at epoch E of the old cluster must not outlive a
    format: the new cluster's epochs start again below E, and its VDI on the
    same id (created at a lower epoch number) must survive a restart."""
    c = make_cluster(3)
    c.wait_members(3)
    p = c.nodes[0].port
    collie(p, "cluster", "format", "-R", "-c", "2")
    _running(c)
    for i in range(3):  # push the epoch up: a node leaves and comes back
        c.nodes[2].kill()
        c.wait_members(2)
        c.nodes[2].start()
        c.wait_members(3)
        _running(c)
    collie(p, "vdi", "create", "b", "8M")  # 1
    collie(p, "vdi", "delete", "b")  # tombstone of 1 at a high epoch
    collie(p, "cluster", "format", "-R", "-c", "2", stdin=b"yes\n")
    _running(c)
    mine = os.urandom(MB)
    collie(p, "vdi", "create", "n", "8M")  # 1 again, at the new cluster's low epoch
    collie(p, "vdi", "write", "n", "0", str(MB), stdin=mine)
    for n in c.nodes:
        n.kill()
    for n in reversed(c.nodes):
        n.start()
    c.wait_members(3, timeout=60)
    _running(c)
    for n in c.nodes:
        assert vids(n.port) == {"n": [1]}, f"node {n.idx}: " + _why(c)
        with qemu_client.open("n", port=n.port) as v:
            assert v.pread(0, MB) == mine, f"n through node {n.idx}"
