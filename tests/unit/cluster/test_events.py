"""The membership event bus (sheep.cluster.events): synchronous, in order,
failures reach the publisher, state travels by name."""

import pytest

from sheep.cluster import events as ev

pytestmark = pytest.mark.quick


def test_subscribers_run_synchronously_in_subscription_order():
    bus, seen = ev.Events(), []
    bus.subscribe(ev.NODE_JOINED, lambda info: seen.append(("vdis", info)))
    bus.subscribe(ev.NODE_JOINED, lambda info: seen.append(("locks", info)))
    bus.subscribe(ev.NODE_LEFT, lambda node: seen.append(("left", node)))
    bus.publish(ev.NODE_JOINED, 1)
    assert seen == [("vdis", 1), ("locks", 1)]  # done before publish returned
    bus.publish(ev.NODE_LEFT, "n")
    assert seen[-1] == ("left", "n")


def test_a_failing_subscriber_stops_the_publish_and_reaches_the_publisher():
    bus, seen = ev.Events(), []

    def boom(_epoch):
        raise OSError("disk")
    bus.subscribe(ev.EPOCH_CHANGED, boom)
    bus.subscribe(ev.EPOCH_CHANGED, seen.append)
    with pytest.raises(OSError):
        bus.publish(ev.EPOCH_CHANGED, 3)
    assert seen == []


def test_unknown_topics_are_refused():
    with pytest.raises(ValueError):
        ev.Events().subscribe("epoch chnaged", print)


def test_state_snapshots_and_restores_by_name_in_registration_order():
    bus, restored = ev.Events(), []
    bus.state("state", lambda: {"vdis": [1]}, lambda s: restored.append(("state", s)))
    bus.state("locks", lambda: {"gen": 7}, lambda s: restored.append(("locks", s)))
    snap = bus.snapshots()
    assert snap == {"state": {"vdis": [1]}, "locks": {"gen": 7}}
    bus.restore({"locks": {"gen": 9}, "state": {"vdis": []}, "other": 1})
    assert restored == [("state", {"vdis": []}), ("locks", {"gen": 9})]
    bus.restore({})
    assert restored[-2:] == [("state", None), ("locks", None)]


def test_join_data_collects_every_part():
    bus = ev.Events()
    bus.join_data("tombs", lambda: {"5": 2})
    bus.join_data("lock_gen", lambda: {"generation": 4})
    assert bus.collect_join_data() == {"tombs": {"5": 2}, "lock_gen": {"generation": 4}}
