"""VDI id recycling: clusters formatted with ``collie cluster format -R``
(``SD_CLUSTER_FLAG_RECYCLE_VID``), as in Sheepdog 1.0 (``sheep/vdi.c``:
``vdi_lookup`` in recycle mode, ``run_vid_gc``/``do_vid_gc`` called from
``post_cluster_del_vdi``).

* **Allocation**: a new VDI gets the first vid >= 1 whose in-use bit is clear,
  so ids are sequential from 1 (not the name hash).
* **Lookup** scans every vid in use or deleted, from the highest down, since
  the name hash says nothing about where a name's inodes are.  Stricter than
  1.0 (which stops at the first inode of the name): a lookup without a tag
  returns the working VDI of the name wherever it is (a name has at most one
  working VDI), and "no working VDI" only after every inode of the name was
  seen, with ``next_snap_id`` = the highest snapshot id + 1.  With recycled
  ids a newer inode can have a lower vid than an older snapshot, so 1.0's
  first-hit rule could miss a re-created working VDI.  1.0's recycle-mode
  quirk that turns "working VDI deleted, snapshots left" into success (so the
  name cannot be created again) is not copied: the name is free as in the
  default mode.  A lookup with a tag returns the matching snapshot with the
  highest snapshot id.
* **Collection**: when a delete leaves every member of the VDI's family
  deleted (the root found by following parents, and every VDI descending from
  it), the family is collected: the deleting node removes their inode objects
  through the gateway — every holder acknowledges the removal of the live
  copy, its record and its stale copies — *before* the delete's main step is
  sent; the main step then clears the vids in both bitmaps and forgets their
  states on every node, after which the ids can be reused.  If a removal
  fails the family is not collected (its ids stay allocated; nothing is
  lost, the next delete in the family tries again).  Data objects were
  already released by the delete itself (``sheep.vdi.refcount``, synchronously).

Why a new VDI can never read an old one's data (decision, stricter than 1.0,
which removes the objects of the vid it finds on each node's disk in the main
step): a VDI reads an object only through its own index, whose entries start
at 0 (create) or point to its parent's objects (clone); an object named with
its own vid is read only after the VDI created it, and a create replaces the
whole object (zeros + data) with a version above the live copy it replaces
(an old copy elsewhere is at most a stale copy, which never wins over a live
one, ``sheep.cluster.fetch``).  So any
leftover copy of an object of a recycled vid — on a node that was away during
the collection, or leaked — is never visible through the new VDI.  Collected
ids are cleared only by the ordered main step, after the removals, so no
NEW_VDI can take an id whose inode is still being removed.

Tombstones: a collected vid is remembered, on every node, with the epoch
of its collection (``BASE/vid_tombstones``, durable, JSON), and every VDI
record carries the epoch it is known from (``src``: the creating epoch, the
latest epoch of the disk it was read from, 0 for an inode found only as
stale copies).  A record whose ``src`` is older than its vid's tombstone is
of the collected VDI (a node that was away during the collection, or the
first to start after a whole-cluster restart, still has it) and is dead: it
is never merged in, and a tombstone that arrives with a joiner drops such a
record from the table.  A reuse of the id is created at an epoch >= the
collection's, so it stays.  Recovery leaves alone the objects of a
tombstoned vid that no live record has, so stale copies of a collected
VDI's inode are not made live again.

Joining nodes: their on-disk VDI records never change the state or bits of a
vid the cluster already knows (a recycled vid reused meanwhile stays live).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from sheep import proto
from sheep.proto.errors import CODES, SdError, sd_error
from sheep.store.basedir import fsync_dir
from sheep.vdi.lookup import Lookup

log = logging.getLogger("sheep.vdi.table")


def used_vids_desc(table) -> np.ndarray:
    """Every vid >= 1 set in the in-use or the deleted bitmap, highest first."""
    both = np.frombuffer(bytes(table.inuse), dtype=np.uint8) | \
        np.frombuffer(bytes(table.deleted), dtype=np.uint8)
    nz = np.flatnonzero(both)
    if not len(nz):
        return nz
    bits = np.unpackbits(both[nz].reshape(-1, 1), axis=1, bitorder="little")
    rows, cols = np.nonzero(bits)
    vids = nz[rows] * 8 + cols
    vids = vids[vids > 0]
    return np.sort(vids)[::-1]


async def lookup(table, name: bytes, tag: bytes, snapid: int):
    """§12.3 in recycle mode (see the module docstring)."""
    free = table.next_clear(1)
    if free == proto.SD_NR_VDIS:
        raise sd_error("FULL_VDI")
    has_tag = tag != bytes(256) or snapid != 0
    seen_name = False
    best = None  # (snap_id, vid) of the best snapshot match
    for vid in used_vids_desc(table):
        vid = int(vid)
        ino = await table.read_header(vid)
        if ino.name != name:
            continue
        if has_tag:
            seen_name = True
            if ino.is_snapshot and ((tag != bytes(256) and ino.tag == tag)
                                    or (snapid and ino.snap_id == snapid)):
                if best is None or ino.snap_id > best[0]:
                    best = (ino.snap_id, vid)
        elif not ino.is_snapshot:
            return Lookup(vid, 0, free, ino.snap_id + 1)
        elif best is None or ino.snap_id > best[0]:
            best = (ino.snap_id, vid)
    if has_tag:
        if best is not None:
            return Lookup(best[1], 0, free)
        return Lookup(None, CODES["NO_TAG"] if seen_name else CODES["NO_VDI"], free)
    if best is not None:  # only snapshots: the working VDI was deleted
        return Lookup(None, CODES["NO_VDI"], free, best[0] + 1, best[1])
    return Lookup(None, CODES["NO_VDI"], free)


def family(states: dict, vid: int) -> list[int]:
    """The vids of ``vid``'s family: its root (parents followed while known)
    and every known VDI descending from that root."""
    def root_of(v: int) -> int:
        seen = set()
        while v not in seen:
            seen.add(v)
            st = states.get(v)
            if st is None or not st.parent or st.parent not in states:
                return v
            v = st.parent
        return v
    root = root_of(vid)
    return sorted(v for v in states if root_of(v) == root)


async def collect_work(table, vid: int) -> list[int]:
    """Work step of a delete of ``vid``: if that leaves the whole family
    deleted, remove the family's inode objects; returns the vids to clear
    (empty: nothing to collect, or a removal failed)."""
    states = table.states
    members = family(states, vid)
    if any(v != vid and not states[v].deleted for v in members):
        return []
    for v in members:
        try:
            await table.gateway.remove(proto.vid_to_vdi_oid(v), copies=table.copies_of(v))
        except SdError as e:
            if e.code != CODES["NO_OBJ"]:
                log.warning("not recycling the family of VDI %#x: removing the inode of "
                            "%#x failed: %s", vid, v, e)
                return []
    return members


def apply_collect(table, vids: list[int]) -> None:
    """Main step (every node): forget ``vids``, clear their bits, and
    remember them as collected at this epoch (tombstones)."""
    epoch = table.group.epoch
    for v in vids:
        _forget(table, v)
        table.tombs[v] = max(table.tombs.get(v, 0), epoch)
    if vids:
        save_tombs(table)
    if vids:
        log.info("VDI ids %s recycled (their family is deleted)",
                 ", ".join(f"{v:#x}" for v in vids))


def _forget(table, v: int) -> None:
    table.inuse[v >> 3] &= ~(1 << (v & 7)) & 0xFF
    table.deleted[v >> 3] &= ~(1 << (v & 7)) & 0xFF
    table.states.pop(v, None)


def dead(table, vid: int, src: int) -> bool:
    """A record of ``vid`` known from epoch ``src`` is of a collected VDI."""
    return src < table.tombs.get(vid, 0)


def tombs_json(tombs: dict[int, int]) -> dict[str, int]:
    return {str(v): e for v, e in tombs.items()}


def add_tombs(table, tombs: dict) -> None:
    """Union in tombstones (another node's); drop the records they kill.
    The same on every node (the table and the tombstones are)."""
    changed = False
    for v, e in tombs.items():
        v = int(v)
        if e > table.tombs.get(v, 0):
            table.tombs[v] = e
            changed = True
    # also when nothing changed: a table just restored from another node's
    # snapshot may hold records that our own tombstones kill
    for v in [v for v, st in table.states.items() if dead(table, v, st.src)]:
        log.info("VDI %#x: a record from before its id was collected, dropped", v)
        _forget(table, v)
    if changed:
        save_tombs(table)


def collected_mask(table, oids: np.ndarray) -> np.ndarray:
    """True for objects of a tombstoned vid that no live record has (not
    to be recovered: they belong to a collected VDI)."""
    gone = [v for v in table.tombs if v not in table.states]
    if not gone or not len(oids):
        return np.zeros(len(oids), dtype=bool)
    vids = ((np.asarray(oids, dtype=np.uint64) >> np.uint64(32)) & np.uint64(0xFFFFFF))
    return np.isin(vids.astype(np.int64), np.asarray(gone, dtype=np.int64))


def _path(store) -> str:
    return os.path.join(store.base_dir, "vid_tombstones")


def load_tombs(store) -> dict[int, int]:
    try:
        with open(_path(store)) as f:
            return {int(v): int(e) for v, e in json.load(f).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.error("cannot read %s: %s", _path(store), e)
        raise


def save_tombs(table) -> None:
    """Durable (unless -n) before return: tmp + fsync + rename + dir fsync."""
    path = _path(table.store)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(tombs_json(table.tombs), f)
        if not table.nosync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not table.nosync:
        fsync_dir(os.path.dirname(path))


def reset_tombs(table) -> None:
    """Format: a new cluster has collected nothing."""
    if table.tombs:
        table.tombs = {}
        save_tombs(table)
