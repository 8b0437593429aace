"""collie against real sheep daemons on every membership driver
(docs/architecture.md "Cluster"): node list, cluster info, I/O, node kill and cluster shutdown."""

import subprocess
import sys
import uuid

import pytest
from harness import free_port, read_vdi, wait_for, write_vdi

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

OFF = 4190208


@pytest.fixture(params=["local", "zmq", "zookeeper"])
def driver_spec(request):
    if request.param == "local":
        return None  # the harness's private local:PATH
    if request.param == "zmq":
        return "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(4))
    zk = request.getfixturevalue("zookeeper")
    return f"zookeeper:{zk}/drv-{uuid.uuid4().hex[:10]},timeout=2"


def collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_collie_on_every_driver(make_cluster, driver_spec, data8k):
    c = make_cluster(3, driver_spec=driver_spec)
    c.format(copies=3)
    port = c.nodes[0].port
    out = collie(port, "node", "list", "-r").stdout.split("\n")
    assert [ln.split()[1] for ln in out if ln] == [f"127.0.0.1:{n.port}" for n in c.nodes]
    cl = c.nodes[0].client()
    vid = cl.new_vdi("d", 16 << 20)
    write_vdi(cl, vid, OFF, data8k)
    r = collie(c.nodes[1].port, "node", "kill", "2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not c.nodes[2].alive(), 10, what="node 2 killed")
    c.wait_members(2, timeout=15)
    info = collie(port, "cluster", "info").stdout
    assert "running" in info and len([ln for ln in info.splitlines() if ln[:4].isdigit()]) == 2
    assert read_vdi(c.nodes[1].client(), vid, OFF, len(data8k)) == data8k
    r = collie(port, "cluster", "shutdown")
    assert r.returncode == 0, r.stderr
    for n in c.nodes[:2]:
        wait_for(lambda: not n.alive(), 10, what="shutdown")


def _epoch_history(node):
    """[(epoch, [member ports])] newest first, as STAT_CLUSTER reports it."""
    from sheep import proto

    cl = node.client()
    rsp, body = cl.call(proto.Op.STAT_CLUSTER, proto.ClusterArgs(nodes_nr=8),
                        data_length=64 * (48 + 80 * 8))
    return [(h.epoch, [n.port for n in ns]) for h, ns in proto.unpack_epoch_logs(body, 8)]


def test_master_killed_new_master_and_identical_epoch_history(make_cluster, driver_spec):
    """SIGKILL of the master (the oldest member): the survivors form a new view
    within 5 s, keep serving cluster operations, and hold identical epoch logs."""
    import signal
    import time

    c = make_cluster(4, driver_spec=driver_spec)
    c.format(copies=3)
    t0 = time.monotonic()
    c.nodes[0].kill(signal.SIGKILL)  # the first node started is the master
    c.wait_members(3, timeout=10)
    assert time.monotonic() - t0 < 5.0 + 1.0  # detection + new view (+ polling slack)
    # the new master serves cluster operations (a cluster op needs the whole group)
    c.nodes[2].client().new_vdi("after-master", 1 << 20)
    histories = [_epoch_history(n) for n in c.nodes[1:]]
    assert histories[0] == histories[1] == histories[2]
    assert [e for e, _ in histories[0]] == [2, 1]
    assert sorted(histories[0][0][1]) == sorted(n.port for n in c.nodes[1:])
