"""The VDI I/O engine (sheep.proto.vdi_io) against an in-memory cluster:
byte ranges in, object requests out, and what the cluster then holds."""

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fake_vdi_cluster import OBJ, FakeCluster  # noqa: E402

from sheep import proto
from sheep.proto import fenced_calls
from sheep.proto.errors import CODES, FencedError, SdError, VdiLockedError
from sheep.proto.vdi_io import VdiIo

pytestmark = pytest.mark.quick

SIZE = 16 * OBJ


@pytest.fixture
def cluster():
    c = FakeCluster()
    c.new_vdi("v", SIZE)
    return c


async def open_vdi(cluster, name="v", **kw) -> VdiIo:
    return await VdiIo.open(name, conn=cluster.conn(), **kw)


async def test_never_written_ranges_read_as_zeros_without_a_data_request(cluster):
    vdi = await open_vdi(cluster)
    assert await vdi.pread(0, 3 * OBJ) == bytes(3 * OBJ)
    assert not any(proto.is_data_obj(o) for o in cluster.ops("READ_OBJ"))
    await vdi.close()


async def test_first_write_creates_the_object_and_records_it_then_writes_in_place(cluster):
    vdi = await open_vdi(cluster)
    vid = vdi.vid
    await vdi.pwrite(100, b"a" * 10)
    assert cluster.ops("CREATE_AND_WRITE_OBJ") == [proto.vid_to_data_oid(vid, 0)]
    assert cluster.index(vid)[0] == vid  # the inode's data_vdi_id entry (WRITE_OBJ)
    await vdi.pwrite(200, b"b" * 10)
    assert len(cluster.ops("CREATE_AND_WRITE_OBJ")) == 1
    assert cluster.ops("WRITE_OBJ")[-1] == proto.vid_to_data_oid(vid, 0)
    assert await vdi.pread(95, 120) == bytes(5) + b"a" * 10 + bytes(90) + b"b" * 10 + bytes(5)
    await vdi.close()


async def test_an_unaligned_write_across_objects_lands_byte_exact(cluster):
    vdi = await open_vdi(cluster)
    data = bytes(range(256)) * 40  # 10 240 bytes from 4000: objects 0..3
    await vdi.pwrite(4000, data)
    assert sorted(proto.data_oid_to_idx(o) for o in cluster.ops("CREATE_AND_WRITE_OBJ")) == [0, 1, 2, 3]
    assert cluster.data(vdi.vid, 0)[4000:] == data[:96]
    assert cluster.data(vdi.vid, 1) == data[96:96 + OBJ]
    assert await vdi.pread(4000, len(data)) == data
    assert await vdi.pread(0, 4000) == bytes(4000)
    await vdi.close()


async def test_concurrent_writes_to_a_new_object_create_it_once_and_both_land(cluster):
    cluster.delay = 0.01  # the creation is still in flight when the second write comes
    vdi = await open_vdi(cluster)
    await asyncio.gather(vdi.pwrite(0, b"x" * 100), vdi.pwrite(1000, b"y" * 100))
    assert len(cluster.ops("CREATE_AND_WRITE_OBJ")) == 1
    obj = cluster.data(vdi.vid, 0)
    assert obj[:100] == b"x" * 100 and obj[1000:1100] == b"y" * 100
    await vdi.close()


async def test_a_clone_writes_copy_on_write_from_its_parent(cluster):
    vdi = await open_vdi(cluster)
    await vdi.pwrite(0, b"p" * OBJ)
    parent = vdi.vid
    await vdi.close()
    cluster.snapshot_under("v")  # the name moves on: its working VDI is a child
    child = await open_vdi(cluster)
    assert child.vid != parent and child.index[0] == parent
    assert await child.pread(0, 4) == b"pppp"  # read through to the parent's object
    await child.pwrite(10, b"c")
    assert cluster.data(child.vid, 0) == b"p" * 10 + b"c" + b"p" * (OBJ - 11)
    assert cluster.data(parent, 0) == b"p" * OBJ  # the snapshot is untouched
    await child.close()


async def test_a_write_refused_readonly_follows_the_name_to_its_new_working_vdi(cluster):
    vdi = await open_vdi(cluster)
    await vdi.pwrite(0, b"1" * 8)
    old = vdi.vid
    new = cluster.snapshot_under("v")  # another client snapshotted under us
    await vdi.pwrite(0, b"2" * 4)
    assert vdi.vid == new
    assert cluster.data(new, 0)[:8] == b"22221111"  # COW from the snapshot's object
    assert cluster.data(old, 0)[:8] == b"1" * 8
    await vdi.close()


async def test_discard_unlinks_whole_objects_and_zeroes_partial_ones(cluster):
    vdi = await open_vdi(cluster)
    await vdi.pwrite(0, b"d" * (3 * OBJ))
    await vdi.pdiscard(OBJ - 100, OBJ + 200)  # tail of 0, all of 1, head of 2
    assert cluster.ops("DISCARD_OBJ") == [proto.vid_to_data_oid(vdi.vid, 1)]
    assert cluster.index(vdi.vid)[:3] == [vdi.vid, 0, vdi.vid]
    assert await vdi.pread(0, 3 * OBJ) == b"d" * (OBJ - 100) + bytes(OBJ + 200) + b"d" * (OBJ - 100)
    await vdi.pwrite_zeroes(0, OBJ, unmap=False)  # zeros written, object kept
    assert cluster.index(vdi.vid)[0] == vdi.vid and cluster.data(vdi.vid, 0) == bytes(OBJ)
    await vdi.close()


