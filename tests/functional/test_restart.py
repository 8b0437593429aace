"""Restart from disk and join rules (sheep/cluster/joins.py), with real daemons on the local driver."""

import os
import shutil
import signal

import pytest
from harness import collie_run, epoch_lines, wait_for

from sheep import proto

pytestmark = pytest.mark.cluster

OFF = 4190208


_collie = collie_run
_epoch_lines = epoch_lines


def _members(line):
    """The node entries ("ADDR:PORT:VNODES") of an epoch line, as a set."""
    return set(line.split(None, 1)[1].strip("[]").split(", "))


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
    # refused while the cluster waits (stronger than 1.0, see sheep/cluster/joins.py);
    # as in 1.0 the launcher exits 0 and the daemon logs why and exits
    c.nodes[1].start_refused("its store is empty (wiped?)")
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


def _stale_node_setup(make_cluster, data8k):
    """Epoch 1 = {0, 1, 2}; node 2 dies (epoch 2 = {0, 1}); then 0 and 1 die."""
    c = _setup(make_cluster, data8k)
    c.nodes[2].kill(signal.SIGKILL)
    c.wait_members(2)  # nodes 0 and 1 move to epoch 2; node 2 keeps epoch 1
    # the epoch log is written off the loop after the leave is delivered (no
    # I/O of epoch 2 is served before it is); killed before that, a node
    # restarts at epoch 1 as if epoch 2 never was, which is not this scenario
    for n in c.nodes[:2]:
        wait_for(lambda n=n: os.path.exists(os.path.join(n.store, "epoch", "%08d" % 2)), 10,
                 what=f"epoch 2 logged on sheep {n.idx}")
    _kill_all(c, c.nodes[:2])
    return c


@pytest.mark.parametrize("order", [(0, 2, 1), (2, 0, 1), (2, 1, 0)])
def test_older_epoch_node_admitted_while_waiting(make_cluster, data8k, order):
    """An older-epoch node is admitted whenever it comes (1.0 cluster_wait_check);
    first, too: the node with the newer epoch brings its history.  The
    cluster starts once both nodes of epoch 2 are back, in epoch 3 (the
    stale node is one more member than epoch 2 had)."""
    c = _stale_node_setup(make_cluster, data8k)
    for i in order:
        c.nodes[i].start()
        if i == order[0]:
            assert not _running(c.nodes[i])
    wait_for(lambda: all(_running(n) for n in c.nodes), 20, what="running after restart")
    c.wait_members(3)
    for n in c.nodes:
        assert n.client().cluster_info().epoch == 3
        lines = _epoch_lines(n.port)
        assert [ln.split()[0] for ln in lines] == ["3", "2", "1"], lines
        assert lines[0].count(":") == lines[2].count(":") == 2 * 3 and lines[1].count(":") == 2 * 2
        r = _collie(n.port, "vdi", "read", "disk", str(OFF), "8192")
        assert r.returncode == 0 and r.stdout == data8k
    assert "kept only as stale copies" in c.nodes[2].log()  # it missed epoch 2


def test_foreign_cluster_and_vnode_strategy_refused(make_cluster, data8k):
    """Refused as 1.0 refuses: the launcher exits 0, the daemon logs why and
    exits, and the running cluster's epoch history has its join and leave."""
    a = make_cluster(2)
    a.format(copies=2)
    assert _collie(a.nodes[0].port, "vdi", "create", "disk", "16M").returncode == 0
    r = _collie(a.nodes[0].port, "vdi", "write", "disk", str(OFF), "8192", stdin=data8k)
    assert r.returncode == 0, r.stderr
    other = make_cluster(1)
    other.format(copies=1)
    assert _collie(other.nodes[0].port, "vdi", "create", "theirs", "4M").returncode == 0
    other.nodes[0].kill(signal.SIGTERM)
    wait_for(lambda: not other.nodes[0].alive(), 10, what="stop")
    port = a.nodes[0].port
    # a node formatted for another cluster cannot join
    stray = a.add_node(start=False)
    shutil.copytree(other.nodes[0].store, stray.store, ignore=shutil.ignore_patterns("sock"))
    log = stray.start_refused("failed to join the cluster")
    assert "creation time" in log and "INVALID_CTIME" in log
    lines = _epoch_lines(port)
    assert [ln.split()[0] for ln in lines] == ["3", "2", "1"], lines
    # a member for a moment, holding nothing (0 vnodes): the ring never changed
    assert f":{stray.port}:0" in lines[1] and f":{stray.port}" not in lines[0]
    assert lines[0].split(None, 1)[1] == lines[2].split(None, 1)[1]
    assert _members(lines[1]) - {f"127.0.0.1:{stray.port}:0"} == _members(lines[2])
    # fixed vnodes (-V) cannot join an automatic-vnodes cluster
    fixed = a.add_node(start=False)
    fixed.extra += ["-V", "64"]
    log = fixed.start_refused("failed to join the cluster")
    assert "INVALID_VNODES_STRATEGY" in log and "vnodes" in log
    lines = _epoch_lines(port)
    assert [ln.split()[0] for ln in lines][:2] == ["5", "4"], lines
    assert f":{fixed.port}:0" in lines[1] and f":{fixed.port}" not in lines[0]
    a.wait_members(2)
    for n in a.nodes[:2]:
        assert _epoch_lines(n.port) == lines
        assert _running(n)
        # nothing of the other cluster came in, nothing of ours went out
        r = _collie(n.port, "vdi", "list")
        assert r.returncode == 0 and b"disk" in r.stdout and b"theirs" not in r.stdout
        r = _collie(n.port, "vdi", "read", "disk", str(OFF), "8192")
        assert r.returncode == 0 and r.stdout == data8k


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
