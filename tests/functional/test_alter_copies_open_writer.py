"""``vdi alter-copy`` under an open writer (found by an adversarial review):
the gateway used to trust the ``copies`` a client puts in its requests
(ObjArgs.copies), and qemu_client sends the ``nr_copies`` of the inode it
cached at open time.  Now requests are placed with the VDI's own redundancy.
Before:

After ``collie vdi alter-copy`` (run while the VDI is open but idle, the
supported usage) the writer keeps sending the old count, so:

* growing 2 -> 3: acknowledged writes reach only 2 of the 3 replicas the
  ring names; the third keeps a *live* copy without them (the recovery
  invariant "a live copy on a current holder has every acknowledged write"
  is broken), reads through that node return the old data, and killing the
  two up-to-date nodes (copies - 1 = 2) loses the write;
* shrinking 3 -> 2: every write also goes to the surplus node, which no
  longer holds the object: NOT_HOLDER -> AGAIN, retried until the gateway's
  RETRY_WINDOW ends, and the client gets an error.
"""

import os
import time

import pytest
from locking import collie, locked_cluster, new_vdi

import qemu_client
from sheep import proto
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster, pytest.mark.lock]


def _holders(c, oid, copies):
    ring = Ring(c.nodes[0].client().nodes())
    ports = [n.port for n in ring.replicas(oid, copies)]
    return [n for n in c.nodes if n.port in ports]


def _local_copy(node, oid, length=4096):
    path = os.path.join(node.obj_dir, "%016x" % oid)
    with open(path, "rb") as f:
        return f.read(length)


def test_grow_copies_with_an_open_writer_reaches_every_new_replica(make_cluster):
    c = locked_cluster(make_cluster, n=3, copies=2)
    vid = new_vdi(c)
    oid = proto.vid_to_data_oid(vid, 0)
    a = qemu_client.open("vm", port=c.nodes[0].port)
    try:
        a.pwrite(0, b"A" * 4096)
        r = collie(c.nodes[0].port, "vdi", "alter-copy", "-c", "3", "-f", "vm")
        assert r.returncode == 0, r.stderr
        holders = _holders(c, oid, 3)
        assert len(holders) == 3
        # every replica has A now (alter-copy re-placed the object)
        assert all(_local_copy(n, oid) == b"A" * 4096 for n in holders)
        # the writer, idle during the change, writes again: acknowledged
        a.pwrite(0, b"B" * 4096)
        stale = [n for n in holders if _local_copy(n, oid) != b"B" * 4096]
        # GUARANTEE: an acknowledged write is on every replica's disk
        assert not stale, ("acknowledged write missing on live replica(s) "
                           f"{[n.port for n in stale]} (the client sent copies="
                           f"{a._vdi.inode.nr_copies if hasattr(a, '_vdi') else '?'})")
    finally:
        a.close()


def test_shrink_copies_with_an_open_writer_keeps_writing(make_cluster):
    c = locked_cluster(make_cluster, n=3, copies=3)
    new_vdi(c)
    a = qemu_client.open("vm", port=c.nodes[0].port)
    try:
        a.pwrite(0, b"A" * 4096)
        r = collie(c.nodes[0].port, "vdi", "alter-copy", "-c", "2", "-f", "vm")
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        err = None
        try:
            a.pwrite(0, b"B" * 4096)
        except Exception as e:  # noqa: BLE001 - what the caller sees
            err = e
        took = time.monotonic() - t0
        assert err is None, f"write failed after {took:.1f}s: {err!r}"
    finally:
        try:
            a.close()
        except Exception:  # noqa: BLE001
            pass
