"""qemu_client's block-driver API against real daemons (README.md "Using it").

Every ``bdrv_*`` call, the sector API, unaligned I/O across objects,
discard / write-zeroes, resize, snapshots compared with ``collie vdi list``,
copy-on-write for clones, typed exceptions, many requests in flight, and a
writer that keeps writing while its gateway is killed with SIGKILL.
"""

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest
from harness import wait_for

import qemu_client
from qemu_client import aio
from sheep import proto
from sheep.proto.errors import (
    InvalidParmsError,
    NoTagError,
    NoVdiError,
    ReadonlyError,
    VdiExistError,
    VdiLockedError,
)

pytestmark = pytest.mark.cluster

MB = 1024 * 1024
OBJ = proto.SD_DATA_OBJ_SIZE
GRACE = 3.0


def _cluster(make_cluster, n=3, copies=3, locks=True):
    c = make_cluster(n, extra=["--lock-grace", str(GRACE)] if locks else None)
    c.wait_members(n)
    cl = c.nodes[0].client()
    flags = proto.SD_CLUSTER_FLAG_AUTO_VNODES | (proto.SD_CLUSTER_FLAG_USE_LOCK if locks else 0)
    try:
        cl.format(copies, flags=flags)
    finally:
        cl.close()
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 10, what="cluster running")
    return c


def _index(node, vid, n):
    cl = node.client()
    try:
        raw = cl.read_obj(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE, 4 * n)
    finally:
        cl.close()
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def _collie_list(port, name):
    """`collie vdi list -r NAME` rows as dicts."""
    r = subprocess.run([sys.executable, "-m", "collie", "vdi", "list", "-r", name,
                        "-p", str(port)], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines():
        f = line.split(" ")
        # mark name id size used shared created vid redundancy tag shift
        rows.append({"mark": f[0], "name": f[1], "id": int(f[2]), "vid": int(f[7], 16),
                     "tag": f[9] if len(f) > 10 else ""})
    return rows


def _collie_snapshots(port, name):
    return sorted((r["id"], r["tag"], r["vid"]) for r in _collie_list(port, name)
                  if r["mark"] == "s")


# ---------------------------------------------------------------------------


def test_every_bdrv_call(make_cluster):
    c = _cluster(make_cluster, locks=False)
    p0, p2 = c.nodes[0].port, c.nodes[2].port
    vid = qemu_client.create("vm", 24 * MB, port=p0)
    blob = os.urandom(9 * MB + 7)
    with qemu_client.bdrv_open("vm", port=p0) as bs:
        assert bs.vid == vid and bs.bdrv_getlength() == 24 * MB
        assert bs.bdrv_pread(0, 4096) == bytes(4096)  # never written: zeros
        # unaligned, crossing three object boundaries
        assert bs.bdrv_pwrite(OBJ - 1000, blob) == len(blob)
        assert bs.bdrv_pread(OBJ - 1000, len(blob)) == blob
        assert bs.bdrv_pread(OBJ - 1001, 1) == b"\0"
        assert bs.bdrv_pread(OBJ - 1000 + len(blob), 3) == bytes(3)
        # sectors of 512 bytes (both argument orders)
        sec = os.urandom(3 * 512)
        assert bs.bdrv_write(7, 3, sec) == 3
        assert bs.bdrv_read(7, 3) == sec
        assert bs.bdrv_pread(7 * 512, 3 * 512) == sec
        assert bs.bdrv_write(40959, sec[:1024], 2) == 2  # QEMU order, across an object
        assert bs.bdrv_read(40959, 2) == sec[:1024]
        with pytest.raises(InvalidParmsError):
            bs.bdrv_write(0, 2, b"x" * 512)
        bs.bdrv_flush()
        # discard: a whole object (unlinked) and a partial range (zeroed)
        bs.bdrv_pdiscard(OBJ, OBJ)
        assert bs.bdrv_pread(OBJ, OBJ) == bytes(OBJ)
        assert _index(c.nodes[1], vid, 4)[1] == 0
        bs.bdrv_pdiscard(2 * OBJ + 100, 5000)
        assert bs.bdrv_pread(2 * OBJ + 100, 5000) == bytes(5000)
        assert bs.bdrv_pread(2 * OBJ, 100) == blob[OBJ + 1000:OBJ + 1100]
        # write-zeroes: without unmap the object stays allocated, with unmap it goes
        bs.bdrv_pwrite_zeroes(2 * OBJ, OBJ)
        assert bs.bdrv_pread(2 * OBJ, OBJ) == bytes(OBJ)
        assert _index(c.nodes[1], vid, 4)[2] == vid
        bs.bdrv_pwrite_zeroes(2 * OBJ, OBJ, qemu_client.BDRV_REQ_MAY_UNMAP)
        assert _index(c.nodes[1], vid, 4)[2] == 0
        assert bs.bdrv_pread(OBJ - 1000, 1000) == blob[:1000]
        # resize: grow, never shrink
        bs.bdrv_truncate(40 * MB + 512)
        assert bs.bdrv_getlength() == 40 * MB + 512
        assert bs.bdrv_pread(40 * MB, 512) == bytes(512)
        bs.bdrv_pwrite(40 * MB - 10, b"z" * 522)
        with pytest.raises(InvalidParmsError, match="shrink"):
            bs.bdrv_truncate(8 * MB)
        assert bs.bdrv_getlength() == 40 * MB + 512
        info = bs.bdrv_get_info()
        assert info["size"] == 40 * MB + 512 and info["object_size"] == OBJ
    # everything is in the cluster: another gateway sees it
    with qemu_client.bdrv_open("vm", port=p2, flags=qemu_client.BDRV_O_RDONLY) as bs:
        assert bs.bdrv_getlength() == 40 * MB + 512
        assert bs.bdrv_pread(40 * MB - 10, 522) == b"z" * 522
        assert bs.bdrv_pread(OBJ - 1000, 1000) == blob[:1000]
        assert bs.bdrv_read(7, 1) == sec[:512]
        assert bs.bdrv_pread(OBJ, 2 * OBJ) == bytes(2 * OBJ)
        assert bs.bdrv_pread(3 * OBJ, MB) == (blob[2 * OBJ + 1000:] + bytes(MB))[:MB]


def test_many_requests_in_flight_on_one_connection(make_cluster):
    c = _cluster(make_cluster, locks=False)
    port = c.nodes[1].port
    qemu_client.create("vm", 32 * MB, port=port)
    chunks = {i * 300_007: os.urandom(5000 + i) for i in range(64)}

    async def main():
        async with await aio.bdrv_open("vm", port=port) as bs:
            tasks = [asyncio.ensure_future(bs.bdrv_pwrite(off, d)) for off, d in chunks.items()]
            peak = 0
            while not all(t.done() for t in tasks):
                peak = max(peak, bs.conn._conn.in_flight)
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)
            reads = await asyncio.gather(*(bs.bdrv_pread(off, len(d))
                                           for off, d in chunks.items()))
            return peak, reads
    peak, reads = asyncio.run(main())
    assert peak > 8
    assert reads == list(chunks.values())


