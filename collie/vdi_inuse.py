"""Refusing to delete a VDI that is in use (``vdi delete``, ``vdi rollback``,
``vdi restore``).

A VDI is in use while somebody holds its lock: a writer (``qemu``, the NBD
export, ``qemu_client`` opened read-write), a shared (multipath) or a read
lock; a standby hold (a migration target not yet active) is not a use.  The
destructive commands refuse such a VDI, as ``rbd rm`` refuses an image with
watchers, before they change anything (dog's delete first clears the inode's
index, so a refusal at DEL_VDI alone would come after the data is gone).
The daemon marks the GET_VDI_INFO reply of a VDI in use
(``proto.LOCK_STATUS_IN_USE``), which the delete sends anyway: a VDI not in
use costs no extra request (dog's traffic); one in use is then looked up
with GET_LOCKS for the message.  A Sheepdog 1.0 daemon never marks it, and
does not refuse either: there the command behaves as dog.
``--force`` (``vdi delete``) / ``--break-lock`` (``vdi rollback``) breaks the
lock first, exactly as ``vdi lock unlock`` does: the holder is fenced (its
further writes fail) and the command then proceeds.  The sheep daemons refuse
DEL_VDI of a locked VDI as well (VDI_LOCKED), for other clients.
"""

from __future__ import annotations

import sys

from collie.client import EXIT_FAILURE, Client, CollieError
from sheep import proto
from sheep.proto import Op, Request


def holders(client: Client, vid: int) -> list[str]:
    """Who holds ``vid`` open, one "KIND via NODE" text each ([] if nobody)."""
    from collie.vdi_extra import _KIND, get_locks, get_vdi_state

    locks = get_locks(client)
    if locks is not None:
        return [f"{_KIND.get(r.kind, '?')} lock via {proto.nid_to_str(r.owner)}"
                for r in locks if r.vid == vid and r.kind != proto.LOCK_KIND_STANDBY]
    for st in get_vdi_state(client):  # a 1.0 sheep: its lock state
        if st.vid == vid and st.lock_state == proto.LOCK_STATE_LOCKED:
            return [f"write lock via {proto.nid_to_str(st.lock_owner)}"]
        if st.vid == vid and st.lock_state == proto.LOCK_STATE_SHARED:
            return ["shared lock"]
    return []


def break_lock(client: Client, vid: int, name: str) -> None:
    """Forced unlock (``vdi lock unlock``): every hold of ``vid`` ends."""
    req = Request(Op.RELEASE_VDI, flags=proto.SD_FLAG_CMD_SESSION)
    req.args.base_vdi_id = vid
    proto.set_release_session(req.args, 0)
    rsp, _ = client.exec(req)
    if rsp.result != 0:
        from sheep.proto.errors import strerror
        raise CollieError(f"Failed to unlock VDI {name}: {strerror(rsp.result)}",
                          code=EXIT_FAILURE)


def in_use(client: Client) -> bool:
    """The GET_VDI_INFO reply ``client.find_vdi_name`` just got says the VDI
    is held open (pysheepdog's LOCK_STATUS_IN_USE; a 1.0 sheep never says
    so): no extra request, so dog's traffic is unchanged for a VDI not in use."""
    rsp = getattr(client, "last_vdi_info", None)
    if rsp is None or rsp.result != 0:
        return False
    status, _gen, _grace, holds = proto.session_reply(rsp.args)
    return bool(status & proto.LOCK_STATUS_IN_USE and holds)


def refuse_in_use(client: Client, vid: int, name: str, force: bool,
                  option: str = "--force") -> None:
    """Call right after ``client.find_vdi_name`` found ``vid``.  Raise
    (nothing changed) if the VDI is in use, unless ``force``: then break the
    lock, say so on stderr, and return."""
    if not in_use(client):
        return
    who = holders(client, vid) or ["a lock"]
    if not force:
        raise CollieError(f"VDI {name} is in use ({', '.join(who)}): refusing to delete it",
                          f"Close it first, or break the lock with {option} (the holder's "
                          "next write fails)", code=EXIT_FAILURE)
    break_lock(client, vid, name)
    sys.stderr.write(f"VDI {name} was in use ({', '.join(who)}); lock broken ({option})\n")
