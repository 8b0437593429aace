"""Adversarial review of the 1.0 join rules (restart order, kill -9 while the
cluster waits, refused joins), with real daemons on the local driver."""

import os
import signal
import time

import pytest
from harness import wait_for

from sheep import proto

pytestmark = pytest.mark.cluster

NOBJ = 1500  # enough objects that demoting them all takes a while


def _running(node):
    cl = node.client()
    try:
        return cl.cluster_info().status == proto.SD_STATUS_OK
    finally:
        cl.close()


def _kill_all(nodes):
    for n in nodes:
        os.kill(n.pid, signal.SIGKILL)
    for n in nodes:
        wait_for(lambda n=n: not n.alive(), 10, what="kill")


def _live_oids(node):
    return {int(f, 16) for f in os.listdir(node.obj_dir) if len(f) == 16}


def test_older_node_killed_while_demoting_in_the_waiting_phase(make_cluster):
    """Node 2 misses the writes of epoch 2, then joins the waiting restarted
    cluster (older epoch: admitted, its objects must become stale copies) and
    is killed -9 right after it logged the cluster's newer epoch history.  It
    restarts with that newer history; it must still not serve its old live
    copies as current ones."""
    c = make_cluster(3)
    c.format(copies=3)
    cl = c.nodes[0].client()
    vid = cl.new_vdi("disk", NOBJ * proto.SD_DATA_OBJ_SIZE)
    oids = [proto.vid_to_data_oid(vid, i) for i in range(NOBJ)]
    for oid in oids:
        cl.call(proto.Op.CREATE_AND_WRITE_OBJ, proto.ObjArgs(oid=oid, offset=0), b"old!" * 128)
    cl.close()
    c.nodes[2].kill(signal.SIGKILL)
    c.wait_members(2)  # epoch 2 = {0, 1}
    cl = c.nodes[0].client()
    for oid in oids:  # acknowledged on nodes 0 and 1 only
        cl.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=oid, offset=0), b"new!" * 128)
    cl.close()
    _kill_all(c.nodes[:2])

    c.nodes[0].start()  # waits for node 1 (epoch 2)
    assert not _running(c.nodes[0])
    n2 = c.nodes[2]
    epoch2 = os.path.join(n2.store, "epoch", "%08d" % 2)
    assert not os.path.exists(epoch2)
    if os.path.exists(n2.pidfile):
        os.unlink(n2.pidfile)
    p = n2.launch()
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline:  # kill -9 as soon as it logged epoch 2
        if pid is None:
            try:
                pid = int(open(n2.pidfile).read().strip() or 0) or None
            except (OSError, ValueError):
                pass
        if pid is not None and os.path.exists(epoch2):
            os.kill(pid, signal.SIGKILL)
            break
    else:
        pytest.fail("node 2 never logged epoch 2")
    p.communicate(timeout=60)
    n2.pid = pid
    wait_for(lambda: not n2.alive(), 10, what="node 2 to die")
    left_live = len(_live_oids(n2) & set(oids))
    print(f"node 2 killed with {left_live} of {NOBJ} objects still live")

    n2.start()  # now it has epoch 2 too
    c.nodes[1].start()
    wait_for(lambda: all(_running(n) for n in c.nodes), 60, what="running after restart")
    c.wait_members(3, timeout=30)
    cl = n2.client()  # the gateway reads its own copy first
    try:
        bad = [oid for oid in oids if cl.read_obj(oid, 0, 4) != b"new!"]
    finally:
        cl.close()
    assert not bad, (f"{len(bad)} acknowledged writes read back as the older copy through "
                     f"node 2 (killed with {left_live} objects not yet demoted)")


def test_whole_cluster_crash_between_a_refused_join_and_its_leave(make_cluster):
    """A refused joiner is logged in an epoch (0 vnodes) until its leave.  If
    the whole cluster dies in between (here: the refused node hangs, so its
    leave never comes, then power is lost), the newest epoch names the
    refused node; it can never be admitted, so the restarted cluster must not
    wait for it (it holds nothing)."""
    import fcntl

    a = make_cluster(2)
    a.format(copies=2)
    fixed = a.add_node(start=False)
    fixed.extra += ["-V", "64"]  # refused: the cluster uses automatic vnodes
    needle = f":{fixed.port}/".encode()
    # the members cannot answer the join until the joiner is frozen: its join
    # is in the log, the verdict comes only once it hears nothing more
    with open(os.path.join(a.cdir, "lock"), "a+") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # not stopped inside the log's lock (drivers/local.py)
        for n in a.nodes[:2]:
            os.kill(n.pid, signal.SIGSTOP)
        fcntl.flock(lk, fcntl.LOCK_UN)
    try:
        p = fixed.launch()

        def asked():
            with open(os.path.join(a.cdir, "log"), "rb") as f:
                return needle in f.read() and os.path.exists(fixed.pidfile)
        wait_for(asked, 60, what="the refused node to ask to join")
        pid = int(open(fixed.pidfile).read())
        os.kill(pid, signal.SIGSTOP)  # it asked to join, hears nothing more
    finally:
        for n in a.nodes[:2]:
            os.kill(n.pid, signal.SIGCONT)
    fixed.pid = pid
    try:
        for n in a.nodes[:2]:
            wait_for(lambda n=n: os.path.exists(os.path.join(n.store, "epoch", "%08d" % 2)), 30,
                     what="the refused join's epoch")
        _kill_all(a.nodes[:2])
    finally:
        os.kill(pid, signal.SIGKILL)
        p.communicate(timeout=60)
    wait_for(lambda: not fixed.alive(), 10, what="refused node to die")
    fixed.pid = None
    for n in a.nodes[:2]:
        n.start()
    a.nodes[2].start_refused("failed to join the cluster")  # it comes back: refused again
    wait_for(lambda: all(_running(n) for n in a.nodes[:2]), 30,
             what="the restarted cluster to run without the refused node")


