"""The NBD wire format (fixed newstyle): bytes in, records out, no I/O.

Everything the export sends or checks on the wire is here, as pure
functions of bytes and numbers, so that it can be tested byte for byte:

* the handshake, client flags and option headers (``NBD_OPT_*``) with the
  option replies (``NBD_REP_*``, including the ``NBD_REP_ERR_*`` codes);
* export names and the ``NBD_OPT_INFO`` / ``NBD_OPT_GO`` request lists, with
  the ``NBD_INFO_*`` replies we give (export, name, description, block size);
* structured replies (``NBD_OPT_STRUCTURED_REPLY``: reads as one
  ``OFFSET_DATA`` chunk, errors as ``ERROR`` chunks) and the one metadata
  context, ``base:allocation`` (``NBD_OPT_LIST/SET_META_CONTEXT``,
  ``NBD_CMD_BLOCK_STATUS``: a hole is an object the VDI's index does not
  point to);
* transmission requests and simple replies, the transmission flags we
  advertise, and which request is refused with which errno before any I/O.

Limits: names up to ``MAX_NAME`` bytes, options up to ``MAX_OPTION`` bytes,
reads and writes up to ``MAX_REQUEST`` bytes.  A violation after which the
stream cannot be trusted raises :class:`ProtocolViolation` (the connection
is closed); an option the server answers with an error reply raises
:class:`Refused` (the negotiation goes on).  Values are those of the NBD
protocol document (``doc/proto.md`` of the NBD project).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sheep.proto.errors import CODES, SdError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2  # handshake flags (and client flags)

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_SHUTDOWN = 0x80000007

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1, 2, 4, 8
TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF, TF_CAN_MULTI_CONN = 32, 64, 128, 256

(CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES,
 CMD_BLOCK_STATUS) = range(8)
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE = 1, 2, 4, 8

STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS = 0, 1, 5
REPLY_TYPE_ERROR = 1 << 15 | 1
STATE_HOLE, STATE_ZERO = 1, 2
BASE_ALLOCATION = "base:allocation"
BASE_ALLOCATION_ID = 1  # the context id we give it
MAX_EXTENTS = 1 << 16  # descriptors in one BLOCK_STATUS reply (the rest: ask again)

EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108

MAX_REQUEST = 32 << 20  # largest read/write (QEMU's NBD_MAX_BUFFER_SIZE)
MAX_OPTION = 64 << 10  # option data we read at all (names are <= 4096 bytes)
MAX_NAME = 4096
MIN_BLOCK, PREFERRED_BLOCK = 1, 4096

_OPT_HDR = struct.Struct(">QII")
_REP_HDR = struct.Struct(">QIII")
_REQ = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")

OPTION_HEADER_SIZE = _OPT_HDR.size  # 16
REQUEST_SIZE = _REQ.size  # 28
CLIENT_FLAGS_SIZE = 4

#: the flags a command may carry (anything else: EINVAL); CACHE, RESIZE and
#: unknown commands are not advertised (DF: with structured replies only)
_ALLOWED_FLAGS = {CMD_READ: CMD_FLAG_FUA | CMD_FLAG_DF, CMD_WRITE: CMD_FLAG_FUA,
                  CMD_FLUSH: CMD_FLAG_FUA, CMD_TRIM: CMD_FLAG_FUA,
                  CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
                  CMD_BLOCK_STATUS: CMD_FLAG_REQ_ONE | CMD_FLAG_FUA}


class ProtocolViolation(Exception):
    """The client broke the protocol; the connection must be closed."""


class Refused(Exception):
    """An option is answered with an ``NBD_REP_ERR_*`` (code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# ---- negotiation -----------------------------------------------------------

def handshake() -> bytes:
    """The server's greeting: magic, IHAVEOPT, fixed newstyle + no zeroes."""
    return NBDMAGIC + _U64.pack(IHAVEOPT) + _U16.pack(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def client_flags(raw: bytes) -> bool:
    """The client's 4 flag bytes; True if it asked for no zeroes after
    NBD_OPT_EXPORT_NAME.  Unknown flags are a violation."""
    flags = _U32.unpack(raw)[0]
    if flags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
        raise ProtocolViolation(f"unknown client flags {flags:#x}")
    return bool(flags & FLAG_NO_ZEROES)


def option_header(raw: bytes) -> tuple[int, int]:
    """(option, data length) of a 16-byte option header."""
    magic, opt, length = _OPT_HDR.unpack(raw)
    if magic != IHAVEOPT:
        raise ProtocolViolation(f"bad option magic {magic:#x}")
    if length > MAX_OPTION:
        raise ProtocolViolation(f"option {opt} of {length} bytes")
    return opt, length


def option_reply(opt: int, rtype: int, data: bytes = b"") -> bytes:
    """One option reply (``NBD_REP_*``) carrying ``data``."""
    return _REP_HDR.pack(REP_MAGIC, opt, rtype, len(data)) + data


def export_name(raw: bytes) -> str:
    """An export name as the client sent it: UTF-8, no NUL, ``MAX_NAME`` bytes at most."""
    if len(raw) > MAX_NAME or b"\0" in raw:
        raise Refused(REP_ERR_INVALID, "export name is too long or contains NUL")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise Refused(REP_ERR_INVALID, "export name is not UTF-8") from None


def _named(data: bytes, after: int, what: str) -> tuple[str, int]:
    """(export name, offset past it) of option data that starts with a u32
    name length and the name, followed by at least ``after`` more bytes."""
    if len(data) < 4 + after:
        raise Refused(REP_ERR_INVALID, f"{what} data too short")
    nlen = _U32.unpack_from(data)[0]
    if 4 + nlen + after > len(data):
        raise Refused(REP_ERR_INVALID, "export name runs past the option data")
    return export_name(data[4:4 + nlen]), 4 + nlen


def info_request(data: bytes) -> tuple[str, set[int]]:
    """(export name, requested ``NBD_INFO_*`` types) of NBD_OPT_INFO / NBD_OPT_GO data."""
    name, pos = _named(data, 2, "NBD_OPT_INFO/GO")
    nlen = pos - 4
    nreq = _U16.unpack_from(data, 4 + nlen)[0]
    if 4 + nlen + 2 + 2 * nreq != len(data):
        raise Refused(REP_ERR_INVALID, "bad information request list")
    return name, set(struct.unpack_from(f">{nreq}H", data, 6 + nlen))


def list_reply(name: str) -> bytes:
    """The NBD_REP_SERVER reply of NBD_OPT_LIST for one export."""
    b = name.encode()
    return option_reply(OPT_LIST, REP_SERVER, _U32.pack(len(b)) + b)


def info_replies(opt: int, name: str, size: int, tflags: int, description: str,
                 requested: set[int]) -> bytes:
    """The replies to NBD_OPT_INFO / NBD_OPT_GO, ending with NBD_REP_ACK:
    always the export (size, flags) and the block sizes (1, 4096,
    ``MAX_REQUEST``); the name and the description when asked for."""
    out = [option_reply(opt, REP_INFO, _U16.pack(INFO_EXPORT) + _U64.pack(size)
                        + _U16.pack(tflags))]
    if INFO_NAME in requested:
        out.append(option_reply(opt, REP_INFO, _U16.pack(INFO_NAME) + name.encode()))
    if INFO_DESCRIPTION in requested:
        out.append(option_reply(opt, REP_INFO, _U16.pack(INFO_DESCRIPTION)
                                + description.encode()[:MAX_NAME]))
    out.append(option_reply(opt, REP_INFO, _U16.pack(INFO_BLOCK_SIZE)
                            + struct.pack(">III", MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST)))
    out.append(option_reply(opt, REP_ACK))
    return b"".join(out)


def export_name_reply(size: int, tflags: int, no_zeroes: bool) -> bytes:
    """What follows an accepted NBD_OPT_EXPORT_NAME: size, flags, 124 zeroes
    unless the client asked for none."""
    return _U64.pack(size) + _U16.pack(tflags) + (b"" if no_zeroes else bytes(124))


def transmission_flags(readonly: bool, structured: bool = False) -> int:
    """The flags we advertise: FLUSH always; DF once structured replies are
    on (a read is always one chunk); FUA, TRIM and WRITE_ZEROES for writable
    exports; MULTI_CONN for read-only ones (a snapshot never changes, so
    every connection sees the same data; a writable VDI has one writer)."""
    f = TF_HAS_FLAGS | TF_SEND_FLUSH | (TF_SEND_DF if structured else 0)
    if readonly:
        return f | TF_READ_ONLY | TF_CAN_MULTI_CONN
    return f | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES


# ---- metadata contexts -------------------------------------------------------

def meta_context_request(data: bytes) -> tuple[str, list[str]]:
    """(export name, queries) of NBD_OPT_LIST/SET_META_CONTEXT data."""
    name, pos = _named(data, 4, "meta context")
    count = _U32.unpack_from(data, pos)[0]
    pos += 4
    queries = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise Refused(REP_ERR_INVALID, "meta context query list runs past the data")
        qlen = _U32.unpack_from(data, pos)[0]
        pos += 4
        if pos + qlen > len(data) or qlen > MAX_NAME:
            raise Refused(REP_ERR_INVALID, "meta context query runs past the data")
        try:
            queries.append(data[pos:pos + qlen].decode())
        except UnicodeDecodeError:
            raise Refused(REP_ERR_INVALID, "meta context query is not UTF-8") from None
        pos += qlen
    if pos != len(data):
        raise Refused(REP_ERR_INVALID, "trailing bytes after the meta context queries")
    return name, queries


def meta_contexts(opt: int, queries: list[str]) -> list[str]:
    """The contexts (of ours: ``base:allocation``) the queries select.
    LIST: no query lists everything, ``base:`` every base context; SET:
    only the exact name selects it."""
    if opt == OPT_LIST_META_CONTEXT and not queries:
        return [BASE_ALLOCATION]
    for q in queries:
        if q == BASE_ALLOCATION or (opt == OPT_LIST_META_CONTEXT and q == "base:"):
            return [BASE_ALLOCATION]
    return []


def meta_context_replies(opt: int, contexts: list[str]) -> bytes:
    """One NBD_REP_META_CONTEXT per context (id 0 when listing), then ACK."""
    cid = 0 if opt == OPT_LIST_META_CONTEXT else BASE_ALLOCATION_ID
    return b"".join(option_reply(opt, REP_META_CONTEXT, _U32.pack(cid) + c.encode())
                    for c in contexts) + option_reply(opt, REP_ACK)


# ---- transmission ----------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One transmission request (the 28-byte header; a write's data follows it)."""

    flags: int
    cmd: int
    handle: int
    offset: int
    length: int


def request(raw: bytes) -> Request:
    """The request of a 28-byte header; a bad magic is a violation."""
    magic, flags, cmd, handle, offset, length = _REQ.unpack(raw)
    if magic != REQUEST_MAGIC:
        raise ProtocolViolation(f"bad request magic {magic:#x}")
    return Request(flags, cmd, handle, offset, length)


def simple_reply(err: int, handle: int) -> bytes:
    """A simple reply header (a read's data follows it when ``err`` is 0)."""
    return _REPLY.pack(SIMPLE_REPLY_MAGIC, err, handle)


def request_errno(req: Request, size: int, readonly: bool, structured: bool = False,
                  block_status: bool = False) -> int:
    """The errno ``req`` is refused with before any I/O on an export of
    ``size`` bytes, or 0: EINVAL for commands and flags we do not advertise
    (DF without structured replies, BLOCK_STATUS without ``base:allocation``
    selected, or of no bytes) and reads past the end, EPERM for changes of a
    read-only export, EOVERFLOW for reads over ``MAX_REQUEST``, ENOSPC for
    writes past the end."""
    allowed = _ALLOWED_FLAGS.get(req.cmd)
    if allowed is None or req.flags & ~allowed:
        return EINVAL
    if req.flags & CMD_FLAG_DF and not structured:
        return EINVAL
    if req.cmd == CMD_FLUSH:
        return 0
    if req.cmd == CMD_BLOCK_STATUS:
        if not block_status or not req.length or req.offset + req.length > size:
            return EINVAL
        return 0
    if req.cmd != CMD_READ and readonly:
        return EPERM
    if req.cmd == CMD_READ and req.length > MAX_REQUEST:
        return EOVERFLOW
    if req.offset + req.length > size:
        return ENOSPC if req.cmd in (CMD_WRITE, CMD_WRITE_ZEROES) else EINVAL
    return 0


def structured_read(handle: int, offset: int, length: int) -> bytes:
    """The header of a read's one and final chunk (``OFFSET_DATA``); the
    ``length`` bytes of data follow it."""
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, handle,
                       8 + length) + _U64.pack(offset)


def structured_done(handle: int) -> bytes:
    """A final ``NONE`` chunk: the reply of a zero-length read (an
    ``OFFSET_DATA`` chunk must carry at least one byte)."""
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, 0)


