"""A real standalone ZooKeeper server for tests, from the Debian package.

The Debian ``zookeeper`` package (installed by ``scripts/setup.sh``) puts
the server in ``/usr/share/java/zookeeper.jar`` (its manifest's Class-Path
names the dependency jars in /usr/share/java) and an example configuration
in ``/etc/zookeeper/conf``.  :class:`ZooKeeperServer` runs
``java -cp DIR:zookeeper.jar org.apache.zookeeper.server.ZooKeeperServerMain
DIR/zoo.cfg`` with a generated ``zoo.cfg`` in a temporary directory:
client port on 127.0.0.1 from :func:`harness.free_port`, dataDir inside the
directory, admin server off, ``tickTime=500`` (so session timeouts from 1 s
to 10 s are allowed), and the ``ruok`` four-letter word enabled; it waits
for ``imok`` and, on :meth:`stop`, kills the JVM and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import free_port

JAR = "/usr/share/java/zookeeper.jar"
JAVA = shutil.which("java") or "/usr/bin/java"
MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
TICK_MS = 500


class ZooKeeperNotInstalled(RuntimeError):
    pass


def check_installed() -> None:
    """Raise with a clear message when the server cannot be started here."""
    missing = [p for p in (JAR, JAVA) if not os.path.exists(p)]
    if missing:
        raise ZooKeeperNotInstalled(
            f"ZooKeeper is not installed (missing {', '.join(missing)}): the zookeeper "
            "driver tests need the Debian package 'zookeeper' (apt-get install zookeeper, "
            "or run scripts/setup.sh, which installs it)")


def ruok(port: int, timeout: float = 1.0, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"ruok")
            return s.recv(16) == b"imok"
    except OSError:
        return False


class ZooKeeperServer:
    """One standalone ZooKeeper server on a free port of ``host`` (default
    loopback; tests/functional/test_multihost.py gives a bridge address)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.dir: str | None = None
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> ZooKeeperServer:
        check_installed()
        self.dir = tempfile.mkdtemp(prefix="pysheepdog-zk-")
        self.port = free_port()
        cfg = os.path.join(self.dir, "zoo.cfg")
        with open(cfg, "w") as f:
            f.write(f"tickTime={TICK_MS}\n"
                    f"dataDir={os.path.join(self.dir, 'data')}\n"
                    f"clientPort={self.port}\n"
                    f"clientPortAddress={self.host}\n"
                    "admin.enableServer=false\n"
                    "4lw.commands.whitelist=ruok,srvr,stat\n"
                    "maxClientCnxns=0\n"
                    "forceSync=no\n")
        self._log = open(os.path.join(self.dir, "server.log"), "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [JAVA, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dzookeeper.log.dir={self.dir}", "-Dzookeeper.jmx.log4j.disable=true",
             "-cp", f"{self.dir}:{JAR}", MAIN, cfg],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ruok(self.port, host=self.host):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(f"ZooKeeper server did not start: {out[-2000:]}")
            time.sleep(0.1)
        return self

    def output(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with_group = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                with_group = False
            if not with_group:
                self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> ZooKeeperServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
