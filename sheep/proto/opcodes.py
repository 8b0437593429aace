"""Opcodes and the protocol version each one is sent with (docs/protocol.md §7)."""

from __future__ import annotations

from enum import IntEnum

from sheep.proto.constants import SD_PROTO_VER, SD_SHEEP_PROTO_VER


class Op(IntEnum):
    """Opcodes (docs/protocol.md §7.2, §7.3)."""

    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    GET_NODE_LIST = 0x82
    MAKE_FS = 0x84
    SHUTDOWN = 0x85
    STAT_SHEEP = 0x86
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    FORCE_RECOVER = 0x8A
    GET_STORE_LIST = 0x90
    SNAPSHOT = 0x91
    RESTORE = 0x92
    GET_SNAP_FILE = 0x93
    CLEANUP = 0x94
    TRACE_STATUS = 0x95
    TRACE_READ_BUF = 0x96
    STAT_RECOVERY = 0x97
    FLUSH_DEL_CACHE = 0x98
    NOTIFY_VDI_DEL = 0x99
    KILL_NODE = 0x9A
    TRACE_ENABLE = 0x9B
    TRACE_DISABLE = 0x9C
    GET_OBJ_LIST = 0xA1
    GET_EPOCH = 0xA2
    CREATE_AND_WRITE_PEER = 0xA3
    READ_PEER = 0xA4
    WRITE_PEER = 0xA5
    REMOVE_PEER = 0xA6
    ENABLE_RECOVER = 0xA8
    DISABLE_RECOVER = 0xA9
    GET_VDI_COPIES = 0xAB
    COMPLETE_RECOVERY = 0xAC
    FLUSH_NODES = 0xAD
    FLUSH_PEER = 0xAE
    NOTIFY_VDI_ADD = 0xAF
    DELETE_CACHE = 0xB0
    MD_INFO = 0xB1
    MD_PLUG = 0xB2
    MD_UNPLUG = 0xB3
    GET_HASH = 0xB4
    REWEIGHT = 0xB5
    GET_CACHE_INFO = 0xB6
    CACHE_PURGE = 0xB7
    STAT = 0xB8
    GET_LOGLEVEL = 0xB9
    SET_LOGLEVEL = 0xBA
    NFS_CREATE = 0xBB
    NFS_DELETE = 0xBC
    EXIST = 0xBD
    CLUSTER_INFO = 0xBE
    ALTER_CLUSTER_COPY = 0xBF
    ALTER_VDI_COPY = 0xC0
    DECREF_OBJ = 0xC1
    DECREF_PEER = 0xC2
    PREVENT_INODE_UPDATE = 0xC3
    ALLOW_INODE_UPDATE = 0xC4
    REPAIR_REPLICA = 0xC5
    OIDS_EXIST = 0xC6
    VDI_STATE_CHECKPOINT_CTL = 0xC7
    INODE_COHERENCE = 0xC8
    READ_DEL_VDIS = 0xC9
    GET_RECOVERY = 0xCA
    SET_RECOVERY = 0xCB
    SET_VNODES = 0xCC
    GET_VNODES = 0xCD
    # pysheepdog extension: every lock holder (session, generation, age)
    GET_LOCKS = 0xD0


def proto_ver_for(opcode: int) -> int:
    """The version dog sends: 0x0A for internal opcodes (>= 0x80), else 0x02."""
    return SD_SHEEP_PROTO_VER if opcode >= 0x80 else SD_PROTO_VER


def version_ok(opcode: int, proto_ver: int) -> bool:
    """Admission rule 1 of docs/protocol.md §4."""
    if opcode >= 0x80:
        return proto_ver == SD_SHEEP_PROTO_VER
    return proto_ver <= SD_PROTO_VER
