"""The recovery rule for one object (sheep.fetch), with fake peers in front of
a real store: which copy is chosen, and when the answer is "not now".

The peers are fakes behind the same interface as the gateway's PeerPool
(``request(node, req)``), answering probes and fetches the way
``sheep.datapath.replica._recovery_read`` does, or failing with a chosen result code.
"""

import asyncio

import pytest

from sheep import proto
from sheep.cluster import fetch
from sheep.cluster.fetch import Fetcher, Outcome
from sheep.proto.errors import CODES, error_for
from sheep.proto.placement import Ring
from sheep.store import meta as M
from sheep.store.plain import PlainStore

V = M.make_version
SIZE = 8192
NODES = [proto.SdNode.make("127.0.0.1", 7000 + i, 64, i) for i in range(5)]
ME = NODES[0]


def key(n):
    return (n.host, n.port)


class FakeGroup:
    def __init__(self, nodes, epoch, history=None):
        self.nodes = list(nodes)
        self.ring = Ring(self.nodes)
        self.epoch = epoch
        self.history = history or {}  # epoch -> node list

    def is_me(self, n):
        return key(n) == key(ME)

    async def settled(self):
        pass

    def serving(self):
        return True

    def epoch_ring(self, e):
        nodes = self.history.get(e, self.nodes)
        return Ring(nodes)


class FakePeers:
    """node -> {"live": (version, data) | None, "stale": {epoch: (version, data)},
    "error": code | None, "fetch_error": code | None}"""

    def __init__(self, group):
        self.group = group
        self.copies = {key(n): {"live": None, "stale": {}, "error": None, "fetch_error": None}
                       for n in NODES}
        self.on_fetch = None

    async def request(self, node, req):
        c = self.copies[key(node)]
        if c["error"]:
            raise error_for(c["error"])
        a = req.args
        if req.flags & proto.SD_FLAG_CMD_WILDCARD and req.data_length == 0:
            live = c["live"][0] if c["live"] else None
            stale = max(((v, e) for e, (v, _d) in c["stale"].items()), default=None)
            if live is None and stale is None:
                raise error_for(CODES["NO_OBJ"])
            return proto.Response(req.opcode, args=fetch.probe_reply(live, stale)), b""
        if c["fetch_error"]:
            raise error_for(c["fetch_error"])
        if self.on_fetch:
            self.on_fetch()
        if a.tgt_epoch == fetch.LIVE:
            v, d = c["live"]
        else:
            v, d = c["stale"][a.tgt_epoch]
        return proto.Response(req.opcode, args=proto.ObjRsp(offset=v)), d


class FakeSheep:
    def __init__(self, tmp_path, group):
        self.group = group
        self.me = ME
        self.store = PlainStore(str(tmp_path / "store"), nosync=True)
        self.store.open()
        self.peers = FakePeers(group)
        self.vdis = type("V", (), {"copies_of": lambda _s, v: 3, "obj_size": lambda _s, o: SIZE,
                                   "await_state": lambda _s, v: asyncio.sleep(0)})()

    async def io(self, fn, *args, size=None, cached=None):  # (the blocking call only)
        return fn(*args)

    async def io_thread(self, fn, *args):
        return fn(*args)


def an_oid(group, pred):
    """An oid (of a non-data kind: no VDI needed) whose holders satisfy ``pred``."""
    for i in range(1, 100000):
        oid = proto.vid_to_attr_oid(0x1234, i)
        holders = group.ring.replicas(oid, 3)
        if pred(holders):
            return oid, [n for n in holders if key(n) != key(ME)]
    raise AssertionError("no such oid")


def data(tag: bytes) -> bytes:
    return tag.ljust(SIZE, b"\0")


@pytest.fixture
def world(tmp_path):
    g = FakeGroup(NODES, epoch=10)
    sheep = FakeSheep(tmp_path, g)
    oid, others = an_oid(g, lambda hs: key(ME) in map(key, hs))
    yield sheep, oid, others
    sheep.store.close()


def make_fetcher(s) -> Fetcher:
    return Fetcher(group=s.group, store=s.store, vdis=s.vdis, peers=s.peers, io=s.io,
                   io_thread=s.io_thread)


def recover(sheep, oid):
    return asyncio.run(make_fetcher(sheep).recover(oid))


def test_live_copy_of_a_current_holder_wins_over_newer_looking_stale(world):
    sheep, oid, (h1, h2) = world
    sheep.peers.copies[key(h1)]["live"] = (V(8, 4), data(b"live"))
    sheep.peers.copies[key(NODES[4])]["stale"][9] = (V(9, 1), data(b"stale, never acked"))
    assert recover(sheep, oid) is Outcome.PRESENT
    assert sheep.store.read_object(oid) == (V(8, 4), data(b"live"))


def test_one_live_copy_is_enough_while_another_holder_is_unreachable(world):
    sheep, oid, (h1, h2) = world
    sheep.peers.copies[key(h1)]["error"] = CODES["NETWORK_ERROR"]
    sheep.peers.copies[key(h2)]["live"] = (V(8, 4), data(b"live"))
    assert recover(sheep, oid) is Outcome.PRESENT
    assert sheep.store.read(oid, 0, 4) == b"live"


