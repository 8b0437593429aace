"""Automatic vnodes weighted by free space as in Sheepdog 1.0
(docs/protocol.md §14.4): three real daemons, each with its store on its own
tmpfs of a known size, list 1.0's vnode counts already before format, keep them after format
and keep their measured space across a restart however full the disk got."""

import subprocess
import sys

import pytest
from harness import Cluster, Node, free_port, wait_for

from sheep import proto
from sheep.proto.placement import auto_vnodes

pytestmark = pytest.mark.cluster
GiB, MiB = 1 << 30, 1 << 20


@pytest.fixture
def trio_fs(tmp_path):
    """Three tmpfs mounts of 2, 4 and 8 GiB (tmpfs takes memory only when
    written); all unmounted at teardown."""
    mounts = []
    for size in (2, 4, 8):
        mnt = tmp_path / f"fs{size}g"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}G", "tmpfs", str(mnt)],
                       check=True)
        mounts.append(mnt)
    yield mounts
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _start(root, mounts):
    c = Cluster(root, 0)
    for i, mnt in enumerate(mounts):
        node = Node(c, i, free_port(), str(mnt / "store"), i, list(c.extra))
        c.nodes.append(node)
    c.nodes.sort(key=lambda n: n.port)  # node order is port order on 127.0.0.1
    for n in c.nodes:
        n.start()
    c.wait_members(3)
    return c


def _listed(c):
    cl = c.nodes[0].client()
    try:
        return {n.port: (n.nr_vnodes, n.space) for n in cl.nodes()}
    finally:
        cl.close()


def test_free_space_weights_before_and_after_format(tmp_path, trio_fs):
    c = _start(tmp_path / "c", trio_fs)
    try:
        listed = _listed(c)
        by_store = {n.store: listed[n.port] for n in c.nodes}
        for mnt, size in zip(trio_fs, (2, 4, 8)):
            vn, space = by_store[str(mnt / "store")]
            # f_bavail of a fresh tmpfs: all of it but the few KiB sheep wrote
            assert size * GiB - MiB < space <= size * GiB, (size, space)
        spaces = [by_store[str(m / "store")][1] for m in trio_fs]
        want = auto_vnodes(spaces)
        assert want == [55, 110, 219]  # 1.0's rintf(128 * 2/4.67, 4/4.67, 8/4.67)
        assert [by_store[str(m / "store")][0] for m in trio_fs] == want
        c.format(copies=2)
        wait_for(lambda: [_listed(c)[n.port][0] for n in sorted(
            c.nodes, key=lambda n: n.store)] == [55, 110, 219], 10, what="weights after format")
        info = c.nodes[0].client().cluster_info()
        assert info.flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES
    finally:
        c.close()


def test_rounding_gives_220_with_4_mib_used_and_space_survives_restart(tmp_path, trio_fs):
    for mnt in trio_fs:  # 5 MiB already used on each filesystem
        with open(mnt / "filler", "wb") as f:
            f.write(b"\1" * (5 * MiB))
    c = _start(tmp_path / "c", trio_fs)
    try:
        order = sorted(c.nodes, key=lambda n: n.store)  # fs2g, fs4g, fs8g
        wait_for(lambda: [_listed(c)[n.port][0] for n in order] == [55, 110, 220], 10,
                 what="55/110/220")
        before = _listed(c)
        c.format(copies=2)
        big = order[2]
        big.kill()
        with open(trio_fs[2] / "filler2", "wb") as f:  # the disk fills meanwhile
            f.write(b"\2" * (64 * MiB))
        big.start()
        c.wait_members(3)
        wait_for(lambda: _listed(c) == before, 10, what="same space and vnodes after restart")
        # reweight re-reads every node's space (STAT_SHEEP): the same weights
        r = subprocess.run([sys.executable, "-m", "collie", "cluster", "reweight",
                            "-p", str(c.nodes[0].port)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert _listed(c) == before
        cl = big.client()
        rsp, _ = cl.call(proto.Op.STAT_SHEEP)
        cl.close()
        assert rsp.args.store_size == before[big.port][1]  # 1.0: md_get_size, the space
    finally:
        c.close()