def test_snapshots_match_collie(make_cluster):
    c = _cluster(make_cluster)
    p0, p1 = c.nodes[0].port, c.nodes[1].port
    qemu_client.create("vm", 16 * MB, port=p0)
    with qemu_client.bdrv_open("vm", port=p0) as bs:
        first = bs.vid
        bs.bdrv_pwrite(100, b"A" * 5000)
        s1 = bs.bdrv_snapshot_create("s1", vm_state_size=4096, vm_clock_nsec=123)
        assert (s1.id, s1.name, s1.vid, s1.vm_state_size, s1.vm_clock_nsec) == \
            (1, "s1", first, 4096, 123)
        assert bs.vid != first and s1.date_sec > 0
        bs.bdrv_pwrite(100, b"B" * 5000)
        bs.bdrv_snapshot_create("s2")
        bs.bdrv_pwrite(100, b"C" * 5000)
        with pytest.raises(VdiExistError):
            bs.bdrv_snapshot_create("s1")
        mine = [(s.id, s.name, s.vid) for s in bs.bdrv_snapshot_list()]
        assert [m[:2] for m in mine] == [(1, "s1"), (2, "s2")]
        assert mine == _collie_snapshots(p1, "vm")
        # still the writer after two snapshots
        with pytest.raises(VdiLockedError):
            qemu_client.open("vm", port=p1)
        # goto: the working VDI becomes a fresh clone of the snapshot
        bs.bdrv_snapshot_goto("s1")
        assert bs.bdrv_pread(100, 5000) == b"A" * 5000
        bs.bdrv_pwrite(0, b"after goto")
        [working] = [r for r in _collie_list(p1, "vm") if r["mark"] != "s"]
        assert working["vid"] == bs.vid
        assert [(s.id, s.name, s.vid) for s in bs.bdrv_snapshot_list()] == mine
        with pytest.raises(VdiLockedError):  # the lock followed us to the new VDI
            qemu_client.open("vm", port=p1)
        bs.bdrv_snapshot_goto(2)  # by id
        assert bs.bdrv_pread(100, 5000) == b"B" * 5000
        assert bs.bdrv_pread(0, 10) == bytes(10)
        with pytest.raises(NoTagError):
            bs.bdrv_snapshot_goto("nope")
        # delete by tag and by id
        bs.bdrv_snapshot_delete(name="s2")
        assert [(s.id, s.name) for s in bs.bdrv_snapshot_list()] == [(1, "s1")]
        assert _collie_snapshots(p1, "vm") == [(s.id, s.name, s.vid)
                                               for s in bs.bdrv_snapshot_list()]
        bs.bdrv_snapshot_create("s3")
        bs.bdrv_snapshot_delete("1")
        assert [s.name for s in bs.bdrv_snapshot_list()] == ["s3"]
        assert _collie_snapshots(p1, "vm") == [(s.id, s.name, s.vid)
                                               for s in bs.bdrv_snapshot_list()]
        assert bs.bdrv_pread(100, 5000) == b"B" * 5000
    # the snapshot, opened by tag, has what it had
    with qemu_client.bdrv_open("vm", snapshot="s3", port=p1) as snap:
        assert snap.readonly and snap.bdrv_pread(100, 5000) == b"B" * 5000
        with pytest.raises(ReadonlyError):
            snap.bdrv_pwrite(0, b"x")
        with pytest.raises(InvalidParmsError):
            snap.bdrv_snapshot_create("again")
    # and the lock was released at close
    qemu_client.open("vm", port=p1).close()


