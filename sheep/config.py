"""Command line of the ``sheep`` daemon → a validated :class:`Config`.

Options follow Sheepdog 1.0's ``sheep`` (same letters, same meaning).  Invalid
values raise :class:`ConfigError` with the message to print; nothing here
touches the disk or the network.

Error messages of the options 1.0 has are 1.0's own words (``sheep/sheep.c``,
``lib/net.c``): ``Invalid port number '0'``, ``Invalid zone id 'a': must be an
integer between 0 and 4294967295``, ``Invalid number of vnodes '0': must be
an integer between 1 and 65535``, ``Options '-g' and '-V' can not be both
specified`` (in either order), ``Invalid address: 'x'`` (-y), ``Bad address
'x'`` (-b), ``Invalid cluster driver 'x'``, ``Invalid log level 'x'``.  As in
1.0, numbers are decimal (``str_to_u16``/``str_to_u32``); an unknown option
or a missing value ends with ``Try 'sheep --help' for more information.`` and
exit code 1.  Options 1.0 does not have (``--nbd``, ``--lock-grace``, the
``-R`` value checks) keep their own messages.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from dataclasses import dataclass, field

from sheep import __version__

NO_STORE_MESSAGE = ("no store directory given: name the directory that holds this node's "
                    "objects, e.g. 'sheep /var/lib/sheepdog' (unlike Sheepdog 1.0 there is "
                    "no default: 1.0 used /tmp)")
DEFAULT_NBD_PORT = 10809
LOG_FORMATS = ("default", "server", "json")
LOG_DSTS = ("default", "stdout", "syslog")
LOG_LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4,
              "notice": 5, "info": 6, "debug": 7}


class ConfigError(Exception):
    """A bad option value; ``str()`` is the message for the user (stderr),
    ``details`` what 1.0 prints after it on stdout (e.g. the log levels)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


LOG_LEVEL_HELP = ("Available log levels:\n"
                  "  Level      Description\n"
                  "  emerg      system has failed and is unusable\n"
                  "  alert      action must be taken immediately\n"
                  "  crit       critical conditions\n"
                  "  err        error conditions\n"
                  "  warning    warning conditions\n"
                  "  notice     normal but significant conditions\n"
                  "  info       informational notices\n"
                  "  debug      debugging messages\n")


class _Parser(argparse.ArgumentParser):
    """argparse with 1.0's reaction to a bad command line (usage(1))."""

    def error(self, message):
        self.exit(1, f"sheep: {message}\nTry 'sheep --help' for more information.\n")


