"""Arguments shared by the ``collie vdi`` commands: sizes and ``-s`` snapshots."""

from __future__ import annotations

from collie.client import EXIT_FAILURE, EXIT_USAGE, CollieError
from collie.output import SIZE_HINT, parse_size


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
