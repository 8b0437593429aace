"""Consistent-hash ring: vnode points and object placement (docs/protocol.md §14.3-14.5).

Shared by the daemon and the clients (collie's ``vdi check`` and ``vdi
object`` compute placement as dog does).  Standard library only at import:
the bulk paths (:meth:`Ring.bulk_placement`, :func:`sd_hash_oid_array`, the
``points``/``owners`` arrays, :func:`auto_vnodes`) import numpy when first
called, which only the daemon does.

Theory of operation
-------------------
Every node with ``nr_vnodes = k > 0`` owns ``k`` points on a 64-bit ring:
``h = sd_hash(addr + port_le16)`` and then ``k`` times ``h = sd_hash_next(h)``.
An object goes to the owner of the first point ``>= sd_hash_oid(oid)``
(wrapping to the smallest point); further replicas are the owners of the
following points, skipping points whose node's zone was already chosen.

:class:`Ring` is an immutable snapshot of one member list.  Its constructor
precomputes the sorted points, and for every point position ``p`` the row
``table[p]`` = the first ``W`` node indices with pairwise distinct zones met
when walking from ``p`` (``W`` = number of zones, capped at 31).  The rows are
built backwards in O(points x W) with the exact recurrence
``row(p) = ([owner(p)] + [n for n in row(p+1) if zone(n) != zone(p)])[:W]``.
A lookup is then a binary search plus a row slice (scalar) or a
``searchsorted`` plus one gather (bulk, numpy).  Walking the ring in zone-
skipping order and truncating to ``N`` gives the same prefix for every
``N <= W``, so one table serves every copy count.

Pure: no I/O, no asyncio; one global cache, the memo of the pure
:func:`sd_hash_oid` (bounded, results never change).
"""

from __future__ import annotations

from bisect import bisect_left
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sheep.proto.constants import SD_MAX_COPIES

if TYPE_CHECKING:
    import numpy as np

FNV1A_64_INIT = 0xCBF29CE484222325
FNV_64_PRIME = 0x100000001B3
_M64 = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: bytes, h: int = FNV1A_64_INIT) -> int:
    """FNV-1a 64 of ``data`` continuing from ``h`` (docs/protocol.md §12.1)."""
    for b in data:
        h = ((h ^ b) * FNV_64_PRIME) & _M64
    return h

DEFAULT_VNODES = 128
MAX_ZONES = SD_MAX_COPIES  # zone counting stops here (§14.5)


def fold(v: int, h: int) -> int:
    """FNV-1a byte step applied to ``h`` with the 8 bytes of u64 ``v``, LSB first."""
    for _ in range(8):
        h = ((h ^ (v & 0xFF)) * FNV_64_PRIME) & _M64
        v >>= 8
    return h


def sd_hash(data: bytes) -> int:
    """``fold(H, H)`` with H = FNV-1a 64 of ``data``."""
    h = fnv1a64(data)
    return fold(h, h)


@lru_cache(maxsize=1 << 15)
def sd_hash_oid(oid: int) -> int:
    """Ring position of an object id: ``fold(H, H)``, H = ``fold(oid, FNV init)``.

    Memoised (a pure function of ``oid``; the 16 FNV steps in Python cost more
    than the rest of a placement): the hot objects of a request path hash once."""
    h = fold(oid, FNV1A_64_INIT)
    return fold(h, h)


def sd_hash_next(h: int) -> int:
    """Next vnode point after ``h``: ``fold(h, h)``."""
    return fold(h, h)