@dataclass
class Config:
    stores: list[str]
    port: int = 7000
    zone: int | None = None
    cluster: str = "local"
    myaddr: str = "127.0.0.1"
    myaddr_auto: bool = False  # no -y: sheep.advertise picks it at start-up
    bindaddr: str = "0.0.0.0"
    nosync: bool = False
    log_dir: str | None = None
    log_level: int = 6
    foreground: bool = False
    gateway: bool = False
    vnodes: int | None = None  # -V: fixed vnode count (None = automatic)
    pidfile: str | None = None
    nbd: tuple[str, int] | None = None
    recovery_max: int = 0  # 0: default concurrency
    recovery_interval: int = 0  # ms between recovered objects
    lock_grace: float = 8.0  # s without news of a lock session before its locks go
    metrics: tuple[str, int] | None = None  # --metrics: Prometheus endpoint (host, port)
    log_format: str = "default"  # -l format=default|server|json (sheep.logs)
    log_dst: str = "default"  # -l dst=default|stdout|syslog
    syslog_addr: str = "/dev/log"  # -l dst=syslog,addr=PATH: the syslog socket
    unsupported: list[str] = field(default_factory=list)

    @property
    def base_dir(self) -> str:
        return self.stores[0]

    @property
    def log_path(self) -> str:
        return os.path.join(self.log_dir or self.base_dir, "sheep.log")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sheep",
        description="pysheepdog daemon: stores objects, serves clients, takes part "
                    "in cluster membership. STORE[,STORE...]: the base directory "
                    "(config, epoch log, obj/) followed by optional extra object "
                    "directories.",
        epilog="Example: sheep -c local -z 0 -p 7000 /var/lib/sheepdog/0")
    p.add_argument("store", nargs="?", default=None, metavar="STORE[,STORE...]",
                   help="required: the node's store directory (created if missing), then "
                        "optional extra object directories; there is no default "
                        "(Sheepdog 1.0 used /tmp)")
    p.add_argument("-p", "--port", default="7000", help="TCP port (default 7000)")
    p.add_argument("-z", "--zone", help="failure domain (default: derived from the address)")
    p.add_argument("-c", "--cluster", default="local",
                   help="cluster driver: local[:PATH] (default local), "
                        "zmq:HOST:PORT[,HOST:PORT...][,self=HOST:PORT], "
                        "zookeeper:HOST:PORT[,...][/CLUSTER_ID][,timeout=N]")
    p.add_argument("-y", "--myaddr", default=None,
                   help="address advertised to the cluster: the one peers and clients "
                        "reach this node at (default: the -b address if it is a specific "
                        "one, else for zmq/zookeeper the local address routed to the first "
                        "seed/ZooKeeper server, else 127.0.0.1)")
    p.add_argument("-b", "--bindaddr", default=None,
                   help="address to listen on (default: all addresses)")
    p.add_argument("-n", "--nosync", action="store_true",
                   help="do not fdatasync object writes (data may be lost on power loss)")
    p.add_argument("-l", "--log", default=None,
                   metavar="KEY=VALUE[,...]",
                   help="log options: dir=PATH (default: the store), level=LEVEL "
                        "(emerg..debug, default info), format=default|server|json "
                        "(json: one JSON object per line), dst=default|stdout|syslog "
                        "(default: DIR/sheep.log; stdout needs -f; syslog: the unix "
                        "datagram socket addr=PATH, default /dev/log). SIGHUP reopens "
                        "the log file (for logrotate)")
    p.add_argument("-f", "--foreground", action="store_true", help="do not daemonize")
    p.add_argument("-g", "--gateway", action="store_true",
                   help="gateway only: store no objects (0 vnodes)")
    p.add_argument("-V", "--vnodes", default=None,
                   help="fixed number of vnodes (disables automatic weighting)")
    p.add_argument("-P", "--pidfile", default=None, help="write the daemon's pid here")
    p.add_argument("--nbd", nargs="?", const=str(DEFAULT_NBD_PORT), default=None,
                   metavar="[HOST:]PORT", help="also export VDIs over NBD (default port 10809)")
    p.add_argument("--metrics", default=None, metavar="[HOST:]PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics "
                        "(HOST default 127.0.0.1); see docs/metrics-and-logs.md")
    p.add_argument("-R", "--recovery", default=None, metavar="max=N,interval=MS",
                   help="recovery throttle: at most N objects recovered at once (default 8), "
                        "and a pause of MS milliseconds after each")
    p.add_argument("--lock-grace", default=None, metavar="SECONDS",
                   help="release the VDI locks of a client session that closed its "
                        "connection or stopped renewing its lease for this long (default 8)")
    for opt, long in (("-j", "--journal"), ("-D", "--directio"), ("-w", "--cache")):
        p.add_argument(opt, long, dest=long[2:], default=None, nargs="?", const="",
                       help=f"accepted for Sheepdog 1.0 compatibility ({long[2:]}); "
                            "not implemented yet, ignored with a log line")
    p.add_argument("-v", "--version", action="version", version=f"sheep (pysheepdog) {__version__}")
    return p


def _int(value: str, what: str, lo: int, hi: int) -> int:
    try:
        n = int(value, 0)
    except ValueError:
        raise ConfigError(f"Invalid {what} '{value}'") from None
    if not lo <= n <= hi:
        raise ConfigError(f"Invalid {what} '{value}' (must be {lo}..{hi})")
    return n


def _dec(value: str, lo: int, hi: int) -> int | None:
    """1.0's ``str_to_u16``/``str_to_u32`` plus its range check: a decimal
    number in ``lo..hi``, else None."""
    if not re.fullmatch(r"\s*\+?[0-9]+", value):
        return None
    n = int(value)
    return n if lo <= n <= hi else None


