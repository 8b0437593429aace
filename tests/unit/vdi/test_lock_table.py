"""The lock state machine (sheep.lock_table.LockTable), without daemons."""

import pytest

from sheep import proto
from sheep.proto.errors import (
    CODES,
    FencedError,
    InvalidParmsError,
    SdError,
    VdiLockedError,
)
from sheep.vdi.lock_table import EXCL, READ, SHARED, STANDBY, LockTable

N0, N1, N2 = "127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"


def test_exclusive_lock_conflicts_and_generations_grow():
    t = LockTable()
    g1 = t.lock(1, N0, 10, EXCL)
    assert g1 == 1 and t.owner(1).session == 10
    with pytest.raises(VdiLockedError):
        t.lock(1, N1, 11, EXCL)
    with pytest.raises(VdiLockedError):  # the same session twice is a second writer too
        t.lock(1, N0, 10, EXCL)
    with pytest.raises(VdiLockedError):
        t.lock(1, N1, 11, READ)
    t.release(1, 10)  # ends the grant for good: that takes a generation too
    assert t.owner(1) is None and not t.locks
    with pytest.raises(VdiLockedError):  # until the writes of the former holder landed
        t.lock(1, N1, 11, EXCL)
    assert t.drained(1, g1, N0)
    assert t.lock(1, N1, 11, EXCL) == 3


def test_legacy_owner_is_the_node():
    t = LockTable()
    t.lock(1, N0, 0, EXCL)
    with pytest.raises(VdiLockedError):  # 1.0: a second lock from the same node fails
        t.lock(1, N0, 0, EXCL)
    t.release_legacy(1, N2, proto.LOCK_TYPE_NORMAL)  # dog vdi lock unlock, from anywhere
    assert t.owner(1) is None and t.generation == 2  # and it bumped the generation


def test_shared_1_0():
    t = LockTable()
    t.lock(1, N0, 0, SHARED)
    t.lock(1, N1, 0, SHARED)
    with pytest.raises(VdiLockedError):
        t.lock(1, N1, 0, SHARED)
    with pytest.raises(VdiLockedError):
        t.lock(1, N2, 5, EXCL)
    t.release_legacy(1, N0, proto.LOCK_TYPE_SHARED)
    assert [h.node for h in t.holders(1)] == [N1]


def test_readers_share_and_keep_writers_out():
    t = LockTable()
    t.lock(1, N0, 1, READ)
    t.lock(1, N1, 2, READ)
    t.lock(1, N2, 2, READ)  # the same session again: moved, not duplicated
    assert sorted((h.node, h.session) for h in t.holders(1)) == [(N0, 1), (N2, 2)]
    with pytest.raises(VdiLockedError):
        t.lock(1, N0, 3, EXCL)
    t.release(1, 1)
    t.release(1, 2)
    assert t.lock(1, N0, 3, EXCL) == 1


def test_snapshots_never_lock():
    t = LockTable()
    for s in range(5):
        assert t.lock(9, N0, s, EXCL, snapshot=True) == 0
        assert t.lock(9, N0, s, READ, snapshot=True) == 0
    assert not t.locks and t.generation == 0


def test_fencing():
    t = LockTable()
    g = t.lock(1, N0, 10, EXCL)
    t.check_write(1, g)
    with pytest.raises(FencedError):
        t.check_write(1, g - 1)
    with pytest.raises(FencedError):
        t.check_write(2, g)  # another VDI
    t.expire(N0, 10)
    with pytest.raises(FencedError):  # released: the old holder is fenced
        t.check_write(1, g)
    t.check_write(1, g, N0, draining_ok=True)  # ... but its writes in flight still land
    with pytest.raises(FencedError):
        t.check_write(1, g, N1, draining_ok=True)  # (through its own gateway only)
    t.drained(1, g, N0)
    with pytest.raises(FencedError):
        t.check_write(1, g, N0, draining_ok=True)
    g2 = t.lock(1, N1, 11, EXCL)
    with pytest.raises(FencedError):
        t.check_write(1, g)
    t.check_write(1, g2)
    t.force_unlock(1)
    with pytest.raises(FencedError):
        t.check_write(1, g2)
    assert t.generation == g2 + 1


def test_expire_only_touches_that_gateways_session():
    t = LockTable()
    t.lock(1, N0, 10, EXCL)
    t.lock(2, N0, 10, READ)
    t.lock(3, N1, 10, EXCL)  # the same session re-attached elsewhere for another VDI
    t.lock(4, N0, 11, EXCL)
    assert t.expire(N0, 10) == [1, 2]
    assert sorted(t.locks) == [3, 4]


def test_node_leave_drops_everything_owned_through_it():
    t = LockTable()
    t.lock(1, N1, 10, EXCL)
    t.lock(2, N1, 0, EXCL)  # a 1.0 client
    t.lock(3, N1, 0, SHARED)
    t.lock(3, N2, 0, SHARED)
    t.lock(4, N1, 12, STANDBY)
    t.lock(4, N0, 13, EXCL)
    assert t.drop_node(N1) == [1, 2, 3, 4]
    assert {vid: [(h.node, h.kind) for h in hs] for vid, hs in t.locks.items()} == \
        {3: [(N2, SHARED)], 4: [(N0, EXCL)]}


