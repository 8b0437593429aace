"""Adversarial review: a write of a writer whose lock is being taken away
can land on some replicas and be refused (FENCED) by others.

Nothing undoes the part that landed, and that copy has the greater version
(one more write), so the fenced write later *wins*: reads through its node
return it, and ``collie vdi check`` (newest copy wins) copies it to every
replica, after the new holder took the VDI.

Timing made deterministic with SIGSTOP (local driver: a stopped node is not
removed, it only applies events late):

1. writer A (gateway G, which is also replica 1 of object 0) writes X while
   replica 2 (R) is stopped: G's local leg applies X, the peer write to R
   waits in R's socket;
2. the operator force-unlocks the VDI through a third node T and writer B
   locks it there (both cluster ops complete without R);
3. R resumes: it learns about the unlock before it runs A's peer write, and
   refuses it: A gets FENCED.  G keeps X.

Second test: the same, but B also snapshots the VDI before R resumes.
``Locks.fence_check`` returns early for snapshot VDIs, so R *accepts* A's
write: it is acknowledged to the fenced writer and sits in B's snapshot (and
in what B's working VDI reads).
"""

import os
import signal
import threading

import pytest
from harness import wait_for
from locking import collie, locked_cluster, new_vdi

import qemu_client
from sheep import proto
from sheep.ring import Ring
from sheep.store import meta as M

pytestmark = [pytest.mark.review, pytest.mark.cluster, pytest.mark.lock]


def _local(node, oid, off=0, length=4096):
    with open(os.path.join(node.obj_dir, "%016x" % oid), "rb") as f:
        f.seek(off)
        return f.read(length)


def _version(node, oid):
    with open(os.path.join(node.store, "meta", "%016x" % oid), "rb") as f:
        raw = f.read(M.HDR_LEN)
    return M.fmt_version(int.from_bytes(raw[M.VERSION_OFF:M.VERSION_OFF + 8], "little"))


def test_a_fenced_write_lands_on_one_replica_and_wins(make_cluster):
    c = locked_cluster(make_cluster, n=3, copies=2)
    vid = new_vdi(c)
    oid = proto.vid_to_data_oid(vid, 0)
    ring = Ring(c.nodes[0].client().nodes())
    ports = [n.port for n in ring.replicas(oid, 2)]
    g = next(n for n in c.nodes if n.port == ports[0])
    r = next(n for n in c.nodes if n.port == ports[1])
    t = next(n for n in c.nodes if n.port not in ports)

    a = qemu_client.open("vm", port=g.port, failover=False)
    a.pwrite(0, b"A" * 4096)
    result = {}

    def fenced_write():
        try:
            a.pwrite(0, b"X" * 4096)
            result["a"] = "acknowledged"
        except Exception as e:  # noqa: BLE001
            result["a"] = repr(e)

    r.kill(signal.SIGSTOP)
    b = None
    try:
        th = threading.Thread(target=fenced_write, daemon=True)
        th.start()
        wait_for(lambda: _local(g, oid) == b"X" * 4096, 10, what="X on the gateway's replica")
        u = collie(t.port, "vdi", "lock", "unlock", "vm")
        assert u.returncode == 0, u.stderr
        b = qemu_client.open("vm", port=t.port, failover=False)  # the new holder
    finally:
        r.kill(signal.SIGCONT)
    th.join(60)
    print("writer A's write:", result.get("a"))
    print("after the takeover: G", _local(g, oid)[:4], _version(g, oid),
          "R", _local(r, oid)[:4], _version(r, oid))
    try:
        b.pwrite(8192, b"B" * 4096)  # the new holder writes elsewhere in the object
        reads = {}
        for n in (g, r):
            cl = n.client()
            try:
                reads[n.port] = cl.read_obj(oid, 0, 4096)[:4]
            finally:
                cl.close()
        print("reads of block 0 through each replica:", reads)
        print("versions: G", _version(g, oid), "R", _version(r, oid))
        chk = collie(t.port, "vdi", "check", "vm")
        print(chk.stdout.decode(), chk.stderr.decode())
        after = b.pread(0, 4096)[:4]
        print("block 0 read by the new holder after vdi check:", after)
        landed = [n.port for n in (g, r) if _local(n, oid) == b"X" * 4096]
        # GUARANTEE 2: a write of a fenced writer never lands anywhere
        assert not ("FENCED" in result.get("a", "") and landed), (
            f"writer A was told FENCED, but its write is on {landed}; "
            f"after vdi check the new holder reads {after!r}")
        assert len(set(reads.values())) == 1, f"replicas disagree: {reads}"
    finally:
        b.close()
        try:
            a.close()
        except Exception:  # noqa: BLE001 - its lock is gone
            pass


def _plan(c, copies=2):
    """A VDI name and data index such that object ``idx`` lives on (G, R) while
    neither the VDI's inode nor its snapshot successor's inode (vid + 1) lives
    on R: R can be stopped while the new holder locks and snapshots."""
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


def test_a_fenced_write_lands_everywhere_once_the_new_holder_took_a_snapshot(make_cluster):
    """``Locks.fence_check`` skips fencing for objects of snapshots (the
    gateway answers READONLY for those) -- but a replica never runs the
    gateway's READONLY check.  So once the new holder has snapshotted the VDI,
    a write of the fenced writer that is still on its way passes every
    replica's fence check and lands in the snapshot -- which is also what the
    new holder's working VDI reads until it overwrites the object."""
    c = locked_cluster(make_cluster, n=4, copies=2)
    name, idx, g, r, t = _plan(c)
    vid = new_vdi(c, name)
    assert vid == (proto.vdi_name_hash(name) or 1)
    oid = proto.vid_to_data_oid(vid, idx)
    off = idx * proto.SD_DATA_OBJ_SIZE

    a = qemu_client.open(name, port=g.port, failover=False)
    a.pwrite(off, b"A" * 4096)
    result = {}

    def fenced_write():
        try:
            a.pwrite(off, b"X" * 4096)
            result["a"] = "acknowledged"
        except Exception as e:  # noqa: BLE001
            result["a"] = repr(e)

    r.kill(signal.SIGSTOP)
    b = None
    try:
        th = threading.Thread(target=fenced_write, daemon=True)
        th.start()
        wait_for(lambda: _local(g, oid) == b"X" * 4096, 10, what="X on the gateway's replica")
        u = collie(t.port, "vdi", "lock", "unlock", name)
        assert u.returncode == 0, u.stderr
        b = qemu_client.open(name, port=t.port, failover=False)  # the new holder
        b.snapshot_create("s1")  # the image as B took it over
        assert b.vid != vid
    finally:
        r.kill(signal.SIGCONT)
    th.join(60)
    print("writer A's write:", result.get("a"))
    try:
        snap = qemu_client.open(name, port=t.port, snapshot="s1", failover=False)
        try:
            in_snapshot = snap.pread(off, 4096)[:4]
        finally:
            snap.close()
        seen_by_b = b.pread(off, 4096)[:4]
        print("snapshot s1:", in_snapshot, " new holder reads:", seen_by_b,
              " copies: G", _local(g, oid)[:4], "R", _local(r, oid)[:4])
        assert result.get("a") != "acknowledged", (
            "the fenced writer's write was ACKNOWLEDGED after the force-unlock, the new "
            f"holder's lock and its snapshot; snapshot s1 reads {in_snapshot!r}, "
            f"the new holder reads {seen_by_b!r}")
        assert in_snapshot == b"AAAA" and seen_by_b == b"AAAA"
    finally:
        b.close()
        try:
            a.close()
        except Exception:  # noqa: BLE001
            pass
