"""The zookeeper membership driver, driven by real separate processes against
a real ZooKeeper server (the session fixture ``zookeeper``, tests/zkserver.py)."""

import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from sheep.cluster.base import DRIVERS, create_driver
from sheep.cluster.zookeeper import (
    DEFAULT_CLUSTER_ID,
    DEFAULT_TIMEOUT,
    ZookeeperDriver,
    parse_option,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from drivers import Proc  # noqa: E402
TIMEOUT = 2   # session timeout used by these tests (seconds)


@pytest.fixture
def spec(zookeeper):
    """A fresh cluster id on the session's ZooKeeper server, per test."""
    return f"zookeeper:{zookeeper}/t{uuid.uuid4().hex[:12]},timeout={TIMEOUT}"


@pytest.fixture
def start(spec):
    procs: list[Proc] = []

    def _start(ident, opaque=None, spec_=None):
        proc = Proc(spec_ or spec, ident, opaque)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.p.poll() is None:
            proc.p.kill()
        proc.p.wait(10)
        proc.p.stdout.close()
        proc.p.stdin.close()


def start_members(start, idents):
    procs = []
    for i in idents:
        procs.append(start(i))
        procs[-1].wait_joined()
    for p in procs:
        p.wait(p.sees(list(idents)), what="full view")
    return procs


def test_parse_option():
    assert parse_option("127.0.0.1:2181") == ("127.0.0.1:2181", DEFAULT_CLUSTER_ID, DEFAULT_TIMEOUT)
    assert parse_option("a:1,b:2/prod,timeout=3") == ("a:1,b:2", "prod", 3.0)
    assert parse_option("a:1,b:2,timeout=1.5") == ("a:1,b:2", DEFAULT_CLUSTER_ID, 1.5)
    assert parse_option("a:1/x") == ("a:1", "x", DEFAULT_TIMEOUT)
    for bad in ("", "a", "a:1/", "a:1/x/y", "a:1,timeout=", "a:1/x,timeout=0", "a:b"):
        with pytest.raises(ValueError):
            parse_option(bad)
    d = create_driver("zookeeper:h:7000/c1,timeout=4", events=None)
    assert isinstance(d, ZookeeperDriver) and d.base == "/pysheepdog/c1" and d.timeout == 4.0
    assert DRIVERS["zookeeper"] == "sheep.cluster.zookeeper:ZookeeperDriver"


def test_three_members_see_identical_views(start):
    a, b, c = start_members(start, "ABC")
    assert a.views() == [["A"], ["A", "B"], ["A", "B", "C"]]
    assert b.views() == [["A", "B"], ["A", "B", "C"]]
    assert c.views() == [["A", "B", "C"]]
    assert [e["who"] for e in a.of("check_join")] == ["A", "B", "C"]
    assert not b.of("check_join") and not c.of("check_join")
    assert c.of("join")[0]["reply"] == "welcome C"
    b.send("leave")
    b.wait(lambda ev: any(e["ev"] == "left" for e in ev), what="leave returned")
    for p in (a, c):
        p.wait(p.sees(["A", "C"]), what="B's leave")
    c.send("close")   # abrupt: the session closes, the ephemeral znode vanishes
    a.wait(a.sees(["A"]), timeout=5, what="C's failure")
    assert a.views() == [["A"], ["A", "B"], ["A", "B", "C"], ["A", "C"], ["A"]]
    assert c.views() == [["A", "B", "C"], ["A", "C"]]


def test_concurrent_notifies_totally_ordered(start):
    procs = start_members(start, "ABC")
    n = 150
    for p in procs:
        p.send(f"notify {n}")
    for p in procs:
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) >= 3 * n, 60, "all notifies")
        p.wait(lambda ev: any(e["ev"] == "notified" for e in ev), 10, "notify returned")
    time.sleep(0.3)   # a duplicate would show up now
    orders = [[(e["frm"], e["msg"]) for e in p.of("notify")] for p in procs]
    assert orders[0] == orders[1] == orders[2]
    expected = {(s, f"{s}#{i}") for s in "ABC" for i in range(n)}
    assert len(orders[0]) == 3 * n and set(orders[0]) == expected
    for s in "ABC":   # per-sender FIFO
        assert [m for f, m in orders[0] if f == s] == [f"{s}#{i}" for i in range(n)]
    interleaved = sum(1 for x, y in zip(orders[0], orders[0][1:]) if x[0] != y[0])
    assert interleaved >= 2, "senders were expected to run concurrently"


