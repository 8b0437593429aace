"""A node of a history the cluster lost by force-recover (found by an adversarial review):
after ``cluster recover force`` the forced cluster
re-uses epoch numbers of the lost history, and a node of that lost history
whose last epoch has the same *number* rejoins without demoting its copies
(``Group._on_join`` demotes only when ``my_epoch < self.epoch``;
``_adopt`` rewrites its epoch log, but nobody compares histories).

Its live copies hold acknowledged writes the forced cluster never saw, the
forced cluster's copies lack them (or hold other writes): both stay *live*,
so replicas of one object differ and reads depend on the gateway.

3 nodes, copies 3 (C alone must know the VDI), local driver:
  epoch 1 {A,B,C}; C killed -> epoch 2 {A,B}; write D1 (acked on A,B);
  A, B killed; C restarted alone (WAIT_FOR_JOIN, epoch 1), forced -> epoch
  2 = {C}; C's gateway writes D2; A restarted: epoch 2 == 2, accepted, no
  demotion -> epoch 3 {A, C} with both copies live.

Now a joiner whose epoch history differs from the cluster's keeps its objects only as stale copies.
"""

import os
import signal
import time

import pytest
from harness import wait_for, write_vdi
from locking import collie

from sheep import proto
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster]

OBJ = proto.SD_DATA_OBJ_SIZE


def _version(node, oid):
    from sheep.store import meta as M
    with open(os.path.join(node.store, "meta", "%016x" % oid), "rb") as f:
        raw = f.read(M.HDR_LEN)
    return M.fmt_version(int.from_bytes(raw[M.VERSION_OFF:M.VERSION_OFF + 8], "little"))


def _read(node, oid):
    cl = node.client()
    try:
        return cl.read_obj(oid, 0, 8)
    finally:
        cl.close()


def test_a_node_of_the_lost_history_rejoins_with_its_copies_demoted(make_cluster):
    c = make_cluster(3)
    c.format(copies=3)
    a, b, cc = c.nodes
    cl = a.client()
    vid = cl.new_vdi("vm", 8 * OBJ)
    ring1 = Ring(cl.nodes())
    # objects that C holds at epoch 1 (so it has a copy of its own)
    idxs = [i for i in range(8)
            if cc.port in {n.port for n in ring1.replicas(proto.vid_to_data_oid(vid, i), 3)}]
    assert idxs
    for i in idxs:
        write_vdi(cl, vid, i * OBJ, b"D0" * 4)
    cl.close()
    cc.kill(signal.SIGKILL)
    c.wait_members(2)
    cl = a.client()
    for i in idxs:
        write_vdi(cl, vid, i * OBJ, b"D1" * 4)  # acknowledged by A and B
    cl.close()
    a.kill(signal.SIGKILL)
    b.kill(signal.SIGKILL)
    cc.start()
    wait_for(lambda: cc.status() == proto.SD_STATUS_WAIT, 10, what="C waiting for its nodes")
    r = collie(cc.port, "cluster", "recover", "force", "-f")
    assert r.returncode == 0, (r.stdout, r.stderr)
    wait_for(lambda: cc.status() == proto.SD_STATUS_OK, 10, what="C running")
    cl = cc.client()
    for i in idxs:
        write_vdi(cl, vid, i * OBJ, b"D2" * 4)  # acknowledged by the forced cluster
    cl.close()
    a.start()
    c.wait_members(2, timeout=20)
    wait_for(lambda: a.status() == proto.SD_STATUS_OK, 10, what="A running")
    time.sleep(2)  # let recovery run
    demoted = "rejoined from epoch" in a.log()
    seen = {}
    for i in idxs:
        oid = proto.vid_to_data_oid(vid, i)
        seen[i] = {f"{n.port}": (_read(n, oid), _version(n, oid)) for n in (a, cc)}
    bad = {i: s for i, s in seen.items() if len({d for d, _v in s.values()}) != 1}
    assert not bad, (f"A demoted its copies: {demoted}; replicas of one object differ "
                     f"(read through each node, live version): {bad}")
