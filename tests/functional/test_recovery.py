"""Recovery across epochs (docs/protocol.md §15): objects follow the ring, no data lost."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from harness import placement_ok, vdi_oids, wait_for

import qemu_client
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster, pytest.mark.recovery]

MiB = 1 << 20


def _check_all(c, vid, size, blob):
    wait_for(lambda: placement_ok(c, vdi_oids(vid, size)), 60, what="replicas where the ring says")
    for n in c.live():
        with qemu_client.open("data", port=n.port) as v:
            assert v.pread(0, size) == blob, f"data differs through {n.port}"


def test_kill_two_then_add_two(make_cluster):
    c = make_cluster(5)
    c.format(copies=3)
    size = 64 * MiB
    vid = c.nodes[0].client().new_vdi("data", size)
    blob = os.urandom(size)
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    _check_all(c, vid, size, blob)
    for victim in (c.nodes[1], c.nodes[3]):
        victim.kill(signal.SIGKILL)
        c.wait_members(len(c.live()))
        _check_all(c, vid, size, blob)
    for _ in range(2):
        c.add_node(zone=len(c.nodes))
        c.wait_members(len(c.live()))
        _check_all(c, vid, size, blob)
    # stale copies are purged once every node finished recovering
    wait_for(lambda: not any(f.startswith(("00", "80")) for n in c.live()
                             for f in os.listdir(os.path.join(n.obj_dir, ".stale"))), 30,
             what="stale copies purged")


def test_writer_during_membership_changes(make_cluster):
    """Acknowledged writes survive kills and joins while a writer keeps writing."""
    c = make_cluster(5)
    c.format(copies=3)
    size = 16 * MiB
    c.nodes[0].client().new_vdi("data", size)
    acked: dict[int, bytes] = {}
    stop = threading.Event()
    errors = []

    def writer():
        import random
        rnd = random.Random(7)
        try:
            with qemu_client.open("data", port=c.nodes[0].port) as v:
                i = 0
                while not stop.is_set():
                    off = rnd.randrange(size // 4096) * 4096
                    data = i.to_bytes(4, "little") * 1024
                    v.pwrite(off, data)
                    acked[off] = data
                    i += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: len(acked) > 50, 30, what="writes before changes")
        c.nodes[2].kill(signal.SIGKILL)
        c.wait_members(4)
        n0 = len(acked)
        wait_for(lambda: len(acked) > n0 + 50, 30, what="writes after a kill")
        c.add_node(zone=5)
        c.wait_members(5)
        n1 = len(acked)
        wait_for(lambda: len(acked) > n1 + 50, 30, what="writes after a join")
        c.nodes[4].kill(signal.SIGKILL)
        c.wait_members(4)
        n2 = len(acked)
        wait_for(lambda: len(acked) > n2 + 50, 30, what="writes after a second kill")
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    for n in c.live():
        with qemu_client.open("data", port=n.port) as v:
            for off, data in acked.items():
                assert v.pread(off, 4096) == data, (n.port, off)


def _collie(port, *argv):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          capture_output=True, text=True, timeout=60)


def test_manual_recovery(make_cluster):
    c = make_cluster(3)
    c.format(copies=2)
    size = 64 * MiB  # 17 objects: the new node surely holds some of them
    vid = c.nodes[0].client().new_vdi("data", size, copies=2)
    blob = os.urandom(size)
    with qemu_client.open("data", port=c.nodes[0].port) as v:
        v.pwrite(0, blob)
    assert _collie(c.nodes[0].port, "cluster", "recover", "disable").returncode == 0
    new = c.add_node(zone=3)
    c.wait_members(4)
    # no background recovery: the new node receives nothing
    ring = Ring(c.nodes[0].client().nodes())
    assert any(new.port in {n.port for n in ring.replicas(o, 2)} for o in vdi_oids(vid, size))
    assert not [f for f in os.listdir(new.obj_dir) if not f.startswith(".")]
    assert _collie(c.nodes[0].port, "cluster", "recover", "enable").returncode == 0
    wait_for(lambda: placement_ok(c, vdi_oids(vid, size), copies=2), 60, what="recovery after enable")
    with qemu_client.open("data", port=new.port) as v:
        assert v.pread(0, size) == blob
