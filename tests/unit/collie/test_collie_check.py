"""collie vdi check / cluster check / vdi track / node recovery throttle:
pure helpers, and the capture's sections replayed (the per-node GET_HASH
traffic, not in the capture, is answered by a fake)."""

import pytest
from collie_fakes import (
    NODE_PORTS,
    NodeFake,
    ReplayServer,
    cli_sections,
    header_opcode,
    strip_ids,
)

from collie import vdi_check as vc
from collie.client import CollieError
from collie.node import parse_throttle
from sheep import proto
from sheep.proto import Op
from sheep.proto.errors import CODES
from sheep.proto.placement import Ring

SECTIONS = cli_sections()


def _node(port, zone=None):
    return proto.SdNode.make("127.0.0.1", port, 64, port if zone is None else zone, 0)


def R(state, digest=b""):
    return vc.Replica(None, state, digest)


# ---------------------------------------------------------------------------
# majority vote


@pytest.mark.parametrize("replicas, result, major", [
    ([R(vc.FOUND, b"a"), R(vc.FOUND, b"a"), R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 0),
    ([R(vc.MISSING), R(vc.FOUND, b"a"), R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 1),
    ([R(vc.FOUND, b"b"), R(vc.FOUND, b"a"), R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 1),
    ([R(vc.FOUND, b"a"), R(vc.FOUND, b"b"), R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 2),
    ([R(vc.FOUND, b"a"), R(vc.FOUND, b"b"), R(vc.FOUND, b"c")], vc.NO_MAJORITY_FOUND, None),
    ([R(vc.FOUND, b"a"), R(vc.FOUND, b"b")], vc.NO_MAJORITY_FOUND, None),
    ([R(vc.MISSING), R(vc.MISSING), R(vc.MISSING)], vc.NO_OBJ_FOUND, None),
    ([R(vc.DAMAGED), R(vc.MISSING)], vc.NO_OBJ_FOUND, None),
    # a copy failing its checksum does not vote: 2 copies, one damaged -> the other wins
    ([R(vc.DAMAGED), R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 1),
    ([R(vc.FOUND, b"a")], vc.CHECK_SUCCESS, 0),
])
def test_vote_majority(replicas, result, major):
    got_result, got_major = vc.vote_majority(replicas)
    assert got_result == result
    if major is None:
        assert got_major is None
    else:
        assert replicas[got_major].digest == replicas[major].digest


def test_needs_repair():
    reps = [R(vc.MISSING), R(vc.FOUND, b"a"), R(vc.FOUND, b"b"), R(vc.DAMAGED),
            R(vc.FOUND, b"a")]
    assert vc.needs_repair(reps, 1) == [0, 2, 3]


def test_object_list():
    ino = proto.InodeHeader(vdi_id=0x1234, vdi_size=5 << 22, nr_copies=3)
    vids = [0x1234, 0, 0x1000, 0, 0x1234, 0x1234]  # index 5 is past the size
    assert vc.object_list(ino, vids) == [
        proto.vid_to_vdi_oid(0x1234), proto.vid_to_data_oid(0x1234, 0),
        proto.vid_to_data_oid(0x1000, 2), proto.vid_to_data_oid(0x1234, 4)]


# ---------------------------------------------------------------------------
# track


def test_track_lines_per_epoch():
    three = [_node(p) for p in (7000, 7001, 7002)]
    two = three[:2]
    oid = proto.vid_to_data_oid(0x7C2B25, 1)
    logs = [(proto.EpochLogHeader(epoch=2), two), (proto.EpochLogHeader(epoch=1), three)]
    lines = vc.track_lines(oid, 3, logs)
    assert lines[:5] == ["", f"obj {oid:016x} locations at epoch 2, copies = 3", "-" * 51,
                         "127.0.0.1:7000", "127.0.0.1:7001"]  # fewer nodes than copies
    assert lines[5:8] == ["", f"obj {oid:016x} locations at epoch 1, copies = 3", "-" * 51]
    assert lines[8:] == [f"127.0.0.1:{n.port}" for n in Ring(three).replicas(oid, 3)]


# ---------------------------------------------------------------------------
# throttle arguments


def test_parse_throttle():
    t = parse_throttle(["4", "100"])
    assert (t.max_exec_count, t.queue_work_interval, t.throttling) == (4, 100, True)
    t = parse_throttle(["0", "0"])
    assert (t.max_exec_count, t.queue_work_interval, t.throttling) == (0, 0, False)
    for bad, msg in ((["1", "0"], "Invalid interval max (1), interval (0)"),
                     (["-1", "5"], "Invalid max (-1)"),
                     (["4294967296", "5"], "Invalid max (4294967296)"),
                     (["1", "1x"], "Invalid interval (1x)"),
                     (["1"], "Please specify")):
        with pytest.raises(CollieError) as ei:
            parse_throttle(bad)
        assert ei.value.code == 64 and msg in str(ei.value)


# ---------------------------------------------------------------------------
# the capture's sections, replayed


class HashingNodeFake(NodeFake):
    """The capture's nodes, every replica present and identical."""

    def __init__(self, digest=b"\x11" * 20, missing=()):
        self.digest, self.missing = digest, set(missing)
        self.hashed: list[int] = []
        self.repairs: list[tuple[int, int]] = []
        super().__init__()

    def answer(self, hdr, payload):
        req = proto.Request.unpack(hdr)
        if req.opcode == Op.GET_HASH:
            self.seen.append(req.opcode)
            self.hashed.append(req.args.oid)
            rsp = proto.Response(req.opcode, id=req.id, epoch=1)
            if req.args.oid in self.missing:
                self.missing.discard(req.args.oid)
                rsp.result = CODES["NO_OBJ"]  # once
            else:
                rsp.args.digest = self.digest
            return rsp.pack()
        if req.opcode == Op.OIDS_EXIST:
            self.seen.append(req.opcode)
            return proto.Response(req.opcode, id=req.id, epoch=1).pack()
        if req.opcode == Op.REPAIR_REPLICA:
            self.seen.append(req.opcode)
            self.repairs.append((req.args.oid, req.args.port))
            return proto.Response(req.opcode, id=req.id, epoch=1).pack()
        return super().answer(hdr, payload)


@pytest.fixture
def hashing_fake(monkeypatch):
    from collie import client as cl
    from sheep.proto import connection

    fakes = []
    real = connection.BlockingConnection

    def make(**kw):
        fake = HashingNodeFake(**kw)
        fakes.append(fake)

        def connect(host, port, *a, **kwa):
            if port in NODE_PORTS:
                port = fake.port
            return real(host, port, *a, **kwa)
        monkeypatch.setattr(cl, "connect", connect)
        return fake
    yield make
    for f in fakes:
        f.close()


@pytest.fixture
def replay():
    servers = []

    def make(label):
        s = ReplayServer(label)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def _same_requests(srv):
    expected = [(q, p) for q, p, _a, _b in srv.pairs]
    assert len(srv.sent) == len(expected)
    for i, ((got_h, got_p), (exp_h, exp_p)) in enumerate(zip(srv.sent, expected)):
        op = header_opcode(exp_h)
        assert strip_ids(got_h, op) == strip_ids(exp_h, op), (i, Op(op).name)
        assert got_p == exp_p, (i, Op(op).name)


@pytest.mark.parametrize("label", ["vdi_check", "cluster_check", "vdi_track"])
def test_replay(label, replay, run, hashing_fake, utc):
    fake = hashing_fake()
    sec = SECTIONS[label]
    srv = replay(label)
    res = run(sec["cmd"] + ["-p", str(srv.port)])
    assert res.code == sec["exit"], res.err
    assert res.text == sec["out"], res.err
    assert res.err == ""
    _same_requests(srv)
    if label != "vdi_track":
        assert fake.hashed and not fake.repairs
        # every object asked of each replica: 3 copies ("two" has 2), 3 zones
        two = 0x7C9709
        for oid in set(fake.hashed):
            assert fake.hashed.count(oid) == (2 if proto.oid_to_vid(oid) == two else 3)


def test_replay_vdi_check_repairs_missing(replay, run, hashing_fake, utc):
    ino_oid = proto.vid_to_vdi_oid(0x7C2B27)
    fake = hashing_fake(missing=[ino_oid])
    srv = replay("vdi_check")
    res = run(SECTIONS["vdi_check"]["cmd"] + ["-p", str(srv.port)])
    assert res.code == 0, res.err
    assert res.text == f"fixed missing {ino_oid:x}\nfinish check&repair test\n"
    assert len(fake.repairs) == 1 and fake.repairs[0][0] == ino_oid
    assert fake.repairs[0][1] in NODE_PORTS  # the source is one of the good replicas


def test_oids_exist_request_shape(replay, run, hashing_fake, utc):
    fake = hashing_fake()
    srv = replay("vdi_check")
    res = run(["vdi", "check", "-e", "test", "-p", str(srv.port)])
    assert res.code == 0, res.err
    assert res.text == "test is fine, no object is missing.\n"
    assert fake.seen.count(Op.OIDS_EXIST) == 3



class RecoveringNodeFake(NodeFake):
    def answer(self, hdr, payload):
        req = proto.Request.unpack(hdr)
        if req.opcode == Op.STAT_RECOVERY:
            st = proto.RecoveryState(in_recovery=1, state=1, nr_finished=5, nr_total=20)
            body = st.pack()[:req.data_length]
            return proto.Response(req.opcode, id=req.id, epoch=1,
                                  data_length=len(body)).pack() + body
        return super().answer(hdr, payload)


@pytest.mark.parametrize("raw", [False, True])
def test_node_recovery_shows_progress(raw, replay, run, monkeypatch, utc):
    from collie import client as cl
    from sheep.proto import connection

    fake = RecoveringNodeFake()
    real = connection.BlockingConnection
    monkeypatch.setattr(cl, "connect", lambda host, port, *a, **kw: real(
        host, fake.port if port in NODE_PORTS else port, *a, **kw))
    try:
        srv = replay("node_recovery")
        res = run(["node", "recovery", "-p", str(srv.port)] + (["-r"] if raw else []))
    finally:
        fake.close()
    assert res.code == 0, res.err
    lines = res.text.splitlines()
    if raw:
        assert [ln.split()[:2] for ln in lines] == [[str(i), f"127.0.0.1:{p}"]
                                                    for i, p in enumerate(NODE_PORTS)]
        assert all(ln.split()[-2:] == ["5", "20"] for ln in lines)
    else:
        assert lines[:2] == SECTIONS["node_recovery"]["out"].splitlines()
        assert len(lines) == 5
        for i, (ln, p) in enumerate(zip(lines[2:], NODE_PORTS)):
            assert ln.startswith(f"{i:4d}   127.0.0.1:{p}")
            assert ln.endswith("       25.0%")


def test_the_newest_copy_wins_over_a_majority_of_old_ones():
    old, new = b"o" * 20, b"n" * 20
    reps = [vc.Replica(None, vc.FOUND, old, 7 << 32 | 3), vc.Replica(None, vc.FOUND, new, 9 << 32 | 1),
            vc.Replica(None, vc.FOUND, old, 7 << 32 | 3)]
    assert vc.vote_majority(reps)[1] in (0, 2)  # what dog's vote would keep
    assert vc.choose_newest(reps) == (vc.CHECK_SUCCESS, 1)
    assert vc.needs_repair(reps, 1) == [0, 2]
    # same greatest version, different data (a write never acknowledged):
    # the most common hash among them; a damaged copy is never chosen
    reps = [vc.Replica(None, vc.DAMAGED), vc.Replica(None, vc.FOUND, old, 5),
            vc.Replica(None, vc.FOUND, new, 5), vc.Replica(None, vc.FOUND, new, 5)]
    assert vc.choose_newest(reps)[1] in (2, 3)
    # no versions at all (a Sheepdog 1.0 daemon): dog's majority vote
    reps = [vc.Replica(None, vc.FOUND, old), vc.Replica(None, vc.FOUND, new),
            vc.Replica(None, vc.FOUND, old)]
    assert vc.choose_newest(reps) == vc.vote_majority(reps)
    assert vc.choose_newest([vc.Replica(None, vc.MISSING)]) == (vc.NO_OBJ_FOUND, None)
