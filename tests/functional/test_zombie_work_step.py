"""A cluster-op work step of a gateway that lost its turn (found by an adversarial review): a
cluster-op work step keeps running on a gateway that
was removed from the cluster, and its effects are not fenced.

``Refs.release`` (after DISCARD_OBJ unlinked an object) decides in a
cluster-op work step that the data object X is unreferenced and removes it
(``gateway.remove``: REMOVE_PEER, no fencing generation, retried for 30 s
across epoch changes).  If the gateway is cut off between deciding and
removing (here: a stall injected before the removal -- tests/stimulus/
slow_reclaim_sheep.py -- then SIGSTOP so that zmq removes it), the cluster
drops its turn and the locks held through it; the writer reopens the VDI
through another gateway (nobody holds it), re-creates X and writes it
(acknowledged) -- and the old gateway, back in the cluster at once, goes on
with its stale work step: its removal lands and the acknowledged write is
gone (NO_OBJ).

Now a work step's writes are refused (HALT) once its node was cut off, and an UNBLOCK of a dropped turn is ignored.
"""

import pathlib
import signal
import threading
import time

import pytest
from harness import Cluster, free_port, wait_for
from locking import GRACE

import qemu_client
from sheep import proto

pytestmark = [pytest.mark.cluster, pytest.mark.lock]

OBJ = proto.SD_DATA_OBJ_SIZE
SLOW = str(pathlib.Path(__file__).parents[1] / "stimulus" / "slow_reclaim_sheep.py")
DELAY = 20.0


def test_a_removed_gateways_reclaim_deletes_a_recreated_object(tmp_path):
    spec = "zmq:" + ",".join(f"127.0.0.1:{free_port(20000, 29999)}" for _ in range(4))
    c = Cluster(tmp_path, 0, driver_spec=spec, extra=["--lock-grace", str(GRACE)])
    try:
        nodes = [c.add_node(start=False) for _ in range(4)]
        g1 = nodes[0]
        plain = g1.argv

        def slow_argv():
            argv = plain()
            assert argv[1:3] == ["-m", "sheep"]
            return [argv[0], SLOW, str(DELAY), *argv[3:]]
        g1.argv = slow_argv
        for n in nodes:
            n.start()
        c.wait_members(4)
        cl = g1.client()
        cl.format(2, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in nodes), 10, what="running")
        cl.new_vdi("vm", 4 * OBJ)
        cl.close()

        a = qemu_client.open("vm", port=g1.port,
                             nodes=[("127.0.0.1", n.port) for n in nodes[1:]])
        a.pwrite(0, b"1" * 4096)
        done = {}

        def discard():
            try:
                a.pdiscard(0, OBJ)
                done["discard"] = "ok"
            except Exception as e:  # noqa: BLE001
                done["discard"] = repr(e)
        th = threading.Thread(target=discard, daemon=True)
        th.start()
        wait_for(lambda: "review stimulus: reclaim" in g1.log(), 10,
                 what="the reclaim deciding to remove object 0")
        g1.kill(signal.SIGSTOP)  # long enough for zmq to remove it
        time.sleep(2.5)
        g1.kill(signal.SIGCONT)
        # the cluster dropped G1 (and the locks held through it) and G1's turn;
        # G1 rejoined at once; its work step is still running
        wait_for(lambda: "back in the primary partition" in g1.log(), 10, what="G1 back in the cluster")
        assert "removes now" not in g1.log()
        # the writer, fenced, reopens through another gateway (as the probe writer
        # does) -- nobody holds the VDI since G1 left -- and writes block 0 again
        b = qemu_client.open("vm", port=nodes[1].port,
                             nodes=[("127.0.0.1", n.port) for n in nodes[2:]])
        b.pwrite(0, b"2" * 4096)  # re-creates object 0: acknowledged
        assert b.pread(0, 4) == b"2222"
        assert "removes now" not in g1.log(), "too slow: the removal came first"
        wait_for(lambda: "reclaimed 1" in g1.log(), DELAY + 10, what="the delayed removal")
        time.sleep(1)
        try:
            got = b.pread(0, 4)
        except Exception as e:  # noqa: BLE001
            got = repr(e)
        print("discard:", done.get("discard"))
        print("after the old gateway's removal, block 0 reads:", got)
        assert got == b"2222", f"acknowledged write lost: {got}"
        b.close()
    finally:
        c.close()
