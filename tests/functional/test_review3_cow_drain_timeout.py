"""Review 3: a copy-on-write from a parent that is still draining gives up
waiting after ``DRAIN_WAIT`` and copies the parent without a write that is
then acknowledged: the acknowledged write is missing from the working VDI.

``Gateway.handle_create`` (sheep/datapath/gateway.py) waits for the parent's drain
(``Locks.wait_drained``, 35 s) before it reads the parent for a
copy-on-write, but ignores that the wait timed out (``wait_until`` returns
False) and copies the parent anyway.  A fan-out has no bound on how long it
may stay in flight (its local leg runs a store call on an I/O thread without
a timeout: a disk that stalls for a while), and it succeeds afterwards.

Scenario: writer A writes W to object X of its VDI; the local store write of
W on A's gateway stalls (tests/stimulus/slow_store_write_sheep.py: 45 s, the
event loop and the heartbeats keep running).  A third party snapshots the
VDI: the lock moves to the new working VDI N and the old one drains.  A's
next write W' to another part of X is told READONLY, reloads N and sends a
copy-on-write create; the gateway waits 35 s for the drain, gives up, copies
X without W.  Then W lands and is acknowledged.  A reads X on N: W is gone.
"""

import pathlib
import signal
import subprocess
import sys

import pytest
from harness import Cluster, wait_for
from locking import GRACE, in_thread

import qemu_client
from sheep import proto

pytestmark = [pytest.mark.cluster, pytest.mark.lock, pytest.mark.review, pytest.mark.slow]

SLOW = str(pathlib.Path(__file__).parents[1] / "stimulus" / "slow_store_write_sheep.py")
DELAY = 45.0  # > sheep.lock.DRAIN_WAIT (35 s)
W = b"SLOWSLOW" + b"w" * ((128 << 10) - 8)  # > INLINE_MAX: runs on an I/O thread even with -n



def test_a_snapshot_under_a_stalled_write_is_refused_and_loses_nothing(
        tmp_path):
    c = Cluster(tmp_path, 0, extra=["--lock-grace", str(GRACE)])
    a = None
    try:
        nodes = [c.add_node(start=False) for _ in range(3)]
        g, t = nodes[0], nodes[1]
        plain = g.argv

        def slow_argv():
            argv = plain()
            assert argv[1:3] == ["-m", "sheep"]
            return [argv[0], SLOW, str(DELAY), *argv[3:]]
        g.argv = slow_argv
        for n in nodes:
            n.start()
        c.wait_members(3)
        cl = g.client()
        cl.format(3, flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in nodes), 10, what="running")
        cl.new_vdi("vm", 16 << 20)
        cl.close()

        a = qemu_client.open("vm", port=g.port, failover=False)
        a.pwrite(0, b"A" * 4096)  # object 0 exists
        wa, ra = in_thread(lambda: a.pwrite(0, W))
        wait_for(lambda: "review stimulus: write" in g.log(), 10, what="W stalled on G's disk")
        def snapshot():
            return subprocess.run([sys.executable, "-m", "collie", "vdi", "snapshot", "-s", "s1",
                                   "vm", "-p", str(t.port)], capture_output=True, timeout=60)
        s = snapshot()
        # since the fix, the snapshot waits for W (it freezes the VDI before
        # copying its index) and, W still stalled, is refused with a clear
        # error rather than taken without W
        assert s.returncode != 0, (s.returncode, s.stderr)
        wa.join(DELAY + 30)
        assert not wa.is_alive() and "e" not in ra, ra  # W acknowledged
        s = snapshot()  # W landed: now the snapshot is taken
        assert s.returncode == 0, s.stderr
        # W' to another part of object 0: READONLY, reload, copy-on-write on G
        a.pwrite(1 << 20, b"Z" * 4096)
        got = a.pread(0, len(W))
        assert got == W, (f"acknowledged write W is missing from the working VDI after "
                          f"copy-on-write: it reads {got[:8]!r}...")
    finally:
        if a is not None:
            try:
                a.close()
            except Exception:  # noqa: BLE001
                pass
        for n in c.nodes:
            n.kill(signal.SIGCONT)
        c.close()
