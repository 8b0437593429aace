"""Recovery (sheep.cluster.recovery) around the rule for one object: what an
epoch change demotes, what a pass recovers and announces, when stale copies
are purged, and how on-access recoveries share one attempt.

The collaborators are fakes behind the interfaces Recovery uses: the group
(``ring``, ``epoch``, ``nodes``, ``jobs.submit``, ``driver.notify``,
``settled``), an in-memory store (``oid_array``, ``stale_oid_array``,
``move_many_to_stale``, ``purge_stale``, ``exists``), the peers' object
lists (``peers.request``, the recovery pool) and the fetcher (``recover``,
``repair``).  Placement is the real ``Ring``.
"""

import asyncio
import json

import numpy as np
import pytest

from sheep import proto
from sheep.cluster import events as ev
from sheep.cluster.fetch import Fetcher, Outcome
from sheep.cluster.recovery import Recovery
from sheep.proto.errors import CODES, error_for
from sheep.proto.placement import Ring

pytestmark = pytest.mark.quick

NODES = [proto.SdNode.make("127.0.0.1", 7000 + i, 64, i) for i in range(5)]
ME = NODES[0]


def key(n):
    return f"{n.host}:{n.port}"


class FakeJobs:
    """``group.jobs``: queued, run when the test says (as the store worker would)."""

    def __init__(self):
        self.queue = []

    def submit(self, what, fn, *args):
        self.queue.append((what, fn, args))

    def run_all(self):
        out = []
        while self.queue:
            _what, fn, args = self.queue.pop(0)
            out.append(fn(*args))
        return out


class FakeDriver:
    def __init__(self):
        self.sent = []

    async def notify(self, msg):
        self.sent.append(json.loads(msg))


class FakeGroup:
    def __init__(self, nodes=NODES, epoch=5):
        self.nodes = list(nodes)
        self.ring = Ring(self.nodes)
        self.epoch = epoch
        self.status = "ok"
        self.disable_recovery = False
        self.jobs = FakeJobs()
        self.driver = FakeDriver()
        self.gate = None  # an asyncio.Event settled() waits for, if set

    def is_me(self, n):
        return key(n) == key(ME)

    async def settled(self):
        if self.gate is not None:
            await self.gate.wait()


class FakeStore:
    def __init__(self):
        self.live = set()
        self.stale = {}  # oid -> set of epoch tags
        self.purges = 0

    def oid_array(self):
        return np.array(sorted(self.live), dtype=np.uint64)

    def stale_oid_array(self):
        return np.array(sorted(self.stale), dtype=np.uint64)

    def exists(self, oid):
        return oid in self.live

    def move_many_to_stale(self, oids, epoch):
        n = 0
        for oid in oids:
            if oid in self.live:
                self.live.remove(oid)
                self.stale.setdefault(oid, set()).add(epoch)
                n += 1
        return n

    def purge_stale(self):
        n = sum(len(t) for t in self.stale.values())
        self.stale.clear()
        self.purges += 1
        return n


class FakePeers:
    """The recovery peers: GET_OBJ_LIST answers, BUFFER_SMALL as a sheep does."""

    def __init__(self):
        self.lists = {}  # node key -> oids
        self.errors = {}  # node key -> result code
        self.asked = []  # (node key, data_length)

    async def request(self, node, req):
        assert req.opcode == proto.Op.GET_OBJ_LIST and req.flags & proto.SD_FLAG_CMD_RECOVERY
        self.asked.append((key(node), req.data_length))
        if key(node) in self.errors:
            raise error_for(self.errors[key(node)])
        body = np.array(sorted(self.lists.get(key(node), ())), dtype="<u8").tobytes()
        if len(body) > req.data_length:
            raise error_for(CODES["BUFFER_SMALL"])
        return proto.Response(req.opcode, epoch=req.epoch), body


