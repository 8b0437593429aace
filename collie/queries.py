"""What the commands ask the cluster, and the decoding of its replies: the
epoch log (STAT_CLUSTER), VDI lock states (GET_VDI_COPIES) and holders
(GET_LOCKS), an inode's data object index, and a node's disks (MD_INFO).

Wire format of the MD_INFO reply (``struct sd_md_info``): 64 disk slots of
4120 bytes each -- i32 ``idx``, 4 pad bytes, u64 ``free``, u64 ``used``,
``char path[4096]`` -- then i32 ``nr`` (slots used) at offset 263680, the
whole padded to 263688 bytes.
"""

from __future__ import annotations

import struct

from collie.client import (
    EXIT_SYSFAIL,
    Client,
    CollieError,
    count_data_objs,
    unpack_vids,
)
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES, strerror


def stat_cluster(client: Client):
    """STAT_CLUSTER sized for every epoch; doubles nodes_nr on BUFFER_SMALL."""
    nodes_nr = len(client.nodes)
    epoch = max(client.epoch, 1)
    while True:
        length = epoch * (proto.EpochLogHeader.SIZE + nodes_nr * proto.SD_NODE_SIZE)
        req = Request(Op.STAT_CLUSTER, data_length=length)
        req.args.nodes_nr = nodes_nr
        rsp, data = client.exec(req)
        if rsp.result == CODES["BUFFER_SMALL"]:
            nodes_nr = max(nodes_nr * 2, 1)
            continue
        return rsp, proto.unpack_epoch_logs(data, nodes_nr)


def inode_index(raw: bytes, inode: proto.InodeHeader) -> list[int]:
    """data_vdi_id entries of a (full) inode read."""
    return unpack_vids(raw[proto.SD_INODE_HEADER_SIZE:proto.SD_INODE_INDEX_END],
                       count_data_objs(inode))


# ---------------------------------------------------------------------------
# locks


def _records(client: Client, op: int, record) -> tuple[int, list]:
    """(result, records) of a request answered with fixed-size records, the
    buffer doubled from 512 records while the answer is BUFFER_SMALL."""
    rlen = 512 * record.SIZE
    while True:
        rsp, data = client.exec(Request(op, data_length=rlen))
        if rsp.result != CODES["BUFFER_SMALL"]:
            break
        rlen *= 2
    if rsp.result:
        return rsp.result, []
    return 0, [record.unpack(data, off) for off in range(0, len(data) - record.SIZE + 1,
                                                           record.SIZE)]


def get_vdi_state(client: Client) -> list[proto.VdiStateRecord]:
    result, records = _records(client, Op.GET_VDI_COPIES, proto.VdiStateRecord)
    if result != 0:
        raise CollieError(f"failed to execute SD_OP_GET_VDI_COPIES: "
                          f"{strerror(result)}", "Failed to get VDI state", code=EXIT_SYSFAIL)
    return records


#: a shared lock participant's state (GET_VDI_COPIES), as dog prints it
PARTICIPANT_STATES = {1: "(modified)", 2: "(shared)", 3: "(invalidated)"}


def get_locks(client: Client) -> list[proto.LockRecord] | None:
    """Every lock holder (GET_LOCKS, a pysheepdog extension); None from a 1.0 sheep."""
    result, records = _records(client, Op.GET_LOCKS, proto.LockRecord)
    if result == CODES["INVALID_PARMS"]:
        return None
    if result != 0:
        raise CollieError(f"failed to list locks: {strerror(result)}", code=EXIT_SYSFAIL)
    return records


#: a GET_LOCKS record's kind, by name
LOCK_KINDS = {proto.LOCK_KIND_EXCLUSIVE: "write", proto.LOCK_KIND_SHARED: "shared",
              proto.LOCK_KIND_READ: "read", proto.LOCK_KIND_STANDBY: "standby"}


# ---------------------------------------------------------------------------
# multi-disk (MD_INFO)

MD_MAX_DISK = 64
MD_DISK_SIZE = 4 + 4 + 8 + 8 + 4096
MD_NR_OFFSET = MD_MAX_DISK * MD_DISK_SIZE  # 263680
MD_INFO_SIZE = MD_NR_OFFSET + 8  # 263688


def unpack_md_info(buf: bytes) -> list[tuple[int, int, int, str]]:
    """(idx, free, used, path) of each disk in use."""
    buf = buf.ljust(MD_INFO_SIZE, b"\0")
    nr = struct.unpack_from("<i", buf, MD_NR_OFFSET)[0]
    disks = []
    for i in range(max(0, min(nr, MD_MAX_DISK))):
        off = i * MD_DISK_SIZE
        idx, free, used = struct.unpack_from("<i4xQQ", buf, off)
        path = proto.cstr(buf[off + 24:off + MD_DISK_SIZE])
        disks.append((idx, free, used, path))
    return disks


def pack_md_info(disks) -> bytes:
    """The reverse of :func:`unpack_md_info` (for tests and servers)."""
    out = bytearray(MD_INFO_SIZE)
    for i, (idx, free, used, path) in enumerate(disks):
        off = i * MD_DISK_SIZE
        struct.pack_into("<i4xQQ", out, off, idx, free, used)
        raw = path.encode()[:4095]
        out[off + 24:off + 24 + len(raw)] = raw
    struct.pack_into("<i", out, MD_NR_OFFSET, len(disks))
    return bytes(out)
