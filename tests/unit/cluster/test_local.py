"""The local membership driver, driven by real separate processes."""

import fcntl
import signal
import sys
import time
from pathlib import Path

import pytest

from sheep.cluster.drivers.base import DRIVERS, create_driver
from sheep.cluster.drivers.local import (
    DEFAULT_PATH,
    LocalDriver,
    decode_records,
    encode_record,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from drivers import Proc  # noqa: E402


@pytest.fixture
def start(tmp_path):
    procs: list[Proc] = []

    def _start(ident, path=None, opaque=None):
        proc = Proc(f"local:{path or tmp_path / 'cluster'}", ident, opaque)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.p.poll() is None:
            proc.p.kill()
        proc.p.wait(10)
        proc.p.stdout.close()
        proc.p.stdin.close()


def test_create_driver_parses_spec(tmp_path):
    d = create_driver(f"local:{tmp_path}", events=None)
    assert isinstance(d, LocalDriver) and d.dir == str(tmp_path)
    assert create_driver("local", events=None).dir == DEFAULT_PATH
    with pytest.raises(ValueError, match="supported drivers: local"):
        create_driver("corosync:x", events=None)
    assert "local" in DRIVERS


def test_record_codec_stops_at_torn_or_corrupt_records():
    recs = encode_record(0, 4, [b"a", b"hello"]) + encode_record(1, 3, [b"b"])
    assert decode_records(recs, 0) == ([(4, [b"a", b"hello"]), (3, [b"b"])], len(recs))
    assert decode_records(recs[:-1], 0)[1] == len(encode_record(0, 4, [b"a", b"hello"]))
    corrupt = bytearray(recs)
    corrupt[12] ^= 0xFF
    assert decode_records(bytes(corrupt), 0) == ([], 0)
    assert decode_records(recs, 5) == ([], 0)   # unexpected seq


def test_three_members_see_identical_views(start):
    a = start("A")
    a.wait_joined()
    b = start("B")
    b.wait_joined()
    c = start("C")
    c.wait_joined()
    for p in (a, b, c):
        p.wait(p.sees(["A", "B", "C"]), what="full view")
    assert a.views() == [["A"], ["A", "B"], ["A", "B", "C"]]
    assert b.views() == [["A", "B"], ["A", "B", "C"]]
    assert c.views() == [["A", "B", "C"]]
    assert [e["who"] for e in a.of("check_join")] == ["A", "B", "C"]
    assert not b.of("check_join") and not c.of("check_join")
    assert c.of("join")[0]["reply"] == "welcome C"
    b.send("leave")
    for p in (a, c):
        p.wait(p.sees(["A", "C"]), what="B's leave")
        assert p.of("leave")[0]["who"] == "B"
    c.send("close")   # abrupt: detected as a failure
    a.wait(a.sees(["A"]), what="C's failure")
    assert a.views() == [["A"], ["A", "B"], ["A", "B", "C"], ["A", "C"], ["A"]]


def test_simultaneous_start_agrees_on_one_master(start):
    procs = [start(i) for i in ("A", "B", "C", "D")]
    for p in procs:
        p.wait(lambda ev: any(e["ev"] == "join" and len(e["members"]) == 4 for e in ev), what="4 members")
    longest = max((p.views() for p in procs), key=len)
    assert len(longest) == 4 and len(longest[0]) == 1
    final = longest[-1]
    assert sorted(final) == ["A", "B", "C", "D"]
    for p in procs:
        p.wait(p.sees(final), what="final view")
        v = p.views()
        assert v == longest[len(longest) - len(v):]
    master = final[0]
    assert [len(p.of("check_join")) for p in procs if p.ident != master] == [0, 0, 0]


def test_concurrent_notifies_totally_ordered(start):
    procs = []
    for i in ("A", "B", "C"):
        procs.append(start(i))
        procs[-1].wait_joined()
    procs[0].wait(procs[0].sees(["A", "B", "C"]))
    n = 200
    for p in procs:
        p.send(f"notify {n}")
    for p in procs:
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) >= 3 * n, 60, "all notifies")
        p.wait(lambda ev: any(e["ev"] == "notified" for e in ev), 10, "notify returned")
    orders = [[(e["frm"], e["msg"]) for e in p.of("notify")] for p in procs]
    assert orders[0] == orders[1] == orders[2]
    expected = {(s, f"{s}#{i}") for s in "ABC" for i in range(n)}
    assert len(orders[0]) == 3 * n and set(orders[0]) == expected
    for s in "ABC":   # per-sender FIFO
        assert [m for f, m in orders[0] if f == s] == [f"{s}#{i}" for i in range(n)]
    interleaved = sum(1 for x, y in zip(orders[0], orders[0][1:]) if x[0] != y[0])
    assert interleaved >= 2, "senders were expected to run concurrently"


