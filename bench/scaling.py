"""Scaling figures: placement cost, memory per object, on-disk overhead.

    python -m bench.scaling [--objects 1e3,1e4,1e5,1e6] [--nodes 3,10,100,1000]
                            [--json PATH] [--quick]

No daemon is started: each figure calls the daemon's own code on synthetic
input.  Guarantee: placement is ``sheep.proto.placement.Ring``, the class the
daemon builds for every epoch (``sheep.cluster.group``/``epochs``), through
its numpy path ``bulk_placement`` (recovery) and its per-object path
``placement`` (every request); the two are checked to agree.  Nodes are
``SdNode.make`` records with the default 128 vnodes, objects data oids of 16
VDIs, copies 3.  Times: best of a few runs, wall clock, one thread.

* **ring**: ``Ring(nodes)`` (P = nodes x vnodes points; zone table of width
  W = min(zones, 31)), the array build of the first bulk call, its size (deep
  ``sys.getsizeof``; the daemon keeps up to ``RING_CACHE`` past rings).
* **placement**: ``bulk_placement`` of M objects; the per-object path for M
  up to ``--per-object-max`` (cold: the object hash memo, if any, emptied
  first; hot: 2000 of them again at once).  **moves**: the middle node leaves: both
  placements and every object's replica set difference (objects whose copies
  changed, new copies to make; expected M x copies / N), and one survivor's
  ``Recovery.owned_mask`` over the M oids (how each node decides what to
  recover).  With ``--zones Z`` again with the nodes spread over Z zones.
* **memory** (tracemalloc; numpy is traced), per object: the store's
  ``oid_array`` (peak while listing, and the result); the stale-copy index
  (``StaleCopies._index_add``, per stale copy) and ``stale_oid_array``; the
  record cache (per cached 4 MiB object, at most ``_CACHE_MAX``); and one
  ``Recovery._list_missing`` pass of a survivor of a 10-node cluster holding
  M objects (per object of the cluster; peer lists arrive as bytes).
* **disk**: a real ``PlainStore`` (nosync) creates a 4 MiB data object: its
  record file's size and allocated blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from sheep.cluster.recovery import Recovery
from sheep.proto.constants import SD_DATA_OBJ_SIZE, SD_DEFAULT_VNODES
from sheep.proto.nodes import SdNode
from sheep.proto.placement import Ring, sd_hash_oid
from sheep.store import meta as M
from sheep.store.inventory import Inventory
from sheep.store.plain import _CACHE_MAX, PlainStore, _Entry
from sheep.store.stale import StaleCopies

COPIES = 3
NR_VDIS = 16


def make_nodes(n: int, zones: int | None = None) -> list[SdNode]:
    """``n`` nodes 10.0.x.y:7000 with default vnodes; each its own zone (the
    default: the address) or node i in zone i % ``zones``."""
    return [SdNode.make(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7000, SD_DEFAULT_VNODES,
                        zone=None if zones is None else i % zones) for i in range(1, n + 1)]


def make_oids(m: int, seed: int = 1) -> np.ndarray:
    """``m`` distinct data oids (vid << 32 | index) spread over 16 VDIs."""
    vids = np.random.default_rng(seed).choice(1 << 24, NR_VDIS, replace=False) + 1
    vids = vids.astype(np.uint64)
    i = np.arange(m, dtype=np.uint64)
    return (vids[i % NR_VDIS] << np.uint64(32)) | (i // NR_VDIS)


def best_of(fn, budget: float = 0.5, most: int = 5) -> tuple[float, object]:
    """(shortest wall time of up to ``most`` runs within ``budget`` s, result)."""
    times, out, spent = [], None, 0.0
    while len(times) < most and (not times or spent < budget):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        spent += times[-1]
    return min(times), out


def deep_size(obj, seen: set | None = None) -> int:
    """Bytes held by ``obj`` and what it references (each object once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)  # (an ndarray's includes its data if it owns it)
    if isinstance(obj, np.ndarray):
        return size + (0 if obj.base is None else deep_size(obj.base, seen))
    if isinstance(obj, dict):
        obj = [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(x, seen) for x in obj)
    names = [n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())]
    return size + sum(deep_size(getattr(obj, n), seen) for n in names if hasattr(obj, n))