def test_reattach_moves_the_hold_under_a_new_generation_or_fences():
    t = LockTable()
    g = t.lock(1, N0, 10, EXCL)
    g2 = t.reattach(1, N1, 10, g)
    # a new grant: writes still travelling through N0 carry g and are fenced
    assert g2 > g and t.owner(1).node == N1 and t.owner(1).gen == g2
    with pytest.raises(FencedError):
        t.check_write(1, g)
    with pytest.raises(FencedError):  # the right generation, through the wrong gateway
        t.check_write(1, g2, N0)
    t.check_write(1, g2, N1)
    with pytest.raises(FencedError):
        t.reattach(1, N1, 10, g)  # the old grant is gone
    with pytest.raises(FencedError):
        t.reattach(1, N1, 99, g2)  # another session
    t.expire(N1, 10)
    with pytest.raises(FencedError):  # lost for good: never silently re-granted
        t.reattach(1, N2, 10, g2)


def test_released_lock_cannot_be_taken_back_and_last_merges_by_generation():
    t = LockTable()
    g = t.lock(5, N0, 10, EXCL)
    t.release(5, 10)
    with pytest.raises(FencedError):
        t.reattach(5, N1, 10, g)
    # after a full restart (tables empty, last from disk), the holder whose
    # lock vanished takes it back, anybody else presenting its generation not
    t2 = LockTable(7, [[6, 7, 0xA]])
    with pytest.raises(FencedError):
        t2.reattach(6, N1, 0xB, 7)
    assert t2.reattach(6, N1, 0xA, 7) == 8
    t2.merge_last([[6, 3, 0xC], [9, 12, 0xD]])  # older info for 6 is ignored
    assert t2.last == {6: (8, 0xA), 9: (12, 0xD)} and t2.generation == 12


def test_handover_is_atomic_and_needs_a_standby():
    t = LockTable()
    g = t.lock(1, N0, 10, EXCL)
    with pytest.raises(InvalidParmsError):
        t.handover(1, 10, 20)  # 20 did not open the VDI inactive
    t.lock(1, N1, 20, STANDBY)  # does not conflict with the writer
    with pytest.raises(VdiLockedError):
        t.lock(1, N2, 30, EXCL)
    with pytest.raises(FencedError):
        t.handover(1, 99, 20)  # only the holder hands over
    g2 = t.handover(1, 10, 20)
    o = t.owner(1)
    assert (o.node, o.session, o.gen) == (N1, 20, g2) and g2 > g
    assert [h.kind for h in t.holders(1)] == [EXCL]
    assert t.activate(1, N1, 20) == g2  # the destination finds its lock
    with pytest.raises(VdiLockedError):
        t.lock(1, N2, 30, EXCL)


def test_activate_after_the_source_died():
    t = LockTable()
    t.lock(1, N0, 10, EXCL)
    t.lock(1, N1, 20, STANDBY)
    with pytest.raises(VdiLockedError):
        t.activate(1, N1, 20)
    t.drop_node(N0)
    g = t.activate(1, N1, 20)
    assert t.owner(1).session == 20 and g == 2
    assert [h.kind for h in t.holders(1)] == [EXCL]


def test_snapshot_moves_the_writer_and_delete_drops():
    t = LockTable()
    g = t.lock(1, N0, 10, EXCL)
    t.lock(1, N1, 11, STANDBY)
    t.move(1, 2)
    assert not t.holders(1) and t.owner(2).gen == g
    t.check_write(2, g)
    t.drop_vid(2)
    assert not t.locks


def test_apply_messages_and_snapshot_roundtrip():
    t = LockTable(generation=40)
    out = t.apply({"op": "lock", "a": "lock", "vid": 5, "node": N0, "session": 1,
                   "kind": EXCL, "gen": 0, "now": 100.0, "snapshot": False})
    assert out == {"vid": 5, "gen": 41}
    t.apply({"op": "lock", "a": "lock", "vid": 6, "node": N1, "session": 2, "kind": READ,
             "gen": 0, "now": 101.0})
    with pytest.raises(VdiLockedError):
        t.apply({"op": "lock", "a": "lock", "vid": 5, "node": N1, "session": 2, "kind": EXCL,
                 "gen": 0, "now": 102.0})
    u = LockTable(generation=3)
    u.restore(t.snapshot())
    assert u.snapshot() == t.snapshot() and u.generation == 41
    u.apply({"op": "lock", "a": "force", "vid": 5})
    assert u.owner(5) is None and u.generation == 42
    with pytest.raises(InvalidParmsError):
        u.apply({"op": "lock", "a": "bogus"})


