"""A gateway that drops out of the cluster for a moment (found by an adversarial review): a
writer whose gateway was removed from the cluster and
came back at once (a 2.5 s stall; zmq removes a member silent for 1 s) loses
its lock for good, although nobody else took the VDI.

The leave drops every hold owned through the gateway (``LockTable.drop_node``)
and the gateway rejoins before the client notices anything: its connection
never broke, so qemu_client never fails over and never re-attaches
(``AsyncVdi._reattach`` runs only after a failover).  The next write is
FENCED -- the caller sees an error although the cluster's majority was fine
and ``reattach`` would have given the lock back (``last`` still names it).

Now qemu_client, told FENCED, tries to take its lock back through the same gateway (granted only if nobody had the VDI since) and sends again.
"""

import signal
import time

import pytest
from harness import Cluster, free_port, wait_for
from locking import GRACE

import qemu_client
from sheep import proto

pytestmark = [pytest.mark.cluster, pytest.mark.lock]


def test_a_gateway_flap_fences_its_writer_for_good(tmp_path):
    spec = "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(4))
    c = Cluster(tmp_path, 4, driver_spec=spec, extra=["--lock-grace", str(GRACE)])
    try:
        c.wait_members(4)
        g1 = c.nodes[0]
        cl = g1.client()
        cl.format(2, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in c.nodes), 10, what="running")
        cl.new_vdi("vm", 4 * proto.SD_DATA_OBJ_SIZE)
        cl.close()
        a = qemu_client.open("vm", port=g1.port,
                             nodes=[("127.0.0.1", n.port) for n in c.nodes[1:]])
        a.pwrite(0, b"1" * 4096)
        g1.kill(signal.SIGSTOP)
        time.sleep(2.5)
        g1.kill(signal.SIGCONT)
        wait_for(lambda: "joined; 4 members" in g1.log().split("out of the primary")[-1], 10,
                 what="G1 back")
        time.sleep(0.5)
        try:
            a.pwrite(4096, b"2" * 4096)
            err = None
        except Exception as e:  # noqa: BLE001
            err = e
        print("write after the gateway flap:", repr(err) if err else "ok")
        assert err is None, f"writer fenced although nobody took the VDI: {err!r}"
        a.close()
    finally:
        c.close()