def ring_figures(nodes: list[SdNode]) -> tuple[Ring, dict]:
    build_s, ring = best_of(lambda: Ring(nodes), budget=3.0, most=3)
    t = time.perf_counter()
    ring.points  # noqa: B018 - builds the numpy arrays (first bulk use)
    arrays_s = time.perf_counter() - t
    p, w = len(ring.points), ring._width
    return ring, {"nodes": len(nodes), "zones": ring.nr_zones, "points": p, "width": w,
                  "build_s": build_s, "arrays_s": arrays_s,
                  "build_ns_per_pw": build_s / max(1, p * w) * 1e9,
                  "ring_mib": deep_size(ring) / 2**20}


def moves(old: Ring, new: Ring, oids: np.ndarray, copies: int = COPIES) -> dict:
    """What changes when ``old`` becomes ``new``, for every object: the
    objects whose replica set changed and the copies to make (replicas in
    ``new`` that were not replicas in ``old``)."""
    a = old.bulk_placement(oids, copies)
    ids = {n.key: i for i, n in enumerate(old.nodes)}
    remap = np.array([ids[n.key] for n in new.nodes], dtype=np.int32)
    b = remap[new.bulk_placement(oids, copies)]
    made = ~(b[:, :, None] == a[:, None, :]).any(axis=2)  # replica of new not in old
    lost = ~(a[:, :, None] == b[:, None, :]).any(axis=2)  # replica of old not in new
    return {"moved_objects": int((made.any(axis=1) | lost.any(axis=1)).sum()),
            "new_copies": int(made.sum())}


def owned_mask(ring: Ring, me: SdNode, oids: np.ndarray, copies: int = COPIES) -> np.ndarray:
    """``Recovery.owned_mask`` (the daemon's code) of node ``me``."""
    fake = SimpleNamespace(
        group=SimpleNamespace(is_me=lambda n: n.addr == me.addr and n.port == me.port),
        vdis=SimpleNamespace(copies_of=lambda vid: copies))
    return Recovery.owned_mask(fake, oids, ring)


#: empties the daemon's object hash memo (if it has one): every object is new again
_forget = getattr(sd_hash_oid, "cache_clear", lambda: None)


