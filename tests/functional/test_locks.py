"""VDI locks that never go stale (docs/protocol.md §17), with real daemons and real client processes.

Clusters run with ``--lock-grace 3`` so that session expiry is quick; every
wait is a condition polled until a deadline.
"""

import signal
import time

import pytest
from harness import cli_sections, wait_for
from locking import (
    GRACE,
    MB,
    collie,
    lock_holders,
    locked_cluster,
    new_vdi,
    open_eventually,
)

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES, FencedError, SdError, VdiLockedError

pytestmark = pytest.mark.cluster

# ---------------------------------------------------------------------------
# semantics


def test_second_writer_fails_until_the_first_closes(make_cluster):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    p0, p1, p2 = (n.port for n in c.nodes)
    a = qemu_client.open("vm", port=p0)
    try:
        assert a.generation > 0
        a.pwrite(0, b"a" * 512)
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p1)
        with pytest.raises(VdiLockedError):  # readers can't coexist with a writer
            qemu_client.open("vm", port=p2, readonly=True)
        # every node agrees on the owner: (node 0, a's session)
        for n in c.nodes:
            [h] = lock_holders(n, vid)
            assert (h.kind, h.session, h.generation) == (proto.LOCK_KIND_EXCLUSIVE,
                                                        a.session_id, a.generation)
            assert proto.nid_to_str(h.owner) == f"127.0.0.1:{p0}"
    finally:
        a.close()
    wait_for(lambda: all(not lock_holders(n, vid) for n in c.nodes), 5, what="released everywhere")
    b = qemu_client.open("vm", port=p1)
    try:
        assert b.generation > a.generation
        assert b.pread(0, 512) == b"a" * 512
    finally:
        b.close()


def test_readers_and_snapshots(make_cluster):
    c = locked_cluster(make_cluster)
    new_vdi(c)
    p0, p1, p2 = (n.port for n in c.nodes)
    with qemu_client.open("vm", port=p0) as w:
        w.pwrite(0, b"snapdata")
    r = collie(p0, "vdi", "snapshot", "-s", "s1", "vm")  # needs the VDI lifecycle work
    assert r.returncode == 0, r.stderr
    w = qemu_client.open("vm", port=p0)  # a writer on the working VDI...
    try:
        w.pwrite(0, b"working!")
        # ...does not stop several readers of the snapshot at once
        snaps = [qemu_client.open("vm", port=p, snapshot="s1") for p in (p0, p1, p2)]
        snaps.append(qemu_client.open("vm", port=p1, snapshot=1))
        try:
            for s in snaps:
                assert s.generation == 0
                assert s.pread(0, 8) == b"snapdata"
                with pytest.raises(SdError):
                    s.pwrite(0, b"x")
        finally:
            for s in snaps:
                s.close()
    finally:
        w.close()
    # a reader of the working VDI keeps writers out, and many readers share it
    r1 = qemu_client.open("vm", port=p1, readonly=True)
    r2 = qemu_client.open("vm", port=p2, readonly=True)
    try:
        assert r1.pread(0, 8) == b"working!"
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p0)
    finally:
        r1.close()
        r2.close()
    qemu_client.open("vm", port=p0).close()


def test_snapshot_under_a_writer_keeps_its_lock(make_cluster):
    c = locked_cluster(make_cluster)
    new_vdi(c)
    p0, p1 = c.nodes[0].port, c.nodes[1].port
    w = qemu_client.open("vm", port=p0)
    try:
        w.pwrite(0, b"before")
        assert collie(p1, "vdi", "snapshot", "-s", "s1", "vm").returncode == 0
        w.pwrite(0, b"after!")  # goes to the new working VDI, still fenced by our grant
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p1)
        assert w.pread(0, 6) == b"after!"
    finally:
        w.close()
    with qemu_client.open("vm", port=p1, snapshot="s1") as s:
        assert s.pread(0, 6) == b"before"


# ---------------------------------------------------------------------------
# no stale locks