def test_notifies_and_joins_interleave_consistently(start):
    a, b = start_members(start, "AB")
    a.send("notify 100")
    c = start("C")
    c.wait_joined()
    a.wait(lambda ev: any(e["ev"] == "notified" for e in ev), 30, "notify returned")
    for p in (a, b, c):
        p.wait(p.sees(["A", "B", "C"]))
    for p in (a, b):
        p.wait(lambda ev: any(e["ev"] == "notify" and e["msg"] == "A#99" for e in ev), 10, "last")
    time.sleep(0.3)

    def seq(p):   # events from the point C joined
        ev = [e for e in p.events if e["ev"] in ("join", "notify")]
        i = next(k for k, e in enumerate(ev) if e["ev"] == "join" and e["who"] == "C")
        return [(e["ev"], e.get("msg")) for e in ev[i:]]
    assert seq(a) == seq(b) == seq(c)
    assert len(a.of("notify")) == len(b.of("notify")) == 100


def test_sigkilled_member_removed_within_timeout(start):
    a, b, c = start_members(start, "ABC")
    b.p.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    bound = TIMEOUT + 2
    for p in (a, c):
        p.wait(p.sees(["A", "C"]), timeout=bound + 1, what="B removed")
    elapsed = time.monotonic() - t0
    assert elapsed < bound, elapsed
    assert [e["who"] for e in a.of("leave")] == [e["who"] for e in c.of("leave")] == ["B"]
    assert a.views() == [["A"], ["A", "B"], ["A", "B", "C"], ["A", "C"]]


def test_sigkilled_master_is_replaced(start):
    a, b, c = start_members(start, "ABC")
    a.p.kill()
    for p in (b, c):
        p.wait(p.sees(["B", "C"]), timeout=TIMEOUT + 3, what="A removed")
    d = start("D")
    d.wait_joined()
    for p in (b, c, d):
        p.wait(p.sees(["B", "C", "D"]), what="D joined")
    assert [e["who"] for e in b.of("check_join")] == ["D"]
    assert not c.of("check_join") and not d.of("check_join")
    assert b.views()[1:] == c.views() == [["A", "B", "C"], ["B", "C"], ["B", "C", "D"]]
    assert b.views()[-2:] == c.views()[-2:] == [["B", "C"], ["B", "C", "D"]]
    assert d.views() == [["B", "C", "D"]]


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


def test_two_cluster_ids_are_independent(start, zookeeper):
    one = f"zookeeper:{zookeeper}/one-{uuid.uuid4().hex[:8]},timeout={TIMEOUT}"
    two = f"zookeeper:{zookeeper}/two-{uuid.uuid4().hex[:8]},timeout={TIMEOUT}"
    a, b = start("A", spec_=one), start("B", spec_=two)
    a.wait_joined()
    b.wait_joined()
    c = start("C", spec_=one)
    c.wait_joined()
    a.wait(a.sees(["A", "C"]))
    b.send("notify 3")
    b.wait(lambda ev: len([e for e in ev if e["ev"] == "notify"]) == 3)
    time.sleep(0.2)
    assert b.views() == [["B"]] and c.views() == [["A", "C"]]
    assert not a.of("notify") and not c.of("notify")


def test_cluster_restarts_after_everyone_died(start, zookeeper, spec):
    a, b = start_members(start, "AB")
    a.p.kill()
    b.p.kill()
    c = start("C")   # finds a view of dead members: removes them, then forms
    c.wait_joined(timeout=TIMEOUT + 10)
    assert c.views() == [["C"]]
    d = start("D")
    d.wait_joined()
    c.wait(c.sees(["C", "D"]))


def test_queue_is_garbage_collected(start, zookeeper, spec):
    from kazoo.client import KazooClient
    a, b = start_members(start, "AB")
    a.send("notify 200")
    a.wait(lambda ev: any(e["ev"] == "notified" for e in ev), 30)
    b.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 200, 10)
    base = "/pysheepdog/" + spec.split("/", 1)[1].split(",")[0]
    zk = KazooClient(hosts=zookeeper)
    zk.start()
    try:
        deadline = time.monotonic() + 10
        while len(zk.get_children(base + "/queue")) > 10:
            assert time.monotonic() < deadline, len(zk.get_children(base + "/queue"))
            time.sleep(0.2)
    finally:
        zk.stop()
        zk.close()
    b.send("notify 2")   # still works after collection
    a.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 202, 10)


def test_join_pending_when_master_hangs_is_answered_by_next(start):
    a, b = start_members(start, "AB")
    a.p.send_signal(signal.SIGSTOP)   # master alive but silent: its session expires
    t0 = time.monotonic()
    d = start("D")
    d.wait_joined(timeout=TIMEOUT + 10)
    assert time.monotonic() - t0 >= TIMEOUT - 0.5, "D joined while the master could not answer"
    b.wait(b.sees(["B", "D"]))
    assert [e["who"] for e in b.of("check_join")] == ["D"]
    assert b.views() == [["A", "B"], ["B"], ["B", "D"]]
    assert d.views() == [["B", "D"]]
