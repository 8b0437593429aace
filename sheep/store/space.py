"""A node's ``space``: the weight its automatic vnode count is derived from.

Sheepdog 1.0 (``init_disk_space`` in ``sheep/store.c``, ``md_init_space`` /
``get_path_free_size`` in ``sheep/md.c``) measures it once, when a store is
first used: the *free* space ``f_frsize * f_bavail`` of the filesystem(s)
holding the objects, and keeps it in the store's ``config`` file (the
``space`` field), so a restarted node keeps its weight however full its disk
has become since.  This module does the same:

* the value saved in ``config`` wins when it is non-zero (a restart);
* otherwise the free space of each distinct filesystem holding an object
  directory is summed (several directories on one filesystem count once —
  1.0 would count such a filesystem once per directory, which only
  over-weights a misconfigured node) and saved in ``config`` right away,
  also before the cluster is formatted (a config with ``ctime`` 0 means
  "not formatted", as before);
* a gateway (``-g``) has space 0 and stores nothing.

The automatic vnode count itself (``sheep.proto.placement.auto_vnodes``, 1.0's
``recalculate_vnodes``): ``rintf(128 * (float)space / (float)avg)``, ``avg``
the integer mean over the nodes with non-zero space.  For three stores of
exactly 2, 4 and 8 GiB free this gives 55, 110 and 219 (219.43 rounds
down); 220 comes out once each store has about 4 MiB less than that free.
"""

from __future__ import annotations

import logging
import os

from sheep import proto

log = logging.getLogger("sheep.store.space")


def free_space(dirs, total: bool = False) -> int:
    """Sum of ``f_frsize * f_bavail`` (``total``: ``* f_blocks``) over the
    distinct filesystems of ``dirs``."""
    seen: set[int] = set()
    space = 0
    for d in dirs:
        dev = os.stat(d).st_dev
        if dev in seen:
            continue
        seen.add(dev)
        vfs = os.statvfs(d)
        space += vfs.f_frsize * (vfs.f_blocks if total else vfs.f_bavail)
    return space


def node_space(store, dirs) -> int:
    """The node's space: the one saved in the store's config, else measured
    now (free space of ``dirs``) and saved there."""
    raw = store.load_config()
    cfg = proto.SheepdogConfig.unpack(raw) if raw else proto.SheepdogConfig()
    if cfg.space:
        return cfg.space
    cfg.space = free_space(dirs)
    store.save_config(cfg.pack())
    log.info("store free space %d bytes: saved as this node's space", cfg.space)
    return cfg.space
