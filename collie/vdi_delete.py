"""Deleting a VDI: refuse one in use, then release its objects (dog's
delete, for ``vdi delete``, ``vdi rollback``, ``vdi restore`` and ``cluster
snapshot load``).

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

from collie.client import EXIT_FAILURE, EXIT_MISSING, Client, CollieError
from collie.queries import LOCK_KINDS, get_locks, get_vdi_state, inode_index
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, strerror

NR_BATCHED_RECLAMATION_DEFAULT = 128


def holders(client: Client, vid: int) -> list[str]:
    """Who holds ``vid`` open, one "KIND via NODE" text each ([] if nobody)."""
    locks = get_locks(client)
    if locks is not None:
        return [f"{LOCK_KINDS.get(r.kind, '?')} lock via {proto.nid_to_str(r.owner)}"
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


def do_vdi_delete(client: Client, name: str, snapid: int, tag: str,
                  batch: int = NR_BATCHED_RECLAMATION_DEFAULT, force: bool = False,
                  force_option: str = "--force") -> None:
    """dog's delete; a VDI in use is refused first (:func:`refuse_in_use`)."""
    ret, vid = client.find_vdi_name(name, snapid, tag)
    if ret != 0:
        raise CollieError(f"Failed to open VDI {name} (snapshot id: {snapid} snapshot "
                          f"tag: {tag}): {strerror(ret)}",
                          code=EXIT_MISSING if ret == CODES["NO_VDI"] else EXIT_FAILURE)
    refuse_in_use(client, vid, name, force, force_option)
    oid = proto.vid_to_vdi_oid(vid)
    try:
        raw = client.read_object(oid, proto.SD_INODE_SIZE, 0, direct=False)
    except CollieError as e:
        raise CollieError(*e.messages, f"failed to read inode object: {oid:016x}") from None
    inode = proto.InodeHeader.unpack(raw)
    vids = inode_index(raw, inode)
    nr_objs, i = len(vids), 0
    while i < nr_objs:
        while i < nr_objs and not vids[i]:
            i += 1
        start, filled = i, 0
        while i < nr_objs and filled < batch:
            if vids[i]:
                vids[i] = 0
                filled += 1
            i += 1
        try:
            client.write_object(oid, bytes(4 * (i - start)),
                                proto.data_vdi_id_offset(start),
                                copies=inode.nr_copies, copy_policy=inode.copy_policy,
                                direct=True)
        except CollieError as e:
            raise CollieError(*e.messages, f"failed to update inode for discarding "
                                           f"objects: {oid:016x}") from None
    req = Request(Op.DEL_VDI, flags=proto.SD_FLAG_CMD_WRITE,
                  data_length=proto.SD_MAX_VDI_LEN + proto.SD_MAX_VDI_TAG_LEN)
    req.args.snapid = snapid
    rsp, _ = client.exec(req, proto.vdi_name_payload(name, tag or ""))
    if rsp.result != 0:
        raise CollieError(f"Failed to delete {name}: {strerror(rsp.result)}",
                          code=EXIT_MISSING if rsp.result == CODES["NO_VDI"]
                          else EXIT_FAILURE)