class FakeFetcher:
    """``Recovery.fetcher``: ``outcome[oid]`` (or a callable / exception) per attempt."""

    def __init__(self, sheep):
        self.sheep = sheep
        self.outcome = {}
        self.calls = []
        self.gate = None  # an Event each attempt waits for, if set
        self.repairs = []

    def holds(self, oid, ring=None):
        return make_fetcher(self.sheep).holds(oid, ring)

    async def recover(self, oid):
        self.calls.append(oid)
        if self.gate is not None:
            await self.gate.wait()
        out = self.outcome.get(oid, Outcome.PRESENT)
        if callable(out):
            out = out(oid)
        if isinstance(out, BaseException):
            raise out
        if out is Outcome.PRESENT:
            self.sheep.store.live.add(oid)
        return out

    async def repair(self, oid):
        self.repairs.append(oid)
        if self.gate is not None:
            await self.gate.wait()
        raise error_for(CODES["EIO"], "no good copy")  # best effort: swallowed


class FakeSheep:
    def __init__(self, group=None):
        self.group = group or FakeGroup()
        self.me = ME
        self.store = FakeStore()
        self.peers = FakePeers()
        self.copies = {}  # vid -> copies (default 3)
        self.vdis = type("V", (), {"tombs": {},
                                   "copies_of": lambda _s, vid: self.copies.get(vid, 3)})()
        self.recovery_throttle = proto.RecoveryThrottling()

    async def io(self, fn, *args, size=None, cached=None):  # (the blocking call only)
        return fn(*args)

    async def io_thread(self, fn, *args):
        return fn(*args)


def make_recovery(s) -> Recovery:
    return Recovery(me=s.me, group=s.group, store=s.store, vdis=s.vdis,
                    throttle=s.recovery_throttle, peers=s.peers, io=s.io, io_thread=s.io_thread)


def make_fetcher(s) -> Fetcher:
    return Fetcher(group=s.group, store=s.store, vdis=s.vdis, peers=s.peers, io=s.io,
                   io_thread=s.io_thread)


@pytest.fixture
def sheep():
    return FakeSheep()


@pytest.fixture
def rec(sheep):
    r = make_recovery(sheep)
    r.fetcher = FakeFetcher(sheep)
    return r


def oids_of(n, vid=0x1234):
    return [proto.vid_to_data_oid(vid, i) for i in range(n)]


def held(sheep, oids, ring=None):
    f = make_fetcher(sheep)
    return [o for o in oids if f.holds(o, ring)], [o for o in oids if not f.holds(o, ring)]