def test_replicas_agree_when_fed_the_same_order():
    msgs = [{"op": "lock", "a": "lock", "vid": v % 3, "node": (N0, N1)[v % 2], "session": v,
             "kind": (EXCL, READ, STANDBY)[v % 3], "gen": 0, "now": float(v)} for v in range(30)]
    msgs += [{"op": "lock", "a": "expire", "node": N0, "session": v} for v in range(0, 30, 4)]
    tables = [LockTable(), LockTable()]
    for t in tables:
        for m in msgs:
            try:
                t.apply(m)
            except VdiLockedError:
                pass
        t.drop_node(N1)
    assert tables[0].snapshot() == tables[1].snapshot()
    assert tables[0].generation >= 1


def test_reattach_takes_back_a_dropped_lock_only_if_nobody_had_it_since():
    from sheep.vdi.lock_table import EXCL, LockTable

    t = LockTable()
    g = t.lock(7, "n1:7000", 0xA, EXCL)
    t.drop_node("n1:7000")  # the holder's gateway left: the hold is gone
    g2 = t.reattach(7, "n2:7001", 0xA, g)  # nobody took it meanwhile: back, new generation
    assert g2 > g and t.owner(7).session == 0xA and t.owner(7).node == "n2:7001"
    t.drop_node("n2:7001")
    gb = t.lock(7, "n3:7002", 0xB, EXCL)  # another writer takes and releases it
    t.release(7, 0xB)
    t.drained(7, gb, "n3:7002")
    with pytest.raises(SdError) as e:
        t.reattach(7, "n3:7002", 0xA, g2)  # ... so A is fenced for good
    assert e.value.code == CODES["FENCED"] and gb > g2
    g3 = t.lock(7, "n1:7000", 0xC, EXCL)
    t.force_unlock(7)  # an operator's unlock fences the holder too
    with pytest.raises(SdError):
        t.reattach(7, "n1:7000", 0xC, g3)
    snap = t.snapshot()  # the rule survives a joiner's snapshot
    t2 = LockTable()
    t2.restore(snap)
    assert t2.last == t.last


def test_a_grant_ending_drains_its_gateways_writes_before_anyone_else_gets_the_vdi():
    t = LockTable()
    for end in ("release", "force", "expire", "snapshot"):
        t = LockTable()
        g = t.lock(1, N0, 10, EXCL)
        if end == "release":
            t.release(1, 10)
        elif end == "force":
            t.force_unlock(1)
        elif end == "expire":
            t.expire(N0, 10)
        else:
            t.move(1, 2)  # a snapshot: the writer goes on on VDI 2
            assert t.owner(2).gen == g
        assert t.draining == {1: (g, N0)}, end
        for kind in (EXCL, READ):
            with pytest.raises(VdiLockedError):
                t.lock(1, N1, 11, kind)
        assert not t.drained(1, g, N1)  # only its own gateway says so
        assert t.drained(1, g, N0) and not t.draining
    # a gateway that left takes its draining entries with it
    t = LockTable()
    g = t.lock(5, N0, 10, EXCL)
    t.force_unlock(5)
    t.drop_node(N0)
    assert not t.draining and t.lock(5, N1, 11, EXCL) > g
    # the state travels to joiners
    t.force_unlock(5)
    t2 = LockTable()
    t2.restore(t.snapshot())
    assert t2.draining == t.draining != {}


def test_a_snapshot_freeze_is_quiet_only_for_its_own_quiet_and_ends_with_its_op():
    t = LockTable()
    gen = t.lock(1, "g:1", 7, EXCL)
    t.apply({"a": "freeze", "vid": 1, "node": "s:1", "fid": "f1"})
    assert not t.is_quiet(1)
    with pytest.raises(SdError):  # one freeze at a time
        t.apply({"a": "freeze", "vid": 1, "node": "x:1", "fid": "f2"})
    t.apply({"a": "quiet", "vid": 1, "gen": gen, "node": "g:1", "fid": "old"})
    assert not t.is_quiet(1), "a quiet of another freeze must not count"
    t.apply({"a": "thaw", "vid": 1, "node": "s:1", "fid": "other"})
    assert 1 in t.frozen, "a thaw of another freeze must not end this one"
    t.apply({"a": "quiet", "vid": 1, "gen": gen, "node": "g:1", "fid": "f1"})
    assert t.is_quiet(1)
    assert t.restore(t.snapshot()) is None and t.is_quiet(1)  # joiners get it
    t.move(1, 2)  # the snapshot's main step
    assert not t.frozen and t.owner(2).session == 7


def test_a_freeze_ends_when_its_node_leaves_and_is_quiet_when_the_gateway_does():
    t = LockTable()
    t.lock(1, "g:1", 7, EXCL)
    t.freeze(1, "s:1", "f1")
    t.drop_node("g:1")  # the holder's gateway left: its writes are refused by epoch
    assert t.is_quiet(1)
    t.drop_node("s:1")
    assert not t.frozen
    t.freeze(3, "s:1", "f3")  # nobody writes: quiet at once
    assert t.is_quiet(3)
    assert t.thaw_all("s:1") == [3] and not t.frozen
