"""Output helpers for collie: dog-compatible number/time formatting.

Everything printed by a collie command goes through :class:`Out`, which holds
the output streams and the global ``raw`` flag, so commands never touch
``sys.stdout`` directly (tests and the JSON mode rely on that).
"""

from __future__ import annotations

import json
import re
import sys
import time

_UNITS = ("MB", "GB", "TB", "PB", "EB", "ZB", "YB")

TEXT_BOLD = "\033[1m"
TEXT_NORMAL = "\033[0m"


def _c_round(x: float, decimals: int) -> str:
    """printf("%.Nf") formatting (round-half-even on the binary value)."""
    return f"{x:.{decimals}f}"


def size_to_str(size: int, raw: bool = False) -> str:
    """dog's ``strnumber``: "100 MB", "8.0 MB", "0.0 MB", "79 GB"; raw: bytes."""
    if raw:
        return str(int(size))
    value = float(size) / (1024 * 1024)
    i = 0
    while i < len(_UNITS) - 1 and value >= 1024:
        i += 1
        value /= 1024
    if value >= 10:
        return f"{_c_round(value, 0)} {_UNITS[i]}"
    return f"{_c_round(value, 1)} {_UNITS[i]}"


_NUM_RE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(.*)$", re.S)


def parse_size(text: str) -> int:
    """dog's ``option_parse_size``: float with optional k/K/M/G/T/b suffix.

    Raises ValueError with dog's message on a bad suffix.
    """
    m = _NUM_RE.match(text)
    if not m:
        raise ValueError(f"Invalid size '{text}'")
    value, suffix = float(m.group(1)), m.group(2)
    mult = {"": 1, "b": 1, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20,
            "G": 1 << 30, "T": 1 << 40}
    if suffix not in mult or value < 0:
        raise ValueError(f"Invalid size '{text}'")
    return int(value * mult[suffix])


SIZE_HINT = ("You may use k, M, G or T suffixes for kilobytes, megabytes, "
             "gigabytes and terabytes.")


def sd_seconds(t: int) -> int:
    """UNIX seconds of a sheepdog time value (sec << 32 | nsec)."""
    return t >> 32


def strftime_local(fmt: str, seconds: int) -> str:
    return time.strftime(fmt, time.localtime(seconds))


def ctime_str(seconds: int) -> str:
    """C ``ctime()`` text without the trailing newline."""
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(seconds))


class Out:
    """Output sink shared by all commands of one invocation."""

    def __init__(self, raw: bool = False, stdout=None, stderr=None):
        self.raw = raw
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr

    def write(self, text: str) -> None:
        self.stdout.write(text)

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def err(self, text: str) -> None:
        self.stdout.flush()
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def write_bytes(self, data: bytes) -> None:
        self.stdout.flush()
        buf = getattr(self.stdout, "buffer", None)
        if buf is not None:
            buf.write(data)
            buf.flush()
        else:  # a text-only stream (e.g. io.StringIO): best effort
            self.stdout.write(data.decode("latin-1"))

    def json(self, obj) -> None:
        self.line(json.dumps(obj, indent=2, sort_keys=False))

    def size(self, n: int) -> str:
        return size_to_str(n, self.raw)

    def isatty(self) -> bool:
        try:
            return self.stdout.isatty()
        except (AttributeError, ValueError):
            return False


#: the ``--json`` option's help text (every listing and status command has one)
JSON_HELP = "machine-readable output (JSON, see docs/json-output.md)"
