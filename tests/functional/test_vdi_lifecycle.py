"""VDI life cycle on real 3-node clusters: snapshots, clones (from snapshots
only), copy-on-write, rollback, resize, tree, delete with reclamation,
backup/restore and per-VDI copies."""

import os

import pytest
from harness import collie_ok, wait_for

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES, SdError

pytestmark = pytest.mark.cluster

MB = 1 << 20


collie = collie_ok


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 7 + i * 13) & 0xFF for i in range(256)) * (n // 256)


def data_objects(cluster) -> dict[int, set]:
    """node index -> set of data/ledger object names on its disk."""
    out = {}
    for n in cluster.nodes:
        names = [f for f in os.listdir(n.obj_dir) if len(f) == 16]
        out[n.idx] = {f for f in names if not proto.is_vdi_obj(int(f, 16))}
    return out


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(3)
    c.wait_members(3)
    c.format(copies=3)
    return c


def test_snapshot_clone_chain_reads_back_through_every_node(cluster):
    ports = [n.port for n in cluster.nodes]
    p = ports[0]
    size = 12 * MB
    a, b, c = pattern(1, 6 * MB), pattern(2, 3 * MB), pattern(3, 2 * MB)
    collie(p, "vdi", "create", "chain", "12M")
    collie(p, "vdi", "write", "chain", "0", str(len(a)), stdin=a)
    collie(p, "vdi", "snapshot", "-s", "s1", "chain")
    collie(ports[1], "vdi", "write", "chain", str(2 * MB), str(len(b)), stdin=b)
    collie(p, "vdi", "snapshot", "-s", "s2", "chain")
    collie(ports[2], "vdi", "clone", "-s", "s1", "chain", "c1")
    collie(p, "vdi", "write", "c1", str(5 * MB), str(len(c)), stdin=c)

    img_a = a + bytes(size - len(a))
    img_ab = bytearray(img_a)
    img_ab[2 * MB:2 * MB + len(b)] = b
    img_ac = bytearray(img_a)
    img_ac[5 * MB:5 * MB + len(c)] = c
    want = {("chain", None): bytes(img_ab), ("chain", "s1"): img_a,
            ("chain", "s2"): bytes(img_ab), ("c1", None): bytes(img_ac)}
    for port in ports:
        for (name, snap), img in want.items():
            argv = ["vdi", "read", name] + (["-s", snap] if snap else [])
            assert collie(port, *argv).stdout == img, (port, name, snap)
    # the same through the qemu-style client, from every node
    for port in ports:
        with qemu_client.open("c1", port=port) as v:
            assert v.pread(0, size) == bytes(img_ac)

    # writing the working VDI never changes its snapshots
    collie(p, "vdi", "write", "chain", "0", "4096", stdin=b"Z" * 4096)
    assert collie(ports[1], "vdi", "read", "chain", "-s", "s2").stdout == bytes(img_ab)
    # rollback to s1 reads A
    collie(p, "vdi", "rollback", "-f", "-s", "s1", "chain")
    for port in ports:
        assert collie(port, "vdi", "read", "chain").stdout == img_a
    assert collie(p, "vdi", "read", "c1").stdout == bytes(img_ac)


def test_qemu_client_keeps_writing_across_a_snapshot(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "vm", "8M")
    with qemu_client.open("vm", port=cluster.nodes[1].port) as v:
        v.pwrite(0, b"before" * 100)
        old = v.vid
        collie(p, "vdi", "snapshot", "-s", "snap", "vm")
        v.pwrite(0, b"after!" * 100)  # READONLY, reload, copy-on-write into the new VDI
        assert v.vid != old
        assert v.pread(0, 600) == b"after!" * 100
    assert collie(p, "vdi", "read", "-s", "snap", "vm", "0", "600").stdout == b"before" * 100
    assert collie(p, "vdi", "read", "vm", "0", "600").stdout == b"after!" * 100


def test_clone_only_from_snapshots_and_snapshots_are_readonly(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "base", "8M")
    collie(p, "vdi", "write", "base", "0", "512", stdin=b"b" * 512)
    # collie refuses without -s, and a working VDI is not found as a snapshot
    r = collie(p, "vdi", "clone", "base", "x", ok=False)
    assert r.returncode != 0 and b"Only snapshot VDIs can be cloned" in r.stderr
    r = collie(p, "vdi", "clone", "-s", "1", "base", "x", ok=False)
    assert r.returncode != 0
    # the server refuses a raw NEW_VDI whose base is writable
    c = cluster.nodes[1].client()
    base_vid = c.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload("base", ""))[0].args.vdi_id
    rsp, _ = c.call(proto.Op.NEW_VDI, proto.VdiArgs(vdi_size=8 * MB, base_vdi_id=base_vid),
                    proto.vdi_name_payload("x"), check=False)
    assert rsp.result == CODES["INVALID_PARMS"]
    # qemu_client refuses too, with or without a snapshot name
    with pytest.raises(SdError) as e:
        qemu_client.create("x", 0, port=p, backing="base")
    assert e.value.code == CODES["INVALID_PARMS"]
    with pytest.raises(SdError):
        qemu_client.create("x", 0, port=p, backing="base", snapshot="nosuchtag")
    assert collie(p, "vdi", "list", "x", "-r").stdout == b""
    # after a snapshot the old vid is read-only everywhere
    collie(p, "vdi", "snapshot", "-s", "t", "base")
    oid = proto.vid_to_data_oid(base_vid, 0)
    for n in cluster.nodes:
        cl = n.client()
        rsp, _ = cl.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=oid), b"w" * 512, check=False)
        assert rsp.result == CODES["READONLY"]
        rsp, _ = cl.call(proto.Op.CREATE_AND_WRITE_OBJ, proto.ObjArgs(oid=oid), b"w" * 512,
                         check=False)
        assert rsp.result == CODES["READONLY"]
        cl.close()
    # cloning the snapshot works, through collie and qemu_client
    collie(p, "vdi", "clone", "-s", "t", "base", "x")
    vid = qemu_client.create("y", 0, port=cluster.nodes[2].port, backing="base", snapshot="t")
    with qemu_client.open("y", port=p) as v:
        assert v.vid == vid and v.pread(0, 512) == b"b" * 512
    c.close()


