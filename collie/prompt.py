"""Asking the operator before a destructive command goes on (dog's prompts)."""

from __future__ import annotations

import sys

from collie.client import EXIT_SUCCESS, CollieError
from collie.output import Out

FORMAT_PRINT = ("    __\n"
                "   ()'`;\n"
                "   /\\|`\n"
                "  /  |   Caution! The cluster is not empty.\n"
                "(/_)_|_  Are you sure you want to continue? [yes/no]: ")


def confirm(out: Out, message: str) -> None:
    """Ask; anything but "yes" ends the command successfully (as dog)."""
    out.write(message)
    out.stdout.flush()
    answer = sys.stdin.readline()
    if not answer.strip().lower().startswith("yes"):
        raise CollieError(code=EXIT_SUCCESS)