async def test_ranges_outside_the_vdi_are_refused_and_nothing_is_sent(cluster):
    vdi = await open_vdi(cluster)
    before = len(cluster.log)
    for call in (vdi.pread(SIZE - 1, 2), vdi.pwrite(SIZE, b"x"), vdi.pdiscard(-1, 1)):
        with pytest.raises(SdError) as e:
            await call
        assert e.value.code == CODES["INVALID_PARMS"]
    assert len(cluster.log) == before
    await vdi.close()


async def test_resize_grows_the_header_and_refuses_to_shrink(cluster):
    vdi = await open_vdi(cluster)
    await vdi.truncate(SIZE + OBJ)
    assert cluster.header(vdi.vid).vdi_size == SIZE + OBJ and vdi.size == SIZE + OBJ
    await vdi.pwrite(SIZE, b"z")  # the new object is usable
    with pytest.raises(SdError, match="shrinking"):
        await vdi.truncate(OBJ)
    await vdi.close()


async def test_a_second_writer_is_refused_and_a_read_only_open_writes_nothing(cluster):
    vdi = await open_vdi(cluster)
    with pytest.raises(VdiLockedError):
        await open_vdi(cluster)
    await vdi.close()
    assert cluster.holder is None  # close released the lock
    ro = await open_vdi(cluster, readonly=True)
    with pytest.raises(SdError, match="read-only"):
        await ro.pwrite(0, b"x")
    await ro.close()


async def test_every_write_carries_the_generation_and_a_takeover_fences_it(cluster):
    vdi = await open_vdi(cluster)
    await vdi.pwrite(0, b"a")
    cluster.take_over()
    with pytest.raises(FencedError):
        await vdi.pwrite(0, b"b")
    assert cluster.data(vdi.vid, 0)[:1] == b"a"
    await vdi.close()


async def test_a_dropped_lock_nobody_else_took_is_taken_back_and_the_write_lands(cluster):
    vdi = await open_vdi(cluster)
    gen = vdi.generation
    await vdi.pwrite(0, b"a")
    cluster.drop()  # our gateway left the cluster for a moment
    await vdi.pwrite(0, b"b")
    assert vdi.generation > gen and cluster.holder[1] == vdi.generation
    assert cluster.data(vdi.vid, 0)[:1] == b"b"
    await vdi.close()


async def test_zeros_from_the_cache_only_while_the_lock_is_confirmed(cluster, monkeypatch):
    monkeypatch.setattr(fenced_calls, "CONFIRM_WINDOW", 0.0)  # every cached answer re-checks
    vdi = await open_vdi(cluster)
    assert await vdi.pread(OBJ, 10) == bytes(10)  # confirmed: zeros
    cluster.take_over()  # the new holder may have written there
    with pytest.raises(FencedError):
        await vdi.pread(OBJ, 10)
    await vdi.close()


async def test_allocation_reports_holes_only_while_the_lock_is_confirmed(cluster, monkeypatch):
    monkeypatch.setattr(fenced_calls, "CONFIRM_WINDOW", 0.0)
    vdi = await open_vdi(cluster)
    await vdi.pwrite(2 * OBJ, b"d")
    index = await vdi.allocation_index(0, 4 * OBJ)
    assert [bool(v) for v in index[:4]] == [False, False, True, False]
    assert await vdi.allocation_index(2 * OBJ, 10) == index  # all data: nothing to confirm
    cluster.take_over()  # the new holder may have written into our holes
    assert await vdi.allocation_index(2 * OBJ, OBJ) == index  # data stays data
    with pytest.raises(FencedError):  # a hole we can no longer vouch for
        await vdi.allocation_index(0, 3 * OBJ)
    await vdi.close()
    with pytest.raises(ConnectionError):
        await vdi.allocation_index(0, 1)


async def test_inactive_open_allows_no_io_until_activated(cluster):
    vdi = await open_vdi(cluster, inactive=True)
    with pytest.raises(SdError, match="inactive"):
        await vdi.pread(0, 1)
    assert cluster.holder is None  # a migration destination holds no lock
    await vdi.close()


async def test_a_reply_of_another_length_is_an_error_never_padding(cluster):
    """A gateway answering fewer bytes than asked: EIO for a read within one
    object and for one across two, never zeros passed off as data."""
    vdi = await open_vdi(cluster)
    await vdi.pwrite(0, b"A" * (2 * OBJ))
    real = cluster._object_op

    def short(op, args, payload, data_length, flags):
        out = real(op, args, payload, data_length, flags)
        if op == proto.Op.READ_OBJ and proto.is_data_obj(args.oid):
            return out[:len(out) // 2]
        return out
    cluster._object_op = short
    for off in (0, OBJ - 50):
        with pytest.raises(SdError) as e:
            await vdi.pread(off, 100)
        assert e.value.code == CODES["EIO"]
    cluster._object_op = real
    assert await vdi.pread(OBJ - 50, 100) == b"A" * 100
    await vdi.close()
