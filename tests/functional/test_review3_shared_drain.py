"""Review 3: a shared lock is granted while a former exclusive holder's writes
are still landing (draining), so those writes can land after the new
holders' writes.

``LockTable.lock`` (sheep/vdi/lock_table.py) calls ``_settled`` -- "no grant
while a former holder's writes may still be landing" -- for exclusive and
read holds, but not for ``shared`` ones (Sheepdog 1.0's LOCK_VDI type 1,
iSCSI multipath; also LOCK_MODE_WRITE with type shared).  ``lock_vdi``
(sheep/vdi/locks.py) waits for the drain on the gateway *before* its cluster
operation, but that is no guarantee: the grant that ends can be applied
between that wait and the lock's main step (both queued behind a running
cluster operation, here), and after ``DRAIN_WAIT`` the wait gives up
silently.  The main step is the only place that can refuse.

Shared writers' writes carry no generation, so nothing fences anything
between them and the draining writes: replicas keep accepting the former
holder's writes in flight (and its gateway's retries of them) after the
shared holders wrote.

Timing is made deterministic with SIGSTOP (local driver: a stopped node is
not removed, it only answers late): R, a replica of A's object X, is
stopped so A's write stays in flight (its lock drains); U is stopped so an
unrelated VDI creation holds the cluster-op turn while the unlock and the
shared lock queue behind it.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from harness import wait_for
from locking import in_thread, locked_cluster, new_vdi, peer_write

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES
from sheep.proto.placement import Ring
from sheep.vdi.lock_table import EXCL, SHARED, LockTable

pytestmark = [pytest.mark.review]
OBJ = proto.SD_DATA_OBJ_SIZE
COPIES = 2


def test_the_lock_table_gives_no_shared_hold_while_an_exclusive_grant_drains():
    """The state machine alone: every way an exclusive grant ends."""
    for end in ("release", "force", "expire"):
        t = LockTable()
        t.lock(1, "n0:1", 10, EXCL)
        getattr(t, {"release": "release", "force": "force_unlock", "expire": "expire"}[end])(
            *{"release": (1, 10), "force": (1,), "expire": ("n0:1", 10)}[end])
        assert t.draining
        try:
            t.lock(1, "n1:1", 11, SHARED)
        except Exception as e:  # noqa: BLE001
            assert getattr(e, "code", None) == CODES["VDI_LOCKED"], e
        else:
            pytest.fail(f"after {end}: a shared hold was granted while the former "
                        f"exclusive holder's writes were still landing")


def _local(node, oid, length=4096):
    with open(os.path.join(node.obj_dir, "%016x" % oid), "rb") as f:
        return f.read(length)


def _plan(c):
    """(name, x, y, G, R, T, U, slow name): V's object x on {G, R}, object y
    and V's inode on {G, T}; the inode of VDI ``slow`` on U and not on R."""
    ring = Ring(c.nodes[0].client().nodes())
    ports = [n.port for n in c.nodes]
    by_port = {n.port: n for n in c.nodes}

    def on(oid):
        return [n.port for n in ring.replicas(oid, COPIES)]
    for k in range(3000):
        name = f"vm{k}"
        vid = proto.vdi_name_hash(name) or 1
        ino = set(on(proto.vid_to_vdi_oid(vid)))
        for x in range(4):
            g, r = on(proto.vid_to_data_oid(vid, x))
            if not ino <= (set(ports) - {r}) or g not in ino:
                continue
            t = next(iter(ino - {g}))
            u = next(p for p in ports if p not in (g, r, t))
            for y in range(4):
                if y != x and set(on(proto.vid_to_data_oid(vid, y))) == {g, t}:
                    for j in range(3000):
                        slow = f"slow{j}"
                        svid = proto.vdi_name_hash(slow)
                        si = set(on(proto.vid_to_vdi_oid(svid)))
                        if u in si and r not in si and abs(svid - vid) > 16:
                            return (name, x, y, *(by_port[p] for p in (g, r, t, u)), slow)
    raise AssertionError("no suitable placement")



def _collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          capture_output=True, timeout=90)


@pytest.mark.cluster
@pytest.mark.lock
def test_a_shared_lock_is_not_granted_while_a_former_writers_write_is_landing(make_cluster):
    c = locked_cluster(make_cluster, n=4, copies=COPIES)
    name, x, y, g, r, t, u, slow = _plan(c)
    vid = new_vdi(c, name)
    a = qemu_client.open(name, port=g.port, failover=False)
    gen_a = a.generation
    g_index = [n.port for n in g.client().nodes()].index(g.port)
    a.pwrite(x * OBJ, b"A" * 4096)
    a.pwrite(y * OBJ, b"A" * 4096)
    oid_x, oid_y = proto.vid_to_data_oid(vid, x), proto.vid_to_data_oid(vid, y)
    shared = None
    r.kill(signal.SIGSTOP)
    u.kill(signal.SIGSTOP)
    try:
        # A's write to X: applied on G, waits for R; A's grant will drain
        wa, ra = in_thread(lambda: a.pwrite(x * OBJ, b"X" * 4096))
        wait_for(lambda: _local(g, oid_x) == b"X" * 4096, 10, what="X on G")
        # an unrelated cluster op holds the turn (its inode write waits for U)
        wc, rc = in_thread(lambda: _collie(t.port, "vdi", "create", slow, "4M"))
        time.sleep(1.0)
        # the operator's unlock, then a shared lock (Sheepdog 1.0, LOCK_VDI
        # type 1), both queued behind it; the shared lock's gateway sees no
        # drain yet
        wu, ru = in_thread(lambda: _collie(t.port, "vdi", "lock", "unlock", name))
        time.sleep(1.0)
        shared = t.client()
        ws, rs = in_thread(lambda: shared.call(
            proto.Op.LOCK_VDI, proto.VdiArgs(type=proto.LOCK_TYPE_SHARED),
            proto.vdi_name_payload(name), check=False))
        time.sleep(1.0)
        u.kill(signal.SIGCONT)  # the create ends; unlock and shared lock follow
        wc.join(30)
        wu.join(30)
        ws.join(30)
        assert not ws.is_alive()
        result = rs["v"][0].result
        landing = wa.is_alive()  # A's write still on its way (R is stopped)
        late = None
        if result == 0 and landing:
            # the shared holder writes Y (no generation: Sheepdog 1.0), acknowledged
            shared.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=oid_y), b"S" * 4096)
            assert _local(g, oid_y) == b"S" * 4096
            # A's gateway (re)sending a write of A's to Y, as its fan-out would
            late, _ = peer_write(g, oid_y, b"a" * 4096, gen_a, g_index)
        assert not (result == 0 and landing), (
            f"a shared lock was granted while the former holder's write was still landing; "
            f"afterwards a write of the former holder to G (a replica) was answered "
            f"{late:#x} and G's copy of Y now holds {_local(g, oid_y)[:4]!r}... "
            f"over the shared holder's acknowledged write")
    finally:
        u.kill(signal.SIGCONT)
        r.kill(signal.SIGCONT)
        if shared is not None:
            shared.close()
        try:
            a.close()
        except Exception:  # noqa: BLE001 - its lock is gone
            pass
