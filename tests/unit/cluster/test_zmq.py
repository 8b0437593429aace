"""zmq-driver specifics: option parsing, endpoints, and a real network
partition of 5 members (3/2) built from Linux network namespaces.

The partition test puts each member in its own network namespace, wired
through veth pairs to a bridge in the root namespace; the partition moves the
two minority members' veths to a second bridge (they still see each other,
not the three), healing moves them back.  It needs root and iproute2 and is
skipped otherwise (the driver has no test hook in its transport).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # test modules load with importlib
from drivers import Proc, free_ports, rejoined

from sheep.cluster.drivers.base import create_driver
from sheep.cluster.drivers.zmq import ZmqDriver
from sheep.cluster.drivers.zmq_proto import (
    FAIL,
    LEASE,
    cfg_after,
    merge_logs,
    parse_option,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_option_parsing():
    assert parse_option("127.0.0.1:7100,10.0.0.2:7100") == (
        ["tcp://127.0.0.1:7100", "tcp://10.0.0.2:7100"], None)
    assert parse_option("localhost:1,self=127.0.0.1:9") == (["tcp://127.0.0.1:1"], "tcp://127.0.0.1:9")
    assert parse_option("[::1]:7100") == (["tcp://[::1]:7100"], None)
    for bad in ("", "127.0.0.1", "127.0.0.1:0", "h:1,what=2"):
        with pytest.raises(ValueError):
            parse_option(bad)
    assert isinstance(create_driver("zmq:127.0.0.1:7100", events=None), ZmqDriver)


def test_merge_takes_the_log_of_the_latest_normal_view():
    def e(g, v):
        return {"g": g, "v": v, "k": "nop", "i": "x"}
    acks = {   # B was normal in view 3 and holds 5..6; C is stale from view 2
        "A": {"nv": 2, "last": 4, "c": 4, "es": []},
        "B": {"nv": 3, "last": 6, "c": 4, "es": [e(5, 3), e(6, 3)]},
        "C": {"nv": 2, "last": 7, "c": 3, "es": [e(4, 2), e(5, 2), e(6, 2), e(7, 2)]},
    }
    own = {g: e(g, 2) for g in range(1, 5)}
    assert merge_logs(acks, own, 4) == [e(4, 2), e(5, 3), e(6, 3)]
    assert merge_logs({"A": {"nv": 1, "last": 3, "c": 0, "es": [e(3, 1)]}}, {}, 0) is None
    join = {"k": "join", "i": "B", "node": "", "ep": "e"}
    assert cfg_after([{"i": "A"}], [join, {"k": "leave", "i": "A"}]) == [{"i": "B", "node": "", "ep": "e"}]


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def test_members_take_free_seed_endpoints_then_ephemeral_ports(procs):
    ports = free_ports(2)
    spec = "zmq:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    for ident in ("A", "B", "C"):   # C finds both seed ports taken
        procs.append(Proc(spec, ident))
        procs[-1].wait_joined(20)
    for p in procs:
        p.wait(p.sees(["A", "B", "C"]), 10, "three members")
    procs[2].send("notify 3")
    for p in procs:
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 3, 10, "C's notifies")


def test_two_member_cluster_stops_when_one_dies(procs):
    """The primary-partition rule: 1 of 2 is no majority."""
    spec = "zmq:" + ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    a = Proc(spec, "A")
    procs.append(a)
    a.wait_joined(20)
    b = Proc(spec, "B")
    procs.append(b)
    b.wait_joined(20)
    a.wait(a.sees(["A", "B"]), 10)
    b.kill()
    a.wait(lambda ev: any(e["ev"] == "quorum" and e["ok"] is False for e in ev), 10, "quorum lost")
    assert a.views() == [["A"], ["A", "B"]]


# ---- the partition ----------------------------------------------------------

def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """Five namespaces on bridge 'main'; returns (namespaces, addrs, move)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 10000:04d}"
    net = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    bridges = {"main": f"sdbm{tag}", "cut": f"sdbc{tag}"}
    spaces, addrs, made_ns, made_br = [], [], [], []
    try:
        try:
            for br in bridges.values():
                _ip("link", "add", br, "type", "bridge")
                made_br.append(br)
                _ip("link", "set", br, "up")
            for i in range(1, 6):
                ns, veth = f"sdn{tag}{i}", f"sdv{tag}{i}"
                _ip("netns", "add", ns)
                made_ns.append(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", bridges["main"], "up")
                _ip("-n", ns, "addr", "add", f"{net}.{i}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                spaces.append(ns)
                addrs.append(f"{net}.{i}")
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            pytest.skip(f"network namespaces unavailable: {getattr(e, 'stderr', e)}")

        def move(index: int, bridge: str):
            _ip("link", "set", f"sdv{tag}{index + 1}", "master", bridges[bridge])

        yield spaces, addrs, move
    finally:
        for i, ns in enumerate(made_ns, 1):   # the veth goes at once, the namespace lazily
            _ip("link", "del", f"sdv{tag}{i}", check=False)
            _ip("netns", "del", ns, check=False)
        for br in made_br:
            _ip("link", "del", br, check=False)


def check_rejoin(p, cut: float) -> tuple[float, float]:
    """Nothing delivered between quorum False and True; quorum True comes
    right before the member's own join; it stopped serving after ``cut`` and
    served nothing from then on until that join.  Returns (the time it
    stopped serving for good, the time of that join)."""
    evs = p.membership()
    lost = next(i for i, e in enumerate(evs) if e["ev"] == "quorum" and e["t"] > cut)
    regained = next(i for i, e in enumerate(evs) if e["ev"] == "quorum" and i > lost)
    assert evs[lost]["ok"] is False and evs[regained]["ok"] is True
    assert evs[lost + 1:regained] == [], f"{p.ident} delivered while out"
    own = evs[regained + 1]
    assert (own["ev"], own["who"]) == ("join", p.ident), f"{p.ident}: quorum True not before its join"
    return p.stopped_serving(cut, own["t"]), own["t"]


def test_partition_3_2_minority_stops_majority_goes_on_then_heals(netns, procs):
    spaces, addrs, move = netns
    spec = "zmq:" + ",".join(f"{a}:7100" for a in addrs)
    idents = [f"M{i}" for i in range(5)]
    for i, ident in enumerate(idents):
        procs.append(Proc(spec, ident, prefix=["ip", "netns", "exec", spaces[i]]))
        procs[-1].wait_joined(20)
    for p in procs:
        p.wait(p.sees(idents), 10, "five members")
    procs[1].send("notify 5 before")
    for p in procs:
        p.wait(lambda ev: sum(e["ev"] == "notify" for e in ev) == 5, 10, "notifies before")
        p.wait_serving(True)

    minority = [procs[0], procs[4]]          # the master M0 is cut off with M4
    majority = procs[1:4]
    t_cut = time.monotonic()
    for p in minority:
        move(procs.index(p), "cut")
    procs[0].send("notify 5 minority")       # the old master cannot commit these
    for p in majority:
        p.wait(p.sees(["M1", "M2", "M3"]), 15, "majority view")
    for p in minority:
        p.wait(lambda ev: any(e["ev"] == "quorum" and not e["ok"] for e in ev), 15, "quorum lost")
    procs[2].send("notify 5 majority")
    for p in majority:
        p.wait(lambda ev: any(e["ev"] == "notify" and e["msg"] == "majority#4" for e in ev), 10,
               "majority notifies")
    minority_len = {p.ident: len(p.history()) for p in minority}
    moved_on = min(e["t"] for p in majority for e in p.of("leave") if e["who"] in ("M0", "M4"))

    for p in minority:
        move(procs.index(p), "main")
    for p in minority:
        p.wait(rejoined(p.ident), 20, "back in quorum, then its own join")
    # each member delivers the rejoins on its own time: wait until M1 has both
    majority[0].wait(lambda ev: sorted(([e["members"] for e in ev if e["ev"] in ("join", "leave")]
                                        or [[]])[-1]) == sorted(idents), 10, "both rejoins")
    final = majority[0].views()[-1]
    assert sorted(final) == sorted(idents)
    for p in procs:
        p.wait(p.sees(final), 10, "identical final views")

    ref = majority[0].history()   # M1 is the oldest: the others' histories are suffixes
    for p in majority[1:]:
        h = p.history()
        assert h == ref[ref.index(h[0]):], f"{p.ident} diverges"
    assert not any(h[0] == "msg" and h[2].startswith("minority#") for h in ref)
    for p in minority:
        h = p.history()
        cut = minority_len[p.ident]
        before, after = h[:cut], h[cut:]
        if before[0] in ref:   # joined after M1: a segment of M1's history
            start = ref.index(before[0])
            assert before == ref[start:start + len(before)], f"{p.ident} delivered something the majority did not"
        else:                  # M0, older than M1: from M1's join on, a prefix of M1's
            tail = before[before.index(ref[0]):]
            assert tail == ref[:len(tail)], f"{p.ident} delivered something the majority did not"
        # nothing delivered while cut off, quorum True just before its own join;
        # it stopped serving before the majority moved on (delivered the
        # leaves), within its lease of the cut, and served nothing until then
        stop, _ = check_rejoin(p, t_cut)
        assert stop < moved_on, (p.ident, stop, moved_on)
        assert stop - t_cut < LEASE + 0.3, f"{p.ident} served {stop - t_cut:.2f}s after the cut"
        # rejoined as a new member: its own join, then the majority's suffix
        assert after[0][0] == "view" and p.ident in after[0][1]
        start = len(ref) - 1 - ref[::-1].index(after[0])   # its latest incarnation
        assert after == ref[start:start + len(after)]
    procs[0].send("notify 3 healed")
    for p in procs:
        p.wait(lambda ev: any(e["ev"] == "notify" and e["msg"] == "healed#2" for e in ev), 10, "healed")
        p.wait_serving(True)
    # the rejoins asked for fresh join data
    joins = {e["opaque"] for e in majority[0].of("check_join")}
    assert {"M0/rejoin-1", "M4/rejoin-1"} <= joins, joins


# ---- SIGSTOP / SIGCONT --------------------------------------------------------

@pytest.mark.parametrize("who,stop", [("member", "past FAIL"), ("master", "past FAIL"),
                                      ("member", "past LEASE only")])
def test_sigstop_then_sigcont_serves_nothing_until_heard_again(procs, who, stop):
    """A frozen process wakes up with a lapsed lease: ``may_serve`` at
    SIGCONT, before the process read what waits on its socket, is False.
    Frozen past FAIL it was removed: it serves nothing until it rejoined.
    Frozen past LEASE only, it serves again once its master answered, and
    nobody removed it."""
    spec = "zmq:" + ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    for ident in "ABC":
        procs.append(Proc(spec, ident))
        procs[-1].wait_joined(20)
    for p in procs:
        p.wait(p.sees(["A", "B", "C"]), 10, "three members")
        p.wait_serving(True)
    victim = procs[2] if who == "member" else procs[0]
    rest = [p for p in procs if p is not victim]
    t_stop = time.monotonic()
    victim.p.send_signal(signal.SIGSTOP)
    try:
        if stop == "past FAIL":   # until the others moved on without it
            for p in rest:
                p.wait(p.sees([q.ident for q in rest]), 10, "the frozen one removed")
        else:
            time.sleep(LEASE + 0.1)   # the scenario: frozen past its lease, not past FAIL
            assert time.monotonic() - t_stop < FAIL - 0.2
        t_cont = time.monotonic()
    finally:
        victim.p.send_signal(signal.SIGCONT)
    victim.wait(lambda ev: any(e["ev"] == "sigcont" for e in ev), 10, "the sample at SIGCONT")
    assert [e["ok"] for e in victim.of("sigcont")] == [False]
    if stop == "past FAIL":
        victim.wait(rejoined(victim.ident), 20, "rejoined")
        _, own = check_rejoin(victim, t_cont)
        assert not [e for e in victim.serving(t_cont) if e["ok"] and e["t"] < own]
        for p in procs:
            p.wait(p.sees([q.ident for q in rest] + [victim.ident]), 10, "rejoined view")
    else:
        victim.wait_serving(True, 5)
        assert not victim.of("quorum")
        for p in rest:
            assert not p.of("leave"), "nobody removed it"
    victim.wait_serving(True, 10)
