"""Lock sessions and fencing: the pysheepdog extension of the header (docs/protocol.md §17)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sheep.proto.constants import SD_FLAG_CMD_SESSION
from sheep.proto.records import HashRsp, ObjArgs, Record, Request, VdiArgs, VdiRsp

# lock sessions and fencing (pysheepdog extension, sheep/vdi/locks.py)
#
# Sheepdog 1.0 never sets request flag 0x8000 (SD_FLAG_CMD_SESSION).  With it,
# bytes that 1.0 leaves unused carry a lock session and/or a fencing
# generation; without it every request means exactly what it means in 1.0.
#
# vdi variant, LOCK_VDI / RELEASE_VDI with SD_FLAG_CMD_SESSION:
#   @40 u64  session id (``unused`` in 1.0): random, non-zero, chosen by the
#            client; 0 = no session (owner is the gateway node, as in 1.0)
#   @16 u64  (``vdi_size``, unused by both ops in 1.0):
#            LOCK_VDI:    low u32 = mode (LOCK_MODE_*), high u32 = the
#                         generation held (LOCK_MODE_REATTACH only)
#            RELEASE_VDI: handover target session (0 = plain release; with
#                         session 0 too: forced unlock of every holder)
#   @36 u32  ``type`` keeps its 1.0 meaning (0 exclusive, 1 shared)
#   LOCK_MODE_RENEW (lease heartbeat) needs no payload; the others take the
#   1.0 name[+tag] payload and ``snapid`` as LOCK_VDI always does.
# vdi reply to such a LOCK_VDI (``pad``@34, zero from a 1.0 server):
#   @34 u16 status bits (LOCK_STATUS_*), @36 u32 generation granted (0: no
#   exclusive lock), @40 u32 lease grace in ms, @44 u32 lock count (how many locks the session has)
#   LOCK_MODE_RENEW with @24 u32 ``base_vdi_id`` = a vid and the generation
#   held in the high u32 of @16: the reply's status has LOCK_STATUS_HELD if
#   the session still holds that grant through this gateway.
# obj variant, WRITE_OBJ / CREATE_AND_WRITE_OBJ / READ_OBJ / DISCARD_OBJ with
# SD_FLAG_CMD_SESSION:
#   @44 u32  fencing generation (``__pad``; QEMU's upper offset half, always 0
#            in 1.0).  A non-zero generation that is not the VDI's current
#            exclusive grant (through this gateway) is refused with FENCED
#            (0x1B).
# peer writes (WRITE_PEER / CREATE_AND_WRITE_PEER) with SD_FLAG_CMD_SESSION:
#   @44 u32 the client's fencing generation, @24 u64 (``cow_oid``) 1 + the
#   index of the forwarding gateway in the epoch's node list; each replica
#   checks both under the object's lock.
# READ_PEER with SD_FLAG_CMD_RECOVERY: the reply's @24 u64 (``rsp.obj.offset``)
#   is the version of the copy sent; with WILDCARD and no buffer it is a
#   probe (sheep.cluster.fetch.probe_reply).
# GET_HASH with SD_FLAG_CMD_SESSION: the copy's version (set_hash_version).

LOCK_MODE_WRITE = 0       # exclusive (type 0) or 1.0 shared (type 1) lock
LOCK_MODE_READ = 1        # read-only open: refused while a writer holds the VDI
LOCK_MODE_INACTIVE = 2    # migration destination: registered, no lock, no I/O
LOCK_MODE_ACTIVATE = 3    # take the lock handed over to this session (or a free one)
LOCK_MODE_REATTACH = 4    # re-attach this session's lock of the given generation
LOCK_MODE_RENEW = 5       # lease heartbeat for the session (no payload)

LOCK_STATUS_SESSION = 0x1  # the server understood SD_FLAG_CMD_SESSION
LOCK_STATUS_ENFORCED = 0x2  # the cluster enforces locks (SD_CLUSTER_FLAG_USE_LOCK)
# reply to a RENEW naming a VDI (``base_vdi_id``) and a generation: this
# session holds that VDI's exclusive grant of that generation through this
# gateway, as this gateway (in the primary view) knows it now
LOCK_STATUS_HELD = 0x4
# GET_VDI_INFO reply (any request, flagged or not): somebody holds the VDI open
# (a writer, shared or read lock; a standby is no open); @44 u32 lock count = how
# many.  Zero (1.0's reply) when nobody does.  collie refuses to delete it.
LOCK_STATUS_IN_USE = 0x8

_U64 = struct.Struct("<Q")
_SESSION_RSP = struct.Struct("<HIII")


def set_lock_session(args: "VdiArgs", session: int, mode: int = 0, generation: int = 0) -> None:
    """Fill the session bytes of a LOCK_VDI request (send with SD_FLAG_CMD_SESSION)."""
    args.unused = _U64.pack(session)
    args.vdi_size = (mode & 0xFFFFFFFF) | (generation & 0xFFFFFFFF) << 32


def set_release_session(args: "VdiArgs", session: int, handover_to: int = 0) -> None:
    """Fill the session bytes of a RELEASE_VDI request (send with SD_FLAG_CMD_SESSION)."""
    args.unused = _U64.pack(session)
    args.vdi_size = handover_to


def lock_session(args: "VdiArgs") -> tuple[int, int, int]:
    """(session, mode, generation) of a flagged LOCK_VDI request."""
    return _U64.unpack(args.unused)[0], args.vdi_size & 0xFFFFFFFF, args.vdi_size >> 32


def release_session(args: "VdiArgs") -> tuple[int, int]:
    """(session, handover target) of a flagged RELEASE_VDI request."""
    return _U64.unpack(args.unused)[0], args.vdi_size


def set_session_reply(rsp: "VdiRsp", status: int, generation: int = 0, lease_ms: int = 0,
                      lock_count: int = 0) -> None:
    rsp.pad = _SESSION_RSP.pack(status, generation, lease_ms, lock_count)


def session_reply(rsp: "VdiRsp") -> tuple[int, int, int, int]:
    """(status bits, generation, lease grace ms, lock count) of a LOCK_VDI reply."""
    return _SESSION_RSP.unpack(rsp.pad)


def set_fence(args: "ObjArgs", generation: int) -> None:
    """Fencing generation of a WRITE_OBJ/CREATE_AND_WRITE_OBJ (with SD_FLAG_CMD_SESSION)."""
    args.pad = generation


def set_hash_version(rsp: "HashRsp", version: int) -> None:
    """GET_HASH with SD_FLAG_CMD_SESSION: the copy's version in the padding
    (@20 u32 epoch part, @44 u32 sequence part; zero from a 1.0 server)."""
    rsp.pad0 = (version >> 32).to_bytes(4, "little")
    rsp.pad1 = (version & 0xFFFFFFFF).to_bytes(4, "little")


def hash_version(rsp: "HashRsp") -> int:
    return int.from_bytes(rsp.pad0, "little") << 32 | int.from_bytes(rsp.pad1, "little")


def fence_of(req: "Request") -> int:
    """The fencing generation a write carries (0: none)."""
    if not req.flags & SD_FLAG_CMD_SESSION or not isinstance(req.args, ObjArgs):
        return 0
    return req.args.pad


LOCK_KIND_EXCLUSIVE = 1
LOCK_KIND_SHARED = 2
LOCK_KIND_READ = 3
LOCK_KIND_STANDBY = 4


@dataclass(slots=True)
class LockRecord(Record):
    """One lock holder in the GET_LOCKS (0xD0, extension) reply, 72 bytes."""

    FMT = "<IB3sQIIQ40s"
    vid: int = 0
    kind: int = 0  # LOCK_KIND_*
    pad: bytes = b"\0\0\0"
    session: int = 0
    generation: int = 0
    reserved: int = 0
    since: int = 0  # UNIX seconds of the grant
    owner: bytes = b"\0" * 40  # node_id of the gateway the holder uses