def test_killed_client_loses_its_lock_within_the_grace(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    a = procs(c.nodes[1].port)
    assert a.cmd("write 0 " + (b"A" * 16).hex()) == "OK"
    with pytest.raises(VdiLockedError):
        qemu_client.open("vm", port=c.nodes[0].port)
    a.signal(signal.SIGKILL)
    b, waited = open_eventually(c.nodes[0].port)
    try:
        assert waited <= GRACE + 5
        assert b.generation > a.generation
        assert b.pread(0, 16) == b"A" * 16
        wait_for(lambda: all([h.session for h in lock_holders(n, vid)] == [b.session_id]
                             for n in c.nodes), 5, what="one holder everywhere")
    finally:
        b.close()


def test_killed_gateway_releases_its_locks_everywhere(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    old = new_vdi(c, "old")
    a = procs(c.nodes[1].port)
    # a Sheepdog 1.0 client (no session) locking through the same node
    legacy = c.nodes[1].client()
    legacy.call(proto.Op.LOCK_VDI, payload=proto.vdi_name_payload("old", ""))
    with pytest.raises(VdiLockedError):  # 1.0: a second lock from the same node fails
        legacy.call(proto.Op.LOCK_VDI, payload=proto.vdi_name_payload("old", ""))
    assert lock_holders(c.nodes[2], vid) and lock_holders(c.nodes[2], old)
    c.nodes[1].kill(signal.SIGKILL)
    c.wait_members(2)
    survivors = [c.nodes[0], c.nodes[2]]
    wait_for(lambda: all(not lock_holders(n) for n in survivors), 10,
             what="locks released on all survivors")
    b = qemu_client.open("vm", port=c.nodes[0].port)
    try:
        assert b.generation > a.generation
    finally:
        b.close()
    qemu_client.open("old", port=c.nodes[2].port).close()
    a.kill()


def test_reconnect_to_another_gateway_keeps_the_lock(make_cluster):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    sid = 0x1234567890ABCDEF
    n0, n1 = c.nodes[0], c.nodes[1]

    def lock(cl, mode, gen=0):
        args = proto.VdiArgs()
        proto.set_lock_session(args, sid, mode, gen)
        payload = proto.vdi_name_payload("vm", "") if mode != proto.LOCK_MODE_RENEW else b""
        rsp, _ = cl.call(proto.Op.LOCK_VDI, args, payload, flags=proto.SD_FLAG_CMD_SESSION)
        return proto.session_reply(rsp.args)

    cl0 = n0.client()
    status, gen, lease_ms, holds = lock(cl0, proto.LOCK_MODE_WRITE)
    assert status == proto.LOCK_STATUS_SESSION | proto.LOCK_STATUS_ENFORCED
    assert gen > 0 and lease_ms == GRACE * 1000 and holds == 1
    cl0.close()  # the connection is gone; the client comes back through node 1
    cl1 = n1.client()
    old, gen = gen, lock(cl1, proto.LOCK_MODE_REATTACH, gen)[1]
    assert gen > old  # a new grant: writes still on their way through node 0 are fenced
    [h] = lock_holders(n0, vid)
    assert (h.session, h.generation, proto.nid_to_str(h.owner)) == (sid, gen,
                                                                    f"127.0.0.1:{n1.port}")
    # node 0's session ended long ago, but node 1 keeps hearing from us: the lock stays
    until = time.monotonic() + GRACE + 2
    while time.monotonic() < until:
        assert lock(cl1, proto.LOCK_MODE_RENEW)[3] == 1
        time.sleep(0.5)
    assert [h.generation for h in lock_holders(n0, vid)] == [gen]
    # a re-attach with a wrong generation is fenced
    with pytest.raises(FencedError):
        lock(cl1, proto.LOCK_MODE_REATTACH, gen + 100)
    cl1.close()
    wait_for(lambda: not lock_holders(n0, vid), GRACE + 5, what="lease expiry")


# ---------------------------------------------------------------------------
# fencing


def test_stalled_client_is_fenced(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    a = procs(c.nodes[0].port)
    assert a.cmd("write 0 " + (b"A" * 4096).hex()) == "OK"
    a.signal(signal.SIGSTOP)  # paused: no heartbeats, connection still open
    b, waited = open_eventually(c.nodes[1].port)
    try:
        assert waited <= GRACE + 5 and b.generation > a.generation
        b.pwrite(0, b"B" * 4096)
        b.pwrite(4 * MB, b"b" * 4096)
        a.signal(signal.SIGCONT)
        assert a.cmd("write 0 " + (b"A" * 4096).hex()) == "ERR FENCED"  # WRITE_OBJ
        assert a.cmd("write 8388608 " + (b"A" * 4096).hex()) == "ERR FENCED"  # CREATE_AND_WRITE
        assert b.pread(0, 4096) == b"B" * 4096
        assert b.pread(4 * MB, 4096) == b"b" * 4096
        assert b.pread(8 * MB, 4096) == bytes(4096)
        cl = c.nodes[2].client()
        try:
            assert cl.read_obj(proto.vid_to_data_oid(vid, 0), 0, 4096) == b"B" * 4096
        finally:
            cl.close()
    finally:
        b.close()


def test_operator_unlock_fences_the_holder(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    port = c.nodes[2].port
    a = procs(c.nodes[1].port)
    r = collie(port, "vdi", "lock", "list")
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0 and len(lines) == 2, lines
    f = lines[1].split()
    assert f[:3] == ["vm", "0", f"{vid:x}"]
    assert f[3:7] == ["write", f"127.0.0.1:{c.nodes[1].port}", f"{a.session:016x}",
                      str(a.generation)]
    assert f[7].endswith("s")
    # dog prints the Sheepdog 1.0 view
    r = collie(port, "vdi", "lock", "list", prog="dog")
    assert r.stdout.decode().splitlines()[1].split() == \
        ["vm", "0", f"{vid:x}", f"127.0.0.1:{c.nodes[1].port}"]
    assert collie(port, "vdi", "lock", "unlock", "vm").returncode == 0
    assert a.cmd("write 0 " + (b"A" * 512).hex()) == "ERR FENCED"
    r = collie(port, "vdi", "lock", "list")
    assert r.returncode == 0 and len(r.stdout.decode().splitlines()) == 1
    r = collie(port, "vdi", "lock", "unlock", "vm")
    assert r.returncode != 0 and b"not locked" in r.stderr
    with qemu_client.open("vm", port=port) as b:
        assert b.generation > a.generation + 1  # the unlock itself took a generation


# ---------------------------------------------------------------------------
# migration


def test_handover(make_cluster):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    p0, p1, p2 = (n.port for n in c.nodes)
    src = qemu_client.open("vm", port=p0)
    dst = qemu_client.open("vm", port=p1, inactive=True)
    try:
        src.pwrite(0, b"S" * 1024)
        with pytest.raises(qemu_client.InactiveError):
            dst.pread(0, 1)
        with pytest.raises(VdiLockedError):  # a third party during the migration
            qemu_client.open("vm", port=p2)
        old = src.generation
        src.inactivate(handover_to=dst.session_id)
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p2)
        [h] = lock_holders(c.nodes[2], vid)
        assert h.session == dst.session_id and h.generation > old
        dst.activate()
        assert dst.generation == h.generation
        assert dst.pread(0, 1024) == b"S" * 1024
        dst.pwrite(0, b"D" * 512)
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p2)
        # the source's generation is fenced on the wire
        cl = c.nodes[0].client()
        try:
            args = proto.ObjArgs(oid=proto.vid_to_data_oid(vid, 0))
            proto.set_fence(args, old)
            with pytest.raises(FencedError):
                cl.call(proto.Op.WRITE_OBJ, args, b"S" * 512, flags=proto.SD_FLAG_CMD_SESSION)
        finally:
            cl.close()
        assert dst.pread(0, 1024) == b"D" * 512 + b"S" * 512
    finally:
        src.close()
        dst.close()
    with qemu_client.open("vm", port=p2, readonly=True) as r:
        assert r.pread(0, 1024) == b"D" * 512 + b"S" * 512


def test_handover_source_dies(make_cluster, procs):
    c = locked_cluster(make_cluster)
    new_vdi(c)
    src = procs(c.nodes[0].port)
    dst = qemu_client.open("vm", port=c.nodes[1].port, inactive=True)
    try:
        with pytest.raises(VdiLockedError):
            dst.activate()  # the source still holds it
        src.signal(signal.SIGKILL)
        deadline = time.monotonic() + GRACE + 5
        while True:
            try:
                dst.activate()
                break
            except VdiLockedError:
                assert time.monotonic() < deadline, "destination never got the lock"
                time.sleep(0.1)
        assert dst.generation > src.generation
        dst.pwrite(0, b"dst")
    finally:
        dst.close()


# ---------------------------------------------------------------------------
# format flags, restart, operators


def test_full_restart_generations_grow(make_cluster):
    c = make_cluster(3, extra=["--lock-grace", str(GRACE)])
    c.wait_members(3)
    port = c.nodes[0].port
    r = collie(port, "cluster", "format", "-c", "2")  # collie locks by default
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 10, what="cluster running")
    assert c.nodes[1].client().cluster_info().flags & proto.SD_CLUSTER_FLAG_USE_LOCK
    assert collie(port, "vdi", "create", "vm", "8M").returncode == 0
    gens = []
    for n in c.nodes:
        with qemu_client.open("vm", port=n.port) as v:
            gens.append(v.generation)
    assert gens == sorted(gens) and len(set(gens)) == 3
    assert collie(port, "cluster", "shutdown").returncode == 0
    wait_for(lambda: not any(n.alive() for n in c.nodes), 15, what="shutdown")
    for n in reversed(c.nodes):  # the last node back is the former master
        n.start()
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 15, what="running after restart")
    with qemu_client.open("vm", port=c.nodes[2].port) as v:
        assert v.generation > max(gens)