def test_sigkilled_member_removed_within_2s(start):
    a, b, c = start("A"), None, None
    a.wait_joined()
    b = start("B")
    b.wait_joined()
    c = start("C")
    c.wait_joined()
    a.wait(a.sees(["A", "B", "C"]))
    b.p.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    for p in (a, c):
        p.wait(p.sees(["A", "C"]), timeout=2.0 - (time.monotonic() - t0), what="B removed")
    assert time.monotonic() - t0 < 2.0
    assert [e["who"] for e in a.of("leave")] == [e["who"] for e in c.of("leave")] == ["B"]


def test_sigkilled_master_is_replaced(start):
    a = start("A")
    a.wait_joined()
    b = start("B")
    b.wait_joined()
    c = start("C")
    c.wait_joined()
    a.p.kill()
    for p in (b, c):
        p.wait(p.sees(["B", "C"]), timeout=2.0, what="A removed")
    d = start("D")
    d.wait_joined()
    for p in (b, c, d):
        p.wait(p.sees(["B", "C", "D"]), what="D joined")
    assert [e["who"] for e in b.of("check_join")] == ["D"]
    assert not c.of("check_join") and not d.of("check_join")
    assert d.views() == [["B", "C", "D"]]


def test_join_pending_when_master_dies_is_answered_by_next(start, tmp_path):
    a = start("A")
    a.wait_joined()
    b = start("B")
    b.wait_joined()
    a.p.send_signal(signal.SIGSTOP)   # master alive but unable to answer
    d = start("D")
    log_path = tmp_path / "cluster" / "log"
    deadline = time.monotonic() + 10
    while not any(kind == 1 and f[0] == b"D" for kind, f in decode_records(log_path.read_bytes(), 0)[0]):
        assert time.monotonic() < deadline, "D's JOIN_REQ never appeared"
        time.sleep(0.01)
    assert not d.of("joined")
    a.p.kill()
    d.wait_joined()
    b.wait(b.sees(["B", "D"]))
    assert [e["who"] for e in b.of("check_join")] == ["D"]
    assert b.views() == [["A", "B"], ["B"], ["B", "D"]]
    assert d.views() == [["B", "D"]]


def test_rejected_join_raises_in_joiner(start):
    a = start("A")
    a.wait_joined()
    r = start("R", opaque="reject")
    r.wait(lambda ev: any(e["ev"] == "rejected" for e in ev), what="rejection")
    assert r.of("rejected")[0]["reply"] == "go away R"
    assert r.p.wait(10) == 2
    assert not r.of("join") and not r.of("joined")
    b = start("B")
    b.wait_joined()
    a.wait(a.sees(["A", "B"]))
    assert [e["who"] for e in a.of("check_join")] == ["A", "R", "B"]
    assert a.views() == [["A"], ["A", "B"]]


def test_rejected_first_member_does_not_form_cluster(start):
    r = start("R", opaque="reject")
    r.wait(lambda ev: any(e["ev"] == "rejected" for e in ev), what="self-rejection")
    assert [e["who"] for e in r.of("check_join")] == ["R"]
    a = start("A")
    a.wait_joined()
    assert a.views() == [["A"]]


def test_separate_paths_are_independent_clusters(start, tmp_path):
    a = start("A", path=tmp_path / "one")
    b = start("B", path=tmp_path / "two")
    a.wait_joined()
    b.wait_joined()
    c = start("C", path=tmp_path / "one")
    c.wait_joined()
    a.wait(a.sees(["A", "C"]))
    b.send("notify 3")
    b.wait(lambda ev: len([e for e in ev if e["ev"] == "notify"]) == 3)
    assert b.views() == [["B"]] and c.views() == [["A", "C"]]
    assert not a.of("notify") and not c.of("notify")


def test_cluster_restarts_after_everyone_died(start, tmp_path):
    a = start("A")
    a.wait_joined()
    a.send("notify 50")
    a.wait(lambda ev: any(e["ev"] == "notified" for e in ev))
    a.p.kill()
    a.p.wait(10)
    b = start("B")
    b.wait_joined()
    assert b.views() == [["B"]]
    records, used = decode_records((tmp_path / "cluster" / "log").read_bytes(), 0)
    assert len(records) == 2, "log should have been reset to B's join request and answer"


def test_torn_log_tail_is_dropped(start, tmp_path):
    a = start("A")
    a.wait_joined()
    b = start("B")
    b.wait_joined()
    a.wait(a.sees(["A", "B"]))
    path = tmp_path / "cluster"
    with open(path / "lock", "a") as lock:   # act as a writer killed mid-write
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(path / "log", "ab") as f:
            f.write(encode_record(99, 4, [b"A", b"torn" * 100])[:50])
        fcntl.flock(lock, fcntl.LOCK_UN)
    b.send("notify 2")
    for p in (a, b):
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 2, what="notifies after torn tail")
    data = (path / "log").read_bytes()
    assert decode_records(data, 0)[1] == len(data)
    assert [e["msg"] for e in a.of("notify")] == ["B#0", "B#1"]

