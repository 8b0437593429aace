"""The daemon's log as a user (and logrotate, and syslog) sees it: line
format with year, milliseconds and pid; ``-l format=server``; ``-l
format=json`` (one object per line); ``-l dst=syslog,addr=PATH`` to a unix
datagram socket the test binds; ``-f -l dst=stdout``; SIGHUP after a rename
(new lines in a new file at the original path); lock grants at DEBUG only;
bad ``-l`` values refused by the launcher.

Single-node clusters (real daemons), nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
from harness import Cluster, collie_ok, free_port, wait_for

import qemu_client

pytestmark = pytest.mark.cluster

LINE = re.compile(r"(\d{4})-\d\d-\d\d \d\d:\d\d:\d\d\.(\d{3}) sheep\[(\d+)\] "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \[[\w.]+\] (.*)")


def records(text: str) -> list[str]:
    """Lines that start a record (a traceback's lines follow its record)."""
    return [ln for ln in text.splitlines() if ln and not ln.startswith((" ", "Traceback"))
            and not re.match(r"\w+(Error|Exception)\b", ln)]


def test_default_format_and_sighup_reopen(tmp_path):
    c = Cluster(tmp_path / "c", n=1)
    try:
        node = c.nodes[0]
        wait_for(lambda: "started" in node.log(), 10, what="start-up logged")
        lines = records(node.log())
        assert lines
        for ln in lines:
            m = LINE.fullmatch(ln)
            assert m, ln
            assert int(m.group(1)) >= 2024 and int(m.group(3)) == node.pid

        # logrotate: rename, SIGHUP; new lines go to a new file at the original path
        path = os.path.join(node.store, "sheep.log")
        os.rename(path, path + ".1")
        node.kill(signal.SIGHUP)
        wait_for(lambda: os.path.exists(path) and "SIGHUP: log reopened" in open(path).read(),
                 10, what="the log reopened at its path")
        collie_ok(node.port, "cluster", "format", "-c", "1")
        wait_for(lambda: "cluster formatted" in open(path).read(), 10, what="a new line")
        old = open(path + ".1").read()
        assert "started" in old and "cluster formatted" not in old
        assert "SIGHUP" not in old
        assert node.alive()  # SIGHUP no longer ends the daemon
        assert all(LINE.fullmatch(ln) for ln in records(open(path).read()))

        # lock grants are DEBUG: not in an info log; there at level debug
        collie_ok(node.port, "vdi", "create", "vm", "8M")
        with qemu_client.open("vm", port=node.port) as vdi:
            vdi.pwrite(0, b"x")
        assert not re.search(r"\] lock \w+ vid", open(path).read())
        collie_ok(node.port, "node", "log", "level", "set", "debug")
        with qemu_client.open("vm", port=node.port) as vdi:
            vdi.pwrite(0, b"y")
        wait_for(lambda: re.search(r" DEBUG \[sheep\.vdi\.locks\] lock \w+ vid", open(path).read()),
                 10, what="a lock grant at DEBUG")
    finally:
        c.close()


def test_server_and_json_formats(tmp_path):
    c = Cluster(tmp_path / "c", n=1, extra=["-l", "format=server"])
    j = Cluster(tmp_path / "j", n=1, extra=["-l", "format=json,level=debug"])
    try:
        s, n = c.nodes[0], j.nodes[0]
        wait_for(lambda: "started" in s.log(), 10, what="server-format start-up")
        for ln in records(s.log()):
            m = LINE.fullmatch(ln)
            assert m and re.match(r"\w+\(\d+\) ", m.group(5)), ln
        collie_ok(n.port, "cluster", "format", "-c", "1")
        wait_for(lambda: "cluster formatted" in n.log(), 10, what="json log of the format")
        objs = [json.loads(ln) for ln in n.log().splitlines()]  # every line is one object
        assert len(objs) >= 3
        assert {"time", "pid", "level", "logger", "func", "line", "msg"} <= set(objs[0])
        assert all(o["pid"] == n.pid for o in objs)
        assert {o["level"] for o in objs} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert any(o["msg"].startswith("cluster formatted") and o["logger"] == "sheep.cluster.group"
                   for o in objs)
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d",
                                o["time"]) for o in objs)
    finally:
        c.close()
        j.close()


def test_syslog_destination(tmp_path):
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    c = Cluster(tmp_path / "c", n=1, extra=["-l", f"dst=syslog,addr={path}"])
    try:
        node = c.nodes[0]
        got = []
        while not any(b"started" in d for d in got):
            got.append(sock.recv(65536))
        for d in got:  # <daemon.info> = <30>, the ident with the pid, no time stamp
            assert re.fullmatch(rb"<(\d+)>sheep\[%d\]: (DEBUG|INFO|WARNING|ERROR) \[[\w.]+\] .*"
                                % node.pid, d.rstrip(b"\0"), re.S), d
        assert got[-1].startswith(b"<30>")
        assert not os.path.exists(os.path.join(node.store, "sheep.log"))
    finally:
        c.close()
        sock.close()
    # no syslog socket there: the launcher says so and exits 1
    pidfile = tmp_path / "s2.pid"
    r = subprocess.run([sys.executable, "-m", "sheep", "-c", f"local:{tmp_path / 'cl'}",
                        "-p", str(free_port()), "-l", f"dst=syslog,addr={tmp_path}/none",
                        "-P", str(pidfile), str(tmp_path / "s2")],
                       capture_output=True, text=True, timeout=60)
    if pidfile.exists():  # started after all: do not leave it running
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert r.returncode == 1
    assert f"cannot use the syslog socket {tmp_path}/none" in r.stderr


def test_stdout_destination_in_the_foreground(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "sheep", "-f", "-c", f"local:{tmp_path / 'cl'}",
                          "-p", str(free_port()), "-l", "dst=stdout,format=json",
                          str(tmp_path / "s")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        lines = []
        while not lines or "started" not in lines[-1]:
            ln = p.stdout.readline()
            assert ln, p.stderr.read()
            lines.append(ln)
        assert all(json.loads(ln)["pid"] == p.pid for ln in lines)
    finally:
        p.kill()
        p.wait()
    assert not os.path.exists(tmp_path / "s" / "sheep.log")


@pytest.mark.parametrize("opt,message", [
    ("format=xml", "Invalid log format 'xml'"),
    ("dst=file", "Invalid log destination 'file'"),
    ("dst=stdout", "log destination stdout needs -f"),
    ("addr=/tmp/x", "addr=PATH is the syslog socket: it needs dst=syslog"),
])
def test_bad_log_options(tmp_path, opt, message):
    r = subprocess.run([sys.executable, "-m", "sheep", "-l", opt, str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "s")  # nothing created
