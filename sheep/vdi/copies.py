"""Redundancy changes: ALTER_CLUSTER_COPY (0xBF) and ALTER_VDI_COPY (0xC0).

Both are cluster operations.  ``cluster alter-copy`` only changes the default
used for VDIs created later (as in Sheepdog 1.0).  ``vdi alter-copy`` changes
one standalone VDI (no parent, no children: dog checks this, and so do we,
because shared objects would need every sharer's count to change): its work
step re-places every object the VDI owns on the ring for the new count —
creating the extra replicas from a current one when growing, removing the
surplus ones when shrinking (placement is a prefix of the ring order, so the
first min(old, new) holders stay) — and the main step records the new count
in the VDI state on every node.  Sheepdog 1.0 leaves that to recovery; we
do it in place so the VDI is fully redundant as soon as the reply arrives.
Writes to the VDI while its count changes are not supported (dog asks the
user to confirm for the same reason).
"""

from __future__ import annotations

import asyncio
import logging

from sheep import proto
from sheep.proto.errors import CODES, SdError, sd_error

log = logging.getLogger("sheep.vdi.copies")




def _check_copies(copies: int, policy: int) -> None:
    if policy:
        raise sd_error("INVALID_PARMS", "erasure coding is not supported")
    if not 1 <= copies <= proto.SD_MAX_COPIES:
        raise sd_error("INVALID_PARMS", f"invalid number of copies {copies} (1..{proto.SD_MAX_COPIES})")


async def alter_cluster_copy_work(sheep, args: proto.ClusterArgs) -> dict:
    _check_copies(args.copies, args.copy_policy)
    return {"op": "alter_cluster_copy", "copies": args.copies}


def apply_alter_cluster_copy(sheep, msg: dict) -> None:
    g = sheep.group
    old = g.config.copies
    g.config.copies = msg["copies"]
    g.save_config()
    log.info("cluster redundancy changed from %d to %d copies", old, msg["copies"])


async def _replace(sheep, oid: int, old: int, new: int) -> None:
    """Make ``oid`` held by exactly the replicas of ``new`` copies (from ``old``)."""
    gw = sheep.gateway
    if new > old:
        size = gw.obj_size(oid)
        data = await gw.read(oid, 0, size, copies=old)
        await gw.create_and_write(oid, 0, data, copies=new)
        return
    group = sheep.group
    epoch = group.epoch
    keep = set(group.ring.placement(oid, new))
    surplus = [n for k, n in enumerate(group.ring.replicas(oid, old))
               if group.ring.placement(oid, old)[k] not in keep]

    async def drop(node):
        try:
            if group.is_me(node):
                await sheep.replica.remove(oid, epoch)
            else:
                await gw._peer(node, proto.Op.REMOVE_PEER, oid, epoch, old)
        except SdError as e:
            if e.code != CODES["NO_OBJ"]:
                raise
    await asyncio.gather(*(drop(n) for n in surplus))


async def alter_vdi_copy_work(sheep, args: proto.VdiStateArgs) -> dict:
    vdis = sheep.vdis
    vid, copies = args.new_vid, args.copies
    _check_copies(copies, args.copy_policy)
    st = vdis.state(vid)
    if st is None or st.deleted:
        raise sd_error("NO_VDI", f"VDI {vid:#x} does not exist")
    if vdis.refs.has_relatives(vid):
        raise sd_error("INVALID_PARMS", f"VDI {vid:#x} shares objects with snapshots or clones: "
                                    f"only standalone VDIs can change their redundancy")
    old = st.copies
    if old != copies:
        ino = await vdis.read_header(vid)
        index = await vdis._read_index(vid, ino.nr_objects)
        oids = [proto.vid_to_data_oid(vid, i)
                for i, v in enumerate(memoryview(index).cast("I")) if v == vid]
        oids.append(proto.vid_to_vdi_oid(vid))
        for k in range(0, len(oids), 16):
            await asyncio.gather(*(_replace(sheep, o, old, copies) for o in oids[k:k + 16]))
        if ino.nr_copies != copies:  # a client other than dog may not have done it
            await sheep.gateway.write(proto.vid_to_vdi_oid(vid), 554, bytes([copies]),
                                      copies=copies)
    return {"op": "alter_vdi_copy", "vid": vid, "copies": copies}


def apply_alter_vdi_copy(sheep, msg: dict) -> None:
    st = sheep.vdis.state(msg["vid"])
    if st is not None:
        log.info("VDI %#x redundancy changed from %d to %d copies", st.vid, st.copies,
                 msg["copies"])
        st.copies = msg["copies"]
