"""Restart from disk and join rules (issue 3), with real daemons on the local driver."""

import shutil
import signal
import subprocess
import sys

import pytest
from harness import wait_for

from sheep import proto

pytestmark = pytest.mark.cluster

OFF = 4190208


def _collie(port, *argv, stdin=None):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          input=stdin, capture_output=True, timeout=60)


def _epoch_lines(port):
    out = _collie(port, "cluster", "info").stdout.decode()
    return [ln.split(None, 2)[2] for ln in out.splitlines() if ln[:4].isdigit()]


def _running(node):
    return node.client().cluster_info().status == proto.SD_STATUS_OK


def _setup(make_cluster, data8k):
    c = make_cluster(3)
    c.format(copies=3)
    port = c.nodes[0].port
    assert _collie(port, "vdi", "create", "disk", "16M").returncode == 0
    assert _collie(port, "vdi", "write", "disk", str(OFF), "8192", stdin=data8k).returncode == 0
    return c


def _kill_all(c, nodes=None):
    """SIGKILL the nodes at (nearly) the same instant, so that none of them
    sees another leave first: they all keep the same latest epoch."""
    import os

    nodes = c.nodes if nodes is None else nodes
    for n in nodes:
        os.kill(n.pid, signal.SIGKILL)
    for n in nodes:
        wait_for(lambda: not n.alive(), 10, what="kill")


def test_kill_all_restart_in_other_order(make_cluster, data8k):
    c = _setup(make_cluster, data8k)
    history = _epoch_lines(c.nodes[0].port)
    _kill_all(c)
    for i in (2, 0, 1):
        c.nodes[i].start()
    wait_for(lambda: all(_running(n) for n in c.nodes), 15, what="running after restart")
    for n in c.nodes:
        assert _epoch_lines(n.port) == history
        r = _collie(n.port, "vdi", "read", "disk", str(OFF), "8192")
        assert r.returncode == 0 and r.stdout == data8k


def test_wiped_store_rejected_then_force_recover(make_cluster, data8k):
    c = _setup(make_cluster, data8k)
    _kill_all(c)
    shutil.rmtree(c.nodes[1].store)
    c.nodes[0].start()
    assert not _running(c.nodes[0])  # waits for the nodes of its last epoch
    with pytest.raises(RuntimeError) as e:
        c.nodes[1].start()
    assert "empty" in str(e.value) or "wiped" in str(e.value)
    c.nodes[2].start()
    c.wait_members(2)
    assert not _running(c.nodes[0])
    r = _collie(c.nodes[0].port, "cluster", "recover", "force", "-f")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _running(c.nodes[2]), 10, what="forced recovery")
    lines = _epoch_lines(c.nodes[2].port)
    assert lines[0].count(":") == 2 * 2  # newest epoch has the two present nodes
    r = _collie(c.nodes[2].port, "vdi", "read", "disk", str(OFF), "8192")
    assert r.returncode == 0 and r.stdout == data8k


def test_stale_epoch_rejected_while_waiting(make_cluster, data8k):
    c = _setup(make_cluster, data8k)
    c.nodes[2].kill(signal.SIGKILL)
    c.wait_members(2)  # nodes 0 and 1 move to epoch 2; node 2 keeps epoch 1
    _kill_all(c, c.nodes[:2])
    c.nodes[0].start()
    with pytest.raises(RuntimeError) as e:
        c.nodes[2].start()
    assert "stale epoch" in str(e.value)
    c.nodes[1].start()
    wait_for(lambda: _running(c.nodes[0]), 15, what="running with the epoch-2 nodes")
    c.nodes[2].start()  # once running, the stale node may join (and is recovered later)
    c.wait_members(3)
    assert c.nodes[2].client().cluster_info().epoch == 3


def test_foreign_cluster_and_vnode_strategy_rejected(make_cluster, tmp_path):
    a = make_cluster(2)
    a.format(copies=2)
    other = make_cluster(1)
    other.format(copies=1)
    other.nodes[0].kill(signal.SIGTERM)
    wait_for(lambda: not other.nodes[0].alive(), 10, what="stop")
    # a node formatted for another cluster cannot join
    stray = a.add_node(start=False)
    shutil.copytree(other.nodes[0].store, stray.store, ignore=shutil.ignore_patterns("sock"))
    with pytest.raises(RuntimeError) as e:
        stray.start()
    assert "creation time" in str(e.value)
    # fixed vnodes (-V) cannot join an automatic-vnodes cluster
    fixed = a.add_node(start=False)
    fixed.extra += ["-V", "64"]
    with pytest.raises(RuntimeError) as e:
        fixed.start()
    assert "vnodes" in str(e.value)
    a.wait_members(2)


def test_vnodes_reweight_and_node_kill(make_cluster):
    c = make_cluster(3, extra=["-V", "128"])  # fixed vnodes, so "node vnodes set" applies
    r = _collie(c.nodes[0].port, "cluster", "format", "-V", "-c", "2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: _running(c.nodes[1]), 10, what="running")
    r = _collie(c.nodes[1].port, "node", "vnodes", "set", "64")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: [n.nr_vnodes for n in c.nodes[0].client().nodes()] == [128, 64, 128], 10,
             what="vnodes change visible everywhere")
    assert c.nodes[2].client().cluster_info().epoch == 2
    assert _collie(c.nodes[0].port, "cluster", "reweight").returncode == 0
    r = _collie(c.nodes[0].port, "node", "kill", "2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not c.nodes[2].alive(), 5, what="node 2 killed")
    c.wait_members(2)
