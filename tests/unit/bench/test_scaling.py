"""``python -m bench.scaling`` at tiny sizes: every figure is produced; the
bulk and per-object placements it times agree; the moves it counts after one
node leaves are the leaving node's objects (about M x copies / N, exactly
M x copies summed over every node); its recovery-listing pass finds exactly
the objects the survivor gains; its size and fit helpers are right."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bench import scaling as S
from sheep.proto.placement import Ring

pytestmark = pytest.mark.quick

REPO = Path(__file__).resolve().parents[3]


def test_quick_run_yields_every_figure(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    res = S.main(["--quick", "--objects", "500,2000", "--nodes", "3,10",
                  "--memory-objects", "3000", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    # 3 nodes: own zones only (fewer nodes than --zones 4); 10 nodes: own zones and 4 zones
    assert [(r["nodes"], r["zones"]) for r in res["rings"]] == [(3, 3), (10, 10), (10, 4)]
    assert [r["points"] for r in res["rings"]] == [3 * 128, 10 * 128, 10 * 128]
    assert [r["width"] for r in res["rings"]] == [3, 10, 4]
    assert len(res["placement"]) == 6
    keys = {"objects", "nodes", "zones", "bulk_s", "bulk_ns_per_obj", "per_object_s",
            "per_object_us_per_obj", "per_object_hot_us_per_obj", "agree", "moved_objects",
            "expected_moved", "new_copies", "diff_s", "owned_mask_s"}
    for row in res["placement"]:
        assert keys <= row.keys()
        assert row["agree"] is True
        assert row["bulk_s"] > 0 and row["per_object_s"] > 0 and row["owned_mask_s"] > 0
    (mem,) = res["memory"]
    assert mem["objects"] == 3000 and mem["oid_array_B_per_obj"] == 8
    assert 100 < mem["stale_index_B_per_copy"] < 1000  # a dict entry holding a dict
    assert mem["oid_array_peak_B_per_obj"] > mem["oid_array_B_per_obj"]
    assert mem["list_missing_todo"] > 0
    disk = res["disk"]
    assert disk["record_bytes"] == disk["record_formula"] == 32 + 8 * 1024
    assert disk["object_bytes"] == 4 << 20 and disk["record_alloc"] >= disk["record_bytes"]
    rc = res["record_cache"]
    assert 8192 < rc["entry_bytes"] < 10000  # 1024 x (cur, prev) u32 + the objects around
    assert rc["max_bytes"] == pytest.approx(rc["entry_bytes"] * rc["max_entries"])
    text = capsys.readouterr().out
    assert "| objects M | nodes N |" in text and "record cache:" in text and "disk: record" in text
    assert text.count("| yes |") == 6


def test_parts_and_sizes():
    assert S._sizes("1e3, 1e4,2000") == [1000, 10000, 2000]
    res = S.main(["--parts", "memory", "--memory-objects", "1000"])
    assert res["rings"] == [] and res["placement"] == [] and len(res["memory"]) == 1


@pytest.mark.parametrize("n,zones", [(7, None), (12, 3), (40, None)])
def test_bulk_and_per_object_placement_agree(n, zones):
    ring = Ring(S.make_nodes(n, zones))
    rng = np.random.default_rng(5)
    oids = np.concatenate([S.make_oids(1500), rng.integers(1, 2**63, 1500, dtype=np.uint64)])
    table = ring.bulk_placement(oids, S.COPIES)
    want = min(S.COPIES, zones or n)
    assert table.shape == (len(oids), want)
    for row, oid in zip(table.tolist(), oids.tolist()):
        assert tuple(row) == ring.placement(oid, S.COPIES)
        assert len({ring.nodes[i].zone for i in row}) == want  # distinct zones


def _without(ring: Ring, i: int) -> Ring:
    return Ring([x for x in ring.nodes if x.key != ring.nodes[i].key])


def test_moves_after_one_node_leaves_are_that_nodes_objects():
    n, m = 10, 20000
    ring, oids = Ring(S.make_nodes(n)), S.make_oids(m)
    table = ring.bulk_placement(oids, S.COPIES)
    total = 0
    for i in range(n):
        mv = S.moves(ring, _without(ring, i), oids)
        held = int((table == i).any(axis=1).sum())
        assert mv["moved_objects"] == held  # nothing else changes
        assert mv["new_copies"] == held  # each gets one new holder
        assert abs(held - m * S.COPIES / n) < 0.35 * m * S.COPIES / n
        total += held
    assert total == m * S.COPIES


def test_moves_with_zones_and_with_fewer_nodes_than_copies():
    oids = S.make_oids(5000)
    ring = Ring(S.make_nodes(3))  # every object on every node; after a loss 2 copies
    mv = S.moves(ring, _without(ring, 1), oids)
    assert mv == {"moved_objects": 5000, "new_copies": 0}
    ring = Ring(S.make_nodes(12, 4))  # 3 nodes per zone: the leaver's zone keeps 2
    held = int((ring.bulk_placement(oids, S.COPIES) == 5).any(axis=1).sum())
    mv = S.moves(ring, _without(ring, 5), oids)
    assert mv == {"moved_objects": held, "new_copies": held}
    assert abs(held - 5000 * 3 / 12) < 0.35 * 5000 * 3 / 12


def test_owned_mask_is_membership_in_the_placement():
    ring, oids = Ring(S.make_nodes(9)), S.make_oids(3000)
    me = ring.nodes[4]
    mask = S.owned_mask(ring, me, oids)
    want = [4 in ring.placement(o, S.COPIES) for o in oids.tolist()]
    assert mask.tolist() == want and 0 < sum(want) < len(want)


def test_recovery_listing_finds_exactly_what_the_survivor_gains():
    n, oids = 10, S.make_oids(4000, seed=9)
    old = Ring(S.make_nodes(n))
    new = _without(old, n // 2)
    me = old.nodes[0]
    i_old, i_new = 0, next(i for i, x in enumerate(new.nodes) if x.key == me.key)
    gains = sum(i_new in new.placement(o, S.COPIES) and i_old not in old.placement(o, S.COPIES)
                for o in oids.tolist())
    fig = S.list_missing_peak(oids, n)
    assert fig["list_missing_todo"] == gains > 0
    # it holds every peer's list at once: at least 8 bytes per listed copy
    assert fig["list_missing_peak_B_per_obj"] > 8 * S.COPIES * (n - 2) / n


def test_deep_size_matches_tracemalloc_for_a_ring():
    nodes = S.make_nodes(50)
    tracemalloc.start()
    try:
        ring = Ring(nodes)
        ring.points  # noqa: B018 - the arrays too
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(S.deep_size(ring) - held) < 0.1 * held


def test_fit_ring_recovers_the_coefficients():
    rings = [{"points": p, "width": w, "build_s": 5e-6 * p + 2e-7 * p * w}
             for p in (12800, 128000) for w in (4, 31)] + [{"points": 384, "width": 3,
                                                             "build_s": 1.0}]  # ignored: small
    fit = S.fit_ring(rings)
    assert fit["ns_per_point"] == pytest.approx(5000, rel=1e-6)
    assert fit["ns_per_point_zone"] == pytest.approx(200, rel=1e-6)
    assert fit["max_rel_err"] < 1e-9


def test_command_line(tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "bench.scaling", "--quick", "--objects", "300",
                        "--nodes", "3", "--memory-objects", "1000", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["placement"][0]["objects"] == 300
    assert "| 300 | 3 | 3 |" in r.stdout
