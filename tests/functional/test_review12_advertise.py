"""Adversarial review of the advertised-address default (``sheep.advertise``)
on one machine: zmq seeds on 127.0.0.1, nodes started without ``-y`` and
with no ``-b``, ``-b 0.0.0.0`` and ``-b 127.0.0.1`` all advertise
127.0.0.1, join, and serve I/O that crosses between them."""

import pytest
from harness import Cluster, collie_ok, free_port

pytestmark = [pytest.mark.cluster]


def test_zmq_loopback_seeds_with_and_without_bind(tmp_path):
    spec = "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(2))
    c = Cluster(tmp_path, 0, driver_spec=spec)
    try:
        for bind in ([], ["-b", "0.0.0.0"], ["-b", "127.0.0.1"]):
            n = c.add_node(start=False)
            n.extra = n.extra + bind
            n.start()
        c.wait_members(3, timeout=20)
        c.format(copies=3)
        out = collie_ok(c.nodes[2].port, "node", "list", "-r").stdout.decode().split("\n")
        assert sorted(ln.split()[1] for ln in out if ln) == \
            sorted(f"127.0.0.1:{n.port}" for n in c.nodes)
        collie_ok(c.nodes[1].port, "vdi", "create", "adv", "8M")
        collie_ok(c.nodes[1].port, "vdi", "write", "adv", "4194300", "8", stdin=b"crossing")
        for n in c.nodes:
            assert collie_ok(n.port, "vdi", "read", "adv", "4194300", "8").stdout == b"crossing"
    finally:
        c.close()
