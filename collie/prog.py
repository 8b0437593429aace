"""The name collie runs under: ``dog`` (Sheepdog 1.0's name, whose output and
defaults it then follows exactly) or ``collie``."""

from __future__ import annotations

import os
import sys


def prog_name() -> str:
    """``dog`` if the program was started as ``dog``, else ``collie``."""
    base = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "")
    return "dog" if base == "dog" else "collie"
