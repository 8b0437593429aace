"""Unit tests for sheep.proto.placement (docs/protocol.md §14.3-14.5, Appendix A)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from sheep.proto.placement import (
    Ring,
    auto_vnodes,
    fold,
    node_sort_key,
    sd_hash,
    sd_hash_next,
    sd_hash_oid,
    sd_hash_oid_array,
    vnode_points,
)


@dataclass
class Node:
    addr: bytes
    port: int
    nr_vnodes: int = 128
    zone: int = 0


def v4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes(12) + bytes([a, b, c, d])


LO = v4(127, 0, 0, 1)


def ring3(base: int = 7000) -> Ring:
    return Ring([Node(LO, base + i, 128, i) for i in range(3)])


def ports(ring: Ring, oid: int, copies: int) -> list[int]:
    return [n.port for n in ring.replicas(oid, copies)]


def reference_placement(ring: Ring, oid: int, copies: int) -> tuple[int, ...]:
    """Straightforward walk of §14.5, independent of Ring's precomputed table."""
    pts = []
    for i, n in enumerate(ring.nodes):
        pts += [(p, i) for p in vnode_points(n.addr, n.port, n.nr_vnodes)]
    pts.sort()
    if not pts:
        return ()
    zones = {n.zone for n in ring.nodes if n.nr_vnodes > 0}
    want = min(copies, len(zones), 31)
    h = sd_hash_oid(oid)
    start = next((k for k, (p, _) in enumerate(pts) if p >= h), 0)
    out: list[int] = []
    for k in range(len(pts)):
        i = pts[(start + k) % len(pts)][1]
        if len(out) == want:
            break
        if all(ring.nodes[j].zone != ring.nodes[i].zone for j in out):
            out.append(i)
    return tuple(out)


# --- hash functions (Appendix A) -------------------------------------------

def test_fold_is_little_endian_fnv_step():
    prime = 0x100000001B3
    h = 0x1234
    exp = h
    for b in (0x0102030405060708).to_bytes(8, "little"):
        exp = ((exp ^ b) * prime) & (2**64 - 1)
    assert fold(0x0102030405060708, h) == exp
    assert fold(0, 0) == 0


def test_sd_hash_oid_vectors():
    assert sd_hash_oid(0x8000000100000000) == 0x66229214015FF224
    assert sd_hash_oid(0x0000000100000005) == 0x502536B25DA21AC6


def test_sd_hash_oid_array_matches_scalar():
    rng = random.Random(7)
    oids = [0, 2**64 - 1, 0x8000000100000000] + [rng.getrandbits(64) for _ in range(500)]
    got = sd_hash_oid_array(oids)
    assert got.dtype == np.uint64
    assert [int(x) for x in got] == [sd_hash_oid(o) for o in oids]


def test_node_hash_and_vnode_points():
    nid18 = LO + (7000).to_bytes(2, "little")
    assert len(nid18) == 18
    h = sd_hash(nid18)
    assert h == 0x9CB3D6DD0A4C0F9F
    pts = vnode_points(LO, 7000, 128)
    assert len(pts) == 128
    assert pts[:3] == [0x3AF2CBA6E538CDF3, 0xFD38432FD111924B, 0x2AD2BEF8F506E35D]
    assert pts[0] == sd_hash_next(h) and pts[1] == sd_hash_next(pts[0])
    assert vnode_points(LO, 7000, 0) == []
    with pytest.raises(ValueError):
        vnode_points(b"\x7f\0\0\1", 7000, 1)


# --- placement vectors -----------------------------------------------------

@pytest.mark.parametrize(
    "oid,expected",
    [
        (0x8000000100000000, [7001, 7000, 7002]),
        (0x0000000100000000, [7002, 7001, 7000]),
        (0x0000000100000001, [7000, 7001, 7002]),
        (0x80A0390700000000, [7000, 7002, 7001]),
    ],
)
def test_spec_placement_table(oid, expected):
    r = ring3()
    assert ports(r, oid, 3) == expected
    assert ports(r, oid, 2) == expected[:2]
    assert ports(r, oid, 1) == expected[:1]
    assert list(r.bulk_placement([oid], 3)[0]) == list(r.placement(oid, 3))