@pytest.mark.parametrize("code", ["OLD_NODE_VER", "NETWORK_ERROR", "EIO", "HALT", "NEW_NODE_VER"])
def test_an_unanswering_holder_is_never_taken_for_no_copy(world, code):
    # what lost writes before: a holder that could not answer counted as "no
    # copy here" and this node installed its own old stale copy
    sheep, oid, (h1, h2) = world
    sheep.store.create_and_write(oid, SIZE, data(b"old"), epoch=3)
    sheep.store.move_to_stale(oid, 3)
    sheep.peers.copies[key(h1)]["error"] = CODES[code]  # may hold the only good copy
    assert recover(sheep, oid) is Outcome.UNAVAILABLE
    assert not sheep.store.exists(oid)
    sheep.peers.copies[key(h1)]["error"] = None
    sheep.peers.copies[key(h1)]["live"] = (V(9, 2), data(b"new"))
    assert recover(sheep, oid) is Outcome.PRESENT
    assert sheep.store.read(oid, 0, 3) == b"new"


def test_stale_copies_only_when_every_holder_says_no_and_the_newest_wins(world):
    sheep, oid, _ = world
    sheep.store.create_and_write(oid, SIZE, data(b"mine"), epoch=4)
    sheep.store.move_to_stale(oid, 4)
    peers = sheep.peers.copies
    peers[key(NODES[3])]["stale"][9] = (V(6, 2), data(b"older tag, newer data"))
    peers[key(NODES[4])]["stale"][9] = (V(5, 7), data(b"newer tag, older data"))
    peers[key(NODES[4])]["stale"][7] = (V(5, 1), data(b"oldest"))
    assert recover(sheep, oid) is Outcome.PRESENT
    # chosen by version, not by epoch tag; installed with that version
    assert sheep.store.read_object(oid) == (V(6, 2), data(b"older tag, newer data"))


def test_every_member_must_answer_before_a_stale_copy_is_used(world):
    sheep, oid, (h1, h2) = world
    outsider = next(n for n in NODES if key(n) not in {key(ME), key(h1), key(h2)})
    sheep.peers.copies[key(h1)]["stale"][9] = (V(4, 1), data(b"old"))
    sheep.peers.copies[key(outsider)]["error"] = CODES["NETWORK_ERROR"]
    assert recover(sheep, oid) is Outcome.UNAVAILABLE
    assert not sheep.store.exists(oid)


def test_an_epoch_whose_every_holder_is_missing_is_waited_for(world):
    sheep, _oid, _ = world
    g = sheep.group
    gone = [proto.SdNode.make("127.0.0.1", 7090 + i, 64, 10 + i) for i in range(3)]
    old = Ring(gone)  # epoch 9: three other nodes, all missing now
    g.history = {8: NODES, 9: gone}
    back = Ring(NODES + [gone[0]])
    oid = next(o for o in (proto.vid_to_attr_oid(0x1234, i) for i in range(1, 100000))
               if key(ME) in map(key, g.ring.replicas(o, 3))
               and key(ME) in map(key, back.replicas(o, 3)))
    sheep.peers.copies[key(NODES[1])]["stale"][8] = (V(8, 3), data(b"best we have"))
    f = make_fetcher(sheep)
    assert asyncio.run(f.recover(oid)) is Outcome.UNAVAILABLE  # epoch 9's holders may have newer
    assert not sheep.store.exists(oid)
    # one of epoch 9's holders is back (and answers: it has nothing newer)
    g.nodes.append(gone[0])
    g.ring = back
    assert key(gone[0]) in map(key, old.replicas(oid, 3))
    sheep.peers.copies[key(gone[0])] = {"live": None, "stale": {}, "error": None,
                                        "fetch_error": None}
    assert asyncio.run(f.recover(oid)) is Outcome.PRESENT
    assert sheep.store.read(oid, 0, 12) == b"best we have"


def test_one_present_holder_per_epoch_is_enough(world):
    # a 3/2 partition: the two cut-off nodes held the object, the one left
    # of that epoch is here: the majority goes on with the best copy
    sheep, oid, _ = world
    g = sheep.group
    extra = [proto.SdNode.make("127.0.0.1", 7090 + i, 64, 10 + i) for i in range(2)]
    g.history = {9: NODES + extra}
    sheep.peers.copies[key(NODES[2])]["stale"][9] = (V(9, 4), data(b"majority copy"))
    assert recover(sheep, oid) is Outcome.PRESENT
    assert sheep.store.read(oid, 0, 13) == b"majority copy"


def test_no_copy_anywhere_is_absent_and_not_holder_is_said(world):
    sheep, oid, _ = world
    assert recover(sheep, oid) is Outcome.ABSENT
    other, _ = an_oid(sheep.group, lambda hs: key(ME) not in map(key, hs))
    assert recover(sheep, other) is Outcome.NOT_HOLDER


