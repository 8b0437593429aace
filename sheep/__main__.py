"""``sheep`` command: argv → config → (daemonize) → run a node.

Daemonizes by default.  As in Sheepdog 1.0, the launching process exits 0
once the daemon has started, and what happens to the daemon afterwards is in
its log.  "Started" means: the daemon locked its store, wrote its pid file
and listens; the launcher then also waits until its join was decided (at
most 10 s), so that a script that starts nodes one by one gets them in that
order.  A join the cluster refuses, or a restart with the other vnode
strategy (``sheep.cluster.joins``), is logged and the daemon exits 1 — the launcher
exits 0 all the same (1.0: the config check and the join come after its
launcher returned).  The launcher exits 1, with the reason on stderr, only
when the daemon could not start: bad options, the store locked by another
daemon or unreadable, the pid file or the port unusable (1.0 reports only
the lock there; a busy port is reported too, deliberately), or the log
destination or the metrics port is unusable.  ``-f`` stays in the
foreground.  SIGTERM and SIGINT stop the daemon; SIGHUP reopens the log file
(``sheep.logs``).
"""

from __future__ import annotations

import os

# numpy's OpenBLAS would start a spinning worker thread per core; the daemon
# does no linear algebra, and those threads took ~5% of the CPU under load.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from sheep import config, deps  # noqa: E402
from sheep.proto.errors import SdError
from sheep.store.base import StoreLockedError


def _daemonize() -> int:
    """Fork; the parent waits for the child's verdict on a pipe and exits."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok"):
            os._exit(0)
        sys.stderr.write((msg or "sheep: the daemon exited during start-up; see sheep.log") + "\n")
        os._exit(1)
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return w


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config.parse(argv)
    except config.ConfigError as e:
        sys.stderr.write(f"sheep: {e}\n")
        if e.details:
            sys.stdout.write(e.details)
        return 1
    missing = deps.missing_server_packages(cfg.cluster)
    if missing:
        sys.stderr.write(deps.missing_message(missing) + "\n")
        return 1
    if cfg.myaddr_auto:  # no -y: -b, or the route to the cluster driver (sheep.advertise)
        from sheep import advertise

        cfg.myaddr = advertise.resolve(None, cfg.bindaddr, cfg.cluster)
    for d in cfg.stores:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            sys.stderr.write(f"sheep: cannot create store directory {d}: {e.strerror}\n")
            return 1
    from sheep.daemon import Sheep

    sheep = Sheep(cfg)
    # what opening the store finds (a journal replayed after a crash, records
    # rebuilt) is said on stderr: the log is not set up yet
    early = logging.StreamHandler(sys.stderr)
    early.setFormatter(logging.Formatter("sheep: %(message)s"))
    store_log = logging.getLogger("sheep.store")
    store_log.addHandler(early)
    store_log.setLevel(logging.INFO)
    try:
        sheep.open_store()
    except StoreLockedError as e:
        sys.stderr.write(f"sheep: {e}\n")
        return 1
    except (OSError, SdError) as e:
        sys.stderr.write(f"sheep: cannot open store {cfg.base_dir}: {e}\n")
        return 1
    finally:
        store_log.removeHandler(early)
        store_log.setLevel(logging.NOTSET)

    pipe_w = None
    if not cfg.foreground:
        # lockf locks are per process and not inherited: the launcher checked
        # the store can be locked; the daemon takes the lock for itself.
        sheep.store.close()
        pipe_w = _daemonize()
        try:
            sheep.open_store()
        except (StoreLockedError, OSError, SdError) as e:
            os.write(pipe_w, f"sheep: {e}".encode())
            os._exit(1)
    from sheep import logs

    try:
        logs.setup(cfg, to_stderr=cfg.foreground)
    except OSError as e:
        msg = f"sheep: {e.strerror or e}"
        if pipe_w is not None:
            os.write(pipe_w, msg.encode())
            os._exit(1)
        sys.stderr.write(msg + "\n")
        return 1
    if cfg.pidfile:
        try:
            with open(cfg.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as e:
            msg = f"sheep: cannot write pid file {cfg.pidfile}: {e.strerror or e}"
            if pipe_w is not None:
                logging.getLogger("sheep").error(msg)
                os.write(pipe_w, msg.encode())
                os._exit(1)
            sys.stderr.write(msg + "\n")
            return 1

    def ready(error):
        nonlocal pipe_w
        if pipe_w is not None:
            os.write(pipe_w, b"ok" if error is None else f"sheep: {error}".encode())
            os.close(pipe_w)
            pipe_w = None
        elif error:
            sys.stderr.write(f"sheep: {error}\n")

    async def amain():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sheep.request_exit)
        loop.add_signal_handler(signal.SIGHUP, logs.reopen)  # logrotate
        if pipe_w is not None:
            def still_joining():
                if pipe_w is not None:
                    logging.getLogger("sheep").warning(
                        "still joining the cluster after 10s; the launcher returns now")
                    ready(None)
            loop.call_later(10.0, still_joining)
        try:
            return await sheep.run(ready)
        except Exception as e:  # a start-up bug: say it in the log and to the launcher
            logging.getLogger("sheep").exception("daemon failed")
            ready(f"daemon failed: {e!r} (see {cfg.log_path})")
            return 1

    try:
        import uvloop

        code = uvloop.run(amain())
    except ImportError:
        code = asyncio.run(amain())
    finally:
        if cfg.pidfile:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