def test_real_capture_vector():
    # tests/data/cli.txt: `dog vdi object location -i 1 test`
    r = ring3(7200)
    assert ports(r, 0x007C2B2500000001, 3) == [7201, 7202, 7200]


# --- ring structure --------------------------------------------------------

def test_nodes_sorted_and_points_sorted():
    a = Node(v4(10, 0, 0, 2), 7000, 4, 1)
    b = Node(v4(10, 0, 0, 1), 7001, 4, 2)
    c = Node(v4(10, 0, 0, 1), 7000, 4, 3)
    r = Ring([a, b, c])
    assert r.nodes == (c, b, a)
    assert node_sort_key(a) == (v4(10, 0, 0, 2), 7000)
    assert np.all(np.diff(r.points.astype(object)) > 0)
    assert len(r.points) == 12
    assert sorted(r.points.tolist()) == sorted(
        vnode_points(a.addr, a.port, 4) + vnode_points(b.addr, b.port, 4) + vnode_points(c.addr, c.port, 4))


def test_zone_skipping():
    # Two nodes in zone 0, one in zone 1: never both zone-0 nodes together.
    nodes = [Node(LO, 7000, 128, 0), Node(LO, 7001, 128, 0), Node(LO, 7002, 128, 1)]
    r = Ring(nodes)
    assert r.nr_zones == 2
    rng = random.Random(1)
    seen_first = set()
    for _ in range(2000):
        oid = rng.getrandbits(64)
        pl = r.placement(oid, 3)
        assert len(pl) == 2
        assert r.nodes[pl[0]].zone != r.nodes[pl[1]].zone
        seen_first.add(pl[0])
        assert pl == reference_placement(r, oid, 3)
    assert seen_first == {0, 1, 2}


def test_nr_copies_capped_by_zones():
    r = Ring([Node(LO, 7000 + i, 16, i % 2) for i in range(4)])
    assert r.nr_zones == 2
    assert r.nr_copies(3) == 2 and r.nr_copies(1) == 1 and r.nr_copies(0) == 0
    assert len(r.placement(5, 3)) == 2
    assert r.bulk_placement([1, 2, 3], 5).shape == (3, 2)
    assert ring3().nr_copies(2) == 2 and ring3().nr_copies(7) == 3


def test_nr_zones_stops_at_31():
    r = Ring([Node(LO, 7000 + i, 2, i) for i in range(40)])
    assert r.nr_zones == 31
    pl = r.placement(0x8000000100000000, 40)
    assert len(pl) == 31 and len(set(pl)) == 31
    assert pl == reference_placement(r, 0x8000000100000000, 40)


def test_gateway_nodes_never_chosen():
    gw = Node(v4(127, 0, 0, 0), 7000, 0, 9)  # sorts first, own zone, no vnodes
    nodes = [gw] + [Node(LO, 7000 + i, 128, i) for i in range(3)]
    r = Ring(nodes)
    assert r.nodes[0] is gw
    assert r.nr_zones == 3
    rng = random.Random(2)
    oids = [rng.getrandbits(64) for _ in range(3000)]
    bulk = r.bulk_placement(oids, 4)
    assert bulk.shape == (3000, 3)
    assert not np.any(bulk == 0)
    for oid in oids[:300]:
        assert 0 not in r.placement(oid, 4)
    # Same replicas as the ring without the gateway.
    r3 = ring3()
    for oid in oids[:300]:
        assert ports(r, oid, 3) == ports(r3, oid, 3)


def test_empty_ring():
    for r in (Ring([]), Ring([Node(LO, 7000, 0, 0), Node(LO, 7001, 0, 1)])):
        assert r.nr_zones == 0
        assert r.nr_copies(3) == 0
        assert r.placement(123, 3) == ()
        assert r.replicas(123, 3) == ()
        b = r.bulk_placement([1, 2, 3], 3)
        assert b.shape == (3, 0) and b.dtype == np.int32


