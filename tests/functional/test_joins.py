"""Join rules and restart order as in Sheepdog 1.0 (sheep/cluster/joins.py), with real daemons."""

import os
import signal
import uuid

import pytest
from harness import collie_run, epoch_lines, free_port, wait_for

from sheep import proto
from sheep.cluster.joins import RESTART_VNODES_MSG

pytestmark = pytest.mark.cluster

OFF = 4190208


_collie = collie_run
_epoch_lines = epoch_lines


def _info(node):
    c = node.client()
    try:
        return c.cluster_info()
    finally:
        c.close()


def _running(node):
    return _info(node).status == proto.SD_STATUS_OK


def _read_ok(port, data):
    r = _collie(port, "vdi", "read", "disk", str(OFF), str(len(data)))
    return r.returncode == 0 and r.stdout == data


def test_formatted_node_joining_unformatted_cluster_gives_its_cluster_info(make_cluster, data8k):
    """1.0 cluster_wait_check/update_cluster_info: the unformatted members take
    over the joiner's cluster info (creation time, copies, epoch history); all
    nodes of its last epoch are present, so the cluster runs, in a new epoch."""
    c = make_cluster(1)
    c.format(copies=1)
    port0 = c.nodes[0].port
    assert _collie(port0, "vdi", "create", "disk", "16M").returncode == 0
    assert _collie(port0, "vdi", "write", "disk", str(OFF), "8192", stdin=data8k).returncode == 0
    ctime = _info(c.nodes[0]).ctime
    c.nodes[0].kill(signal.SIGTERM)
    wait_for(lambda: not c.nodes[0].alive(), 10, what="node 0 stopped")
    fresh = [c.add_node(), c.add_node()]  # an unformatted cluster of two
    c.wait_members(2)
    assert all(_info(n).status == proto.SD_STATUS_WAIT for n in fresh)
    c.nodes[0].start()
    wait_for(lambda: all(_running(n) for n in c.nodes), 20, what="cluster running")
    c.wait_members(3)
    for n in c.nodes:
        info = _info(n)
        assert (info.ctime, info.epoch) == (ctime, 2)
        lines = _epoch_lines(n.port)
        assert [ln.split()[0] for ln in lines] == ["2", "1"], lines
        assert f":{port0}:" in lines[1] and lines[1].count(":") == 2
        assert lines[0].count(":") == 2 * 3
        assert _read_ok(n.port, data8k)
    # the takeover is on disk: the unformatted nodes now restart as members
    for n in fresh:
        with open(os.path.join(n.store, "config"), "rb") as f:
            assert proto.SheepdogConfig.unpack(f.read()).ctime == ctime


def test_restart_with_other_vnode_strategy_refused(make_cluster):
    """1.0 init_config_file: a node of an automatic-vnodes cluster restarted
    with -V N is refused at start-up (the launcher exits 0, the daemon logs
    1.0's message and exits); it never joins, so the epoch history only has
    its leave.  Started again without -V it comes back."""
    c = make_cluster(3)
    c.format(copies=2)
    port = c.nodes[0].port
    c.nodes[2].kill(signal.SIGTERM)
    wait_for(lambda: not c.nodes[2].alive(), 10, what="node 2 stopped")
    c.wait_members(2)
    before = _epoch_lines(port)
    assert [ln.split()[0] for ln in before] == ["2", "1"]
    node = c.nodes[2]
    extra = list(node.extra)
    node.extra = extra + ["-V", "64"]
    log = node.start_refused(RESTART_VNODES_MSG)
    assert "automatic vnodes" in log and "with -V" in log
    assert "joined" not in log.split(RESTART_VNODES_MSG)[0].splitlines()[-1]
    assert _epoch_lines(port) == before  # it never joined
    assert [x.port for x in c.nodes[0].client().nodes()] == [c.nodes[0].port, c.nodes[1].port]
    node.extra = extra
    node.start()
    c.wait_members(3)
    wait_for(lambda: _info(c.nodes[0]).epoch == 3, 10, what="epoch 3")


