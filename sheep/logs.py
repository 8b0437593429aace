"""The daemon's log: format, destination and reopening (``sheep -l ...``).

Options keep Sheepdog 1.0's ``-l`` syntax (``dir=``, ``level=``, ``format=``,
``dst=``); ``addr=PATH`` (ours) names the syslog socket.

Formats (every line carries the year, milliseconds and the pid):

* ``default``: ``2026-12-02 04:59:01.123 sheep[1234] INFO [sheep.ops] message``
* ``server``: the same with the function and line before the message, as
  1.0's server format has them: ``... INFO [sheep.ops] dispatch(545) message``
* ``json``: one JSON object per line: ``time`` (ISO 8601, local time with
  its offset, milliseconds), ``pid``, ``level``, ``logger``, ``func``,
  ``line``, ``msg`` and, for an exception, ``exc`` (the traceback) — a
  traceback never breaks the one-object-per-line rule.

Destinations: ``default`` is ``DIR/sheep.log`` (plus stderr with ``-f``);
``stdout`` (with ``-f`` only); ``syslog`` sends each record as one datagram
to the unix socket ``addr`` (default ``/dev/log``), facility daemon, ident
``sheep[PID]``; the text formats then leave the time to syslog.  The socket
must accept a connection at start-up (else the daemon does not start); if
the syslog daemon goes away later, records are dropped until it is back
(the handler reconnects on each record) — the daemon never blocks on it.

:func:`reopen` (SIGHUP) closes and reopens the log file by name, so that a
rotated file (renamed by logrotate) is left alone and new lines go to a new
file at the configured path; no line is lost or split across the two.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import socket
import sys
import time

from sheep.daemon import LEVELS

_HANDLERS: list[logging.Handler] = []  # this process's handlers (reopen())


def _stamp(created: float) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` in local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) + \
        ".%03d" % (int(created * 1000) % 1000)


class TextFormatter(logging.Formatter):
    """``default`` and ``server`` formats (see the module docstring)."""

    def __init__(self, server: bool = False, with_time: bool = True):
        super().__init__()
        self.server, self.with_time = server, with_time

    def format(self, record: logging.LogRecord) -> str:
        where = f"{record.funcName}({record.lineno}) " if self.server else ""
        line = f"{record.levelname} [{record.name}] {where}{record.getMessage()}"
        if self.with_time:
            line = f"{_stamp(record.created)} sheep[{record.process}] {line}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """``json`` format: one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.datetime.fromtimestamp(record.created).astimezone()
        out = {"time": t.isoformat(timespec="milliseconds"), "pid": record.process,
               "level": record.levelname, "logger": record.name, "func": record.funcName,
               "line": record.lineno, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class ReopenableFileHandler(logging.FileHandler):
    """A log file that :meth:`reopen` closes and opens again by its path."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def formatter(cfg, syslog: bool = False) -> logging.Formatter:
    if cfg.log_format == "json":
        return JsonFormatter()
    return TextFormatter(server=cfg.log_format == "server", with_time=not syslog)


def setup(cfg, to_stderr: bool) -> None:
    """Install the handlers ``cfg`` asks for on the root logger; raises
    OSError (with the path in its message) if the destination is unusable."""
    handlers: list[logging.Handler] = []
    if cfg.log_dst == "syslog":
        try:  # SysLogHandler ignores a socket it cannot reach: check it first
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(cfg.syslog_addr)
            h = logging.handlers.SysLogHandler(
                address=cfg.syslog_addr, facility=logging.handlers.SysLogHandler.LOG_DAEMON,
                socktype=socket.SOCK_DGRAM)
        except OSError as e:
            raise OSError(e.errno, f"cannot use the syslog socket {cfg.syslog_addr}: "
                                   f"{e.strerror or e}") from e
        h.ident = f"sheep[{os.getpid()}]: "
        h.setFormatter(formatter(cfg, syslog=True))
        handlers.append(h)
    elif cfg.log_dst == "stdout":
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(formatter(cfg))
        handlers.append(h)
    else:
        try:
            os.makedirs(os.path.dirname(cfg.log_path), exist_ok=True)
            h = ReopenableFileHandler(cfg.log_path)
        except OSError as e:
            raise OSError(e.errno, f"cannot open the log file {cfg.log_path}: "
                                   f"{e.strerror or e}") from e
        h.setFormatter(formatter(cfg))
        handlers.append(h)
        if to_stderr:
            sh = logging.StreamHandler()
            sh.setFormatter(formatter(cfg))
            handlers.append(sh)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for h in handlers:
        root.addHandler(h)
    _HANDLERS[:] = handlers
    root.setLevel(LEVELS[cfg.log_level])


def reopen() -> None:
    """SIGHUP: reopen the log file (see the module docstring)."""
    for h in _HANDLERS:
        if isinstance(h, ReopenableFileHandler):
            try:
                h.reopen()
            except OSError as e:  # keep logging to wherever we can
                logging.getLogger("sheep").error("cannot reopen the log file: %s", e)
                continue
    logging.getLogger("sheep").info("SIGHUP: log reopened")
