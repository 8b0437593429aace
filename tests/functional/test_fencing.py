"""Fencing at every replica and leases that survive this process's own stops
(docs/data-safety.md "Fencing"), with real daemons and real clients."""

import signal
import time

import pytest
from harness import wait_for
from locking import GRACE, collie, lock_holders, locked_cluster, new_vdi, peer_write

import qemu_client
from sheep import proto
from sheep.proto.errors import CODES, FencedError

pytestmark = [pytest.mark.cluster, pytest.mark.lock]


def node_index(c, node):
    return [n.port for n in c.nodes[0].client().nodes()].index(node.port)


def test_every_replica_refuses_a_write_of_a_fenced_writer(make_cluster):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    oid = proto.vid_to_data_oid(vid, 0)
    a = qemu_client.open("vm", port=c.nodes[0].port)
    a.pwrite(0, b"A" * 4096)
    gen_a = a.generation
    assert collie(c.nodes[2].port, "vdi", "lock", "unlock", "vm").returncode == 0
    b = qemu_client.open("vm", port=c.nodes[1].port)
    try:
        b.pwrite(0, b"B" * 4096)
        # writer A's gateway (node 0) still retrying its old write: every
        # replica refuses it, whatever order requests arrive in
        for replica in c.nodes:
            result, _ = peer_write(replica, oid, b"A" * 4096, gen_a, node_index(c, c.nodes[0]))
            assert result == CODES["FENCED"], (replica.port, result)
            # B's generation, but through a gateway B never used
            result, _ = peer_write(replica, oid, b"X" * 4096, b.generation,
                                   node_index(c, c.nodes[2]))
            assert result == CODES["FENCED"], (replica.port, result)
        for n in c.nodes:
            with _reader(b, n) as data:
                assert data == b"B" * 4096
        with pytest.raises(FencedError):
            a.pwrite(0, b"A" * 4096)
        with pytest.raises(FencedError):  # reads of a fenced writer are refused too
            a.pread(0, 4096)
    finally:
        b.close()
        try:
            a.close()  # its lock is gone: the release is a no-op
        except FencedError:
            pass


class _reader:
    """Read block 0 of the VDI through node ``n`` while ``b`` holds the lock:
    a raw READ_OBJ (read-only opens are refused while a writer holds it)."""

    def __init__(self, b, n):
        self.oid = proto.vid_to_data_oid(b.vid, 0)
        self.cl = n.client()

    def __enter__(self):
        return self.cl.read_obj(self.oid, 0, 4096)

    def __exit__(self, *exc):
        self.cl.close()


def test_a_stopped_gateway_does_not_reap_a_lease_that_was_renewed(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    gw = c.nodes[1]
    w = procs(gw.port)
    assert w.cmd("write 0 " + (b"1" * 4096).hex()) == "OK"
    # the gateway is stopped for longer than the lease grace while the client
    # keeps renewing: its renewals wait unread on the gateway's socket
    gw.kill(signal.SIGSTOP)
    time.sleep(2 * GRACE)  # the stimulus: how long the gateway does not run
    gw.kill(signal.SIGCONT)
    assert w.cmd("write 4096 " + (b"2" * 4096).hex()) == "OK"
    assert [(h.session, h.generation) for h in lock_holders(c.nodes[0], vid)] == \
        [(w.session, w.generation)]
    assert "releasing its locks" not in gw.log()


def test_a_writer_goes_on_after_a_full_cluster_restart(make_cluster, procs):
    c = locked_cluster(make_cluster)
    vid = new_vdi(c)
    w = procs(c.nodes[0].port)
    assert w.cmd("write 0 " + (b"before" * 100).hex()) == "OK"
    for n in c.nodes:
        n.kill(signal.SIGKILL)
    for n in reversed(c.nodes):
        n.start()
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 30, what="the cluster back")
    # the client fails over, takes its lock back (nobody had the VDI since)
    # and resends: the caller sees no error
    assert w.cmd("write 8192 " + (b"after" * 100).hex(), timeout=60) == "OK"
    assert w.cmd("read 0 600") == "DATA " + (b"before" * 100).hex()
    [h] = lock_holders(c.nodes[1], vid)
    assert h.session == w.session and h.generation > w.generation


def test_a_writer_whose_lock_was_taken_never_reads_zeros_from_its_cache(make_cluster):
    """Point 12(b): qemu_client answers reads of objects its cached inode shows
    as never written without asking a sheep — so a writer whose lock was taken
    over read zeros where the new holder had written.  Now the cache is
    trusted only while the lock was confirmed moments ago."""
    c = locked_cluster(make_cluster)
    new_vdi(c)
    a = qemu_client.open("vm", port=c.nodes[0].port)
    a.pwrite(0, b"A" * 4096)  # object 0 is A's; object 1 never written as far as A knows
    assert collie(c.nodes[2].port, "vdi", "lock", "unlock", "vm").returncode == 0
    b = qemu_client.open("vm", port=c.nodes[1].port)
    try:
        b.pwrite(proto.SD_DATA_OBJ_SIZE, b"B" * 4096)
        time.sleep(0.3)  # longer than qemu_client's CONFIRM_WINDOW: A's proof is old
        with pytest.raises(FencedError):
            a.pread(proto.SD_DATA_OBJ_SIZE, 4096)
        with pytest.raises(FencedError):
            a.pread(0, 4096)
    finally:
        b.close()
        try:
            a.close()
        except FencedError:
            pass
