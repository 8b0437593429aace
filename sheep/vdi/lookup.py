"""The answer of a VDI name lookup (docs/protocol.md §12.3), in either id
allocation mode (``sheep.vdi.table`` by default, ``sheep.vdi.recycle`` with
``format -R``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Lookup:
    """``vid`` when found; else ``code`` (NO_VDI/NO_TAG).  ``free`` is the vid a
    new VDI of that name would get; ``next_snap_id`` the snapshot id the next
    snapshot takes; ``deleted_working`` the newest snapshot's vid when only
    snapshots of the name are left (its working VDI was deleted)."""

    vid: int | None
    code: int
    free: int
    next_snap_id: int = 0
    deleted_working: int = 0