async def until(pred, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


# ---------------------------------------------------------------------------
# owned_mask


def test_owned_mask_agrees_with_holds_for_every_vdi_copy_count(sheep):
    r = make_recovery(sheep)
    sheep.copies = {1: 1, 2: 2, 3: 3, 4: 7, 5: 0}  # 7 > zones: capped; 0: nobody holds
    oids = np.array([o for vid in range(1, 7) for o in oids_of(300, vid)]
                    + [proto.vid_to_vdi_oid(v) for v in range(1, 7)], dtype=np.uint64)
    f = make_fetcher(sheep)
    for ring in (sheep.group.ring, Ring(NODES[:3]), Ring(NODES[:1])):
        mask = r.owned_mask(oids, ring)
        assert mask.dtype == bool and len(mask) == len(oids)
        assert mask.tolist() == [f.holds(int(o), ring) for o in oids]
    mask = r.owned_mask(oids, sheep.group.ring)
    per_vid = {v: mask[[proto.oid_to_vid(int(o)) == v for o in oids]].mean()
               for v in (1, 3, 4, 5)}
    assert per_vid[5] == 0 and per_vid[4] == 1  # 5 zones, 7 copies: every node
    assert 0.1 < per_vid[1] < per_vid[3] < 1


def test_owned_mask_is_all_false_off_the_ring_or_empty(sheep):
    r = make_recovery(sheep)
    oids = np.array(oids_of(50), dtype=np.uint64)
    assert not r.owned_mask(oids, Ring(NODES[1:])).any()
    assert not r.owned_mask(oids, Ring([])).any()
    assert r.owned_mask(np.empty(0, np.uint64), sheep.group.ring).shape == (0,)
    gateway_only = [proto.SdNode.make("127.0.0.1", 7000, 0, 0)] + NODES[1:]
    assert not r.owned_mask(oids, Ring(gateway_only)).any()  # no vnodes: holds nothing


# ---------------------------------------------------------------------------
# epoch changes


async def test_on_epoch_demotes_what_the_new_ring_does_not_hold_then_recovers(sheep, rec):
    g = sheep.group
    oids = oids_of(200)
    sheep.store.live = set(oids)
    g.epoch, g.ring = 6, Ring(NODES[:3] + [NODES[4]])  # NODES[3] left
    mine, others = held(sheep, oids, g.ring)
    assert mine and others
    rec.on_epoch(5)
    assert len(g.jobs.queue) == 1  # on the store worker, in delivery order
    assert sheep.store.live == set(oids)  # nothing moved on the event loop
    g.ring = Ring(NODES[:2])  # a later epoch's ring must not be used by this job
    (n,) = g.jobs.run_all()
    assert n == len(others)
    assert sheep.store.live == set(mine)
    assert sheep.store.stale == {o: {5} for o in others}  # tagged with the previous epoch
    g.ring = Ring(NODES[:3] + [NODES[4]])
    await until(lambda: g.driver.sent)  # and recovery of the new epoch ran
    assert g.driver.sent == [{"t": "recovered", "epoch": 6, "node": key(ME)}]


async def test_on_epoch_with_an_empty_store_moves_nothing(sheep, rec):
    rec.on_epoch(4)
    assert sheep.group.jobs.run_all() == [0]
    rec.stop()


async def test_a_new_epoch_replaces_the_running_recovery(sheep, rec):
    g = sheep.group
    g.gate = asyncio.Event()  # passes wait for the group to settle
    rec.on_epoch(4)
    first = rec._task
    g.epoch = 6
    rec.on_epoch(5)
    await until(lambda: first.done())
    assert first.cancelled() and rec._task is not first
    g.gate.set()
    await until(lambda: g.driver.sent)
    await rec._task
    assert g.driver.sent == [{"t": "recovered", "epoch": 6, "node": key(ME)}]


async def test_demote_all_keeps_every_live_copy_only_as_stale(sheep, rec):
    sheep.store.live = set(oids_of(20))
    sheep.store.stale = {99: {2}}
    rec.demote_all(3)
    assert len(sheep.store.live) == 20  # a job, not inline
    sheep.group.jobs.run_all()
    assert sheep.store.live == set()
    assert sheep.store.stale == {**{o: {3} for o in oids_of(20)}, 99: {2}}


def test_subscribe_wires_the_four_events(sheep, rec):
    bus = ev.Events()
    rec.subscribe(bus)
    assert rec.on_epoch in bus.subscribers(ev.EPOCH_CHANGED)
    assert rec.start in bus.subscribers(ev.RESUMED)
    assert rec.demote_all in bus.subscribers(ev.DATA_STALE)
    assert rec.on_recovered in bus.subscribers(ev.RECOVERED)


# ---------------------------------------------------------------------------
# completion


def test_stale_copies_are_purged_once_every_member_recovered_the_epoch(sheep, rec):
    g = sheep.group
    rec.on_recovered(4, key(NODES[1]))  # an old epoch: forgotten
    for n in NODES[:4]:
        rec.on_recovered(5, key(n))
    rec.on_recovered(5, "10.0.0.9:7000")  # not a member: does not stand in for one
    assert g.jobs.queue == [] and 4 not in rec.completed
    rec.on_recovered(5, key(NODES[4]))
    assert len(g.jobs.queue) == 1
    sheep.store.stale = {1: {4}, 2: {3, 4}}
    assert g.jobs.run_all() == [None] and sheep.store.stale == {}


def test_announcements_of_an_epoch_left_behind_never_purge(sheep, rec):
    g = sheep.group
    for n in NODES[:4]:
        rec.on_recovered(5, key(n))
    g.epoch = 6  # a node left or came before the last one announced 5
    rec.on_recovered(5, key(NODES[4]))
    assert g.jobs.queue == [] and set(rec.completed) == set()
    for n in NODES:
        rec.on_recovered(6, key(n))
    assert len(g.jobs.queue) == 1


# ---------------------------------------------------------------------------
# a pass


async def test_a_pass_recovers_the_held_objects_it_lacks_and_announces(sheep, rec):
    g = sheep.group
    oids = oids_of(300)
    mine, others = held(sheep, oids)
    have, lack = set(mine[:10]), mine[10:]
    sheep.store.live = set(have)
    sheep.store.stale = {lack[0]: {3}}  # a stale copy of its own counts as a candidate
    sheep.peers.lists = {key(NODES[1]): oids[:150], key(NODES[2]): oids[100:],
                         key(NODES[3]): [], key(NODES[4]): list(have)}
    assert await rec._pass(5) is True
    assert sorted(rec.fetcher.calls) == sorted(lack)  # neither what it has nor what it does not hold
    assert g.driver.sent == [{"t": "recovered", "epoch": 5, "node": key(ME)}]
    st = rec.state
    assert (st.in_recovery, st.state, st.nr_total, st.nr_finished) == (1, 2, len(lack), len(lack))
    assert rec.handled_total == len(lack)
    assert {n for n, _ in sheep.peers.asked} == {key(n) for n in NODES[1:]}  # never itself


@pytest.mark.parametrize("failure", ["peer list", "unavailable"])
async def test_an_incomplete_pass_is_not_announced(sheep, rec, failure):
    mine, _ = held(sheep, oids_of(100))
    sheep.peers.lists = {key(NODES[1]): mine}
    if failure == "peer list":
        sheep.peers.errors[key(NODES[3])] = CODES["NETWORK_ERROR"]
    else:
        rec.fetcher.outcome[mine[3]] = Outcome.UNAVAILABLE
    assert await rec._pass(5) is False
    assert sheep.group.driver.sent == []
    # NOT_HOLDER and ABSENT are decided outcomes: they do not hold the epoch back
    sheep.peers.errors.clear()
    rec.fetcher.outcome = {mine[3]: Outcome.ABSENT, mine[4]: Outcome.NOT_HOLDER}
    assert await rec._pass(5) is True
    assert sheep.group.driver.sent[-1]["epoch"] == 5


async def test_a_pass_cut_by_an_epoch_change_stops_without_announcing(sheep, rec):
    mine, _ = held(sheep, oids_of(200))
    sheep.peers.lists = {key(NODES[1]): mine}
    g = sheep.group

    def moved(oid):  # the epoch changes during the first object's fetch
        g.epoch = 6
        return Outcome.PRESENT
    rec.fetcher.outcome = {o: moved for o in mine}
    rec.throttle = proto.RecoveryThrottling(max_exec_count=1)
    assert await rec._pass(5) is True  # done with epoch 5: a new pass owns epoch 6
    assert g.driver.sent == [] and len(rec.fetcher.calls) == 1


async def test_a_long_object_list_is_asked_again_with_a_bigger_buffer(sheep, rec):
    big = np.arange(1, (1 << 20) // 8 * 5, dtype=np.uint64)  # 5 MiB of oids
    sheep.peers.lists = {key(NODES[1]): big.tolist()}
    body = await rec._peer_list(NODES[1], 5)
    assert np.array_equal(np.frombuffer(body, "<u8"), big)
    assert [n for _k, n in sheep.peers.asked] == [1 << 20, 4 << 20, 16 << 20]


async def test_recovery_waits_while_disabled_and_a_kick_resumes_it(sheep, rec):
    g = sheep.group
    g.disable_recovery = True
    rec.start()
    for _ in range(20):
        await asyncio.sleep(0)
    assert g.driver.sent == [] and sheep.peers.asked == [] and not rec._task.done()
    g.disable_recovery = False
    rec.kick()
    await until(lambda: g.driver.sent)
    await rec._task
    assert rec.state.in_recovery == 0  # an ended pass leaves the recovery state idle
    rec.kick()  # a kick after the pass ended runs one again
    await until(lambda: len(g.driver.sent) == 2)
    await rec._task


async def test_a_waiting_recovery_of_an_old_epoch_ends(sheep, rec):
    g = sheep.group
    g.status = "wait_for_join"
    rec.start()
    first = rec._task
    g.epoch = 6
    rec._kick.set()
    await asyncio.wait_for(first, 5)
    assert not first.cancelled() and g.driver.sent == []


# ---------------------------------------------------------------------------
# one object


async def test_a_present_object_needs_no_fetch(sheep, rec):
    sheep.store.live.add(7)
    assert await rec.recover_object(7) is Outcome.PRESENT
    assert rec.fetcher.calls == []


async def test_concurrent_requests_share_one_attempt_and_a_cancelled_one_does_not_cancel_it(
        sheep, rec):
    f = rec.fetcher
    f.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(rec.recover_object(7)) for _ in range(5)]
    await until(lambda: f.calls)
    waiters[0].cancel()
    await until(lambda: waiters[0].done())
    f.gate.set()
    outs = await asyncio.gather(*waiters[1:])
    assert outs == [Outcome.PRESENT] * 4 and f.calls == [7]
    assert sheep.store.exists(7)  # the attempt finished despite the cancelled requester
    assert rec._inflight == {}


@pytest.mark.parametrize("failure", [error_for(CODES["NETWORK_ERROR"]), RuntimeError("bug")])
async def test_a_failed_attempt_is_unavailable_never_absent(sheep, rec, failure):
    rec.fetcher.outcome[7] = failure
    assert await rec.recover_object(7, wait=0.0) is Outcome.UNAVAILABLE
    assert rec.fetcher.calls == [7]


async def test_an_undecided_object_is_retried_until_the_wait_runs_out(sheep, rec):
    f = rec.fetcher
    f.outcome[7] = Outcome.UNAVAILABLE
    assert await rec.recover_object(7, wait=0.2) is Outcome.UNAVAILABLE
    assert 2 <= len(f.calls) <= 5  # 0.05, 0.1 ... backing off
    f.calls.clear()
    answers = iter([Outcome.UNAVAILABLE, Outcome.UNAVAILABLE, Outcome.ABSENT])
    f.outcome[7] = lambda oid: next(answers)
    assert await rec.recover_object(7, wait=5.0) is Outcome.ABSENT
    assert len(f.calls) == 3


async def test_a_damaged_copy_is_repaired_once_at_a_time(sheep, rec):
    f = rec.fetcher
    f.gate = asyncio.Event()
    for _ in range(3):
        rec.repair_later(7)
    rec.repair_later(8)
    await until(lambda: len(f.repairs) == 2)
    assert sorted(f.repairs) == [7, 8]
    f.gate.set()
    await until(lambda: not rec._repairing)  # the failure is swallowed, the slot freed
    rec.repair_later(7)
    await until(lambda: len(f.repairs) == 3)


async def test_recover_soon_starts_one_background_attempt_per_object(sheep, rec):
    f = rec.fetcher
    f.gate = asyncio.Event()
    for _ in range(4):  # many reads finding it missing at once
        rec.recover_soon(7)
    rec.recover_soon(8)
    await until(lambda: len(f.calls) == 2)
    assert sorted(f.calls) == [7, 8]
    waiter = asyncio.ensure_future(rec.recover_object(7))  # a later waiting request joins it
    f.gate.set()
    assert await waiter is Outcome.PRESENT and f.calls.count(7) == 1
    await until(lambda: not rec._soon)
    assert sheep.store.exists(7) and sheep.store.exists(8)
    rec.recover_soon(7)  # present now: nothing to do, nothing started
    await asyncio.sleep(0)
    assert f.calls.count(7) == 1


async def test_recover_soon_starts_at_most_max_soon_at_once(sheep, rec, monkeypatch):
    from sheep.cluster import recovery as R
    monkeypatch.setattr(R, "MAX_SOON", 3)
    f = rec.fetcher
    f.gate = asyncio.Event()
    for oid in range(10, 20):
        rec.recover_soon(oid)
    await until(lambda: len(f.calls) == 3)
    assert f.calls == [10, 11, 12] and len(rec._soon) == 3
    f.gate.set()
    await until(lambda: not rec._soon)
    rec.recover_soon(19)  # room again
    await until(lambda: 19 in f.calls)
