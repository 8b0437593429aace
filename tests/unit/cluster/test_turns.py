"""The cluster-op queue (sheep.cluster.turns.Turns) driven by a fake total
order: every notify is delivered, in order, to every member's Turns, as the
driver would.  No daemons."""

import asyncio
import json

import pytest

from sheep.cluster import turns as turns_mod
from sheep.cluster.turns import Turns
from sheep.proto.errors import CODES, SdError, error_for

pytestmark = pytest.mark.quick


class Order:
    """A total order of notifies among members ``a``, ``b``, ...; each member
    applies the main step by appending it to its own ``applied`` list."""

    def __init__(self, *names):
        self.members = {}
        self.applied = {n: [] for n in names}
        self.fatal = []
        self.cut = set()  # members whose notifies fail (not a member any more)
        for n in names:
            self.members[n] = Turns(self._notify_from(n), self._settled,
                                    self.fatal.append, self._main(n))

    def _main(self, name):
        def main(msg):
            if msg.get("op") == "error":
                raise error_for(msg["code"], msg["message"])
            self.applied[name].append(msg["v"])
            return f"{name}:{msg['v']}"
        return main

    async def _settled(self):
        pass

    def _notify_from(self, sender):
        async def notify(raw):
            if sender in self.cut:
                raise RuntimeError("not a member")
            m = json.loads(raw)
            await asyncio.sleep(0)  # delivered later, to everyone, in one order
            for t in self.members.values():
                if m["t"] == "block":
                    t.on_block(m["id"], sender)
                elif t.on_unblock(m["id"], sender):
                    t.apply(m["id"], m["msg"])
                    t.next_turn()
        return notify


async def test_work_steps_run_one_at_a_time_and_every_member_applies_in_one_order():
    o = Order("a", "b", "c")
    running, seen = [], []

    def work(v):
        async def step():
            running.append(v)
            seen.append(len(running))
            await asyncio.sleep(0.01)
            running.remove(v)
            return {"op": "x", "v": v}
        return step
    results = await asyncio.gather(*(o.members[n].run(work(i)) for i, n in
                                     enumerate(["a", "b", "c", "a", "b"])))
    assert max(seen) == 1  # never two work steps at once, cluster-wide
    assert results == ["a:0", "b:1", "c:2", "a:3", "b:4"]
    assert o.applied["a"] == o.applied["b"] == o.applied["c"]
    assert sorted(o.applied["a"]) == [0, 1, 2, 3, 4]


async def test_a_failed_work_step_reaches_its_caller_and_applies_nothing():
    o = Order("a", "b")

    async def bad():
        raise error_for(CODES["VDI_EXIST"], "taken")
    with pytest.raises(SdError) as e:
        await o.members["a"].run(bad)
    assert e.value.code == CODES["VDI_EXIST"]
    assert o.applied == {"a": [], "b": []}


async def test_a_member_that_leaves_loses_its_turn_and_the_next_one_runs():
    o = Order("a", "b")
    a, b = o.members["a"], o.members["b"]
    a.on_block("dead", "gone")  # a member that will leave holds the turn
    b.on_block("dead", "gone")

    async def work():
        return {"op": "x", "v": 1}
    task = asyncio.ensure_future(b.run(work))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # waiting behind the departed member's BLOCK
    a.on_leave("gone")
    b.on_leave("gone")
    assert await asyncio.wait_for(task, 2) == "b:1"


async def test_an_unblock_for_another_op_is_ignored_everywhere():
    o = Order("a", "b")
    for t in o.members.values():
        t.on_block("mine", "a")
        assert t.on_unblock("stale", "c") is False
    assert [t.blocks for t in o.members.values()] == [[("mine", "a")]] * 2


async def test_a_work_step_that_lost_its_turn_writes_nothing_and_reports_halt():
    o = Order("a", "b")
    a = o.members["a"]

    async def work():
        a.invalidate("cut off while running the operation")
        with pytest.raises(SdError) as e:
            a.check_token()  # what the gateway's writes of the work step do
        assert e.value.code == CODES["HALT"]
        return {"op": "x", "v": 1}
    with pytest.raises(SdError) as e:
        await a.run(work)
    assert e.value.code == CODES["HALT"]
    assert o.applied == {"a": [], "b": []}
    a.check_token()  # outside a work step: nothing to refuse


async def test_a_cut_off_origin_gets_halt_before_anything_happens():
    o = Order("a")
    o.cut.add("a")
    ran = []

    async def work():
        ran.append(1)
        return {"op": "x", "v": 1}
    with pytest.raises(SdError) as e:
        await o.members["a"].run(work)
    assert e.value.code == CODES["HALT"] and ran == []


async def test_a_work_step_over_the_timeout_ends_with_network_error(monkeypatch):
    monkeypatch.setattr(turns_mod, "WORK_TIMEOUT", 0.05)
    o = Order("a", "b")

    async def slow():
        await asyncio.sleep(5)
    with pytest.raises(SdError) as e:
        await o.members["a"].run(slow)
    assert e.value.code == CODES["NETWORK_ERROR"]
    assert not o.members["b"].blocks  # the turn was released everywhere


async def test_a_rejoin_fails_every_op_whose_block_the_cluster_no_longer_has():
    loop = asyncio.get_running_loop()
    o = Order("a")
    t = o.members["a"]
    t.blocks = [("kept", "other-node")]  # what the cluster's join info brought
    t._turns = {"waiting": loop.create_future(), "kept": loop.create_future()}
    # "running": our turn had come; its UNBLOCK went out in the view we left
    t._done = {"waiting": loop.create_future(), "running": loop.create_future(),
               "kept": loop.create_future()}
    t.lose_turns("rejoined the cluster")
    for fut in (t._turns["waiting"], t._done["waiting"], t._done["running"]):
        with pytest.raises(SdError) as e:
            fut.result()
        assert e.value.code == CODES["HALT"]
    assert not t._turns["kept"].done() and not t._done["kept"].done()


async def test_a_main_step_that_fails_unexpectedly_stops_the_node():
    o = Order("a")
    t = o.members["a"]
    t.main_step = lambda msg: 1 / 0
    t.on_block("x", "a")
    assert t.on_unblock("x", "a")
    t.apply("x", {"op": "y"})
    assert o.fatal and "cannot apply cluster operation y" in o.fatal[0]