def _fold_np(v: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Vectorised :func:`fold` over uint64 arrays (numpy uint64 wraps mod 2**64)."""
    import numpy as np
    prime = np.uint64(FNV_64_PRIME)
    mask = np.uint64(0xFF)
    h = h.copy()
    for i in range(8):
        h ^= (v >> np.uint64(8 * i)) & mask
        h *= prime
    return h


def sd_hash_oid_array(oids: Any) -> np.ndarray:
    """Vectorised :func:`sd_hash_oid`; returns a uint64 array of the same length."""
    import numpy as np
    v = np.asarray(oids, dtype=np.uint64).reshape(-1)
    h = _fold_np(v, np.full(v.shape, FNV1A_64_INIT, dtype=np.uint64))
    return _fold_np(h, h)


def vnode_points(addr: bytes, port: int, nr_vnodes: int) -> list[int]:
    """The ``nr_vnodes`` ring points of a node, in generation order (unsorted).

    ``addr`` is the 16-byte address field; the hash input is addr + u16le port
    (the first 18 bytes of ``node_id``).
    """
    addr = bytes(addr)
    if len(addr) != 16:
        raise ValueError("addr must be 16 bytes")
    h = sd_hash(addr + int(port).to_bytes(2, "little"))
    out = []
    for _ in range(nr_vnodes):
        h = fold(h, h)
        out.append(h)
    return out


def auto_vnodes(spaces: Sequence[int]) -> list[int]:
    """Automatic vnode counts (§14.4, SD_CLUSTER_FLAG_AUTO_VNODES).

    ``avg`` = integer mean of the non-zero spaces; each node gets
    ``rint(128 * (float32(space) / float32(avg)))`` computed in single
    precision, rounding half to even.  Space 0 gives 0; all zero gives all 0.
    """
    import numpy as np
    nz = [int(s) for s in spaces if s]
    if not nz:
        return [0 for _ in spaces]
    avg = np.float32(sum(nz) // len(nz))
    out = []
    for s in spaces:
        if not s:
            out.append(0)
            continue
        factor = np.float32(np.float32(int(s)) / avg)
        out.append(int(np.rint(np.float32(factor * np.float32(DEFAULT_VNODES)))))
    return out


def node_sort_key(node: Any) -> tuple:
    """Node order (§14.2): the 16 address bytes compared as bytes, then port."""
    return (bytes(node.addr), int(node.port))


class Ring:
    """Immutable placement snapshot of a member list.

    Guarantees: ``nodes`` is the input sorted by :func:`node_sort_key`;
    the vnode counts and zones are captured at construction (later mutation
    of the node objects has no effect); ``placement`` and ``bulk_placement``
    agree for every oid and follow §14.5 exactly; no replica list contains
    two nodes of the same zone or a node with ``nr_vnodes == 0``.
    """

    __slots__ = ("nodes", "_key", "_zones", "nr_zones", "_points_list",
                 "_owner_list", "_arrays", "_rows", "_width")

    def __init__(self, nodes: Iterable[Any]):
        s = object.__setattr__
        ns = tuple(sorted(nodes, key=node_sort_key))
        key = tuple((bytes(n.addr), int(n.port), int(n.nr_vnodes), int(n.zone)) for n in ns)
        s(self, "nodes", ns)
        s(self, "_key", key)
        zones = [k[3] for k in key]
        s(self, "_zones", tuple(zones))
        distinct = []
        for k in key:
            if k[2] > 0 and k[3] not in distinct:
                if len(distinct) >= MAX_ZONES:
                    break
                distinct.append(k[3])
        s(self, "nr_zones", len(distinct))
        # Sorted points; ties (practically impossible) broken by node order.
        pts: list[tuple[int, int]] = []
        for i, (addr, port, nv, _z) in enumerate(key):
            if nv > 0:
                pts.extend((p, i) for p in vnode_points(addr, port, nv))
        pts.sort()
        m = len(pts)
        owner = [i for _p, i in pts]
        s(self, "_points_list", [p for p, _i in pts])
        s(self, "_owner_list", tuple(owner))
        s(self, "_arrays", None)  # numpy views, built on first bulk use
        # Width: total number of distinct zones among vnode owners, capped.
        w = min(len({zones[i] for i in owner}), MAX_ZONES)
        s(self, "_width", w)
        rows: list[tuple[int, ...]] = [()] * m
        if m:
            first: list[int] = []
            seen: set[int] = set()
            for i in owner:  # direct walk from position 0
                if zones[i] not in seen:
                    seen.add(zones[i])
                    first.append(i)
                    if len(first) == w:
                        break
            rows[0] = tuple(first)
            nxt = rows[0]
            for p in range(m - 1, 0, -1):
                o = owner[p]
                zp = zones[o]
                row = [o]
                row.extend(n for n in nxt if zones[n] != zp)
                nxt = rows[p] = tuple(row[:w])
        s(self, "_rows", tuple(rows))

    def _np(self) -> tuple:
        """(points, owners, table) as read-only numpy arrays, built once on first use."""
        arrays = self._arrays
        if arrays is None:
            import numpy as np
            points = np.array(self._points_list, dtype=np.uint64)
            own = np.array(self._owner_list, dtype=np.int32)
            table = np.array(self._rows, dtype=np.int32).reshape(len(self._rows), self._width)
            for a in (points, own, table):
                a.flags.writeable = False
            arrays = (points, own, table)
            object.__setattr__(self, "_arrays", arrays)
        return arrays

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Ring is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Ring is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ring):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Ring({len(self.nodes)} nodes, {len(self._points_list)} points, {self.nr_zones} zones)"

    @property
    def points(self) -> np.ndarray:
        """Sorted vnode points (read-only uint64 array)."""
        return self._np()[0]

    @property
    def owners(self) -> np.ndarray:
        """Index into ``nodes`` of the owner of each sorted point (read-only)."""
        return self._np()[1]

    def nr_copies(self, copies: int) -> int:
        """N = min(copies, nr_zones) (never negative)."""
        return max(0, min(int(copies), self.nr_zones))

    def placement(self, oid: int, copies: int) -> tuple[int, ...]:
        """Indices into ``nodes`` of the replicas of ``oid``, replica 0 first.

        Length is ``nr_copies(copies)``; empty if no node has vnodes.
        """
        pl = self._points_list
        if not pl:
            return ()
        n = copies if copies < self.nr_zones else self.nr_zones
        p = bisect_left(pl, sd_hash_oid(oid))
        if p == len(pl):
            p = 0
        return self._rows[p][:n] if n > 0 else ()

    def replicas(self, oid: int, copies: int) -> tuple[Any, ...]:
        """Node objects of :meth:`placement`, in replica order."""
        ns = self.nodes
        return tuple(ns[i] for i in self.placement(oid, copies))

    def bulk_placement(self, oids: Any, copies: int) -> np.ndarray:
        """Vectorised :meth:`placement`: int32 array (len(oids), N), row i = placement(oids[i]).

        N = ``nr_copies(copies)`` (0 columns for an empty ring).
        """
        import numpy as np
        h = sd_hash_oid_array(oids)
        n = self.nr_copies(copies)
        if not self._points_list or n == 0:
            return np.zeros((h.shape[0], 0), dtype=np.int32)
        points, _owners, table = self._np()
        pos = np.searchsorted(points, h, side="left")
        pos[pos == len(self._points_list)] = 0
        return np.ascontiguousarray(table[pos, :n], dtype=np.int32)
