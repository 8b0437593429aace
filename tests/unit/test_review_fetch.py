"""Adversarial review of the recovery rule (sheep.fetch), with the fakes of
tests/unit/test_fetch.py.

* Rule 3 ("no copy anywhere: the object does not exist") looks only at the
  members: when every former holder of the object is out of the cluster,
  the object is declared ABSENT (NO_OBJ to clients, the recovery pass counts
  it as done) instead of "not now" -- although ``_missing_holders`` would
  say those holders may come back with it.
* ``Fetcher._blocked_since`` (start of the STALE_WAIT for an object) is only
  cleared when an attempt fetches or finds nothing; an attempt that returns
  early (PRESENT: the copy came back another way, NOT_HOLDER) leaves it, so
  a later, unrelated block of the same object skips the 60 s strict wait.
"""

import asyncio
import importlib.util
import pathlib

import pytest

from sheep import fetch, proto
from sheep.fetch import Fetcher, Outcome
from sheep.ring import Ring

pytestmark = [pytest.mark.review]

_spec = importlib.util.spec_from_file_location(
    "review_fetch_fakes", pathlib.Path(__file__).with_name("test_fetch.py"))
tf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tf)
world = tf.world  # the fixture
key, data, V, NODES, ME = tf.key, tf.data, tf.V, tf.NODES, tf.ME


def _oid_held_by_me(g):
    for i in range(1, 100000):
        o = proto.vid_to_attr_oid(0x1234, i)
        if key(ME) in map(key, g.ring.replicas(o, 3)):
            return o
    raise AssertionError("no oid")


def test_an_object_whose_former_holders_are_all_down_is_not_absent(world):
    sheep, _oid, _ = world
    g = sheep.group
    # epochs 8-9: the cluster was three other nodes (they held everything);
    # all three are down now, the five current members never had the object
    gone = [proto.SdNode.make("127.0.0.1", 7090 + i, 64, 20 + i) for i in range(3)]
    g.history = {e: gone for e in (8, 9)}
    oid = _oid_held_by_me(g)
    outcome = asyncio.run(Fetcher(sheep).recover(oid))
    assert outcome is not Outcome.ABSENT, (
        "declared non-existent while every node that held it at epochs 8-9 is out of "
        "the cluster (they come back with it)")


def test_an_old_block_start_skips_the_strict_wait(world, monkeypatch):
    sheep, _oid, _ = world
    g = sheep.group
    gone = proto.SdNode.make("127.0.0.1", 7099, 64, 9)
    g.history = {e: NODES + [gone] for e in (8, 9)}
    old = Ring(NODES + [gone])
    oid = next(o for o in (proto.vid_to_attr_oid(0x1234, i) for i in range(1, 100000))
               if key(ME) in map(key, g.ring.replicas(o, 3))
               and key(gone) in map(key, old.replicas(o, 3)))
    sheep.peers.copies[key(NODES[1])]["stale"][9] = (V(8, 3), data(b"best we have"))
    f = Fetcher(sheep)
    assert asyncio.run(f.recover(oid)) is Outcome.UNAVAILABLE  # waits for `gone`
    # the copy comes back another way (a client create, a repair): PRESENT
    sheep.store.install(oid, tf.SIZE, data(b"came back"), V(10, 1))
    assert asyncio.run(f.recover(oid)) is Outcome.PRESENT
    # an hour later the node loses it again (e.g. rejoining after missing writes)
    sheep.store.move_to_stale(oid, 10)
    sheep.store.purge_stale()
    real = fetch.time.monotonic
    monkeypatch.setattr(fetch.time, "monotonic", lambda: real() + 3600)
    outcome = asyncio.run(f.recover(oid))
    assert outcome is Outcome.UNAVAILABLE, (
        "a new block of the object did not wait STALE_WAIT for the missing former "
        "holder: the timer started an hour ago and was never cleared")
