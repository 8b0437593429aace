"""The store on disk, with real daemons (docs/protocol.md §16).

* ``obj/`` holds exactly Sheepdog 1.0's layout: object files named
  ``%016x`` (1.0's ``get_obj_path``) at full size, and ``.stale/`` holding
  ``%016x.%u`` (object, epoch); no records, no temporaries left by a
  crash-free run.  The records live in ``meta/``.
* Object files and stale copies put in by hand without any record (an
  operator moving files, a store whose ``meta/`` is lost) are served and
  recovered, and get a record computed from their data.
"""

import os
import re
import shutil
import signal

import pytest
from harness import placement_ok, vdi_oids, wait_for

import qemu_client
from sheep import proto

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]
MiB = 1 << 20
OBJ_RE = re.compile(r"[0-9a-f]{16}")
STALE_RE = re.compile(r"[0-9a-f]{16}\.[0-9]+")


def _write(c, size: int) -> tuple[int, bytes]:
    vid = c.nodes[0].client().new_vdi("data", size)
    blob = os.urandom(size)
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    return vid, blob


def _read_all(c, size: int, blob: bytes) -> None:
    for n in c.live():
        with qemu_client.open("data", port=n.port, readonly=True) as v:
            assert v.pread(0, size) == blob, f"node {n.idx} reads other data"


def _kill_all(c) -> None:
    """SIGKILL every node at nearly the same instant: none of them sees
    another leave, so they restart at the same epoch with the same copies."""
    for n in c.nodes:
        os.kill(n.pid, signal.SIGKILL)
    for n in c.nodes:
        wait_for(lambda n=n: not n.alive(), 10, what=f"sheep {n.idx} to die")


def _restart_all(c) -> None:
    for n in c.nodes:
        n.start()
    wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in c.nodes), 30,
             what="the cluster running again")


def _oids_in(node) -> set[int]:
    return {int(n, 16) for n in os.listdir(node.obj_dir) if OBJ_RE.fullmatch(n)}


def _has_record(node, oid: int) -> bool:
    return os.path.isfile(os.path.join(node.store, "meta", "%016x" % oid))


def test_obj_dir_is_the_1_0_layout(make_cluster):
    c = make_cluster(3)
    c.format(copies=2)
    size = 24 * MiB
    vid, blob = _write(c, size)
    c.add_node()  # objects move: the old holders keep .stale copies until purged
    c.wait_members(4)
    wait_for(lambda: placement_ok(c, vdi_oids(vid, size), copies=2), 60,
             what="objects placed on the new ring")
    _read_all(c, size, blob)
    for n in c.nodes:  # a crash-free stop
        n.kill(signal.SIGTERM)
    for n in c.nodes:
        wait_for(lambda n=n: not n.alive(), 20, what=f"sheep {n.idx} to stop")
    seen = 0
    for n in c.nodes:
        names = set(os.listdir(n.obj_dir))
        assert ".stale" in names and os.path.isdir(os.path.join(n.obj_dir, ".stale"))
        objs = names - {".stale"}
        assert all(OBJ_RE.fullmatch(x) for x in objs), f"node {n.idx}: {sorted(objs)}"
        for x in objs:
            path = os.path.join(n.obj_dir, x)
            assert os.path.isfile(path) and not os.path.islink(path)
            oid = int(x, 16)
            assert proto.oid_to_vid(oid) == vid
            want = (proto.SD_INODE_SIZE if proto.is_vdi_obj(oid) else proto.SD_DATA_OBJ_SIZE)
            assert os.path.getsize(path) == want  # full size, as 1.0 keeps them
            assert _has_record(n, oid)  # its checksums, outside obj/
        stale = os.listdir(os.path.join(n.obj_dir, ".stale"))
        assert all(STALE_RE.fullmatch(x) for x in stale), f"node {n.idx}: {stale}"
        leftovers = [os.path.join(d, f) for d, _, fs in os.walk(n.store) for f in fs
                     if f.endswith(".tmp")]
        assert not leftovers
        seen += len(objs)
    assert seen == 2 * len(vdi_oids(vid, size))


def test_objects_without_records_are_served_and_recovered(make_cluster):
    """Every record is lost (``meta/`` removed on every node, as if the files
    had been copied in by hand): the copies are served, recovered to the new
    holders when a node leaves, and get records."""
    c = make_cluster(4)
    c.format(copies=2)
    size = 24 * MiB
    vid, blob = _write(c, size)
    oids = vdi_oids(vid, size)
    _kill_all(c)
    for n in c.nodes:
        shutil.rmtree(os.path.join(n.store, "meta"))
    _restart_all(c)
    with qemu_client.open("data", port=c.nodes[0].port, readonly=True) as v:
        assert v.pread(0, size) == blob  # served without their records
    victim = c.nodes[3]
    lost = _oids_in(victim)
    assert lost
    victim.kill()
    c.wait_members(3)
    wait_for(lambda: placement_ok(c, oids, copies=2), 60, what="the victim's objects recovered")
    _read_all(c, size, blob)
    for oid in lost:  # the source (read to be sent) and the new holder have records now
        holders = [n for n in c.live() if oid in _oids_in(n)]
        assert len(holders) == 2
        assert all(_has_record(n, oid) for n in holders), "%016x" % oid


@pytest.mark.parametrize("with_inode", [False, True], ids=["data", "data-and-inode"])
def test_stale_copies_without_records_are_recovered(make_cluster, with_inode):
    """Every data object (and the inode) is moved by hand into
    ``.stale/<oid>.<epoch>`` and every record removed: the VDI is still known
    at start (1.0 scans stale inodes too), the cluster recovers the objects
    from those stale copies, intact, and the recovered copies have records."""
    c = make_cluster(3)
    c.format(copies=3)
    size = 16 * MiB
    vid, blob = _write(c, size)
    oids = vdi_oids(vid, size)
    moved = oids if with_inode else oids[1:]
    _kill_all(c)
    for n in c.nodes:
        epoch = max(int(e) for e in os.listdir(os.path.join(n.store, "epoch"))
                    if e.isdigit())
        for oid in moved:
            name = "%016x" % oid
            os.rename(os.path.join(n.obj_dir, name),
                      os.path.join(n.obj_dir, ".stale", f"{name}.{epoch}"))
        shutil.rmtree(os.path.join(n.store, "meta"))
    _restart_all(c)
    _read_all(c, size, blob)  # each gateway reads its own replica first: recovers it
    wait_for(lambda: placement_ok(c, oids, copies=3), 60,
             what="objects recovered from the stale copies")
    for n in c.nodes:
        for oid in moved:
            assert _has_record(n, oid), f"node {n.idx}: %016x" % oid
    _read_all(c, size, blob)