def test_a_fetch_that_spans_an_epoch_change_is_redone(world):
    sheep, oid, (h1, h2) = world
    sheep.peers.copies[key(h1)]["live"] = (V(8, 4), data(b"live"))
    sheep.peers.on_fetch = lambda: setattr(sheep.group, "epoch", 11)
    assert recover(sheep, oid) is Outcome.UNAVAILABLE
    assert not sheep.store.exists(oid)


def test_a_damaged_live_copy_is_skipped_for_another_holders(world):
    sheep, oid, (h1, h2) = world
    sheep.peers.copies[key(h1)]["live"] = (V(8, 5), data(b"damaged"))
    sheep.peers.copies[key(h1)]["fetch_error"] = CODES["EIO"]
    sheep.peers.copies[key(h2)]["live"] = (V(8, 5), data(b"good"))
    assert recover(sheep, oid) is Outcome.PRESENT
    assert sheep.store.read(oid, 0, 4) == b"good"


def test_installed_copy_that_is_no_longer_held_becomes_stale(world):
    # the epoch moves after the install's own check: no live orphan stays
    sheep, oid, (h1, h2) = world
    sheep.peers.copies[key(h1)]["live"] = (V(8, 4), data(b"live"))
    real = sheep.store.install

    def install(*a, **kw):
        done = real(*a, **kw)
        sheep.group.epoch = 11
        sheep.group.ring = Ring(NODES[1:])  # this node holds nothing now
        return done
    sheep.store.install = install
    assert recover(sheep, oid) is Outcome.UNAVAILABLE
    assert not sheep.store.exists(oid)
    assert sheep.store.stale_copies(oid) == {10: V(8, 4)}


def test_no_copy_among_the_members_is_not_absent_while_an_epoch_lost_every_holder(world):
    # epochs 8-9: three other nodes held everything; all three are away now:
    # the object may be on them, so "not now", never NO_OBJ
    sheep, oid, _ = world
    gone = [proto.SdNode.make("127.0.0.1", 7090 + i, 64, 20 + i) for i in range(3)]
    sheep.group.history = {e: gone for e in (8, 9)}
    assert recover(sheep, oid) is Outcome.UNAVAILABLE
    sheep.group.history = {}  # no such epochs: it really exists nowhere
    assert recover(sheep, oid) is Outcome.ABSENT


def test_the_epoch_history_rule_runs_off_the_loop_and_builds_few_rings(world, monkeypatch):
    """300 epochs of a flapping node: the rule must not block the event loop
    (it runs through io_thread) and rings are built per member list, not per
    epoch (before: 8 ms x 300 rings, seconds on the loop, for every object)."""
    from sheep.cluster import epochs as epochs_mod
    from sheep.cluster.epochs import EpochHistory

    sheep, _oid, _ = world
    g = sheep.group
    g.nodes = NODES[:4]  # NODES[4] is away: epochs that had it need their rings
    g.ring = Ring(g.nodes)
    oid, _ = an_oid(g, lambda hs: key(ME) in map(key, hs))
    store = type("S", (), {"epochs": lambda _s: [], "read_epoch": lambda _s, e: None})()
    hist = EpochHistory(store, None)
    hist.logs = {e: (proto.pack_nodes(NODES if e % 2 else NODES[:4]), 0) for e in range(1, 301)}
    sheep.group.epoch, sheep.group.epoch_ring = 300, hist.ring
    built = []
    real = epochs_mod.Ring
    monkeypatch.setattr(epochs_mod, "Ring", lambda nodes: built.append(1) or real(nodes))
    in_thread = []
    real_io_thread = sheep.io_thread

    async def io_thread(fn, *args):
        in_thread.append(getattr(fn, "__name__", fn))
        return await real_io_thread(fn, *args)
    sheep.io_thread = io_thread
    sheep.peers.copies[key(NODES[2])]["stale"][299] = (V(1, 3), data(b"old"))
    f = make_fetcher(sheep)
    for _ in range(3):
        asyncio.run(f.recover(oid))
    assert "_lost_epochs" in in_thread
    assert 1 <= len(built) <= 2  # two member lists in the whole history
    assert sheep.store.read(oid, 0, 3) == b"old"


def _damage(sheep, oid):
    path = sheep.store._paths(0, "%016x" % oid)[0]
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\xff")


def test_a_repair_whose_holders_do_not_answer_is_undecided_not_hopeless(world):
    sheep, oid, (h1, h2) = world
    sheep.store.create_and_write(oid, SIZE, data(b"mine"), epoch=10)
    _damage(sheep, oid)
    sheep.peers.copies[key(h1)]["error"] = CODES["NETWORK_ERROR"]
    sheep.peers.copies[key(h2)]["error"] = CODES["HALT"]
    with pytest.raises(fetch.Retry, match="did not answer"):
        asyncio.run(make_fetcher(sheep).repair(oid))
    sheep.peers.copies[key(h1)]["error"] = None  # answers: no live copy there
    sheep.peers.copies[key(h2)]["error"] = None
    assert asyncio.run(make_fetcher(sheep).repair(oid)) is False  # nothing to repair it with
    sheep.peers.copies[key(h2)]["live"] = (V(10, 1), data(b"good"))
    assert asyncio.run(make_fetcher(sheep).repair(oid)) is True
    assert sheep.store.read(oid, 0, 4) == b"good"
