"""Review: DEL_VDI refused while a VDI is in use, and breaking the lock.

With real daemons (three sheep, VDI locks enforced, ``--lock-grace 1``):

* ``vdi delete --force`` and ``vdi rollback --break-lock`` sent to a node
  other than the holder's gateway really break the lock: the old holder's
  next write fails with FENCED and never lands in the re-created VDI;
* snapshots and clones of a VDI in use are deletable (they are not locked),
  the working VDI is not, and its writer goes on;
* a holder that died: the delete is refused while its session may come
  back, then (lock released after the grace) succeeds;
* after the holder failed over to another gateway, the refusal still holds
  on every node.
"""

import signal
import subprocess
import sys

import pytest
from harness import Client, Cluster, collie_run, wait_for

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES, SdError

pytestmark = [pytest.mark.cluster, pytest.mark.review, pytest.mark.lock]

GRACE = 1.0


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("r12b"), n=3, extra=["--lock-grace", str(GRACE)])
    c.wait_members(3)
    r = collie_run(c.nodes[0].port, "cluster", "format", "-c", "2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in c.nodes), 10,
             what="cluster running")
    yield c
    c.close()


def ok(port, *argv):
    r = collie_run(port, *argv)
    assert r.returncode == 0, (argv, r.stderr.decode())
    return r


def names(port):
    return [ln.split()[1] for ln in ok(port, "vdi", "list", "-r").stdout.decode().splitlines()]


def fenced(w, off=0, data=b"late write"):
    with pytest.raises(SdError) as ei:
        w.pwrite(off, data)
    return ei.value.code


def test_force_delete_then_recreate_fences_old_holder(c):
    p0, p1, _ = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "fz", "8M")
    w = qemu_client.open("fz", port=p1, failover=False)
    try:
        w.pwrite(0, b"old data")
        r = collie_run(p0, "vdi", "delete", "fz")  # not through the holder's gateway
        assert r.returncode == 1 and b"in use" in r.stderr
        r = collie_run(p0, "vdi", "delete", "--force", "fz")
        assert r.returncode == 0, r.stderr
        ok(p0, "vdi", "create", "fz", "8M")  # a new VDI of the same name
        assert fenced(w) == CODES["FENCED"]
        assert fenced(w, 4 << 20) == CODES["FENCED"]  # an object never written: create
    finally:
        try:
            w.close()
        except SdError:
            pass
    with qemu_client.open("fz", port=c.nodes[2].port) as n:  # its lock is free
        assert n.pread(0, 10) == bytes(10)
        assert n.pread(4 << 20, 10) == bytes(10)
        n.pwrite(0, b"new owner")
    ok(p0, "vdi", "delete", "fz")


def test_rollback_break_lock_fences_holder(c):
    p0, p1, p2 = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "rb", "8M")
    with qemu_client.open("rb", port=p0) as w:
        w.pwrite(0, b"snapshot!")
    ok(p0, "vdi", "snapshot", "-s", "s1", "rb")
    w = qemu_client.open("rb", port=p2, failover=False)
    try:
        w.pwrite(0, b"live data")
        r = collie_run(p1, "vdi", "rollback", "-f", "-s", "s1", "rb")
        assert r.returncode == 1 and b"--break-lock" in r.stderr
        r = collie_run(p1, "vdi", "rollback", "-f", "--break-lock", "-s", "s1", "rb")
        assert r.returncode == 0, r.stderr
        assert fenced(w) == CODES["FENCED"]
    finally:
        try:
            w.close()
        except SdError:
            pass
    with qemu_client.open("rb", port=p1) as n:
        assert n.pread(0, 9) == b"snapshot!"


def test_snapshot_and_clone_of_vdi_in_use_deletable(c):
    p0, p1, p2 = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "sc", "8M")
    ok(p0, "vdi", "snapshot", "-s", "s1", "sc")
    ok(p0, "vdi", "clone", "-s", "s1", "sc", "sc-clone")
    w = qemu_client.open("sc", port=p1)
    try:
        w.pwrite(0, b"in use")
        ok(p2, "vdi", "delete", "sc-clone")
        ok(p2, "vdi", "delete", "-s", "s1", "sc")
        for p in (p0, p2):  # the working VDI is refused, also away from its gateway
            r = collie_run(p, "vdi", "delete", "sc")
            assert r.returncode == 1 and b"in use" in r.stderr, r.stderr
        w.pwrite(512, b"still mine")
        assert w.pread(0, 6) == b"in use"
    finally:
        w.close()
    assert names(p0).count("sc") == 1 and "sc-clone" not in names(p0)
    ok(p0, "vdi", "delete", "sc")


HOLDER = """
import sys, qemu_client
w = qemu_client.open("dead", port=int(sys.argv[1]), failover=False)
w.pwrite(0, b"held")
print("held", flush=True)
sys.stdin.read()
"""


