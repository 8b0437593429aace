"""3 real sheep nodes, copies 3: format, create, write across an object
boundary, read back through every node, objects on every disk, survive kill -9."""

import os
import signal

import pytest
from harness import read_vdi, wait_for, write_vdi

from sheep import proto

pytestmark = pytest.mark.cluster

OFF = 4190208  # 8 KiB crossing the boundary between objects 0 and 1


def test_three_nodes_copies_three(make_cluster, data8k):
    c = make_cluster(3)
    c.format(copies=3)
    cl = c.nodes[0].client()
    vid = cl.new_vdi("test", 100 * 1024 * 1024)
    assert vid == 0x7C2B25
    write_vdi(cl, vid, OFF, data8k)
    for n in c.nodes:
        assert read_vdi(n.client(), vid, OFF, len(data8k)) == data8k
    names = {"007c2b2500000000", "007c2b2500000001", "807c2b2500000000"}
    for n in c.nodes:
        assert names <= set(os.listdir(n.obj_dir)), n.obj_dir
    victim = c.nodes[2]
    victim.kill(signal.SIGKILL)
    c.wait_members(2)
    for n in c.nodes[:2]:
        assert read_vdi(n.client(), vid, OFF, len(data8k)) == data8k
        info = n.client().cluster_info()
        assert info.epoch == 2 and info.nr_nodes == 2


def test_single_node_copies_one(make_cluster, data8k):
    c = make_cluster(1)
    c.format(copies=1)
    cl = c.nodes[0].client()
    vid = cl.new_vdi("solo", 16 * 1024 * 1024)
    write_vdi(cl, vid, OFF, data8k)
    assert read_vdi(cl, vid, OFF, len(data8k)) == data8k
    assert read_vdi(cl, vid, 0, 4096) == bytes(4096)  # never written → zeros


def test_epoch_history_and_shutdown_restart(make_cluster, data8k):
    import subprocess
    import sys


    c = make_cluster(3)
    c.format(copies=3)
    cl = c.nodes[0].client()
    vid = cl.new_vdi("keep", 8 * 1024 * 1024)
    write_vdi(cl, vid, OFF, data8k)
    c.nodes[2].kill(signal.SIGKILL)
    c.wait_members(2)
    out = subprocess.run([sys.executable, "-m", "collie", "cluster", "info", "-p", str(c.nodes[0].port)],
                         capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln[:4].isdigit()]
    assert len(lines) == 2, out
    assert lines[0].split()[2] == "2" and lines[0].count(":128") == 2  # newest first
    assert lines[1].split()[2] == "1" and lines[1].count(":128") == 3
    # clean shutdown of the survivors, then restart them from disk
    r = subprocess.run([sys.executable, "-m", "collie", "cluster", "shutdown", "-p", str(c.nodes[0].port)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for n in c.nodes[:2]:
        wait_for(lambda: not n.alive(), 10, what="shutdown")
    for n in c.nodes[:2]:
        n.start()
    wait_for(lambda: c.nodes[0].client().cluster_info().status == proto.SD_STATUS_OK, 15,
             what="restarted cluster running")
    info = c.nodes[1].client().cluster_info()
    assert info.epoch == 2 and info.nr_nodes == 2
    assert read_vdi(c.nodes[1].client(), vid, OFF, len(data8k)) == data8k