def _addr(value: str, message: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(message.format(value)) from None
    return value


def parse(argv: list[str]) -> Config:
    """Parse and validate ``argv`` (without the program name)."""
    p = _parser()
    # "--nbd" takes an optional [HOST:]PORT: make sure "sheep --nbd STORE"
    # keeps STORE as the store (argparse would take it as the port)
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a == "--nbd" and not re.fullmatch(r"(\[?[0-9a-fA-F.:]*\]?:)?\d+", argv[i + 1]):
            argv[i] = f"--nbd={DEFAULT_NBD_PORT}"
    try:
        ns = p.parse_args(argv)
    except SystemExit:  # argparse already printed usage / help
        raise
    # no STORE is refused (after the option checks, so that a bad option is
    # still reported in 1.0's words): 1.0 silently used /tmp, which mixed the
    # objects of every store-less sheep with whatever else lives there
    stores = [s for s in (ns.store or "").split(",") if s]
    cfg = Config(stores=[os.path.abspath(s) for s in stores] or [""])
    cfg.port = _dec(ns.port, 1, 0xFFFF)
    if cfg.port is None:
        raise ConfigError(f"Invalid port number '{ns.port}'")
    if ns.zone is not None:
        cfg.zone = _dec(ns.zone, 0, 0xFFFFFFFF)
        if cfg.zone is None:
            raise ConfigError(f"Invalid zone id '{ns.zone}': must be an integer between "
                              f"0 and {0xFFFFFFFF}")
    from sheep.cluster.drivers.base import (
        DRIVERS,  # the registry; drivers import lazily
    )

    drv = ns.cluster.split(":", 1)[0]
    if drv not in DRIVERS:
        raise ConfigError(f"Invalid cluster driver '{ns.cluster}'",
                          "\nSupported features:\n\tCluster drivers: "
                          + " ".join(sorted(DRIVERS)) + "\n")
    cfg.cluster = ns.cluster
    if ns.myaddr:
        cfg.myaddr = _addr(ns.myaddr, "Invalid address: '{}'")
    else:
        cfg.myaddr_auto = True
    if ns.bindaddr:
        cfg.bindaddr = _addr(ns.bindaddr, "Bad address '{}'")
    cfg.nosync = ns.nosync
    if ns.log:
        addr_given = False
        for item in ns.log.split(","):
            key, _, val = item.partition("=")
            if key == "dir" and val:
                cfg.log_dir = os.path.abspath(val)
            elif key == "level" and val:
                if val in LOG_LEVELS:
                    cfg.log_level = LOG_LEVELS[val]
                elif _dec(val, 0, 7) is not None:  # a number 0..7 too (older sheep)
                    cfg.log_level = int(val)
                else:
                    raise ConfigError(f"Invalid log level '{val}'", LOG_LEVEL_HELP)
            elif key == "format" and val in LOG_FORMATS:
                cfg.log_format = val
            elif key == "dst" and val in LOG_DSTS:
                cfg.log_dst = val
            elif key == "addr" and val:
                cfg.syslog_addr = os.path.abspath(val)
                addr_given = True
            elif key == "format":
                raise ConfigError(f"Invalid log format '{val}' (use "
                                  + "|".join(LOG_FORMATS) + ")")
            elif key == "dst":
                raise ConfigError(f"Invalid log destination '{val}' (use "
                                  + "|".join(LOG_DSTS) + ")")
            else:
                raise ConfigError(f"Invalid log option '{item}' (use dir=PATH,level=LEVEL,"
                                  "format=FMT,dst=DST,addr=PATH)")
        if addr_given and cfg.log_dst != "syslog":
            raise ConfigError("log option addr=PATH is the syslog socket: it needs dst=syslog")
        if cfg.log_dst == "stdout" and not ns.foreground:
            raise ConfigError("log destination stdout needs -f (a daemon has no stdout)")
    cfg.foreground = ns.foreground
    cfg.gateway = ns.gateway
    if ns.gateway and ns.vnodes is not None:
        raise ConfigError("Options '-g' and '-V' can not be both specified")
    if ns.vnodes is not None:
        cfg.vnodes = _dec(ns.vnodes, 1, 0xFFFF)
        if cfg.vnodes is None:
            raise ConfigError(f"Invalid number of vnodes '{ns.vnodes}': must be an integer "
                              f"between 1 and {0xFFFF}")
    cfg.pidfile = os.path.abspath(ns.pidfile) if ns.pidfile else None
    if ns.nbd is not None:
        host, _, port = ns.nbd.rpartition(":")
        cfg.nbd = (_addr(host, "Invalid NBD address '{}': not an IP address")
                   if host else "127.0.0.1",
                   _int(port, "NBD port number", 1, 65535))
    if ns.metrics is not None:
        host, _, port = ns.metrics.rpartition(":")
        cfg.metrics = (_addr(host.strip("[]"), "Invalid metrics address '{}': not an IP address")
                       if host else "127.0.0.1",
                       _int(port, "metrics port number", 1, 65535))
        if cfg.metrics[1] == cfg.port or (cfg.nbd and cfg.nbd[1] == cfg.metrics[1]):
            raise ConfigError(f"Invalid metrics port '{port}': already used by this daemon")
    if ns.recovery is not None:
        for item in ns.recovery.split(","):
            key, _, val = item.partition("=")
            if key == "max":
                cfg.recovery_max = _int(val, "recovery max", 1, 4096)
            elif key == "interval":
                cfg.recovery_interval = _int(val, "recovery interval", 0, 3_600_000)
            else:
                raise ConfigError(f"Invalid recovery option '{item}' (use max=N,interval=MS)")
    if ns.lock_grace is not None:
        try:
            cfg.lock_grace = float(ns.lock_grace)
        except ValueError:
            cfg.lock_grace = -1.0
        if not 0.5 <= cfg.lock_grace <= 3600:
            raise ConfigError(f"Invalid lock grace '{ns.lock_grace}' (must be 0.5..3600 seconds)")
    for name in ("journal", "directio", "cache"):
        if getattr(ns, name) is not None:
            cfg.unsupported.append(name)
    if not stores:
        raise ConfigError(NO_STORE_MESSAGE + "\nTry 'sheep --help' for more information.")
    return cfg
