"""The driver contract (virtual synchrony), checked on every registered driver
with real member processes (``member_proc.py``) and SIGKILL.

Drivers come from ``drivers.DRIVERS``; adding a driver there runs all of
these tests against it.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # test modules load with importlib
from drivers import DRIVERS, Proc

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture(params=sorted(DRIVERS))
def cluster(request, tmp_path):
    """``start(ident, opaque=None)`` -> Proc, for the parametrized driver."""
    spec, cleanup = DRIVERS[request.param](tmp_path)
    procs: list[Proc] = []

    def start(ident, opaque=None):
        proc = Proc(spec(len(procs)), ident, opaque)
        procs.append(proc)
        return proc

    start.driver = request.param
    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()
        cleanup()


def form(start, idents):
    procs = []
    for ident in idents:
        procs.append(start(ident))
        procs[-1].wait_joined(20)
    for p in procs:
        p.wait(p.sees(list(idents)), 10, "initial view")
    return procs


def settle(alive, timeout=20.0):
    """Poll (with a deadline) until every live member's last view holds exactly
    the live members, is the same everywhere, and all delivered as many
    messages they will agree on."""
    deadline = time.monotonic() + timeout
    idents = sorted(p.ident for p in alive)
    while True:
        views = [tuple(p.views()[-1]) if p.views() else () for p in alive]
        if all(sorted(v) == idents for v in views) and len(set(views)) == 1:
            return views[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no agreement on {idents}: {views}")
        time.sleep(0.05)


def check_virtual_synchrony(alive):
    """Every member's delivered sequence of views and messages, from its own
    join on, is the same segment of the oldest member's sequence, and no
    message is delivered twice."""
    hists = {p.ident: p.history() for p in alive}
    ref = max(hists.values(), key=len)
    for ident, h in hists.items():
        assert h[0][0] == "view" and ident in h[0][1]
        start = ref.index(h[0])
        # the later joiner may lag by a few events still in flight: compare the common part
        common = min(len(h), len(ref) - start)
        assert h[:common] == ref[start:start + common], f"{ident} diverges"
        msgs = Counter(x for x in h if x[0] == "msg")
        dup = [m for m, c in msgs.items() if c > 1]
        assert not dup, f"{ident} delivered twice: {dup[:5]}"
    return ref


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_virtual_synchrony_under_kills_joins_and_concurrent_notifies(cluster, seed):
    rnd = random.Random(seed)
    alive = form(cluster, [f"M{i}" for i in range(5)])
    completed: dict[str, int] = {}   # prefix -> notifies confirmed by notify()
    commands: Counter = Counter()     # ident -> notify commands sent
    n_next, per = 5, 25
    for rnd_no in range(4):
        senders = rnd.sample(alive, 3)
        prefixes = {}
        for p in senders:
            prefixes[p.ident] = f"{p.ident}r{rnd_no}"
            commands[p.ident] += 1
            p.send(f"notify {per} {prefixes[p.ident]}")
        victim = rnd.choice(alive)
        watch, after = senders[0], rnd.randrange(per)
        watch.wait(lambda ev, pre=prefixes[watch.ident] + "#", k=after: sum(
            e["ev"] == "notify" and e["msg"].startswith(pre) for e in ev) >= k, 20, "progress")
        victim.kill()            # SIGKILL, possibly the master, while notifies are in flight
        alive.remove(victim)
        joiner = cluster(f"M{n_next}")
        n_next += 1
        alive.append(joiner)
        joiner.wait_joined(30)
        for p in senders:
            if p is not victim:
                p.wait(lambda ev, n=commands[p.ident]: sum(e["ev"] == "notified" for e in ev) >= n,
                       30, "own notifies")
                completed[prefixes[p.ident]] = p.of("notified")[-1]["count"]
        settle(alive)
    ref = check_virtual_synchrony(alive)
    delivered = Counter(x[2].split("#")[0] for x in ref if x[0] == "msg")
    for prefix, n in completed.items():
        assert n == per, f"{prefix}: only {n} of {per} notifies returned"
        assert delivered[prefix] == n, f"{prefix}: {delivered[prefix]} of {n} confirmed notifies delivered"
    # messages of one sender are delivered in the order sent, each at most once
    for prefix in delivered:
        nums = [int(x[2].split("#")[1]) for x in ref if x[0] == "msg" and x[2].split("#")[0] == prefix]
        assert nums == sorted(set(nums)), f"{prefix} out of order or duplicated"


def test_master_killed_new_master_within_5s_and_joins_work(cluster):
    procs = form(cluster, ["A", "B", "C", "D"])
    for p in procs[1:]:
        p.send("notify 5")
    for p in procs:
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) >= 15, 10, "notifies")
    t0 = time.monotonic()
    procs[0].kill()
    survivors = procs[1:]
    for p in survivors:
        p.wait(p.sees(["B", "C", "D"]), 5.0 - (time.monotonic() - t0), "new master")
    assert time.monotonic() - t0 < 5.0
    histories = [p.history() for p in survivors]
    ref = check_virtual_synchrony(survivors)
    assert [p.views() for p in survivors[1:]] == [survivors[0].views()[-len(p.views()):]
                                                   for p in survivors[1:]]
    assert ref[-1] == ("view", ("B", "C", "D")) and histories
    e = cluster("E")
    e.wait_joined(20)
    for p in survivors + [e]:
        p.wait(p.sees(["B", "C", "D", "E"]), 10, "E joined")
    assert [x["who"] for x in procs[1].of("check_join")] == ["E"]
    assert not procs[2].of("check_join") and not procs[3].of("check_join")
    e.send("notify 3")
    for p in survivors + [e]:
        p.wait(lambda ev: any(x["ev"] == "notify" and x["msg"] == "E#2" for x in ev), 10, "E's notifies")
    check_virtual_synchrony(survivors + [e])


def test_rejected_joiner_gets_reply_and_cluster_unchanged(cluster):
    a, b = form(cluster, ["A", "B"])
    r = cluster("R", opaque="reject")
    r.wait(lambda ev: any(e["ev"] == "rejected" for e in ev), 20, "rejection")
    assert r.of("rejected")[0]["reply"] == "go away R"
    assert r.p.wait(10) == 2
    assert a.views() == [["A"], ["A", "B"]] and b.views() == [["A", "B"]]
    assert [e["who"] for e in a.of("check_join")] == ["A", "B", "R"]


@pytest.mark.parametrize("kind", ["notify", "join"])
def test_a_callback_that_raises_fails_the_member(cluster, kind):
    """base.py, "Callbacks must not raise": the member delivers nothing more,
    stops serving at once, its driver closes abruptly (the others see it
    leave as a failure) and ``on_driver_failure`` is called."""
    a, b, c = form(cluster, ["A", "B", "C"])
    c.wait_serving(True)
    c.send(f"raise_next {kind}")
    c.wait(lambda ev: any(e["ev"] == "armed" for e in ev), 10, "armed")
    if kind == "notify":
        a.send("notify 3")
        others = [a, b]
    else:
        others = [a, b, cluster("D")]
        others[-1].wait_joined(30)
    c.wait(lambda ev: any(e["ev"] == "driver_failure" for e in ev), 20, "on_driver_failure")
    survivors = [p.ident for p in others]
    for p in others:
        p.wait(p.sees(survivors), 20, "the failed member removed")
        assert p.of("leave")[-1]["who"] == "C"
    if kind == "notify":
        for p in others:
            p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 3, 10, "A's notifies")
    raised = c.of("raising")
    assert [e["cb"] for e in raised] == [kind]
    assert c.of("driver_failure")[0]["t"] >= raised[0]["t"]
    assert not [e for e in c.membership() if e["t"] > raised[0]["t"]], "delivered after raising"
    assert not c.of("notify")
    assert not [e for e in c.serving(raised[0]["t"]) if e["ok"]], "served after raising"
    c.send("serving")
    c.wait(lambda ev: any(e["ev"] == "may_serve" for e in ev), 10, "may_serve")
    assert c.of("may_serve")[0]["ok"] is False
    assert c.p.poll() is None, "the process lives on; only its driver closed"
