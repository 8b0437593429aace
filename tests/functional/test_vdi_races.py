"""Cluster operations are ordered: concurrent create / snapshot / clone /
delete of one name through different nodes end with exactly one winner and a
clear error for every other request."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from sheep import proto
from sheep.proto.errors import CODES

pytestmark = pytest.mark.cluster

N = 20


def race(cluster, op, args_fn, payload):
    """Send ``op`` N times at once, spread over the nodes; return the result codes."""
    clients = [cluster.nodes[i % len(cluster.nodes)].client() for i in range(N)]
    try:
        with ThreadPoolExecutor(N) as ex:
            futs = [ex.submit(c.call, op, args_fn(), payload, check=False) for c in clients]
            return [f.result()[0] for f in futs]
    finally:
        for c in clients:
            c.close()


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(3)
    c.wait_members(3)
    c.format(copies=3)
    return c


def vid_of(cluster, name, node=0):
    c = cluster.nodes[node].client()
    try:
        rsp, _ = c.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload(name, ""),
                        check=False)
        return rsp.result, rsp.args.vdi_id
    finally:
        c.close()


def test_concurrent_creates_exactly_one_wins(cluster):
    rsps = race(cluster, proto.Op.NEW_VDI, lambda: proto.VdiArgs(vdi_size=1 << 24),
                proto.vdi_name_payload("race"))
    ok = [r for r in rsps if r.result == 0]
    assert len(ok) == 1
    assert all(r.result == CODES["VDI_EXIST"] for r in rsps if r.result)
    for node in range(3):  # every node agrees on the winner
        assert vid_of(cluster, "race", node) == (0, ok[0].args.vdi_id)
    assert ok[0].args.vdi_id == proto.vdi_name_hash("race")


def test_concurrent_snapshots_clones_and_deletes(cluster):
    c = cluster.nodes[0].client()
    w = c.new_vdi("s", 1 << 24)
    # N snapshots of the same working VDI: one snapshot, the rest lose
    rsps = race(cluster, proto.Op.NEW_VDI,
                lambda: proto.VdiArgs(vdi_size=1 << 24, base_vdi_id=w, snapid=1),
                proto.vdi_name_payload("s"))
    ok = [r for r in rsps if r.result == 0]
    assert len(ok) == 1
    assert all(r.result == CODES["VDI_EXIST"] for r in rsps if r.result)
    new = ok[0].args.vdi_id
    for node in range(3):
        assert vid_of(cluster, "s", node) == (0, new)
    inuse = c.call(proto.Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE)[1]
    assert sum(bin(b).count("1") for b in inuse) == 2  # w and new, nothing else
    # N clones of that snapshot to one name
    rsps = race(cluster, proto.Op.NEW_VDI,
                lambda: proto.VdiArgs(vdi_size=1 << 24, base_vdi_id=w),
                proto.vdi_name_payload("cl"))
    assert sum(r.result == 0 for r in rsps) == 1
    assert all(r.result == CODES["VDI_EXIST"] for r in rsps if r.result)
    # N deletes of the clone: one deletes it, the others find nothing
    rsps = race(cluster, proto.Op.DEL_VDI, proto.VdiArgs, proto.vdi_name_payload("cl"))
    assert sum(r.result == 0 for r in rsps) == 1
    assert all(r.result == CODES["NO_VDI"] for r in rsps if r.result)
    for node in range(3):
        assert vid_of(cluster, "cl", node)[0] == CODES["NO_VDI"]
    c.close()
