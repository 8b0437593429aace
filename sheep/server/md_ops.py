"""Multi-disk operations of the daemon: MD_INFO / MD_PLUG / MD_UNPLUG and
what follows a disk change (1.0's ``sheep/md.c`` + ``sheep/ops.c``).

* ``MD_INFO``: reply ``struct sd_md_info`` (``sheep.store.md.pack_md_info``)
  of the placement disks; ``UNKNOWN`` if there is none.
* ``MD_PLUG`` / ``MD_UNPLUG``: payload = comma-separated directory list
  (NUL-terminated).  Paths that cannot be added / are not disks are logged
  and skipped; if no disk changed the result is ``UNKNOWN`` (1.0's
  ``do_plug_unplug``).  A plug replies once the disks are in (objects then
  move to their new homes in the background, found on their old disk until
  moved); an unplug replies once the disks are drained
  (``sheep.store.md_disks``).
* **After every change** — plug, unplug, or a lost disk dropped by
  :func:`drop_failed_disks` — the node's weight follows its disks: its space
  becomes the sum of the disk spaces and a ``weights`` cluster op publishes
  it (what 1.0 does only on ``dog cluster reweight``, SD_OP_REWEIGHT; here
  it is automatic, and ``cluster reweight`` measures the same), so a cluster with
  automatic vnodes re-weights this node's vnodes and moves to a new epoch;
  the epoch change runs recovery, which brings back the objects of a lost
  disk from peers.  If the epoch does not change (same space), recovery of
  the current epoch is restarted instead (1.0's ``kick_recover``).
* A lost disk never takes the node out of the cluster while another disk
  remains; the request that met it is retried once on the new disk set
  (1.0 answers NETWORK_ERROR so that the gateway retries; we retry here).
"""

from __future__ import annotations

import asyncio
import logging
import os

from sheep import proto
from sheep.proto.errors import CODES, error_for
from sheep.store import md

log = logging.getLogger("sheep.md")


def _paths(payload: bytes) -> list[str]:
    text = bytes(payload).split(b"\0", 1)[0].decode(errors="replace")
    return [p for p in text.split(",") if p]


async def md_info(sheep, req, payload):
    disks = await sheep.io_thread(sheep.store.md_info)
    if not disks:
        raise error_for(CODES["UNKNOWN"], "no disks")
    return None, md.pack_md_info(disks)


async def md_plug(sheep, req, payload):
    paths = _paths(payload)
    if not paths:
        raise error_for(CODES["INVALID_PARMS"], "MD_PLUG needs a directory list")
    for p in paths:  # a plugged directory is purged: never one the daemon has to guess
        if not os.path.isabs(p) or not os.path.isdir(os.path.dirname(p.rstrip("/")) or "/"):
            raise error_for(CODES["INVALID_PARMS"],
                            f"MD_PLUG: {p!r} is not an absolute path in an existing directory")
    added = await sheep.io_thread(sheep.store.md_plug, paths)
    if not added:
        raise error_for(CODES["UNKNOWN"], f"no disk plugged from {','.join(paths)}")
    await disks_changed(sheep, f"plugged {','.join(added)}")
    rebalance_later(sheep)
    return None, b""


async def md_unplug(sheep, req, payload):
    paths = _paths(payload)
    if not paths:
        raise error_for(CODES["INVALID_PARMS"], "MD_UNPLUG needs a directory list")
    gone = await sheep.io_thread(sheep.store.md_unplug, paths)
    if not gone:
        raise error_for(CODES["UNKNOWN"], f"no disk unplugged from {','.join(paths)}")
    await disks_changed(sheep, f"unplugged {','.join(gone)}")
    return None, b""


def _spawn(sheep, coro) -> None:
    tasks = sheep.__dict__.setdefault("_md_tasks", set())  # keep a reference
    t = asyncio.get_running_loop().create_task(coro)
    tasks.add(t)
    t.add_done_callback(tasks.discard)


def rebalance_later(sheep) -> None:
    """Move objects to their home disks in the background (after a plug, and
    at start-up: the disk list may differ from the last run)."""
    _spawn(sheep, _rebalance(sheep))


async def _rebalance(sheep) -> None:
    try:
        left = await sheep.io_thread(sheep.store.md_rebalance)
        if left:
            log.warning("md: %d objects could not be moved to their home disk", left)
    except Exception:
        log.exception("md: moving objects to their home disks failed")


async def disks_changed(sheep, why: str) -> None:
    """Publish this node's new space (re-weighting its vnodes) and make sure
    recovery runs for the new disk set."""
    g = sheep.group
    space = sheep.store.capacity()
    sheep.me = g.me = sheep.me.replace(space=space)  # what set_vnodes publishes
    log.info("md: %s; node space now %d bytes", why, space)
    if not g.formatted or g.status != "ok" or sheep.cfg.gateway:
        return
    key = f"{sheep.me.host}:{sheep.me.port}"
    count = g.weights.get(key, [sheep.me.nr_vnodes])[0]
    seen = g.epoch

    async def work():
        return {"op": "weights", "weights": {key: [count, space]}}
    try:
        await g.cluster_op(work)
    except Exception as e:  # noqa: BLE001 - recovery below still runs
        log.warning("md: cannot publish the new node space: %s", e)
    if g.epoch == seen:
        sheep.recovery.start()


async def drop_failed_disks(sheep, deep: bool) -> bool:
    """Drop lost disks (``deep``: also those failing a write probe); True
    if some were dropped and others remain.  If every disk is lost the node
    leaves the cluster (as a single-disk node does)."""
    store = sheep.store
    if not store.multi_disk:
        return False
    lost, all_lost = await sheep.io_thread(store.drop_lost_disks, deep)
    if all_lost:
        sheep.group.fatal("every disk of the multi-disk set is lost")
        return False
    if not lost:
        return False
    _spawn(sheep, disks_changed(sheep, f"lost {','.join(lost)}"))
    return True


OPS = [
    (proto.Op.MD_INFO, "local", False, md_info),
    (proto.Op.MD_PLUG, "local", False, md_plug),
    (proto.Op.MD_UNPLUG, "local", False, md_unplug),
]
