"""The pure parts of metrics and logs: ``--metrics`` / ``-l`` parsing, the
per-op request counters (sheep.metrics.RequestMetrics) and the log
formatters (sheep.logs)."""

import json
import logging
import re
import sys

import pytest

from sheep import logs
from sheep.config import ConfigError, parse
from sheep.server import metrics


def test_metrics_option():
    assert parse(["--metrics", "9100", "/tmp/s"]).metrics == ("127.0.0.1", 9100)
    assert parse(["--metrics", "0.0.0.0:9101", "/tmp/s"]).metrics == ("0.0.0.0", 9101)
    assert parse(["--metrics", "[::1]:9102", "/tmp/s"]).metrics == ("::1", 9102)
    assert parse(["/tmp/s"]).metrics is None


@pytest.mark.parametrize("argv,message", [
    (["--metrics", "0"], "Invalid metrics port number '0' (must be 1..65535)"),
    (["--metrics", "host:9100"], "Invalid metrics address 'host': not an IP address"),
    (["--metrics", "7000"], "Invalid metrics port '7000': already used by this daemon"),
    (["-l", "format=xml"], "Invalid log format 'xml' (use default|server|json)"),
    (["-l", "dst=file"], "Invalid log destination 'file' (use default|stdout|syslog)"),
    (["-l", "addr=/dev/log"], "log option addr=PATH is the syslog socket: it needs dst=syslog"),
    (["-l", "dst=stdout"], "log destination stdout needs -f (a daemon has no stdout)"),
    (["-l", "colour=yes"], "Invalid log option 'colour=yes' (use dir=PATH,level=LEVEL,"
                           "format=FMT,dst=DST,addr=PATH)"),
])
def test_refusals(argv, message):
    with pytest.raises(ConfigError) as e:
        parse(argv + ["/tmp/store"])
    assert str(e.value) == message


def test_log_options():
    cfg = parse(["-l", "level=debug,format=json,dst=syslog,addr=/run/x.sock", "/tmp/s"])
    assert (cfg.log_level, cfg.log_format, cfg.log_dst, cfg.syslog_addr) == \
        (7, "json", "syslog", "/run/x.sock")
    cfg = parse(["-f", "-l", "dst=stdout,format=server", "/tmp/s"])
    assert (cfg.log_dst, cfg.log_format, cfg.syslog_addr) == ("stdout", "server", "/dev/log")


def test_request_metrics_buckets_and_snapshot():
    rm = metrics.RequestMetrics()
    rm.record(2, "READ_OBJ", "gateway", 0, 4096, 0.00005, False)
    rm.record(2, "READ_OBJ", "gateway", 0, 4096, 0.003, False)
    rm.record(2, "READ_OBJ", "gateway", 0, 0, 99.0, True)  # past the last bound: +Inf
    rm.record(3, "WRITE_OBJ", "gateway", 512, 0, 0.001, False)  # on a bound: that bucket
    snap = {s.name: s for s in rm.snapshot()}
    r = snap["READ_OBJ"]
    assert (r.count, r.errors, r.rx, r.tx) == (3, 1, 0, 8192)
    assert r.buckets[0] == 1 and r.buckets[metrics.BUCKETS.index(0.005)] == 1
    assert r.buckets[-1] == 1 and sum(r.buckets) == 3
    assert snap["WRITE_OBJ"].buckets[metrics.BUCKETS.index(0.001)] == 1
    rm.record(2, "READ_OBJ", "gateway", 0, 1, 0.1, False)
    assert r.count == 3  # a snapshot is a copy


def _record(msg="hello %s", args=("world",), exc=None):
    return logging.LogRecord("sheep.server.ops", logging.WARNING, "/x/ops.py", 42, msg, args, exc,
                             func="dispatch")


def _exc_info():
    try:
        raise ValueError("boom")
    except ValueError:
        return sys.exc_info()


def test_text_formats():
    line = logs.TextFormatter().format(_record())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} sheep\[\d+\] "
                        r"WARNING \[sheep\.server\.ops\] hello world", line), line
    line = logs.TextFormatter(server=True).format(_record())
    assert line.endswith("WARNING [sheep.server.ops] dispatch(42) hello world")
    assert logs.TextFormatter(with_time=False).format(_record()) == \
        "WARNING [sheep.server.ops] hello world"
    text = logs.TextFormatter().format(_record(exc=_exc_info()))
    assert "Traceback" in text and text.endswith("ValueError: boom")


def test_json_format_one_object_per_line():
    out = logs.JsonFormatter().format(_record(exc=_exc_info()))
    assert "\n" not in out
    obj = json.loads(out)
    assert obj["msg"] == "hello world" and obj["level"] == "WARNING"
    assert obj["logger"] == "sheep.server.ops" and (obj["func"], obj["line"]) == ("dispatch", 42)
    assert isinstance(obj["pid"], int) and "ValueError: boom" in obj["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", obj["time"])