def structured_error(handle: int, err: int, message: str = "") -> bytes:
    """A final ``ERROR`` chunk: the errno and a message for a human (cut to
    ``MAX_NAME`` bytes on a character boundary: it stays UTF-8)."""
    msg = message.encode()[:MAX_NAME].decode(errors="ignore").encode()
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, handle,
                       6 + len(msg)) + _U32.pack(err) + _U16.pack(len(msg)) + msg


def block_status_reply(handle: int, extents: list[tuple[int, int]]) -> bytes:
    """The final ``BLOCK_STATUS`` chunk of ``base:allocation``: (length, flags)
    descriptors."""
    body = _U32.pack(BASE_ALLOCATION_ID) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle,
                       len(body)) + body


def allocation(index, object_size: int, offset: int, length: int,
               one: bool = False) -> list[tuple[int, int]]:
    """``base:allocation`` of ``length`` bytes at ``offset`` of a VDI whose
    objects of ``object_size`` bytes are ``index`` (its ``data_vdi_id``
    entries: 0 is an object never written, which reads as zeros: HOLE|ZERO;
    anything else is data, the VDI's own or a parent's).  Adjacent objects
    of the same kind make one extent; the extents cover the range exactly
    (``one``: only the first; at most ``MAX_EXTENTS``)."""
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + length
    while pos < end and len(out) < MAX_EXTENTS:
        idx = pos // object_size
        flags = 0 if idx < len(index) and index[idx] else STATE_HOLE | STATE_ZERO
        stop = (idx + 1) * object_size
        while stop < end:
            nxt = stop // object_size
            if (0 if nxt < len(index) and index[nxt] else STATE_HOLE | STATE_ZERO) != flags:
                break
            stop += object_size
        stop = min(stop, end)
        out.append((stop - pos, flags))
        if one:
            break
        pos = stop
    return out


