"""VID recycling (docs/protocol.md §12.3, sheep/vdi/recycle.py): a cluster formatted with
``collie cluster format -R`` numbers VDIs from 1, frees the id of a VDI whose
whole family is deleted (its inode objects are removed from every store), and
gives that id to the next new VDI, which never sees the old one's data."""

import os

import pytest
from harness import collie_ok, vdi_ids, wait_for

import qemu_client
from sheep import proto

pytestmark = pytest.mark.cluster
MB = 1 << 20


collie = collie_ok


vids = vdi_ids


def inode_files(cluster, vid) -> list[str]:
    """Every copy (live or stale) of inode ``vid`` on any node's disk."""
    name = f"{proto.vid_to_vdi_oid(vid):016x}"
    found = []
    for n in cluster.nodes:
        for root, _dirs, files in os.walk(n.store):
            found += [os.path.join(root, f) for f in files if f.startswith(name)]
    return found


@pytest.fixture
def rcluster(make_cluster):
    c = make_cluster(3)
    c.wait_members(3)
    p = c.nodes[0].port
    collie(p, "cluster", "format", "-R", "-c", "2")
    c.wait_running(10)
    assert c.nodes[0].client().cluster_info().flags & proto.SD_CLUSTER_FLAG_RECYCLE_VID
    return c


def test_sequential_ids_reuse_after_delete(rcluster):
    c = rcluster
    p = c.nodes[0].port
    for name in ("a", "b", "c"):
        collie(p, "vdi", "create", name, "8M")
    assert vids(p) == {"a": [1], "b": [2], "c": [3]}
    secret = os.urandom(4 * MB)
    collie(p, "vdi", "write", "b", "0", str(len(secret)), stdin=secret)
    assert inode_files(c, 2)
    collie(c.nodes[1].port, "vdi", "delete", "b")
    assert vids(p) == {"a": [1], "c": [3]}
    wait_for(lambda: not inode_files(c, 2), 10, what="inode of vid 2 removed everywhere")
    # the freed id goes to the next VDI; the deleted name can be created again
    collie(p, "vdi", "create", "d", "8M")
    collie(c.nodes[2].port, "vdi", "create", "b", "8M")
    assert vids(p) == {"a": [1], "b": [4], "c": [3], "d": [2]}
    # vid 2 is a new VDI: none of the old b's data shows through
    with qemu_client.open("d", port=c.nodes[1].port) as v:
        assert v.pread(0, 8 * MB) == bytes(8 * MB)
    r = collie(p, "vdi", "read", "d", "0", str(4 * MB))
    assert r.stdout == bytes(4 * MB)


def test_family_is_recycled_only_when_all_of_it_is_deleted(rcluster):
    c = rcluster
    p = c.nodes[0].port
    collie(p, "vdi", "create", "x", "8M")  # vid 1
    data = os.urandom(MB)
    collie(p, "vdi", "write", "x", "0", str(len(data)), stdin=data)
    collie(p, "vdi", "snapshot", "-s", "s1", "x")  # snapshot keeps 1, working is 2
    collie(p, "vdi", "clone", "-s", "s1", "x", "xc")  # vid 3, child of 1
    assert vids(p) == {"x": [1, 2], "xc": [3]}
    collie(p, "vdi", "delete", "x")  # the working VDI: family still has 1 and 3
    collie(p, "vdi", "create", "y", "8M")
    assert vids(p) == {"x": [1], "xc": [3], "y": [4]}
    collie(p, "vdi", "delete", "-s", "s1", "x")
    r = collie(p, "vdi", "read", "xc", "0", str(MB))
    assert r.stdout == data  # the clone still reads its parent's objects
    assert inode_files(c, 1) and inode_files(c, 2)
    collie(p, "vdi", "delete", "xc")  # now the whole family (1, 2, 3) is deleted
    wait_for(lambda: not any(inode_files(c, v) for v in (1, 2, 3)), 10,
             what="the family's inodes removed")
    assert vids(p) == {"y": [4]}
    for name in ("x", "p", "q"):
        collie(c.nodes[1].port, "vdi", "create", name, "8M")
    assert vids(p) == {"p": [2], "q": [3], "x": [1], "y": [4]}
    r = collie(p, "vdi", "read", "x", "0", str(MB))
    assert r.stdout == bytes(MB)
    # every node agrees on the bitmaps
    bms = set()
    for n in c.nodes:
        cl = n.client()
        _, body = cl.call(proto.Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE)
        bms.add(bytes(body))
        cl.close()
    assert len(bms) == 1


def test_node_away_during_recycling_brings_no_old_data_back(rcluster):
    c = rcluster
    p = c.nodes[0].port
    collie(p, "vdi", "create", "b", "8M")  # vid 1, on every node (copies 2 of 3)
    secret = bytes([0xA5]) * (8 * MB)
    collie(p, "vdi", "write", "b", "0", str(len(secret)), stdin=secret)
    away = c.nodes[2]
    away.kill()
    c.wait_members(2)
    collie(p, "vdi", "delete", "b")
    collie(p, "vdi", "create", "n", "8M")  # takes the recycled id 1
    assert vids(p) == {"n": [1]}
    away.start()
    c.wait_members(3)
    for n in c.nodes:  # the returning node's old inode 1 ("b") changes nothing
        assert vids(n.port) == {"n": [1]}
    part = os.urandom(MB)
    with qemu_client.open("n", port=away.port) as v:
        assert v.pread(0, 8 * MB) == bytes(8 * MB)
        v.pwrite(MB, part)
    for n in c.nodes:
        with qemu_client.open("n", port=n.port) as v:
            got = v.pread(0, 8 * MB)
        assert got[MB:2 * MB] == part
        assert got[:MB] == bytes(MB) and got[2 * MB:] == bytes(6 * MB)


def test_restart_keeps_recycled_state_and_rollback_works(rcluster):
    c = rcluster
    p = c.nodes[0].port
    for name in ("a", "b"):
        collie(p, "vdi", "create", name, "8M")
    collie(p, "vdi", "delete", "a")  # id 1 free again
    v1 = os.urandom(MB)
    collie(p, "vdi", "write", "b", "0", str(MB), stdin=v1)
    collie(p, "vdi", "snapshot", "-s", "snap", "b")  # the working b gets id 1
    assert vids(p) == {"b": [1, 2]}
    collie(p, "vdi", "write", "b", "0", str(MB), stdin=os.urandom(MB))
    collie(p, "vdi", "rollback", "-f", "-s", "snap", "b")  # working 1 deleted, new one
    assert vids(p) == {"b": [2, 3]}
    assert collie(p, "vdi", "read", "b", "0", str(MB)).stdout == v1
    c.restart_all(timeout=20)
    assert vids(p) == {"b": [2, 3]}
    collie(p, "vdi", "create", "c", "8M")  # 1 is still deleted-but-kept (family of 2)
    assert vids(p) == {"b": [2, 3], "c": [4]}
    assert collie(c.nodes[1].port, "vdi", "read", "b", "0", str(MB)).stdout == v1
