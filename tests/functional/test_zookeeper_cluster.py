"""The foundation's functional scenario on the zookeeper membership driver:
3 real sheep daemons with ``-c zookeeper:127.0.0.1:PORT/<unique id>`` against
a real ZooKeeper server (fixture ``zookeeper``): format, create a VDI, write
8 KiB across an object boundary, read it back through every node, kill -9
one node, read again through the survivors."""

import json
import signal
import uuid

import pytest
from harness import read_vdi, write_vdi

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

OFF = 4190208  # 8 KiB crossing the boundary between objects 0 and 1
SESSION_TIMEOUT = 2


def test_three_nodes_on_zookeeper(make_cluster, zookeeper, data8k):
    spec = f"zookeeper:{zookeeper}/func-{uuid.uuid4().hex[:12]},timeout={SESSION_TIMEOUT}"
    c = make_cluster(3, driver_spec=spec)
    c.format(copies=3)
    from kazoo.client import KazooClient  # the membership really is in ZooKeeper
    zk = KazooClient(hosts=zookeeper)
    zk.start()
    try:
        view = json.loads(zk.get("/pysheepdog/" + spec.split("/")[1].split(",")[0] + "/view")[0])
        assert len(view["view"]) == 3
    finally:
        zk.stop()
        zk.close()
    cl = c.nodes[0].client()
    vid = cl.new_vdi("test", 100 * 1024 * 1024)
    write_vdi(cl, vid, OFF, data8k)
    for n in c.nodes:
        assert read_vdi(n.client(), vid, OFF, len(data8k)) == data8k
    c.nodes[2].kill(signal.SIGKILL)
    c.wait_members(2, timeout=SESSION_TIMEOUT + 8)
    for n in c.nodes[:2]:
        assert read_vdi(n.client(), vid, OFF, len(data8k)) == data8k
        info = n.client().cluster_info()
        assert info.epoch == 2 and info.nr_nodes == 2