def test_format_flags_and_1_0_behaviour(make_cluster):
    c = make_cluster(1)
    c.wait_members(1)
    port = c.nodes[0].port

    def flags():
        return c.nodes[0].client().cluster_info().flags

    assert collie(port, "cluster", "format", "-c", "1", "--no-lock").returncode == 0
    assert not flags() & proto.SD_CLUSTER_FLAG_USE_LOCK
    assert collie(port, "vdi", "create", "vm", "8M").returncode == 0
    # without USE_LOCK: Sheepdog 1.0 behaviour, two writers may open
    a = qemu_client.open("vm", port=port)
    b = qemu_client.open("vm", port=port)
    try:
        assert a.generation == b.generation == 0
        a.pwrite(0, b"a")
        b.pwrite(4 * MB, b"b")
        assert a.pread(0, 1) == b"a" and b.pread(4 * MB, 1) == b"b"
        assert not lock_holders(c.nodes[0])
    finally:
        a.close()
        b.close()
    assert collie(port, "cluster", "format", "-c", "1", "-f", prog="dog").returncode == 0
    assert not flags() & proto.SD_CLUSTER_FLAG_USE_LOCK
    assert collie(port, "cluster", "format", "-c", "1", "-f", "-l", prog="dog").returncode == 0
    assert flags() & proto.SD_CLUSTER_FLAG_USE_LOCK
    assert collie(port, "cluster", "format", "-c", "1", "-f").returncode == 0
    assert flags() & proto.SD_CLUSTER_FLAG_USE_LOCK