def placement_figures(ring: Ring, smaller: Ring, oids: np.ndarray, per_object_max: int) -> dict:
    """Bulk and per-object placement of ``oids``, then ``ring`` -> ``smaller``
    (one node left): the moves and one survivor's ``owned_mask``."""
    m, n = len(oids), len(ring.nodes)
    bulk_s, table = best_of(lambda: ring.bulk_placement(oids, COPIES))
    row = {"objects": m, "nodes": n, "zones": ring.nr_zones, "copies": COPIES,
           "bulk_s": bulk_s, "bulk_ns_per_obj": bulk_s / m * 1e9}
    idx = np.arange(m) if m <= per_object_max else np.arange(0, m, max(1, m // 2000))
    todo = oids[idx].tolist()  # all of them, or a sample of about 2000 (agreement, rate)
    per_s, per = best_of(lambda: (_forget(), [ring.placement(o, COPIES) for o in todo])[1], 0.5, 3)
    row["per_object_s"] = per_s if m <= per_object_max else None
    row["per_object_us_per_obj"] = per_s / len(todo) * 1e6
    hot = todo[:2000]  # placed again at once: the object hash memo (if any) answers
    row["per_object_hot_us_per_obj"] = best_of(
        lambda: [ring.placement(o, COPIES) for o in hot], 0.2, 3)[0] / len(hot) * 1e6
    row["agree"] = all(tuple(table[i].tolist()) == p for i, p in zip(idx.tolist(), per))
    row["expected_moved"] = m * ring.nr_copies(COPIES) / n
    row["diff_s"], mv = best_of(lambda: moves(ring, smaller, oids), budget=0.3, most=3)
    row.update(mv)
    row["owned_mask_s"], _ = best_of(lambda: owned_mask(smaller, smaller.nodes[0], oids), 0.3, 3)
    return row


def traced(fn) -> tuple[int, int, object]:
    """(bytes still held by the result, peak bytes during ``fn``, result)."""
    tracemalloc.start()
    try:
        out = fn()
        return (*tracemalloc.get_traced_memory(), out)
    finally:
        tracemalloc.stop()


def list_missing_peak(oids: np.ndarray, n: int = 10) -> dict:
    """Peak memory of one ``Recovery._list_missing`` pass (the daemon's code)
    of a survivor after one of ``n`` nodes left."""
    old = Ring(make_nodes(n))
    table = old.bulk_placement(oids, COPIES)
    leaving, me = old.nodes[n // 2], old.nodes[0]
    new = Ring([x for x in old.nodes if x.key != leaving.key])
    held = {x.key: oids[(table == i).any(axis=1)].astype("<u8") for i, x in enumerate(old.nodes)}

    async def io(fn, *a):
        return fn(*a)

    async def peer_list(node, epoch):
        return held[node.key].tobytes()  # a fresh buffer, as received

    fake = SimpleNamespace(
        group=SimpleNamespace(nodes=list(new.nodes), ring=new, is_me=lambda x: x.key == me.key),
        store=SimpleNamespace(stale_oid_array=lambda: np.empty(0, np.uint64),
                              oid_array=lambda: held[me.key].astype(np.uint64)),
        io=io, vdis=SimpleNamespace(tombs={}, copies_of=lambda vid: COPIES), _peer_list=peer_list)
    fake.owned_mask = lambda o, r: Recovery.owned_mask(fake, o, r)
    loop = asyncio.new_event_loop()
    try:
        _cur, peak, (todo, complete) = traced(
            lambda: loop.run_until_complete(Recovery._list_missing(fake, 2)))
    finally:
        loop.close()
    assert complete
    return {"list_missing_peak_B_per_obj": peak / len(oids), "list_missing_todo": len(todo)}


def memory_figures(m: int) -> dict:
    oids = make_oids(m, seed=2)
    listing = Inventory()  # the store's listing code, over names instead of a directory
    names = ["%016x" % o for o in oids.tolist()]
    listing._scan = lambda: (SimpleNamespace(name=x) for x in names)  # what it reads of DirEntry
    _cur, peak, arr = traced(listing.oid_array)
    row = {"objects": m, "oid_array_peak_B_per_obj": peak / m, "oid_array_B_per_obj": 8.0}
    assert arr.nbytes == 8 * m
    idx, todo = StaleCopies(), oids.tolist()  # the stale-copy index alone
    vars(idx).update(_stale={}, _stale_lock=threading.Lock(), obj_dirs=[])

    def add_all():
        for o in todo:
            idx._index_add(o, 7, 0)
    cur, _peak, _ = traced(add_all)
    _cur, peak, arr = traced(idx.stale_oid_array)
    assert len(arr) == m and len(idx._stale) == m
    row.update(stale_index_B_per_copy=cur / m, stale_oid_array_peak_B_per_obj=peak / m)
    idx._stale.clear()
    row.update(list_missing_peak(oids))
    return row


def record_cache_figures(k: int = 1024) -> dict:
    """Bytes per record cache entry of a 4 MiB data object (PlainStore._cache_put)."""
    fake = SimpleNamespace(_cache=OrderedDict(), _cache_lock=threading.Lock())
    crcs = M.zero_crcs(SD_DATA_OBJ_SIZE)

    def fill():
        for i in range(k):
            ent = _Entry((2049, 1000 + i, SD_DATA_OBJ_SIZE, 0), M.Meta.fresh(1 << 32 | 1, crcs))
            PlainStore._cache_put(fake, (7 << 32) | i, ent)
    cur, _peak, _ = traced(fill)
    out = {"entry_bytes": cur / k, "max_entries": _CACHE_MAX, "max_bytes": cur / k * _CACHE_MAX}
    size = getattr(sd_hash_oid, "cache_info", lambda: None)()  # the object hash memo, if any
    if size and size.maxsize:
        _forget()
        n = min(8192, size.maxsize)  # (traced filling is slow: per entry, times the size)
        cur, _peak, _ = traced(lambda: [sd_hash_oid(o) for o in range(1 << 40, (1 << 40) + n)]
                               and None)
        out.update(memo_entries=size.maxsize, memo_bytes=cur / n * size.maxsize)
    return out


def disk_figures() -> dict:
    """One 4 MiB data object created by a real PlainStore (nosync)."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as d:
        store = PlainStore(d, nosync=True)
        store.open()
        try:
            store.create_and_write(7 << 32 | 1, SD_DATA_OBJ_SIZE, b"x" * 4096, epoch=1)
            rec = os.stat(os.path.join(store.meta_dirs[0], "%016x" % (7 << 32 | 1)))
            obj = os.stat(os.path.join(store.obj_dirs[0], "%016x" % (7 << 32 | 1)))
            fs_block = os.statvfs(d).f_bsize
        finally:
            store.close()
    return {"object_bytes": obj.st_size, "object_alloc": obj.st_blocks * 512,
            "record_bytes": rec.st_size, "record_alloc": rec.st_blocks * 512,
            "record_formula": M.HDR_LEN + M.ENTRY * M.nblocks(SD_DATA_OBJ_SIZE),
            "fs_block": fs_block, "overhead_pct": 100 * rec.st_blocks * 512 / obj.st_size}


def fit_ring(rings: list[dict]) -> dict | None:
    """``build_s = a*P + b*P*W`` fitted (relative least squares), with the worst error."""
    rings = [r for r in rings if r["points"] >= 10000]  # small rings: fixed costs dominate
    if len(rings) < 2:
        return None
    x = np.array([[r["points"], r["points"] * r["width"]] for r in rings], dtype=float)
    y = np.array([r["build_s"] for r in rings])
    (a, b), *_ = np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)
    return {"ns_per_point": a * 1e9, "ns_per_point_zone": b * 1e9,
            "max_rel_err": (np.abs(x @ [a, b] - y) / y).max()}


def run(objects, nodes, zones: int, per_object_max: int, mem_objects, log=None) -> dict:
    log = log or (lambda s: None)
    warm = Ring(make_nodes(3))  # the interpreter warms up on the per-object path
    [warm.placement(o, COPIES) for o in make_oids(5000, seed=3).tolist()]
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "numpy": np.__version__, "loadavg": os.getloadavg()},
                 "params": dict(objects=objects, nodes=nodes, zones=zones, copies=COPIES,
                                vnodes=SD_DEFAULT_VNODES, per_object_max=per_object_max,
                                memory_objects=mem_objects),
                 "rings": [], "placement": [], "memory": []}
    all_oids = {m: make_oids(m) for m in objects}
    for n in nodes:
        for z in [None] + ([zones] if zones and n > zones else []):
            log(f"ring: {n} nodes, zones {z or 'own'}")
            ring, fig = ring_figures(make_nodes(n, z))
            res["rings"].append(fig)
            smaller = Ring([x for x in ring.nodes if x.key != ring.nodes[n // 2].key])
            smaller.points  # noqa: B018 - its arrays, built before any timing
            for m in objects:
                log(f"placement: {m} objects on {n} nodes")
                res["placement"].append(placement_figures(ring, smaller, all_oids[m],
                                                          per_object_max))
    for m in mem_objects:
        log(f"memory: {m} objects")
        res["memory"].append(memory_figures(m))
    res["ring_fit"] = fit_ring(res["rings"])
    res["record_cache"] = record_cache_figures()
    res["disk"] = disk_figures()
    return res


def _f(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if spec == "M":
        return f"{v:.0e}".replace("e+0", "e") if v >= 1000 and v % 10 == 0 else str(v)
    return format(v, spec)


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> list[str]:
    """Markdown table of ``rows``; ``cols`` = (title, key, format)."""
    out = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---:|" * len(cols)]
    return out + ["| " + " | ".join(_f(r[k], f) for _t, k, f in cols) + " |" for r in rows]


def _cols(spec: str) -> list[tuple[str, str, str]]:
    return [tuple(c.strip().split(":")) for c in spec.split(";")]


RING_COLS = _cols("nodes:nodes:d; zones:zones:d; points P:points:d; width W:width:d; "
                  "build s:build_s:.3g; ns per P·W:build_ns_per_pw:.0f; arrays s:arrays_s:.3g; "
                  "ring MiB:ring_mib:.3g")
PLACE_COLS = _cols("objects M:objects:M; nodes N:nodes:d; zones:zones:d; bulk s:bulk_s:.3g; "
                   "bulk ns/obj:bulk_ns_per_obj:.0f; per-object s:per_object_s:.3g; "
                   "per-object µs/obj:per_object_us_per_obj:.2f; "
                   "hot µs/obj:per_object_hot_us_per_obj:.2f; "
                   "agree:agree:; "
                   "moved:moved_objects:d; M·c/N:expected_moved:.0f; new copies:new_copies:d; "
                   "diff s:diff_s:.3g; owned_mask s:owned_mask_s:.3g")
MEM_COLS = _cols("objects:objects:M; oid_array peak B/obj:oid_array_peak_B_per_obj:.0f; "
                 "oid_array B/obj:oid_array_B_per_obj:.0f; "
                 "stale index B/copy:stale_index_B_per_copy:.0f; "
                 "stale_oid_array peak B/obj:stale_oid_array_peak_B_per_obj:.0f; "
                 "recovery listing peak B/obj:list_missing_peak_B_per_obj:.0f")


def markdown(res: dict) -> str:
    mc, rc, dk, ft = res["machine"], res["record_cache"], res["disk"], res["ring_fit"]
    out = [f"{mc['cpus']} CPUs, Python {mc['python']}, numpy {mc['numpy']}, load average "
           f"{mc['loadavg'][0]:.2f} at start; copies {COPIES}, "
           f"{res['params']['vnodes']} vnodes per node", ""]
    for rows, cols in ((res["rings"], RING_COLS), (res["placement"], PLACE_COLS),
                       (res["memory"], MEM_COLS)):
        if rows:
            out += _table(rows, cols) + [""]
    if ft:
        out += [f"ring build fit: {ft['ns_per_point']:.0f} ns x P + "
                f"{ft['ns_per_point_zone']:.0f} ns x P·W (worst error {ft['max_rel_err']:.0%})",
                ""]
    out += [f"record cache: {rc['entry_bytes']:.0f} B per cached 4 MiB object, at most "
            f"{rc['max_entries']} entries = {rc['max_bytes'] / 2**20:.1f} MiB", ""]
    if "memo_bytes" in rc:
        out += [f"object hash memo: {rc['memo_entries']} entries = "
                f"{rc['memo_bytes'] / 2**20:.1f} MiB when full", ""]
    out += [
            f"disk: record {dk['record_bytes']} B ({dk['record_alloc']} B allocated, "
            f"fs block {dk['fs_block']}) per {dk['object_bytes']} B object = "
            f"{dk['overhead_pct']:.2f} %"]
    return "\n".join(out) + "\n"


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.scaling", 
                                 description=__doc__.split("\n")[0])
    add = ap.add_argument
    add("--objects", type=_sizes, help="object counts M (default 1e3,1e4,1e5,1e6)")
    add("--nodes", type=_sizes, help="node counts N (default 3,10,100,1000)")
    add("--zones", type=int, default=4, help="also with the nodes in this many zones (0: no)")
    add("--per-object-max", type=float, default=1e5, help="per-object path up to this M")
    add("--memory-objects", type=_sizes, help="memory figure sizes (default 1e5,1e6)")
    add("--parts", default="placement,memory", help="placement, memory or both (disk always)")
    add("--json", metavar="PATH", help="write the results as JSON here")
    add("--quick", action="store_true", help="small defaults: M 1e3,1e4; N 3,10; memory 1e4")
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    objects = a.objects or ([1000, 10000] if a.quick else [1000, 10000, 100000, 1000000])
    nodes = a.nodes or ([3, 10] if a.quick else [3, 10, 100, 1000])
    nodes = nodes if "placement" in parts else []
    mem = (a.memory_objects or ([10000] if a.quick else [100000, 1000000])
           if "memory" in parts else [])
    res = run(objects, nodes, a.zones, int(a.per_object_max), mem,
              log=lambda s: print(s, file=sys.stderr, flush=True))
    sys.stdout.write(markdown(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
