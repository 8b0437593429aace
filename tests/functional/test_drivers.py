"""collie against real sheep daemons on every membership driver (issue 3):
node list, cluster info, I/O, node kill and cluster shutdown."""

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
