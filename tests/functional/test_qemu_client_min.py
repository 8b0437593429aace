"""qemu_client (minimal): open / pread / pwrite / close against a real cluster."""

import os

import pytest

import qemu_client
from sheep import proto
from sheep.proto.errors import SdError

pytestmark = pytest.mark.cluster


def test_pwrite_pread_roundtrip(make_cluster, data8k):
    c = make_cluster(3)
    c.format(copies=3)
    port = c.nodes[0].port
    c.nodes[0].client().new_vdi("vm", 20 * 1024 * 1024)
    blob = os.urandom(5 * 1024 * 1024 + 123)
    with qemu_client.open("vm", port=port) as vdi:
        assert vdi.size == 20 * 1024 * 1024
        assert vdi.pread(0, 4096) == bytes(4096)
        vdi.pwrite(4190208, data8k)
        vdi.pwrite(7 * 1024 * 1024 + 17, blob)
        assert vdi.pread(4190208, len(data8k)) == data8k
        with pytest.raises(SdError):
            vdi.pread(20 * 1024 * 1024 - 10, 11)
    # the inode records the objects; reading through another node sees the data
    with qemu_client.open("vm", port=c.nodes[2].port) as vdi:
        assert vdi.pread(7 * 1024 * 1024 + 17, len(blob)) == blob
        assert vdi.pread(4190208, len(data8k)) == data8k
        assert vdi.pread(16 * 1024 * 1024, 4096) == bytes(4096)
    hdr = c.nodes[1].client().read_obj(proto.vid_to_vdi_oid(vdi.vid), proto.SD_INODE_HEADER_SIZE, 4 * 5)
    assert [int.from_bytes(hdr[i:i + 4], "little") for i in range(0, 20, 4)] == [vdi.vid] * 4 + [0]


def test_open_unknown_vdi_fails(make_cluster):
    c = make_cluster(1)
    c.format(copies=1)
    with pytest.raises(SdError) as e:
        qemu_client.open("nope", port=c.nodes[0].port)
    assert e.value.code == 0x08