def test_dog_lock_steps_of_the_capture(make_cluster):
    """The locked-cluster steps of tests/data/cli.txt, as dog, on a fresh cluster."""
    c = make_cluster(3)
    c.wait_members(3)
    port = c.nodes[0].port
    sections = cli_sections()
    for label in ("cluster_format_lock", "vdi_create_l", "vdi_lock_list_empty",
                  "vdi_delete_l", "cluster_shutdown_l"):
        sec = sections[label]
        r = collie(port, *sec["cmd"], prog="dog")
        assert r.returncode == sec["exit"], (label, r.stderr)
        assert r.stdout.decode() == sec["out"], label
        if label == "cluster_format_lock":
            assert c.nodes[1].client().cluster_info().flags & proto.SD_CLUSTER_FLAG_USE_LOCK
    wait_for(lambda: not any(n.alive() for n in c.nodes), 15, what="shutdown")


def test_release_without_session_is_1_0(make_cluster):
    """RELEASE_VDI without the flag unlocks whoever holds it (dog's unlock), and
    a LOCK_VDI with an unknown type fails, as in Sheepdog 1.0."""
    c = locked_cluster(make_cluster, n=1, copies=1)
    vid = new_vdi(c)
    cl = c.nodes[0].client()
    try:
        rsp, _ = cl.call(proto.Op.LOCK_VDI, proto.VdiArgs(type=7),
                         proto.vdi_name_payload("vm", ""), check=False)
        assert rsp.result == CODES["INVALID_PARMS"]
        rsp, _ = cl.call(proto.Op.LOCK_VDI, payload=proto.vdi_name_payload("vm", ""))
        assert rsp.args.vdi_id == vid and rsp.args.pad == bytes(14)  # a 1.0 reply
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=c.nodes[0].port)
        cl.call(proto.Op.RELEASE_VDI, proto.VdiArgs(base_vdi_id=vid))
        assert not lock_holders(c.nodes[0], vid)
        cl.call(proto.Op.RELEASE_VDI, proto.VdiArgs(base_vdi_id=vid))  # always SUCCESS
    finally:
        cl.close()
    qemu_client.open("vm", port=c.nodes[0].port).close()
