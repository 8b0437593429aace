"""Cluster records: config, epoch log, cluster info, VDI states, recovery and stat records (docs/protocol.md §16, §18)."""

from __future__ import annotations

from dataclasses import dataclass

from sheep.proto.constants import (
    CLUSTER_INFO_SIZE,
    LOCK_STATE_UNLOCKED,
    SD_NODE_SIZE,
    SD_SHEEP_PROTO_VER,
)
from sheep.proto.nodes import SdNode, pack_nodes, unpack_nodes
from sheep.proto.records import Z4, Record

# cluster records (docs/protocol.md §16, §18)


@dataclass(slots=True)
class SheepdogConfig(Record):
    """``sheepdog_config``: the 40-byte ``config`` file of a store (§16)."""

    FMT = "<QHB16sBBBHQ"
    ctime: int = 0
    flags: int = 0
    copies: int = 0
    default_store: bytes = b"\0" * 16
    shutdown: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    version: int = 6
    space: int = 0


@dataclass(slots=True)
class EpochLogHeader(Record):
    """Fixed 48-byte part of one STAT_CLUSTER ``epoch_log`` record (§18.2)."""

    FMT = "<QQIIBBB3sH16s"
    ctime: int = 0
    time: int = 0
    epoch: int = 0
    nr_nodes: int = 0
    disable_recovery: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    pad: bytes = b"\0\0\0"
    flags: int = 0
    drv_name: bytes = b"\0" * 16


def pack_epoch_log(hdr: EpochLogHeader, nodes, nodes_nr: int) -> bytes:
    """One epoch_log record with ``nodes_nr`` node slots (unused slots zero)."""
    body = pack_nodes(nodes)
    return hdr.pack() + body + b"\0" * (nodes_nr * SD_NODE_SIZE - len(body))


def unpack_epoch_logs(buf, nodes_nr: int) -> list[tuple[EpochLogHeader, list[SdNode]]]:
    """Decode a STAT_CLUSTER reply payload into (header, members) records."""
    size = EpochLogHeader.SIZE + nodes_nr * SD_NODE_SIZE
    out = []
    for off in range(0, len(buf) - size + 1, size):
        hdr = EpochLogHeader.unpack(buf, off)
        start = off + EpochLogHeader.SIZE
        out.append((hdr, unpack_nodes(buf[start:start + hdr.nr_nodes * SD_NODE_SIZE])))
    return out


@dataclass(slots=True)
class ClusterInfoHeader(Record):
    """Header of the 491 568-byte CLUSTER_INFO reply (§18.3)."""

    FMT = "<BBhIQHBBBB3s16s7s"
    proto_ver: int = SD_SHEEP_PROTO_VER
    disable_recovery: int = 0
    nr_nodes: int = 0
    epoch: int = 0
    ctime: int = 0
    flags: int = 0
    nr_copies: int = 0
    copy_policy: int = 0
    status: int = 0
    block_size_shift: int = 0
    pad0: bytes = b"\0" * 3
    default_store: bytes = b"\0" * 16
    pad1: bytes = b"\0" * 7


def pack_cluster_info(hdr: ClusterInfoHeader, nodes) -> bytes:
    body = pack_nodes(nodes)
    return hdr.pack() + body + b"\0" * (CLUSTER_INFO_SIZE - 48 - len(body))


def unpack_cluster_info(buf) -> tuple[ClusterInfoHeader, list[SdNode]]:
    hdr = ClusterInfoHeader.unpack(buf)
    return hdr, unpack_nodes(buf[48:48 + max(hdr.nr_nodes, 0) * SD_NODE_SIZE])


@dataclass(slots=True)
class VdiStateRecord(Record):
    """``vdi_state`` (1428 bytes): one GET_VDI_COPIES entry (§17.3)."""

    FMT = "<IBBBBB3sII40sI124s1240s"
    vid: int = 0
    nr_copies: int = 0
    snapshot: int = 0
    deleted: int = 0
    copy_policy: int = 0
    block_size_shift: int = 0
    pad: bytes = b"\0\0\0"
    parent_vid: int = 0
    lock_state: int = LOCK_STATE_UNLOCKED
    lock_owner: bytes = b"\0" * 40
    nr_participants: int = 0
    participants_state: bytes = b"\0" * 124
    participants: bytes = b"\0" * 1240


@dataclass(slots=True)
class RecoveryState(Record):
    FMT = "<B3siQQ"
    in_recovery: int = 0
    pad: bytes = b"\0\0\0"
    state: int = 0
    nr_finished: int = 0
    nr_total: int = 0


@dataclass(slots=True)
class RecoveryThrottling(Record):
    FMT = "<I4sQ?7s"
    max_exec_count: int = 0
    pad0: bytes = Z4
    queue_work_interval: int = 0
    throttling: bool = False
    pad1: bytes = b"\0" * 7


@dataclass(slots=True)
class SdStat(Record):
    FMT = "<15Q"
    gw_active: int = 0
    peer_active: int = 0
    gw_total: int = 0
    peer_total: int = 0
    gw_rx: int = 0
    gw_tx: int = 0
    peer_rx: int = 0
    peer_tx: int = 0
    gw_remove: int = 0
    gw_read: int = 0
    gw_write: int = 0
    gw_flush: int = 0
    peer_remove: int = 0
    peer_read: int = 0
    peer_write: int = 0
