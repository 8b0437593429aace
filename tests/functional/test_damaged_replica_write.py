"""A write over a damaged replica (found by an adversarial review): one damaged block on one
replica makes client writes
that touch that block partially fail with EIO.

``PlainStore.write`` verifies the edge blocks it read-modifies; a mismatch is
EIO; the replica schedules a background repair (``peer._with_recovery``) but
the gateway does not retry EIO for writes (only for reads it skips the bad
replica), so the caller gets an error although two good copies exist.

Now the replica repairs its copy from another holder first, then writes.
"""

import os

import pytest

import qemu_client
from sheep import proto
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.cluster]


def test_a_partial_write_over_a_damaged_block_of_one_replica(make_cluster):
    c = make_cluster(3)
    c.format(copies=3)
    cl = c.nodes[0].client()
    vid = cl.new_vdi("vm", 16 << 20)
    cl.close()
    with qemu_client.open("vm", port=c.nodes[0].port) as v:
        v.pwrite(0, b"A" * 8192)
    oid = proto.vid_to_data_oid(vid, 0)
    ring = Ring(c.nodes[0].client().nodes())
    victim = next(n for n in c.nodes if n.port == ring.replicas(oid, 3)[-1].port)
    path = os.path.join(victim.obj_dir, "%016x" % oid)
    with open(path, "r+b") as f:  # bit rot in block 0 of one replica
        f.seek(100)
        f.write(b"\xff")
    errors = []
    with qemu_client.open("vm", port=c.nodes[0].port) as v:
        for k in range(3):
            try:
                v.pwrite(512, b"B" * 512)  # a sector write inside block 0
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        assert v.pread(512, 512) == b"B" * 512
    print("errors:", errors)
    assert not errors, f"client writes failed although 2 good copies exist: {errors}"