def test_resize_grows_and_never_shrinks(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "r", "4M")
    collie(p, "vdi", "write", "r", "0", "4", stdin=b"abcd")
    collie(p, "vdi", "resize", "r", "12M")
    assert collie(p, "vdi", "list", "r", "-r").stdout.split()[3] == str(12 * MB).encode()
    collie(p, "vdi", "write", "r", str(11 * MB), "4", stdin=b"wxyz")
    out = collie(cluster.nodes[2].port, "vdi", "read", "r").stdout
    assert len(out) == 12 * MB and out[:4] == b"abcd" and out[11 * MB:11 * MB + 4] == b"wxyz"
    r = collie(p, "vdi", "resize", "r", "8M", ok=False)
    assert r.returncode != 0 and b"Shrinking" in r.stderr
    # the server refuses a header write that shrinks vdi_size as well
    c = cluster.nodes[1].client()
    vid = c.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload("r", ""))[0].args.vdi_id
    rsp, _ = c.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=proto.vid_to_vdi_oid(vid),
                                                      offset=proto.INODE_VDI_SIZE_OFF),
                    (4 * MB).to_bytes(8, "little"), check=False)
    assert rsp.result == CODES["INVALID_PARMS"]
    assert collie(p, "vdi", "list", "r", "-r").stdout.split()[3] == str(12 * MB).encode()
    c.close()


def test_tree_and_list_marks(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "t", "4M")
    collie(p, "vdi", "snapshot", "t")
    collie(p, "vdi", "snapshot", "t")
    collie(p, "vdi", "clone", "-s", "1", "t", "k")
    tree = collie(p, "vdi", "tree").stdout.decode()
    lines = sorted(tree.splitlines())
    assert lines[0] == "k---(you are here)"
    assert lines[1].startswith("t---[") and lines[1].endswith("]---(you are here)")
    assert lines[1].count("---[") == 2 and len(lines) == 2
    rows = [ln.split() for ln in collie(p, "vdi", "list", "-r").stdout.decode().splitlines()]
    marks = sorted((r[1], r[2], r[0]) for r in rows)  # (name, snapshot id, mark)
    assert marks == [("k", "0", "c"), ("t", "0", "="), ("t", "1", "s"), ("t", "2", "s")]


def test_delete_recreate_and_space_returns_to_start(cluster):
    p = cluster.nodes[0].port
    start = data_objects(cluster)
    collie(p, "vdi", "create", "d", "16M")
    collie(p, "vdi", "write", "d", "0", str(10 * MB), stdin=pattern(4, 10 * MB))
    collie(p, "vdi", "snapshot", "-s", "one", "d")
    collie(p, "vdi", "write", "d", str(MB), "4096", stdin=b"q" * 4096)
    collie(p, "vdi", "clone", "-s", "one", "d", "e")
    collie(p, "vdi", "write", "e", str(9 * MB), "4096", stdin=b"r" * 4096)
    collie(p, "vdi", "create", "-P", "f", "8M")
    assert data_objects(cluster) != start
    # the snapshot goes first: its objects stay while the clone and d use them
    collie(p, "vdi", "delete", "-s", "one", "d")
    assert collie(p, "vdi", "read", "e", "0", str(MB)).stdout == pattern(4, 10 * MB)[:MB]
    assert collie(p, "vdi", "read", "d", "0", str(MB)).stdout == pattern(4, 10 * MB)[:MB]
    collie(p, "vdi", "delete", "d")
    assert collie(p, "vdi", "read", "e", "0", str(MB)).stdout == pattern(4, 10 * MB)[:MB]
    # a deleted name can be created again, and is a new empty VDI
    collie(p, "vdi", "create", "d", "4M")
    assert collie(p, "vdi", "read", "d", "0", "4096").stdout == bytes(4096)
    for name in ("d", "e", "f"):
        collie(p, "vdi", "delete", name)
    wait_for(lambda: data_objects(cluster) == start, 10, what="objects reclaimed")
    assert collie(p, "vdi", "list", "-r").stdout == b""


