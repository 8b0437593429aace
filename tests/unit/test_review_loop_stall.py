"""Adversarial review: the stale-copy rule (``Fetcher._missing_holders``)
runs on the event loop and builds a ``Ring`` for every epoch from the best
copy's version epoch to now (``Group.epoch_ring``, a cache of 256 rings that
is *cleared* when it overflows).  A Ring of 5 nodes x 128 vnodes costs ~8 ms
in pure Python, so an object last written many epochs ago stalls the loop
(which carries the membership heartbeats) for seconds, once per object when
the range exceeds the cache.
"""

import time
import types

import pytest

from sheep import proto
from sheep.fetch import Fetcher
from sheep.group import Group

pytestmark = [pytest.mark.review]

NODES = [proto.SdNode.make("127.0.0.1", 7000 + i, 128, i) for i in range(5)]


def _group(epochs: int):
    g = types.SimpleNamespace()
    g._rings = {}
    # every epoch lacks one node (a node that is down at the moment)
    g._epoch_logs = {e: (proto.pack_nodes(NODES if e % 2 else NODES[:4]), 0)
                     for e in range(1, epochs + 1)}
    g.epoch_ring = types.MethodType(Group.epoch_ring, g)
    g.nodes = NODES[:4]
    g.epoch = epochs
    return g


def _fetcher(g):
    sheep = types.SimpleNamespace(group=g, vdis=types.SimpleNamespace(copies_of=lambda v: 3))
    return Fetcher(sheep)


def test_missing_holders_over_300_epochs_blocks_the_loop():
    g = _group(300)
    f = _fetcher(g)
    oid = proto.vid_to_data_oid(0x1234, 7)
    times = []
    for _ in range(3):  # three objects recovered from stale copies, one after another
        t0 = time.perf_counter()
        f._missing_holders(oid, 1, g.epoch)
        times.append(time.perf_counter() - t0)
    print("one _missing_holders call (synchronous, on the loop):",
          ", ".join(f"{t:.2f}s" for t in times))
    # zmq: a member's lease has ~0.3-0.5 s left; the daemon warns at 0.3 s
    assert max(times) < 0.3, f"the event loop is blocked for {max(times):.2f}s per object"
