"""Command-line argument parsers shared by the commands: sizes, ``-s``
snapshots, ``-c`` redundancy, ``-z`` object size shifts and ``-i`` indexes."""

from __future__ import annotations

from collie.client import EXIT_FAILURE, EXIT_USAGE, CollieError
from collie.output import SIZE_HINT, parse_size
from sheep import proto


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise CollieError(str(e), SIZE_HINT, code=EXIT_USAGE) from None


def snapshot_arg(text: str | None) -> tuple[int, str]:
    """``-s``: a positive integer is a snapshot id, anything else a tag."""
    if text is None:
        return 0, ""
    try:
        snapid = int(text, 10)
    except ValueError:
        return 0, text
    if snapid <= 0:
        raise CollieError("The snapshot id must be larger than zero", code=EXIT_FAILURE)
    return snapid, ""


def parse_copy(text: str) -> tuple[int, int]:
    """``-c``: "N" replicas or "D:P" erasure code -> (copies, copy_policy)."""
    if ":" in text:
        d_s, p_s = text.split(":", 1)
        try:
            d, p = int(d_s), int(p_s)
        except ValueError:
            d = p = -1
        if d not in (2, 4, 8, 16) or not 1 <= p <= 15 or p >= d:
            raise CollieError("Invalid redundancy level " + text,
                              "Only 2, 4, 8, 16 data strips and 1 to 15 parity "
                              "strips (less than data) are supported",
                              code=EXIT_USAGE)
        return d + p, (d // 2) << 4 | p
    try:
        copies = int(text)
    except ValueError:
        copies = -1
    if not 1 <= copies <= proto.SD_MAX_COPIES:
        raise CollieError(f"Invalid copies number, must be an integer between "
                          f"1 and {proto.SD_MAX_COPIES}", code=EXIT_USAGE)
    return copies, 0


def parse_shift(text: str) -> int:
    try:
        shift = int(text)
    except ValueError:
        shift = -1
    if not 20 <= shift <= 31:
        raise CollieError("Object Size is limited to 2^20 ~ 2^31", code=EXIT_USAGE)
    return shift


def redundancy(copies: int, policy: int) -> str:
    """The reverse of :func:`parse_copy`: "N" or "D:P", as ``-c`` takes it."""
    if policy:
        return f"{(policy >> 4) * 2}:{policy & 0xF}"
    return str(copies)


NO_INDEX = None


def parse_index(text: str | None):
    """``-i``: a decimal or 0x-prefixed hexadecimal index, NO_INDEX without one."""
    if text is None:
        return NO_INDEX
    try:
        return int(text, 16) if text.startswith("0x") else int(text, 10)
    except ValueError:
        raise CollieError("The index must be a decimal integer or a hexadecimal "
                          "integer started with 0x", code=EXIT_FAILURE) from None