def test_clone_copy_on_write(make_cluster):
    c = _cluster(make_cluster)
    p0, p2 = c.nodes[0].port, c.nodes[2].port
    qemu_client.create("base", 12 * MB, port=p0)
    pattern = os.urandom(12 * MB)
    with qemu_client.bdrv_open("base", port=p0) as bs:
        bs.bdrv_pwrite(0, pattern)
        base_snap = bs.bdrv_snapshot_create("golden").vid
    with pytest.raises(InvalidParmsError):  # only snapshots are cloned
        qemu_client.create("bad", None, port=p0, backing="base")
    cvid = qemu_client.create("clone", None, port=p2, backing="base", snapshot="golden")
    with qemu_client.bdrv_open("clone", port=p2) as cl:
        assert cl.bdrv_getlength() == 12 * MB
        assert _index(c.nodes[1], cvid, 3) == [base_snap] * 3
        assert cl.bdrv_pread(0, 12 * MB) == pattern  # all from the parent
        cl.bdrv_pwrite(OBJ + 1234, b"mine" * 1000)  # first write: copy-on-write
        assert _index(c.nodes[1], cvid, 3) == [base_snap, cvid, base_snap]
        want = bytearray(pattern)
        want[OBJ + 1234:OBJ + 5234] = b"mine" * 1000
        assert cl.bdrv_pread(0, 12 * MB) == bytes(want)
        cl.bdrv_pdiscard(2 * OBJ, OBJ)  # unlink the parent's object: zeros
        assert cl.bdrv_pread(2 * OBJ, OBJ) == bytes(OBJ)
    with qemu_client.bdrv_open("base", snapshot="golden", port=p2) as snap:
        assert snap.bdrv_pread(0, 12 * MB) == pattern


def test_typed_exceptions(make_cluster):
    c = _cluster(make_cluster, n=2, copies=2)
    p0, p1 = c.nodes[0].port, c.nodes[1].port
    with pytest.raises(NoVdiError):
        qemu_client.bdrv_open("missing", port=p0)
    qemu_client.create("vm", 8 * MB, port=p0)
    with pytest.raises(VdiExistError):
        qemu_client.create("vm", 8 * MB, port=p0)
    with pytest.raises(NoTagError):
        qemu_client.bdrv_open("vm", snapshot="none", port=p0)
    with qemu_client.bdrv_open("vm", port=p0) as bs:
        with pytest.raises(VdiLockedError):
            qemu_client.bdrv_open("vm", port=p1)
        with pytest.raises(VdiLockedError):  # no reader while somebody writes
            qemu_client.bdrv_open("vm", port=p1, flags=qemu_client.BDRV_O_RDONLY)
        with pytest.raises(InvalidParmsError):
            bs.bdrv_pread(8 * MB - 1, 2)
        with pytest.raises(InvalidParmsError):
            bs.bdrv_pwrite(-1, b"x")
    with qemu_client.bdrv_open("vm", port=p1, flags=qemu_client.BDRV_O_RDONLY) as ro:
        with pytest.raises(ReadonlyError):
            ro.bdrv_pwrite(0, b"x")
        with pytest.raises(ReadonlyError):
            ro.bdrv_truncate(16 * MB)
        with pytest.raises(ReadonlyError):
            ro.bdrv_snapshot_create("s")
    with qemu_client.bdrv_open("vm", port=p1, flags=qemu_client.BDRV_O_INACTIVE) as ina, \
            pytest.raises(qemu_client.InactiveError):
        ina.bdrv_pread(0, 1)
    qemu_client.delete("vm", port=p1)
    with pytest.raises(NoVdiError):
        qemu_client.bdrv_open("vm", port=p0)