def _kill_all_at_once(nodes):
    for n in nodes:
        os.kill(n.pid, signal.SIGKILL)
    for n in nodes:
        wait_for(lambda n=n: not n.alive(), 10, what=f"sheep {n.idx} to die")


def test_eight_nodes_killed_and_restarted_in_parallel(make_cluster, data8k):
    """Several rounds: SIGKILL two nodes, then, once the others logged the
    epoch without them, the other six together; then start all 8 launchers
    together, so nodes of the older and of the newer epoch join in any order
    (any of them may be the first).  Every round the cluster comes back with
    all 8 nodes, one epoch history on every node, and the data."""
    c = make_cluster(8)
    c.format(copies=3)
    port = c.nodes[0].port
    assert _collie(port, "vdi", "create", "disk", "16M").returncode == 0
    assert _collie(port, "vdi", "write", "disk", str(OFF), "8192", stdin=data8k).returncode == 0
    for rnd in range(3):
        early = [c.nodes[(2 * rnd) % 8], c.nodes[(2 * rnd + 1) % 8]]
        rest = [n for n in c.nodes if n not in early]
        epoch = _info(rest[0]).epoch
        _kill_all_at_once(early)
        wait_for(lambda: all(_info(n).epoch > epoch and len(n.client().nodes()) == 6
                             for n in rest), 20, what="the six survivors in a new epoch")
        # written while the two early nodes are away: their copies are older
        data = data8k[1024 * (rnd + 1):] + data8k[:1024 * (rnd + 1)]
        r = _collie(rest[0].port, "vdi", "write", "disk", str(OFF), "8192", stdin=data)
        assert r.returncode == 0, r.stderr
        _kill_all_at_once(rest)
        launchers = [(n, n.launch()) for n in c.nodes]
        for n, p in launchers:
            n.launched(p)
        wait_for(lambda: all(_running(n) for n in c.nodes), 60,
                 what=f"all 8 running again (round {rnd})")
        c.wait_members(8, timeout=30)
        wait_for(lambda: len({tuple(_epoch_lines(n.port)) for n in c.nodes}) == 1, 20,
                 what="one epoch history everywhere")
        for n in early:  # the older nodes serve the newer data, not their own copy
            assert _read_ok(n.port, data)
        assert _read_ok(rest[rnd].port, data)


@pytest.fixture(params=["local", "zmq", "zookeeper"])
def driver_spec(request):
    if request.param == "local":
        return None  # the harness's private local:PATH
    if request.param == "zmq":
        return "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(3))
    zk = request.getfixturevalue("zookeeper")
    return f"zookeeper:{zk}/joins-{uuid.uuid4().hex[:10]},timeout=2"


@pytest.mark.timeout(180)
def test_refused_join_is_a_join_and_a_leave_on_every_driver(make_cluster, driver_spec):
    """1.0: the refused node is delivered as a member, then exits; the running
    cluster logs its join and its leave (with 0 vnodes: it holds nothing)."""
    c = make_cluster(2, driver_spec=driver_spec)
    c.format(copies=2)
    fixed = c.add_node(start=False)
    fixed.extra += ["-V", "64"]
    log = fixed.start_refused("failed to join the cluster")
    assert "INVALID_VNODES_STRATEGY" in log
    wait_for(lambda: [ln.split()[0] for ln in _epoch_lines(c.nodes[0].port)] == ["3", "2", "1"],
             15, what="join and leave epochs")
    lines = _epoch_lines(c.nodes[0].port)
    assert f"127.0.0.1:{fixed.port}:0" in lines[1] and f":{fixed.port}" not in lines[0]
    c.wait_members(2, timeout=15)
    assert _epoch_lines(c.nodes[1].port) == lines
    assert all(_running(n) for n in c.nodes[:2])
