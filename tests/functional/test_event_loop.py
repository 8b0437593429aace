"""Membership work never starves the heartbeats (docs/data-safety.md "Epoch changes").

A node comes back with 50,000 objects in its store while the cluster moved
on: it must keep all of them only as stale copies (moving every one to
``.stale``), which took 1.7 s inline on the event loop before — longer than
the zmq driver's failure timeout (1 s), so the node was removed again while
it worked, and the removal caused full re-replication.  Now the moves are a
store job off the loop: the node stays a member, no spurious epoch appears,
and its loop never stalls.
"""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from harness import Cluster, wait_for

from sheep import proto
from sheep.store import meta as M

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]

N_OBJECTS = 50_000


def zmq_spec(n: int) -> str:
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return "zmq:" + ",".join(f"127.0.0.1:{p}" for p in ports)


def populate(store_dir: str, n: int) -> list[int]:
    """Write ``n`` attribute objects of a VDI nobody has, with records, by hand."""
    size = proto.SD_ATTR_OBJ_SIZE
    record = M.Meta.fresh(M.make_version(1, 1), M.zero_crcs(size)).pack()
    oids = [proto.vid_to_attr_oid(0xABCDE, i) for i in range(n)]
    obj, meta = os.path.join(store_dir, "obj"), os.path.join(store_dir, "meta")
    for oid in oids:
        name = "%016x" % oid
        with open(os.path.join(obj, name), "wb") as f:
            f.truncate(size)
        with open(os.path.join(meta, name), "wb") as f:
            f.write(record)
    return oids


def collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_rejoin_with_50000_objects_keeps_the_heartbeats(tmp_path):
    c = Cluster(tmp_path, 3, driver_spec=zmq_spec(3))
    try:
        c.format(copies=3)
        port = c.nodes[1].port
        assert collie(port, "cluster", "recover", "disable").returncode == 0
        big = c.nodes[0]
        big.kill(signal.SIGKILL)
        c.wait_members(2, timeout=20)
        populate(big.store, N_OBJECTS)
        epoch_before = c.nodes[1].client().cluster_info().epoch
        big.start()
        c.wait_members(3, timeout=30)
        # the rejoin is one epoch; every object became a stale copy
        wait_for(lambda: len(os.listdir(os.path.join(big.obj_dir, ".stale"))) == N_OBJECTS,
                 60, what="all objects moved to .stale")
        wait_for(lambda: "moving unheld" in big.log() or "kept only as stale" in big.log(),
                 30, what="the demotion logged")
        c.wait_members(3, timeout=10)
        epoch_after = c.nodes[1].client().cluster_info().epoch
        assert epoch_after == epoch_before + 1, "a spurious leave/join happened"
        stalls = [float(x) for x in re.findall(r"event loop stalled for ([0-9.]+)s", big.log())]
        assert not [s for s in stalls if s > 0.5], stalls
        for n in c.nodes[1:]:
            assert "is silent; removing it" not in n.log()
    finally:
        c.close()