def test_writer_survives_gateway_sigkill(make_cluster):
    """A writer keeps writing while its gateway is killed: no error, nothing lost."""
    c = _cluster(make_cluster, n=4, copies=3)
    gw = c.nodes[0]
    qemu_client.create("vm", 64 * MB, port=gw.port)
    bs = qemu_client.bdrv_open("vm", port=gw.port)
    slots = 40
    stride, length = MB + 4097, 70_000  # slots cross object boundaries, never overlap
    acked: dict[int, bytes] = {}
    count = [0]
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer():
        i = 0
        try:
            while not stop.is_set():
                off = (i % slots) * stride
                data = os.urandom(length)
                bs.bdrv_pwrite(off, data)
                acked[off] = data
                count[0] += 1
                if i % 7 == 0:  # reads keep working too
                    assert bs.bdrv_pread(off, length) == data
                i += 1
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for(lambda: count[0] >= 15 or errors, 30, what="writes before the kill")
        gw.kill()
        at_kill = count[0]
        wait_for(lambda: count[0] >= at_kill + slots + 10 or errors, 90,
                 what="writes after the kill")
    finally:
        stop.set()
        t.join(120)
    assert not errors, errors
    assert bs.failovers >= 1 and bs.gateway[1] != gw.port
    assert bs.generation > 0
    # every acknowledged write reads back, through the client and through another node
    for off, data in acked.items():
        assert bs.bdrv_pread(off, length) == data
    bs.close()
    other = c.nodes[2].port
    with qemu_client.bdrv_open("vm", port=other, flags=qemu_client.BDRV_O_RDONLY,
                               failover=False) as ro:
        for off, data in acked.items():
            assert ro.bdrv_pread(off, length) == data
    # the lock was released at close: a new writer gets it at once
    qemu_client.bdrv_open("vm", port=other).close()


def test_open_fails_over_when_the_gateway_is_down(make_cluster):
    c = _cluster(make_cluster, n=3, copies=2)
    qemu_client.create("vm", 8 * MB, port=c.nodes[0].port)
    dead = c.nodes[0]
    dead.kill()
    c.wait_members(2)
    t0 = time.monotonic()
    with qemu_client.bdrv_open("vm", port=dead.port,
                               nodes=[("127.0.0.1", c.nodes[1].port)]) as bs:
        assert bs.gateway == ("127.0.0.1", c.nodes[1].port)
        bs.bdrv_pwrite(0, b"hello")
        assert bs.bdrv_pread(0, 5) == b"hello"
    assert time.monotonic() - t0 < 30


def _holds(node, vid):
    cl = node.client()
    try:
        _, body = cl.call(proto.Op.GET_LOCKS, data_length=1 << 20)
    finally:
        cl.close()
    size = proto.LockRecord.SIZE
    recs = [proto.LockRecord.unpack(body, o) for o in range(0, len(body) - size + 1, size)]
    return [r for r in recs if r.vid == vid]


def test_failover_after_the_dead_gateway_dropped_the_lock(make_cluster):
    """The client only notices its gateway's death after the cluster released the
    locks owned through it: re-attaching is refused, so the client takes the lock
    again (new generation) before resending, and nothing is lost."""
    c = _cluster(make_cluster, n=3, copies=2)
    gw = c.nodes[0]
    qemu_client.create("vm", 16 * MB, port=gw.port)

    async def main():
        bs = await aio.bdrv_open("vm", port=gw.port)
        try:
            await bs.bdrv_pwrite(OBJ - 10, b"before" * 10)
            gen = bs.generation
            # block the event loop: the client cannot see the connection drop
            gw.kill()
            c.wait_members(2)
            wait_for(lambda: not _holds(c.nodes[1], bs.vid), 10, what="lock dropped")
            # now I/O: a write, a first write to an object, a read, all at once
            await asyncio.gather(bs.bdrv_pwrite(0, b"after" * 10),
                                 bs.bdrv_pwrite(2 * OBJ + 5, b"new object"),
                                 bs.bdrv_pread(OBJ - 10, 60))
            assert bs.conn.failovers == 1 and bs.generation > gen
            assert [h.generation for h in _holds(c.nodes[1], bs.vid)] == [bs.generation]
            assert await bs.bdrv_pread(0, 50) == b"after" * 10
            assert await bs.bdrv_pread(OBJ - 10, 60) == b"before" * 10
            assert await bs.bdrv_pread(2 * OBJ + 5, 10) == b"new object"
        finally:
            await bs.close()
    asyncio.run(main())
    with qemu_client.bdrv_open("vm", port=c.nodes[2].port) as bs:
        assert bs.bdrv_pread(2 * OBJ + 5, 10) == b"new object"
