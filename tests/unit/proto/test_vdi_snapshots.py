"""Snapshots of an open VDI (sheep.proto.vdi_snapshots) against the in-memory
cluster: what create sends, where the open continues, and a NEW_VDI whose
reply the gateway lost."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fake_vdi_cluster import OBJ, FakeCluster  # noqa: E402

from sheep.proto.errors import SdError  # noqa: E402
from sheep.proto.vdi_snapshots import SnapshotVdi  # noqa: E402

pytestmark = pytest.mark.quick


@pytest.fixture
def cluster():
    c = FakeCluster()
    c.new_vdi("v", 8 * OBJ)
    return c


async def test_a_snapshot_freezes_the_vdi_and_the_open_goes_on_with_a_child(cluster):
    vdi = await SnapshotVdi.open("v", conn=cluster.conn())
    await vdi.pwrite(0, b"before")
    old = vdi.vid
    info = await vdi.snapshot_create("t1", vm_state_size=7)
    assert info.vid == old and info.name == "t1" and info.vm_state_size == 7
    hdr = cluster.header(old)
    assert hdr.tag_str == "t1" and hdr.is_snapshot
    assert vdi.vid != old and cluster.header(vdi.vid).parent_vdi_id == old
    await vdi.pwrite(0, b"after!")
    assert cluster.data(old, 0)[:6] == b"before"  # the snapshot keeps its data
    assert await vdi.pread(0, 6) == b"after!"
    assert cluster.ops("NEW_VDI") == ["v"]
    await vdi.close()


async def test_a_new_vdi_applied_before_the_gateway_died_is_not_sent_again(cluster):
    vdi = await SnapshotVdi.open("v", conn=cluster.conn())
    old = vdi.vid
    cluster.lose_reply_of = "NEW_VDI"
    await vdi.snapshot_create("t")
    assert cluster.ops("NEW_VDI") == ["v"]  # found by its parent, not made twice
    assert cluster.header(vdi.vid).parent_vdi_id == old
    await vdi.close()


async def test_snapshot_tags_are_checked_before_anything_changes(cluster):
    vdi = await SnapshotVdi.open("v", conn=cluster.conn())
    with pytest.raises(SdError, match="too long"):
        await vdi.snapshot_create("x" * 300)
    assert cluster.ops("NEW_VDI") == [] and not cluster.header(vdi.vid).is_snapshot
    await vdi.close()
    ro = await SnapshotVdi.open("v", conn=cluster.conn(), readonly=True)
    with pytest.raises(SdError, match="read-write"):
        await ro.snapshot_create("t")
    await ro.close()