def test_two_foreign_formatted_nodes_join_an_unformatted_cluster_at_once(make_cluster):
    """An unformatted node; two nodes formatted for two different clusters
    start at the same time.  One cluster's info is taken over, the other node
    is refused; nothing of the refused cluster comes in."""
    import shutil
    import subprocess
    import sys

    def collie(port, *argv, stdin=None):
        return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                              input=stdin, capture_output=True, timeout=60)

    stores, datas = [], []
    for name in ("x", "y"):
        o = make_cluster(1)
        o.format(copies=1)
        port = o.nodes[0].port
        data = os.urandom(8192)
        assert collie(port, "vdi", "create", name, "8M").returncode == 0
        assert collie(port, "vdi", "write", name, "0", "8192", stdin=data).returncode == 0
        o.nodes[0].kill(signal.SIGTERM)
        wait_for(lambda o=o: not o.nodes[0].alive(), 10, what="stop")
        stores.append((o.nodes[0].store, o.nodes[0].port))
        datas.append(data)
    c = make_cluster(1)  # unformatted
    # each joiner on its old node's port: the epoch log names that node
    joiners = [c.add_node(start=False, port=port) for _s, port in stores]
    for j, (s, _port) in zip(joiners, stores):
        shutil.copytree(s, j.store, ignore=shutil.ignore_patterns("sock", "sheep.log"))
    ps = [j.launch() for j in joiners]
    for j, p in zip(joiners, ps):
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err  # 1.0: the launcher exits 0 once the daemon started
        try:
            j.pid = int(open(j.pidfile).read())
        except (OSError, ValueError):  # the refused one may be gone already
            j.pid = None
    wait_for(lambda: sum("failed to join the cluster" in j.log() for j in joiners) == 1, 30,
             what="one joiner refused")
    loser = next(i for i, j in enumerate(joiners) if "failed to join the cluster" in j.log())
    winner = 1 - loser
    wait_for(lambda: not joiners[loser].alive(), 30, what="the refused joiner to exit")
    wait_for(lambda: _running(c.nodes[0]) and _running(joiners[winner]), 30,
             what="the cluster to run with the winner's info")
    c.wait_members(2, timeout=30)
    names = ("x", "y")
    for n in (c.nodes[0], joiners[winner]):
        out = collie(n.port, "vdi", "list").stdout.decode()
        assert names[winner] in out and f" {names[loser]} " not in out, out
        r = collie(n.port, "vdi", "read", names[winner], "0", "8192")
        assert r.returncode == 0 and r.stdout == datas[winner]


def test_whole_cluster_restart_after_node_vnodes_set(make_cluster):
    """``node vnodes set`` moves the cluster to an epoch whose ring has the
    new count; every node is then killed at once and restarted with the same
    command line.  Whatever ring the restarted cluster uses, every
    acknowledged write must read back: here new data is written after the
    restart, then node 1 is killed, and everything is read through the two
    others."""
    import subprocess
    import sys

    def collie(port, *argv):
        r = subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r

    c = make_cluster(3, extra=["-V", "128"])
    collie(c.nodes[0].port, "cluster", "format", "-V", "-c", "2")
    wait_for(lambda: all(_running(n) for n in c.nodes), 10, what="running")
    collie(c.nodes[1].port, "node", "vnodes", "set", "8")
    wait_for(lambda: [n.nr_vnodes for n in c.nodes[0].client().nodes()] == [128, 8, 128], 10,
             what="vnodes change visible everywhere")
    cl = c.nodes[0].client()
    vid = cl.new_vdi("disk", 64 * proto.SD_DATA_OBJ_SIZE)
    oids = [proto.vid_to_data_oid(vid, i) for i in range(64)]
    for oid in oids:
        cl.call(proto.Op.CREATE_AND_WRITE_OBJ, proto.ObjArgs(oid=oid, offset=0), b"old!" * 128)
    cl.close()
    idle = (lambda: all(n.client().call(proto.Op.STAT_RECOVERY, data_length=24)[1][0] == 0
                        for n in c.live()))
    wait_for(idle, 60, what="recovery idle")
    epoch = c.nodes[0].client().cluster_info().epoch
    _kill_all(c.nodes)
    for n in c.nodes:
        n.start()
    wait_for(lambda: all(_running(n) for n in c.nodes), 30, what="running after restart")
    c.wait_members(3, timeout=30)
    ring_now = [n.nr_vnodes for n in c.nodes[0].client().nodes()]
    now = c.nodes[0].client().cluster_info().epoch
    print(f"epoch {epoch} -> {now}, ring vnodes {ring_now}")
    wait_for(idle, 60, what="recovery idle after the restart")
    cl = c.nodes[0].client()
    for oid in oids:  # acknowledged by every holder of the ring in use
        cl.call(proto.Op.WRITE_OBJ, proto.ObjArgs(oid=oid, offset=0), b"new!" * 128)
    cl.close()
    c.nodes[1].kill(signal.SIGKILL)
    c.wait_members(2, timeout=30)
    for n in (c.nodes[0], c.nodes[2]):
        cl = n.client()
        try:
            bad = [oid for oid in oids if cl.read_obj(oid, 0, 4) != b"new!"]
        finally:
            cl.close()
        assert not bad, (f"{len(bad)} acknowledged writes read back old through node {n.idx} "
                         f"(epoch {epoch} had vnodes [128, 8, 128]; restarted at epoch {now} "
                         f"with {ring_now})")
