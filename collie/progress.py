"""Progress bars for long collie commands (one small wrapper over tqdm).

Guarantees:

* a bar is drawn only when **stderr is a terminal**, ``--no-progress``
  was not given and tqdm is installed; otherwise :func:`bar` returns an object whose methods do
  nothing and nothing at all is written;
* the bar goes to **stderr only**, so what a command prints on stdout (image
  data of ``vdi read``/``vdi backup``/``vdi export -``, the dog-compatible
  text of ``vdi check``) is byte-identical with or without a bar;
* lines a command prints while a bar is shown go through
  :meth:`Progress.write_mode`, which clears the bar first and redraws it
  afterwards, so the two do not garble each other on a terminal.

Redraws are rate-limited by tqdm (at most every ``mininterval`` seconds,
default :data:`MININTERVAL`); tqdm's own ``TQDM_MININTERVAL`` environment
variable overrides it (the tests set it to 0 to see every update).
"""

from __future__ import annotations

import contextlib
import os
import sys

MININTERVAL = 0.2


def add_option(parser) -> None:
    """Add ``--no-progress`` to a subcommand's parser."""
    parser.add_argument("--no-progress", action="store_true",
                        help="never show a progress bar (it is shown on stderr only "
                             "when stderr is a terminal)")


def wanted(args, stream=None) -> bool:
    """True when a bar should be drawn: stderr is a tty and no ``--no-progress``."""
    if getattr(args, "no_progress", False):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar, or nothing when disabled.  Use as a context manager."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "B",
                 enabled: bool = True, stream=None):
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # not installed: no bar (it is cosmetic), no crash
                return
            kw = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
            try:
                mininterval = float(os.environ.get("TQDM_MININTERVAL", MININTERVAL))
            except ValueError:
                mininterval = MININTERVAL
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=True,
                             file=stream if stream is not None else sys.stderr,
                             dynamic_ncols=True, mininterval=mininterval,
                             miniters=0, **kw)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc)

    def write_mode(self, stream=None):
        """Context manager around printing while the bar is shown."""
        if self._bar is None:
            return contextlib.nullcontext()
        from tqdm import tqdm
        return tqdm.external_write_mode(file=stream if stream is not None else sys.stdout)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(args, total: int | None, desc: str = "", unit: str = "B") -> Progress:
    """A :class:`Progress` for a command given its parsed ``args``."""
    return Progress(total, desc, unit, enabled=wanted(args))


NULL = Progress(None, enabled=False)