def errno_for(e: BaseException) -> int:
    """The errno a failed request is answered with (EIO unless the cluster's
    answer says better: READONLY → EPERM, INVALID_PARMS → EINVAL, NO_SPACE →
    ENOSPC, SHUTDOWN/KILLED → ESHUTDOWN)."""
    if isinstance(e, SdError):
        if e.code == CODES["READONLY"]:
            return EPERM
        if e.code == CODES["INVALID_PARMS"]:
            return EINVAL
        if e.code == CODES["NO_SPACE"]:
            return ENOSPC
        if e.code in (CODES["SHUTDOWN"], CODES["KILLED"]):
            return ESHUTDOWN
    return EIO


# ---- export names ----------------------------------------------------------

def parse_export(export: str) -> list[tuple[str, str | int | None]]:
    """Candidate (VDI name, snapshot) readings of an export name, best first.

    ``name@N`` (N digits) is snapshot id N and ``name:tag`` the snapshot
    tagged ``tag``; since a VDI name may itself contain ``:`` or ``@``, the
    whole string as a working VDI name is always the last candidate."""
    out: list[tuple[str, str | int | None]] = []
    name, at, sid = export.rpartition("@")
    if at and name and sid.isdigit() and int(sid) > 0:
        out.append((name, int(sid)))
    name, colon, tag = export.partition(":")
    if colon and name and tag:
        out.append((name, tag))
    out.append((export, None))
    return out


def export_label(name: str, tag: str, snap_id: int, is_snapshot: bool) -> str:
    """The export name NBD_OPT_LIST shows for a VDI: its name, or for a
    snapshot ``name:tag`` (``name@snapid`` when untagged)."""
    if not is_snapshot:
        return name
    return f"{name}:{tag}" if tag else f"{name}@{snap_id}"
