"""Opcodes a Sheepdog 1.0 daemon has in its op table that this one implements
trivially, answering what a 1.0 build without the feature answers.

* GET_CACHE_INFO: an all-zero ``object_cache_info`` of the requested length
  (no object cache: no entries, size 0); CACHE_PURGE: SUCCESS.
* TRACE_ENABLE/DISABLE/STATUS/READ_BUF: SUCCESS with nothing to report (1.0's
  tracer stubs when built without it).
* PREVENT/ALLOW_INODE_UPDATE: SUCCESS (no inode update is ever held back here).
* NOTIFY_VDI_DEL: SUCCESS (1.0 drops object-list cache entries; none here).
* NOTIFY_VDI_ADD: implemented (a cluster op): marks ``new_vid`` in use when
  ``set_bitmap``, records its copies / policy / object size, and turns
  ``old_vid`` into a snapshot -- what farm's snapshot load sends.  As in
  1.0, the sender writes the inode next; until then a name lookup that
  reaches that vid answers the inode's read error rather than "not found".
* MD_INFO/PLUG/UNPLUG: NO_SUPPORT until the multi-disk store answers them.
* NFS_CREATE/DELETE stay unknown (INVALID_PARMS), as in a 1.0 build without NFS.
"""

from __future__ import annotations

from sheep import proto
from sheep.proto.errors import CODES, error_for
from sheep.vdi.table import VdiState

Op = proto.Op


async def empty_reply(sheep, req, payload):
    return None, bytes(req.data_length) if req.opcode == Op.GET_CACHE_INFO else b""


async def notify_vdi_add(sheep, req, payload):
    """Register a vid (farm's snapshot load): in use, its copies and object size;
    ``old_vid`` becomes a snapshot.  Cluster-wide, in order, like NEW_VDI."""
    a = req.args
    msg = {"op": "vdi_add", "old": a.old_vid, "new": a.new_vid, "copies": a.copies,
           "policy": a.copy_policy, "bitmap": bool(a.set_bitmap),
           "shift": a.block_size_shift or sheep.group.config.block_size_shift}
    if not 0 < a.new_vid < proto.SD_NR_VDIS:
        raise error_for(CODES["INVALID_PARMS"], f"invalid vid {a.new_vid:#x}")

    async def work():
        return msg
    await sheep.group.cluster_op(work)
    return None, b""


def main_vdi_add(sheep, msg):
    """NOTIFY_VDI_ADD's main step, on every node in order."""
    vdis = sheep.vdis
    old = msg["old"]
    if old:
        st = vdis.states.get(old)
        if st is None:
            st = vdis.states[old] = VdiState(old, msg["copies"], msg["policy"], msg["shift"],
                                             src=sheep.group.epoch)
        st.snapshot = True
    if msg["bitmap"]:
        vdis.set(vdis.inuse, msg["new"])
    vdis.states[msg["new"]] = VdiState(msg["new"], msg["copies"] or sheep.group.config.copies,
                                       msg["policy"], msg["shift"], parent=old,
                                       src=sheep.group.epoch)  # known from now (vdi_recycle)
