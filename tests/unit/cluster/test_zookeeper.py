"""The zookeeper membership driver, driven by real separate processes against
a real ZooKeeper server (the session fixture ``zookeeper``, tests/zkserver.py)."""

import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from sheep.cluster.drivers.base import DRIVERS, create_driver
from sheep.cluster.drivers.zookeeper import (
    DEFAULT_CLUSTER_ID,
    DEFAULT_TIMEOUT,
    ZookeeperDriver,
    parse_option,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from drivers import Proc, rejoined
from tcpproxy import TcpProxy

from sheep.cluster.drivers.zookeeper_session import LEASE_FRACTION

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
    assert DRIVERS["zookeeper"] == "sheep.cluster.drivers.zookeeper:ZookeeperDriver"


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


# ---- cut off from ZooKeeper (a TCP proxy between one member and the server) ---

@pytest.fixture
def proxy(zookeeper):
    p = TcpProxy(int(zookeeper.rsplit(":", 1)[1]))
    yield p
    p.close()


def three_with_c_behind(start, spec, zookeeper, proxy):
    a, b = start_members(start, "AB")
    c = start("C", spec_=spec.replace(zookeeper, proxy.address))
    c.wait_joined()
    for p in (a, b, c):
        p.wait(p.sees(["A", "B", "C"]), what="full view")
    c.wait_serving(True)
    return a, b, c


def test_cut_off_past_the_session_timeout_stops_serving_then_rejoins_by_itself(
        start, spec, zookeeper, proxy):
    a, b, c = three_with_c_behind(start, spec, zookeeper, proxy)
    t_cut = time.monotonic()
    proxy.blackhole()   # silence: only timeouts can tell
    c.wait(lambda ev: any(e["ev"] == "quorum" and not e["ok"] for e in ev), TIMEOUT + 2, "suspended")
    for p in (a, b):
        p.wait(p.sees(["A", "B"]), TIMEOUT + 5, "C removed")
    t_leave = min(e["t"] for p in (a, b) for e in p.of("leave") if e["who"] == "C")
    suspended = c.of("quorum")[0]["t"]
    t_off = c.stopped_serving(t_cut, t_leave)   # not serving from then on
    assert t_off - t_cut < LEASE_FRACTION * TIMEOUT + 0.3, f"served {t_off - t_cut:.2f}s after the cut"
    assert t_off < suspended + 0.05, "served while suspended"   # (lease or state, whichever first)
    assert suspended < t_leave
    assert t_leave - t_cut > TIMEOUT - 0.5, "removed before its session could expire"

    proxy.heal()
    c.wait(rejoined("C"), 20, "quorum True, then its own join")
    for p in (a, b):
        p.wait(p.sees(["A", "B", "C"]), 10, "C back")
    evs = c.membership()
    lost = next(i for i, e in enumerate(evs) if e["ev"] == "quorum")
    assert [(e["ev"], e.get("ok"), e.get("who")) for e in evs[lost:lost + 3]] == [
        ("quorum", False, None), ("quorum", True, None), ("join", None, "C")]
    rejoin = evs[lost + 2]
    assert rejoin["members"] == ["A", "B", "C"]   # a fresh joiner's first view
    assert not [e for e in c.serving(t_off) if e["ok"] and e["t"] < rejoin["t"]]
    assert [e["opaque"] for e in a.of("check_join") if e["who"] == "C"] == ["", "C/rejoin-1"]
    c.wait_serving(True)
    c.send("notify 2")
    for p in (a, b, c):
        p.wait(lambda ev: any(e["ev"] == "notify" and e["msg"] == "C#1" for e in ev), 10, "C's notify")


def test_short_cut_resumes_the_same_session_without_a_leave(start, spec, zookeeper, proxy):
    a, b, c = three_with_c_behind(start, spec, zookeeper, proxy)
    t_cut = time.monotonic()
    proxy.drop_and_hold()   # the connection breaks; reconnecting hangs
    c.wait(lambda ev: any(e["ev"] == "quorum" and not e["ok"] for e in ev), TIMEOUT, "suspended")
    c.wait_serving(False, 1)
    time.sleep(max(0.0, t_cut + TIMEOUT / 2 - time.monotonic()))   # the scenario: a 1 s outage
    proxy.heal()
    c.wait(lambda ev: any(e["ev"] == "quorum" and e["ok"] for e in ev), TIMEOUT, "resumed")
    c.wait_serving(True)
    c.send("notify 2")
    for p in (a, b, c):
        p.wait(lambda ev: any(e["ev"] == "notify" and e["msg"] == "C#1" for e in ev), 10, "C's notify")
    assert [(e["ev"], e.get("ok")) for e in c.membership() if e["t"] > t_cut][:2] == [
        ("quorum", False), ("quorum", True)]
    assert c.views() == [["A", "B", "C"]], "same session: no rejoin"
    assert not a.of("leave") and not b.of("leave")
    assert [e["who"] for e in a.of("check_join")] == ["A", "B", "C"]


def test_sigstop_past_the_session_timeout_then_sigcont_serves_nothing_until_rejoined(start):
    """At SIGCONT kazoo still says CONNECTED (its thread did not run yet):
    only the lease makes ``may_serve`` False there."""
    a, b, c = start_members(start, "ABC")
    c.wait_serving(True)
    c.p.send_signal(signal.SIGSTOP)
    try:
        for p in (a, b):
            p.wait(p.sees(["A", "B"]), TIMEOUT + 5, "C removed")
        t_cont = time.monotonic()
    finally:
        c.p.send_signal(signal.SIGCONT)
    c.wait(lambda ev: any(e["ev"] == "sigcont" for e in ev), 10, "the sample at SIGCONT")
    assert [e["ok"] for e in c.of("sigcont")] == [False]
    c.wait(rejoined("C"), 20, "rejoined by itself")
    own = next(e for e in c.of("join") if e["t"] > t_cont)
    assert own["who"] == "C" and own["members"] == ["A", "B", "C"]
    assert not [e for e in c.serving(t_cont) if e["ok"] and e["t"] < own["t"]]
    c.wait_serving(True)
