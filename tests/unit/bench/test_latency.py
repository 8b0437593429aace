"""Latency percentiles of ``python -m bench.sdload``: sdload's extended output
line (older lines without percentiles still parse), nearest-rank
percentiles, medians of the runs' percentiles, and the real sdload binary
and the Python client timed against a fake object server (no daemons) whose
replies take a known time: the percentiles come out in microseconds, ordered,
no lower than the server's delay, and the requests sent are still exactly
those of the load (one in flight per connection, the same ops and offsets)."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time

import pytest

from bench import sdload as S
from bench import sdload_build as B
from bench import sdload_results as R

pytestmark = pytest.mark.quick

_REQ = struct.Struct("<BBHIIIQQBBBBIII")  # the 48-byte request header
_RSP = struct.Struct("<BBHIIII")  # the common part of the 48-byte response header


# -- the output line ---------------------------------------------------------------

def test_parse_line_with_percentiles():
    out = ("randr ops=123456 secs=4.00 iops=30864 MiBps=120.6 errors=0 "
           "p50us=31.5 p99us=120.0 p999us=2050.7\n")
    assert R.parse_line(out, "randr") == {"ops": 123456, "secs": 4.0, "iops": 30864.0,
                                          "mib_s": 120.6, "errors": 0, "p50_us": 31.5,
                                          "p99_us": 120.0, "p999_us": 2050.7}


def test_old_lines_without_percentiles_still_parse_and_partial_ones_do_not():
    old = R.parse_line("seqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=2")
    assert old == {"ops": 10, "secs": 1.01, "iops": 10.0, "mib_s": 9.9, "errors": 2}
    assert not set(R.LATENCY_KEYS) & old.keys()
    none = R.parse_line("randr ops=0 secs=1.00 iops=0 MiBps=0.0 errors=5 "
                        "p50us=0.0 p99us=0.0 p999us=0.0")
    assert [none[k] for k in R.LATENCY_KEYS] == [None, None, None]  # not "0 µs"
    for bad in ("seqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=2 p50us=1.0",
                "seqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=2 p50us=1 p99us=2 p999us=x",
                "seqw ops=10 secs=1.01 iops=10 MiBps=9.9 errors=2 p99us=2 p50us=1 p999us=3"):
        with pytest.raises(ValueError, match="unexpected sdload output"):
            R.parse_line(bad)


def test_nearest_rank_percentiles():
    vals = list(range(1, 101))  # 1..100, shuffled order must not matter
    vals.reverse()
    assert R.nearest_rank(vals, 0.5) == 50
    assert R.nearest_rank(vals, 0.99) == 99
    assert R.nearest_rank(vals, 0.999) == 100
    assert R.nearest_rank([7.0], 0.999) == 7.0
    assert R.nearest_rank([], 0.5) is None
    assert R.nearest_rank([1, 2, 3, 1000], 0.5) == 2  # not the mean, not interpolated


def test_summaries_take_the_median_of_the_runs_percentiles():
    runs = [{"workload": "rand-read-4k-t1", "sync": "nosync", "iops": i, "mib_s": 1.0,
             "errors": 0, "failure": None, "p50_us": p50, "p99_us": p99, "p999_us": p999}
            for i, p50, p99, p999 in ((100.0, 10.0, 90.0, 900.0), (110.0, 30.0, 70.0, 700.0),
                                      (120.0, 20.0, 80.0, 800.0))]
    runs.append({"workload": "rand-read-4k-t1", "sync": "nosync", "iops": 0.0, "mib_s": 0.0,
                 "errors": 0, "failure": "died", "p50_us": 1e9, "p99_us": 1e9, "p999_us": 1e9})
    s = R.medians(runs)["rand-read-4k-t1"]["nosync"]
    assert (s["p50_us"], s["p99_us"], s["p999_us"]) == (20.0, 80.0, 800.0)  # failed run out
    old = [{"workload": "x", "sync": "nosync", "iops": 1.0, "mib_s": 1.0, "errors": 0,
            "failure": None}]
    assert R.summarize("x", old)["p99_us"] is None


# -- real clients against a fake object server ------------------------------------

class FakeServer:
    """Answers every READ_OBJ / WRITE_OBJ with result 0 after ``delay(k)``
    seconds (k: the request's number on its connection); records each
    request header and whether a second request had arrived before the reply."""

    def __init__(self, delay):
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple] = []
        self.overlapped = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _serve(self, conn):
        k = 0
        with conn:
            while True:
                hdr = self._exact(conn, 48)
                if hdr is None:
                    return
                f = _REQ.unpack(hdr)
                ver, op, flags, _epoch, rid, dlen, oid, offset = f[:6] + (f[6], f[12])
                if flags & 1 and self._exact(conn, dlen) is None:
                    return
                time.sleep(self.delay(k))
                conn.setblocking(False)
                try:
                    early = conn.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    early = b""
                conn.setblocking(True)
                with self.lock:
                    self.requests.append((op, flags, dlen, oid, offset))
                    self.overlapped += bool(early)
                out = 0 if flags & 1 else dlen
                conn.sendall(_RSP.pack(ver, op, 0, 0, rid, out, 0) + bytes(28) + bytes(out))
                k += 1

    def close(self):
        self.sock.close()
        for t in self.threads:
            t.join(10)


def _slow_tail(k: int) -> float:
    return 0.012 if k % 10 == 9 else 0.001  # 90% take >= 1 ms, 10% >= 12 ms


def _check(res: dict, server: FakeServer, mode_op: int, vid: int):
    p50, p99, p999 = (res[k] for k in R.LATENCY_KEYS)
    assert p50 >= 1000, res  # µs, never below the server's 1 ms
    assert p50 < 12000 <= p99 <= p999, res  # the slow tenth shows at p99, not at p50
    assert res["ops"] == len(server.requests) and res["errors"] == 0
    assert server.overlapped == 0  # one request in flight per connection
    for op, flags, dlen, oid, offset in server.requests:
        assert (op, flags, dlen) == (mode_op, 0 if mode_op == 2 else 1, 4096)
        assert oid >> 32 == vid and (oid & 0xFFFFFFFF) < R.NOBJ and offset % 4096 == 0


@pytest.mark.skipif(B.find_compiler() is None, reason="no C compiler")
@pytest.mark.parametrize("mode,op", [("randr", 2), ("randw", 3)])
def test_real_sdload_reports_percentiles_of_the_served_requests(tmp_path, mode, op):
    binary = B.build(cache=tmp_path)
    server = FakeServer(_slow_tail)
    try:
        res = S.run_sdload(binary, server.port, 7, mode, 4096, 2, 1)
    finally:
        server.close()
    _check(res, server, op, 7)


def test_python_client_reports_the_same_percentiles():
    server = FakeServer(_slow_tail)
    try:
        res = S.run_python(None, server.port, 5, "randr", 4096, 2, 1)
    finally:
        server.close()
    _check(res, server, 2, 5)


@pytest.mark.skipif(B.find_compiler() is None, reason="no C compiler")
def test_sdload_source_compiles_without_warnings(tmp_path):
    cc = B.find_compiler()
    r = subprocess.run([*cc, *B.CFLAGS, "-Wextra", "-Werror", "-o", str(tmp_path / "s"),
                        str(B.SOURCE)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