def test_dead_holder_then_delete(c):
    p0, p1, _ = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "dead", "8M")
    h = subprocess.Popen([sys.executable, "-c", HOLDER, str(p1)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    try:
        assert h.stdout.readline() == b"held\n"
        r = collie_run(p0, "vdi", "delete", "dead")
        assert r.returncode == 1 and b"in use" in r.stderr
        h.send_signal(signal.SIGKILL)
        h.wait(10)
        # the session lapses after the grace: then the delete goes through
        wait_for(lambda: collie_run(p0, "vdi", "delete", "dead").returncode == 0, 15,
                 what="delete after the dead holder's grace")
    finally:
        if h.poll() is None:
            h.kill()
            h.wait()
        h.stdout.close()
        h.stdin.close()
    assert "dead" not in names(p0)


def test_refusal_holds_after_holder_failover(c):
    p0, p1, p2 = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "fo", "8M")
    ok(p0, "vdi", "snapshot", "-s", "s1", "fo")
    w = qemu_client.open("fo", port=p2, nodes=[("127.0.0.1", p) for p in (p2, p0, p1)])
    gw = c.nodes[2]
    try:
        w.pwrite(0, b"before")
        gw.kill()
        w.pwrite(512, b"after failover")  # the client went on through another gateway
        for p in (p0, p1):
            r = collie_run(p, "vdi", "delete", "fo")
            assert r.returncode == 1 and b"in use" in r.stderr, r.stderr
        assert w.pread(0, 6) == b"before"
        # the holder, re-attached to its new gateway, is still recognised as
        # the holder: its own revert deletes the working VDI (no rebase)
        w.snapshot_goto("s1")
        assert names(p0).count("fo") == 2  # s1 and the new working VDI
        assert w.pread(0, 6) == bytes(6)
        w.pwrite(0, b"reverted")
        r = collie_run(p0, "vdi", "delete", "fo")  # ... and it holds the new one
        assert r.returncode == 1 and b"in use" in r.stderr, r.stderr
    finally:
        w.close()
        gw.start()
        c.wait_members(3, timeout=20)
    ok(p0, "vdi", "delete", "fo")
    ok(p0, "vdi", "delete", "-s", "s1", "fo")


def _race_lock_and_delete(port: int, name: str, rounds: int = 1):
    """LOCK_VDI and DEL_VDI of ``name`` sent at once on two connections to
    one node (the lock first): (lock result, delete result)."""
    import asyncio

    from sheep.proto.connection import AsyncConnection

    def req(op):
        payload = proto.vdi_name_payload(name, "")
        return proto.Request(op, proto.VdiArgs(), flags=proto.SD_FLAG_CMD_WRITE,
                             data_length=len(payload)), payload

    async def go():
        a = await AsyncConnection.open("127.0.0.1", port)
        b = await AsyncConnection.open("127.0.0.1", port)
        try:
            lk = asyncio.ensure_future(a.request(*req(proto.Op.LOCK_VDI)))
            await asyncio.sleep(0)  # the LOCK_VDI is sent first
            dl = asyncio.ensure_future(b.request(*req(proto.Op.DEL_VDI)))
            (lr, _), (dr, _) = await asyncio.gather(lk, dl)
            return lr.result, dr.result
        finally:
            a.close()
            b.close()
    return asyncio.run(go())


def test_delete_racing_a_lock_never_deletes_a_locked_vdi(c):
    """The in-use check and the delete are one step in the cluster-wide turn:
    a lock granted after a check made outside the turn, but before the
    delete's turn, would leave its holder writing to a deleted VDI."""
    p0 = c.nodes[0].port
    for i in range(2):
        name = f"race{i}"
        ok(p0, "vdi", "create", name, "4M")
        lock, dele = _race_lock_and_delete(p0, name)
        assert not (lock == 0 and dele == 0), f"{name}: locked AND deleted"
        if lock == 0:  # the lock won: the delete was refused, the VDI is there
            assert dele == CODES["VDI_LOCKED"], dele
            assert name in names(p0)
            r = collie_run(p0, "vdi", "delete", "--force", name)
            assert r.returncode == 0, r.stderr


def test_snapshot_taken_while_in_use(c):
    """A snapshot taken under a writer: the writer goes on in the new working
    VDI, which stays undeletable; the snapshot is not in use."""
    p0, p1, p2 = (n.port for n in c.nodes)
    ok(p0, "vdi", "create", "live", "8M")
    w = qemu_client.open("live", port=p1)
    try:
        w.pwrite(0, b"first")
        ok(p2, "vdi", "snapshot", "-s", "s1", "live")
        w.pwrite(0, b"after")
        for p in (p0, p2):
            r = collie_run(p, "vdi", "delete", "live")
            assert r.returncode == 1 and b"in use" in r.stderr, r.stderr
            cl = Client(p)
            try:
                rsp, _ = cl.call(proto.Op.DEL_VDI, payload=proto.vdi_name_payload("live", ""),
                                 check=False)
            finally:
                cl.close()
            assert rsp.result == CODES["VDI_LOCKED"], rsp.result
        ok(p0, "vdi", "delete", "-s", "s1", "live")  # the snapshot is nobody's
        w.pwrite(512, b"still")
        assert w.pread(0, 5) == b"after"
    finally:
        w.close()
    ok(p0, "vdi", "delete", "live")
