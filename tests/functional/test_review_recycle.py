"""Adversarial review of VID recycling (``collie cluster format -R``): a node
that was away while a family was collected comes back *before* the id is
reused, with the old inode and data objects of that id."""

import os

import pytest
from harness import collie_ok, recovery_done, vdi_ids, wait_for

import qemu_client
from sheep import proto

pytestmark = pytest.mark.cluster
MB = 1 << 20


collie = collie_ok


vids = vdi_ids


_recovered = recovery_done


def _live_copies(c, oid):
    return [n.idx for n in c.nodes if os.path.exists(os.path.join(n.obj_dir, "%016x" % oid))]


def _deleted_with_node_away(make_cluster):
    """-R cluster of 3 (copies 2); VDI "b" (vid 1) written, node 2 killed,
    then "b" deleted (its family is collected, id 1 free).  Returns the
    cluster and the away node (still down)."""
    c = make_cluster(3)
    c.wait_members(3)
    p = c.nodes[0].port
    collie(p, "cluster", "format", "-R", "-c", "2")
    c.wait_running(10)
    collie(p, "vdi", "create", "b", "8M")  # vid 1
    secret = bytes([0xA5]) * (8 * MB)
    collie(p, "vdi", "write", "b", "0", str(len(secret)), stdin=secret)
    away = c.nodes[2]
    away.kill()
    c.wait_members(2)
    wait_for(lambda: _recovered(c), 60, what="recovery without the away node")
    collie(p, "vdi", "delete", "b")  # the family of 1 is collected: id 1 is free
    return c, away


def _collected_with_node_away(make_cluster):
    """:func:`_deleted_with_node_away`, then node 2 back (behind, with the old
    inode 1 and its data objects)."""
    c, away = _deleted_with_node_away(make_cluster)
    assert vids(c.nodes[0].port) == {}
    away.start()
    c.wait_members(3)
    wait_for(lambda: _recovered(c), 60, what="recovery with the returning node")
    return c


def test_node_back_behind_adds_no_vdi_record_of_a_collected_family(make_cluster):
    """sheep.vdi.recycle: a node joining with an older epoch adds no records."""
    c = _collected_with_node_away(make_cluster)
    for n in c.nodes:
        assert vids(n.port) == {}, f"the deleted VDI is listed again on node {n.idx}"
    collie(c.nodes[0].port, "vdi", "create", "n", "8M")
    assert vids(c.nodes[0].port) == {"n": [1]}
    for n in c.nodes:
        with qemu_client.open("n", port=n.port) as v:
            assert v.pread(0, 8 * MB) == bytes(8 * MB)


def test_node_back_behind_does_not_resurrect_a_collected_family(make_cluster):
    """The returning node's old copies of the collected family (inode and
    data of vid 1) must not become live copies again: a whole-cluster restart
    would then bring the deleted VDI back from the disks, with its data."""
    c = _collected_with_node_away(make_cluster)
    ino = proto.vid_to_vdi_oid(1)
    live = _live_copies(c, ino)
    c.restart_all()
    for n in c.nodes:
        assert vids(n.port) == {}, (f"the deleted VDI came back on node {n.idx} (live copies "
                                    f"of its collected inode on nodes {live})")
    assert live == [], "the collected inode was recovered as a live copy"


@pytest.mark.parametrize("reuse", [False, True])
def test_node_away_during_collection_starts_first_after_a_whole_cluster_restart(
        make_cluster, reuse):
    """Node 2 misses the collection of "b" (vid 1; and, with ``reuse``, the
    creation of "n" that takes id 1), then the whole cluster dies and node 2
    is the first to start: its disk still has b's inode.  The nodes with the
    newer epoch bring their history; the deleted VDI must stay deleted, and
    n must read its own data."""
    c, away = _deleted_with_node_away(make_cluster)
    p = c.nodes[0].port
    want = {}
    mine = os.urandom(MB)
    if reuse:
        collie(p, "vdi", "create", "n", "8M")
        collie(p, "vdi", "write", "n", "0", str(MB), stdin=mine)
        want = {"n": [1]}
    assert vids(p) == want
    c.restart_all(order=[away, *c.nodes[:2]])  # away first: older epoch, b's inode on disk
    for n in c.nodes:
        assert vids(n.port) == want, f"node {n.idx}"
    if reuse:
        for n in c.nodes:
            with qemu_client.open("n", port=n.port) as v:
                got = v.pread(0, 8 * MB)
            assert got[:MB] == mine and got[MB:] == bytes(7 * MB), f"n read through node {n.idx}"
