"""Review 3: a snapshot taken under a running writer lost the writer's new
objects from the working VDI (an acknowledged write was gone).  Fixed by the
snapshot's freeze (sheep.lock_table): the writer's writes wait (AGAIN) until
the snapshot is taken, then land in the new working VDI.  What was seen:

``VdiTable._snapshot_work`` (sheep/vdi/table.py) reads the working VDI W's
``data_vdi_id`` index (``_derive`` -> ``_read_index``) and writes the new
working VDI N's inode with a copy of it -- in the cluster-op *work* step,
while W's exclusive holder is still W's writer: the lock moves to N
(``LockTable.move``) and W becomes a snapshot only in the *main* step,
afterwards.  A write that creates a new object of W in between
(CREATE_AND_WRITE_OBJ of W's object, then WRITE_OBJ of W's index entry, both
accepted: W is still the working VDI and the grant stands) is acknowledged,
but N's index -- copied before -- does not point to the object.  Draining
only covers writes still in flight at the main step; this write is complete
by then.  The writer, told READONLY on its next write, reloads N's inode
and from then on reads zeros where it wrote; so does anybody opening the
VDI afterwards.  The data is only in the snapshot.

Timing is made deterministic with SIGSTOP (local driver: a stopped node is
not removed, it only answers late): a replica R of N's inode is stopped, so
the work step waits in N's inode write after it read W's index; R holds
neither W's inode nor the new object, so the writer's creation completes
meanwhile.
"""

import signal
import subprocess
import sys
import threading
import time

import pytest
from locking import locked_cluster, new_vdi

import qemu_client
from sheep import proto
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster, pytest.mark.lock, pytest.mark.review]
OBJ = proto.SD_DATA_OBJ_SIZE
COPIES = 2


def _plan(c):
    """A name, a data index X and a node R: R holds a replica of the
    snapshot successor's inode (vid + 1) but neither the VDI's inode nor
    its data objects 0 and X."""
    ring = Ring(c.nodes[0].client().nodes())
    by_port = {n.port: n for n in c.nodes}

    def on(oid):
        return {n.port for n in ring.replicas(oid, COPIES)}
    for k in range(2000):
        name = f"vm{k}"
        vid = proto.vdi_name_hash(name) or 1
        for r in on(proto.vid_to_vdi_oid(vid + 1)):
            if r in on(proto.vid_to_vdi_oid(vid)) or r in on(proto.vid_to_data_oid(vid, 0)):
                continue
            for idx in range(1, 4):
                if r not in on(proto.vid_to_data_oid(vid, idx)):
                    others = [n for p, n in by_port.items() if p != r]
                    return name, idx, by_port[r], others
    raise AssertionError("no suitable placement")


def test_an_object_created_while_a_snapshot_is_taken_is_in_the_working_vdi(
        make_cluster):
    c = locked_cluster(make_cluster, n=4, copies=COPIES)
    name, idx, r, others = _plan(c)
    g, t = others[0], others[1]
    vid = new_vdi(c, name)
    a = qemu_client.open(name, port=g.port, failover=False)
    try:
        a.pwrite(0, b"A" * 4096)  # object 0 exists; object idx not yet
        r.kill(signal.SIGSTOP)
        try:
            snap = subprocess.Popen([sys.executable, "-m", "collie", "vdi", "snapshot",
                                     "-s", "s1", name, "-p", str(t.port)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(2.0)  # the work step read the index, waits for R in N's inode write
            assert snap.poll() is None, "the snapshot did not wait for R"
            # the writer's first write to object idx: before the fix it was
            # accepted and acknowledged at once; now it waits for the snapshot
            # (AGAIN, retried) and lands in the new working VDI
            writer = threading.Thread(target=a.pwrite, args=(idx * OBJ, b"X" * 4096))
            writer.start()
            writer.join(1.0)
        finally:
            r.kill(signal.SIGCONT)
        writer.join(60)
        assert not writer.is_alive()
        out, err = snap.communicate(timeout=60)
        assert snap.returncode == 0, err
        with qemu_client.open(name, port=t.port, snapshot="s1", failover=False) as s:
            in_snapshot = s.pread(idx * OBJ, 4096)
        # the writer goes on: READONLY, reload of the new working VDI, copy-on-write
        a.pwrite(4096, b"B" * 4096)
        assert a.vid != vid
        got = a.pread(idx * OBJ, 4096)
        assert got == b"X" * 4096, (
            f"an acknowledged write vanished from the working VDI after a snapshot "
            f"(the writer now reads {got[:8]!r}...; the snapshot has {in_snapshot[:8]!r}...)")
    finally:
        a.close()
    with qemu_client.open(name, port=t.port, readonly=True, failover=False) as b:
        assert b.pread(idx * OBJ, 4096) == b"X" * 4096
