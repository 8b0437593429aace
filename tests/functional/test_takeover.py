"""A lock taken away while its writer's write is still on its way (found by an
adversarial review of the fencing; docs/data-safety.md "Fencing").

Each replica checks a write's lock generation against its own copy of the
lock table, and the tables learn of an unlock at slightly different
moments: a write admitted just before the unlock could land on the replicas
that had not heard of it yet and be refused by the others — left on some
replicas only, where its greater version would later win (recovery,
``vdi check``) after the new holder had taken the VDI.  Now a grant that
ends drains (``sheep.vdi.lock_table``): replicas still take the former holder's
writes in flight, its gateway admits no new one and says when they are done,
and nobody else gets the VDI before that.  So such a write lands everywhere
before the next holder starts, or nowhere.

Timing is made deterministic with SIGSTOP (local driver: a stopped node is
not removed, it only answers late): writer A's gateway G is also replica 1
of the object, replica 2 (R) is stopped while A's write X is in flight.
"""

import os
import signal

import pytest
from harness import wait_for
from locking import collie, in_thread, locked_cluster, new_vdi

import qemu_client
from sheep import proto
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster, pytest.mark.lock]
OBJ = proto.SD_DATA_OBJ_SIZE


def _local(node, oid, off=0, length=4096):
    with open(os.path.join(node.obj_dir, "%016x" % oid), "rb") as f:
        f.seek(off)
        return f.read(length)


def _plan(c, copies=2):
    """A VDI name and data index whose object lives on (G, R) while neither
    the VDI's inode nor its snapshot successor's (vid + 1) lives on R: R can
    be stopped while the new holder locks and snapshots."""
    ring = Ring(c.nodes[0].client().nodes())
    by_port = {n.port: n for n in c.nodes}
    for k in range(1000):
        name = f"vm{k}"
        vid = proto.vdi_name_hash(name) or 1
        inode_nodes = {n.port for v in (vid, vid + 1)
                       for n in ring.replicas(proto.vid_to_vdi_oid(v), copies)}
        for idx in range(4):
            pl = [n.port for n in ring.replicas(proto.vid_to_data_oid(vid, idx), copies)]
            if pl[1] not in inode_nodes:
                rest = [p for p in by_port if p not in pl]
                return name, idx, by_port[pl[0]], by_port[pl[1]], by_port[rest[0]]
    raise AssertionError("no suitable placement")


@pytest.mark.parametrize("snapshot", [False, True], ids=["write", "write-then-snapshot"])
def test_a_write_in_flight_when_the_lock_is_broken_lands_everywhere_before_the_next_holder(
        make_cluster, snapshot):
    c = locked_cluster(make_cluster, n=4, copies=2)
    name, idx, g, r, t = _plan(c)
    vid = new_vdi(c, name)
    oid = proto.vid_to_data_oid(vid, idx)
    off = idx * OBJ
    a = qemu_client.open(name, port=g.port, failover=False)
    a.pwrite(off, b"A" * 4096)
    r.kill(signal.SIGSTOP)
    try:
        wa, ra = in_thread(lambda: a.pwrite(off, b"X" * 4096))
        wait_for(lambda: _local(g, oid) == b"X" * 4096, 10, what="X on the gateway's replica")
        u = collie(t.port, "vdi", "lock", "unlock", name)
        assert u.returncode == 0, u.stderr
        # the new holder must wait: A's write is still landing
        wb, rb = in_thread(lambda: qemu_client.open(name, port=t.port, failover=False))
        wb.join(1.0)
        assert wb.is_alive(), "the VDI was granted while a former holder's write was landing"
    finally:
        r.kill(signal.SIGCONT)
    wa.join(60)
    wb.join(60)
    assert "e" not in rb, rb
    b = rb["v"]
    try:
        # A's write was admitted before the unlock: it landed on every replica,
        # and A was told so
        assert "e" not in ra, ra
        assert _local(g, oid) == _local(r, oid) == b"X" * 4096
        if snapshot:
            b.snapshot_create("s1")
            with qemu_client.open(name, port=t.port, snapshot="s1", failover=False) as snap:
                assert snap.pread(off, 4096) == b"X" * 4096
        b.pwrite(off + 8192, b"B" * 4096)
        assert b.pread(off, 4096) == b"X" * 4096
        chk = collie(t.port, "vdi", "check", name)
        assert chk.returncode == 0 and b"fixed" not in chk.stdout, chk.stdout
        # and nothing more of A's can land: its writes and reads are refused
        with pytest.raises(qemu_client.FencedError):
            a.pwrite(off, b"Y" * 4096)
        assert _local(g, oid) == _local(r, oid) == b"X" * 4096
    finally:
        b.close()
        try:
            a.close()
        except qemu_client.FencedError:
            pass


def test_a_write_in_flight_when_a_snapshot_is_taken_lands_in_it_everywhere(make_cluster):
    """A third party snapshots the VDI while its writer's write is in flight:
    the write belongs to the snapshot on every replica (it was admitted
    before), and the writer, continuing on the new working VDI, sees it."""
    c = locked_cluster(make_cluster, n=4, copies=2)
    name, idx, g, r, t = _plan(c)
    vid = new_vdi(c, name)
    oid = proto.vid_to_data_oid(vid, idx)
    off = idx * OBJ
    a = qemu_client.open(name, port=g.port, failover=False)
    try:
        a.pwrite(off, b"A" * 4096)
        r.kill(signal.SIGSTOP)
        try:
            wa, ra = in_thread(lambda: a.pwrite(off, b"X" * 4096))
            wait_for(lambda: _local(g, oid) == b"X" * 4096, 10, what="X on the gateway's replica")
            # the snapshot waits for the write in flight (it freezes the VDI
            # before copying its index), which waits for R
            ws, rs = in_thread(lambda: collie(t.port, "vdi", "snapshot", "-s", "s1", name))
            ws.join(2.0)
            assert ws.is_alive(), "the snapshot did not wait for the write in flight"
        finally:
            r.kill(signal.SIGCONT)
        ws.join(60)
        assert "e" not in rs and rs["v"].returncode == 0, rs
        wa.join(60)
        assert "e" not in ra, ra
        assert _local(g, oid) == _local(r, oid) == b"X" * 4096
        a.pwrite(off + 4096, b"Z" * 4096)  # goes to the new working VDI (copy-on-write)
        assert a.pread(off, 8192) == b"X" * 4096 + b"Z" * 4096
        with qemu_client.open(name, port=t.port, snapshot="s1", failover=False) as snap:
            assert snap.pread(off, 8192) == b"X" * 4096 + bytes(4096)
    finally:
        a.close()