def test_bulk_equals_scalar_random():
    nodes = [Node(LO, 7000 + i, 128, i) for i in range(4)] + [
        Node(v4(10, 0, 0, 5), 7000, 64, 1), Node(v4(10, 0, 0, 6), 7000, 200, 7)]
    r = Ring(nodes)
    rng = random.Random(12345)
    top = int(r.points[-1])
    oids = [rng.getrandbits(64) for _ in range(20000)]
    # Oids whose hash is above the largest point must wrap to position 0.
    wrapping = []
    while len(wrapping) < 20:
        o = rng.getrandbits(64)
        if sd_hash_oid(o) > top:
            wrapping.append(o)
    oids += wrapping + [0, 2**64 - 1]
    for copies in (1, 3, 5):
        bulk = r.bulk_placement(oids, copies)
        assert bulk.dtype == np.int32
        assert bulk.shape == (len(oids), min(copies, r.nr_zones))
        for i, oid in enumerate(oids):
            assert tuple(bulk[i]) == r.placement(oid, copies)
    first_owner = int(r.owners[0])
    for o in wrapping:
        assert r.placement(o, 1) == (first_owner,)
    for oid in oids[:400] + wrapping:
        assert r.placement(oid, 5) == reference_placement(r, oid, 5)


def test_replicas_returns_node_objects():
    r = ring3()
    reps = r.replicas(0x8000000100000000, 3)
    assert all(isinstance(n, Node) for n in reps)
    assert reps == tuple(r.nodes[i] for i in r.placement(0x8000000100000000, 3))


# --- immutability and equality ---------------------------------------------

def test_frozen_and_equality():
    r = ring3()
    with pytest.raises(AttributeError):
        r.nodes = ()
    with pytest.raises(AttributeError):
        r.foo = 1
    with pytest.raises(ValueError):
        r.points[0] = 0
    shuffled = [Node(LO, 7002, 128, 2), Node(LO, 7000, 128, 0), Node(LO, 7001, 128, 1)]
    r2 = Ring(shuffled)
    assert r == r2 and hash(r) == hash(r2)
    assert r != Ring([Node(LO, 7000, 128, 0), Node(LO, 7001, 128, 1), Node(LO, 7002, 127, 2)])
    assert r != Ring([Node(LO, 7000, 128, 0), Node(LO, 7001, 128, 1), Node(LO, 7002, 128, 3)])
    assert len({r, r2}) == 1
    # Mutating an input node afterwards does not change the snapshot.
    before = r2.placement(0x8000000100000000, 3)
    shuffled[0].nr_vnodes = 0
    assert r2.placement(0x8000000100000000, 3) == before


# --- auto vnodes -----------------------------------------------------------

def test_auto_vnodes():
    assert auto_vnodes([10**12] * 3) == [128, 128, 128]
    assert auto_vnodes([10**12, 2 * 10**12, 10**12, 2 * 10**12]) == [85, 171, 85, 171]
    # avg = mean over non-zero spaces only; space 0 -> 0
    assert auto_vnodes([0, 5, 5]) == [0, 128, 128]
    assert auto_vnodes([0, 0]) == [0, 0]
    assert auto_vnodes([]) == []
    # twice the average space -> 256
    assert auto_vnodes([1000, 3000, 2000]) == [64, 192, 128]
    assert auto_vnodes([500, 1000, 1500, 0])[1] == 128
    assert auto_vnodes([1, 3])[1] == 192
    # integer mean: (1+2+2)//3 == 1, so 2 -> 256 (not 154 as a float mean would give)
    assert auto_vnodes([1, 2, 2]) == [128, 256, 256]
    # round half to even: avg 256, 128*1/256 = 0.5 -> 0, 128*511/256 = 255.5 -> 256
    assert auto_vnodes([1, 511]) == [0, 256]


def test_auto_vnodes_single_precision():
    # avg = 2**25; s = 257*2**17 + 1 is not representable in float32 and rounds
    # to 257*2**17, so the factor is exactly 128.5 -> 128 (half even).  Double
    # precision would give 128.5000038 -> 129 and 127.4999962 -> 127.
    s = 257 * 2**17 + 1
    o = 2**26 - s
    assert [round(128 * x / 2**25) for x in (s, o)] == [129, 127]
    assert auto_vnodes([s, o]) == [128, 128]


# --- speed -----------------------------------------------------------------