def test_backup_restore_round_trip(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "bk", "12M")
    collie(p, "vdi", "write", "bk", "0", str(5 * MB), stdin=pattern(5, 5 * MB))
    collie(p, "vdi", "snapshot", "-s", "from", "bk")
    collie(p, "vdi", "write", "bk", str(3 * MB), str(2 * MB), stdin=pattern(6, 2 * MB))
    collie(p, "vdi", "write", "bk", str(9 * MB), "1024", stdin=b"t" * 1024)
    collie(p, "vdi", "snapshot", "-s", "to", "bk")
    want = collie(p, "vdi", "read", "bk", "-s", "to").stdout
    backup = collie(p, "vdi", "backup", "-F", "from", "-s", "to", "bk").stdout
    assert backup[:8] == b"\x01\x00\x00\x00\x92\x11\x92\x11"
    assert len(backup) < 3 * MB  # only the difference
    # go back to the 'from' state and forget 'to', then restore the increment
    collie(p, "vdi", "rollback", "-f", "-s", "from", "bk")
    collie(p, "vdi", "delete", "-s", "to", "bk")
    r = collie(cluster.nodes[1].port, "vdi", "restore", "-s", "from", "bk", stdin=backup)
    assert r.returncode == 0
    rows = [ln.split() for ln in collie(p, "vdi", "list", "-r", "bk").stdout.decode().splitlines()]
    snaps = [int(r[2]) for r in rows if r[0] == "s"]
    restored = max(snaps)
    assert collie(p, "vdi", "read", "bk", "-s", str(restored)).stdout == want
    bad = collie(p, "vdi", "restore", "-s", "from", "bk", stdin=b"garbage!", ok=False)
    assert bad.returncode != 0 and b"corrupted" in bad.stderr


def holders(cluster, oid) -> int:
    name = f"{oid:016x}"
    return sum(os.path.exists(os.path.join(n.obj_dir, name)) for n in cluster.nodes)


def test_copies_per_vdi_and_cluster(cluster):
    p = cluster.nodes[0].port
    collie(p, "vdi", "create", "-c", "2", "cp", "8M")
    collie(p, "vdi", "write", "cp", "0", str(8 * MB), stdin=pattern(7, 8 * MB))
    vid = int(collie(p, "vdi", "list", "-r", "cp").stdout.split()[7], 16)
    oids = [proto.vid_to_data_oid(vid, i) for i in range(2)] + [proto.vid_to_vdi_oid(vid)]
    assert [holders(cluster, o) for o in oids] == [2, 2, 2]
    collie(p, "vdi", "alter-copy", "-c", "3", "-f", "cp")
    assert [holders(cluster, o) for o in oids] == [3, 3, 3]
    assert collie(p, "vdi", "list", "-r", "cp").stdout.split()[8] == b"3"
    collie(p, "vdi", "alter-copy", "-c", "1", "-f", "cp")
    assert [holders(cluster, o) for o in oids] == [1, 1, 1]
    for n in cluster.nodes:  # readable and writable through every node at 1 copy
        assert collie(n.port, "vdi", "read", "cp").stdout == pattern(7, 8 * MB)
    collie(p, "vdi", "write", "cp", "0", "8", stdin=b"12345678")
    r = collie(p, "vdi", "alter-copy", "-c", "1", "-f", "cp", ok=False)
    assert r.returncode != 0 and b"already" in r.stderr
    collie(p, "vdi", "snapshot", "cp")
    r = collie(p, "vdi", "alter-copy", "-c", "2", "-f", "cp", ok=False)
    assert r.returncode != 0 and b"standalone" in r.stderr
    # cluster default: affects VDIs created later only
    collie(p, "cluster", "alter-copy", "-c", "2", stdin=b"yes\n")
    collie(p, "vdi", "create", "later", "4M")
    assert collie(p, "vdi", "list", "-r", "later").stdout.split()[8] == b"2"
    assert collie(p, "vdi", "list", "-r", "cp").stdout.split()[8] == b"1"
    info = cluster.nodes[2].client().cluster_info()
    assert info.nr_copies == 2
