"""The op table and ``dispatch`` (docs/protocol.md §4, §7.3) on a node without
a cluster: admission through dispatch (version, status, serving, waiting),
exactly one reply per request echoing opcode, id and the current epoch,
unknown opcodes, handler failures mapped to result codes, the reply
capacity, request counters, and a few local handlers.

Admission's serving rule per op is in test_admission.py; the natures in
test_op_natures.py.
"""

import asyncio
import dataclasses
import logging
import re
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test modules load with importlib
from fake_node import EPOCH, FakeSheep  # noqa: E402

from sheep import proto
from sheep.cluster import group as G
from sheep.proto.errors import CODES, SdError, sd_error
from sheep.server import metrics, ops, stats

pytestmark = pytest.mark.quick

Op = proto.Op
DOC = Path(__file__).parents[3] / "docs/protocol.md"


@pytest.fixture
def sheep():
    return FakeSheep()


def run(sheep, req, payload=b""):
    return asyncio.run(asyncio.wait_for(ops.dispatch(sheep, req, payload), 5))


def spy(monkeypatch, op, out=(None, b"")):
    """Replace ``op``'s handler (same spec otherwise); returns the calls list."""
    calls = []

    async def handler(sheep, req, payload):
        calls.append((req, payload))
        if isinstance(out, BaseException):
            raise out
        return out
    monkeypatch.setitem(ops.OPS, int(op), dataclasses.replace(ops.OPS[int(op)], handler=handler))
    return calls


# ---------------------------------------------------------------------------
# the table


def _doc_table():
    """{opcode: (class, force)} from §7.3; class "—" for known but unserved."""
    text = DOC.read_text()
    part = text[text.index("### 7.3"):text.index("### 7.4")]
    rows = {}
    for line in part.splitlines():
        m = re.match(r"\|\s*(0x[0-9A-Fa-f][^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if not m:
            continue
        codes, _names, cls, force = (s.strip() for s in m.groups())
        for part_ in codes.split(","):
            part_ = part_.strip()
            if "–" in part_:
                lo, hi = (int(x, 16) for x in part_.split("–"))
                nums = range(lo, hi + 1)
            else:
                nums = [int(part_, 16)]
            for n in nums:
                rows[n] = (cls, force == "yes")
    return rows


def test_the_class_and_force_columns_of_the_protocol_doc_are_the_table():
    doc = _doc_table()
    assert len(doc) > 50
    served = {c: (s.kind, s.force) for c, s in ops.OPS.items()}
    listed = {c: v for c, v in doc.items() if v[0] != "—"}
    assert served == listed
    unserved = [c for c, v in doc.items() if v[0] == "—"]
    assert unserved and not set(unserved) & set(ops.OPS)


def test_every_opspec_is_named_after_its_opcode_and_every_main_step_is_callable():
    for code, spec in ops.OPS.items():
        assert Op(code).name == spec.name
        assert spec.kind in ("gateway", "peer", "local", "cluster")
        assert asyncio.iscoroutinefunction(spec.handler), spec.name
    assert all(callable(f) for f in ops.MAIN.values())


# ---------------------------------------------------------------------------
# exactly one reply


def test_every_opcode_gets_one_reply_echoing_opcode_id_and_current_epoch():
    """Whatever the handler does on a bare node (most fail on what the fake
    lacks), dispatch returns a whole reply within the client's buffer."""
    async def all_ops():
        out = []
        for code in range(256):
            sheep = FakeSheep()
            sheep.group.epoch = 40 + code
            req = proto.Request(code, id=0x1000 + code, data_length=64)
            rsp, body = await asyncio.wait_for(ops.dispatch(sheep, req, b""), 5)
            out.append((code, sheep, rsp, body))
        return out
    logging.disable(logging.CRITICAL)  # 256 failures logged otherwise
    try:
        results = asyncio.run(all_ops())
    finally:
        logging.disable(logging.NOTSET)
    for code, sheep, rsp, body in results:
        assert (rsp.opcode, rsp.id, rsp.epoch) == (code, 0x1000 + code, 40 + code)
        assert rsp.data_length == len(body) <= 64
        if rsp.result:
            assert body == b""  # an error reply has no payload
        if code not in ops.OPS:
            assert rsp.result == CODES["INVALID_PARMS"], hex(code)
        assert sum(s.count for s in metrics.requests(sheep).snapshot()) == 1


def test_an_unknown_opcode_is_invalid_parms_and_counted_as_unknown(sheep):
    assert 0x7E not in ops.OPS
    rsp, body = run(sheep, proto.Request(0x7E, id=9))
    assert (rsp.result, rsp.id, rsp.opcode, body) == (CODES["INVALID_PARMS"], 9, 0x7E, b"")
    (st,) = metrics.requests(sheep).snapshot()
    assert (st.name, st.kind, st.count, st.errors) == ("unknown", "unknown", 1, 1)
    assert -1 in metrics.requests(sheep).ops


# ---------------------------------------------------------------------------
# admission through dispatch


@pytest.mark.parametrize("op,ver,ok", [
    (Op.READ_OBJ, 0x00, True), (Op.READ_OBJ, 0x01, True), (Op.READ_OBJ, 0x02, True),
    (Op.READ_OBJ, 0x03, False), (Op.READ_OBJ, 0x0A, False),
    (Op.GET_LOGLEVEL, 0x0A, True), (Op.GET_LOGLEVEL, 0x02, False),
    (Op.GET_LOGLEVEL, 0x0B, False),
    (0x7E, 0x03, False),  # version is checked before the opcode is known
])
def test_protocol_version_rule(sheep, op, ver, ok):
    rsp, _ = run(sheep, proto.Request(op, proto_ver=ver, data_length=4))
    if ok:
        assert rsp.result == 0
    else:
        assert rsp.result == CODES["VER_MISMATCH"]


@pytest.mark.parametrize("status,up,op,code", [
    (G.KILLED, False, Op.GET_NODE_LIST, "KILLED"),      # status before serving
    (G.SHUTDOWN, False, Op.READ_OBJ, "SHUTDOWN"),
    (G.KILLED, True, Op.MAKE_FS, "KILLED"),             # force ops too
    (G.WAIT_FOR_FORMAT, False, Op.MAKE_FS, "HALT"),     # serving before waiting
    (G.WAIT_FOR_FORMAT, True, Op.READ_OBJ, "WAIT_FOR_FORMAT"),
    (G.WAIT_FOR_FORMAT, True, Op.STAT_SHEEP, "WAIT_FOR_FORMAT"),
    (G.WAIT_FOR_JOIN, True, Op.READ_OBJ, "WAIT_FOR_JOIN"),
    (G.WAIT_FOR_JOIN, True, Op.GET_VDI_INFO, "WAIT_FOR_JOIN"),
])
def test_refused_requests_never_reach_the_handler(sheep, monkeypatch, status, up, op, code):
    calls = spy(monkeypatch, op)
    sheep.group.status, sheep.group.up = status, up
    sheep.group.epoch = 12
    rsp, body = run(sheep, proto.Request(op, id=3, data_length=100))
    assert rsp.result == CODES[code]
    assert (rsp.id, rsp.epoch, body, calls) == (3, 12, b"", [])
    st = metrics.requests(sheep).ops[int(op)]  # still counted under its op
    assert (st.name, st.count, st.errors) == (op.name, 1, 1)


@pytest.mark.parametrize("status,code", [(G.WAIT_FOR_FORMAT, "WAIT_FOR_FORMAT"),
                                         (G.WAIT_FOR_JOIN, "WAIT_FOR_JOIN")])
def test_while_waiting_exactly_the_force_ops_run(sheep, monkeypatch, status, code):
    reached = {}
    for c in ops.OPS:
        reached[c] = spy(monkeypatch, c)
    sheep.group.status = status
    for c, spec in ops.OPS.items():
        rsp, _ = run(sheep, proto.Request(c, id=c))
        if spec.force:
            assert rsp.result == 0 and len(reached[c]) == 1, spec.name
        else:
            assert rsp.result == CODES[code] and not reached[c], spec.name
    assert {ops.OPS[c].name for c in reached if reached[c]} >= {
        "MAKE_FS", "GET_NODE_LIST", "CLUSTER_INFO", "STAT_CLUSTER", "FORCE_RECOVER",
        "KILL_NODE", "GET_LOGLEVEL"}


def test_a_local_op_runs_on_a_node_that_may_not_serve(sheep):
    sheep.group.up = False
    rsp, body = run(sheep, proto.Request(Op.GET_LOGLEVEL, data_length=4))
    assert rsp.result == 0 and struct.unpack("<i", body) == (6,)


# ---------------------------------------------------------------------------
# what the handler returns or raises


def test_a_handler_reply_carries_its_args_body_and_the_current_epoch(sheep):
    async def read(req, payload):
        sheep.group.epoch = EPOCH + 1  # the epoch moved while the request ran
        return proto.ObjRsp(copies=2, offset=77), b"data"
    sheep.gateway.script["handle_read"] = read
    rsp, body = run(sheep, proto.Request(Op.READ_OBJ, id=5, data_length=100))
    assert (rsp.result, rsp.args.copies, rsp.args.offset) == (0, 2, 77)
    assert (body, rsp.data_length, rsp.epoch) == (b"data", 4, EPOCH + 1)
    assert proto.Response.unpack(rsp.pack()) == rsp


def test_a_three_tuple_sets_the_result_and_keeps_the_body(sheep, monkeypatch):
    spy(monkeypatch, Op.STAT_CLUSTER, (None, b"epochs", CODES["WAIT_FOR_FORMAT"]))
    rsp, body = run(sheep, proto.Request(Op.STAT_CLUSTER, data_length=100))
    assert (rsp.result, body, rsp.data_length) == (CODES["WAIT_FOR_FORMAT"], b"epochs", 6)


@pytest.mark.parametrize("code", ["NO_OBJ", "EIO", "VDI_LOCKED", "NO_SPACE", "OLD_NODE_VER"])
def test_an_sd_error_becomes_its_result_code_with_no_payload(sheep, code):
    async def read(req, payload):
        raise sd_error(code, "boom")
    sheep.gateway.script["handle_read"] = read
    rsp, body = run(sheep, proto.Request(Op.READ_OBJ, id=8, data_length=4096))
    assert (rsp.result, rsp.id, rsp.data_length, body) == (CODES[code], 8, 0, b"")
    assert rsp.args == proto.ObjRsp()


@pytest.mark.parametrize("exc", [KeyError("x"), ZeroDivisionError(), AttributeError("y"),
                                 ValueError("bad")])
def test_a_bug_in_a_handler_costs_one_request_as_system_error(sheep, caplog, exc):
    async def read(req, payload):
        raise exc
    sheep.gateway.script["handle_read"] = read
    with caplog.at_level(logging.ERROR, "sheep.server.ops"):
        rsp, body = run(sheep, proto.Request(Op.READ_OBJ, id=8, data_length=4096))
    assert (rsp.result, body) == (CODES["SYSTEM_ERROR"], b"")
    assert any(r.exc_info and r.exc_info[1] is exc for r in caplog.records)
    # the node goes on serving
    sheep.gateway.script.clear()
    assert run(sheep, proto.Request(Op.READ_OBJ))[0].result == 0


def test_expected_misses_are_not_logged_other_failures_are(sheep, caplog):
    codes = iter(["NO_OBJ", "NO_VDI", "OLD_NODE_VER", "EIO"])

    async def read(req, payload):
        raise sd_error(next(codes), f"message {req.id}")
    sheep.gateway.script["handle_read"] = read
    with caplog.at_level(logging.INFO, "sheep.server.ops"):
        for i in range(4):
            run(sheep, proto.Request(Op.READ_OBJ, id=i))
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "READ_OBJ" in msgs[0] and "message 3" in msgs[0]


@pytest.mark.parametrize("flags,length,cap", [
    (0, 10, 10),                                                     # read: the buffer
    (proto.SD_FLAG_CMD_WRITE, 10, 0),                                # write: nothing back
    (proto.SD_FLAG_CMD_WRITE | proto.SD_FLAG_CMD_PIGGYBACK, 10, 10),  # write that reads
    (0, 500, 100),                                                   # shorter than allowed
])
def test_a_reply_never_exceeds_what_the_client_can_take(sheep, caplog, flags, length, cap):
    async def handler(req, payload):
        return None, bytes(range(100))
    for m in sheep.gateway.METHODS:
        sheep.gateway.script[m] = handler
    op = Op.WRITE_OBJ if flags else Op.READ_OBJ
    payload = b"p" * length if flags else b""
    with caplog.at_level(logging.WARNING, "sheep.server.ops"):
        rsp, body = run(sheep, proto.Request(op, flags=flags, data_length=length), payload)
    assert rsp.result == 0
    assert body == bytes(range(100))[:cap] and rsp.data_length == cap
    assert any("truncated" in r.getMessage() for r in caplog.records) == (cap < 100)


# ---------------------------------------------------------------------------
# counters


def test_gateway_and_peer_requests_are_counted_and_in_flight_returns_to_zero(sheep):
    seen = []

    async def read(req, payload):
        seen.append(stats.counters(sheep).gw_active)
        await asyncio.sleep(0)  # the next read enters meanwhile
        if req.id == 2:
            raise sd_error("EIO")
        if req.id == 3:
            raise RuntimeError("bug")
        return None, b"x" * 10

    async def go():
        sheep.gateway.script["handle_read"] = read
        await asyncio.gather(*(ops.dispatch(sheep, proto.Request(Op.READ_OBJ, id=i,
                                                                  data_length=100), b"")
                               for i in range(1, 5)))
        await ops.dispatch(sheep, proto.Request(Op.WRITE_OBJ, flags=proto.SD_FLAG_CMD_WRITE,
                                                data_length=3), b"abc")
        await ops.dispatch(sheep, proto.Request(Op.GET_LOGLEVEL, data_length=4), b"")
        sheep.group.status = G.WAIT_FOR_JOIN  # refused: not counted as a request run
        await ops.dispatch(sheep, proto.Request(Op.READ_OBJ, data_length=100), b"")
    logging.disable(logging.CRITICAL)
    try:
        asyncio.run(go())
    finally:
        logging.disable(logging.NOTSET)
    st = stats.counters(sheep)
    assert seen == [1, 2, 3, 4]  # the four reads were in flight together
    assert (st.gw_total, st.gw_active, st.gw_read, st.gw_write) == (5, 0, 4, 1)
    assert (st.gw_tx, st.gw_rx) == (400, 3)
    assert (st.peer_total, st.peer_active) == (0, 0)
    m = metrics.requests(sheep).ops
    assert (m[Op.READ_OBJ].count, m[Op.READ_OBJ].errors) == (5, 3)
    assert (m[Op.READ_OBJ].tx, m[Op.WRITE_OBJ].rx) == (20, 3)
    assert m[Op.GET_LOGLEVEL].kind == "local" and m[Op.GET_LOGLEVEL].errors == 0


# ---------------------------------------------------------------------------
# a few local and cluster handlers through dispatch


def test_set_and_get_loglevel(sheep):
    def set_(payload):
        return run(sheep, proto.Request(Op.SET_LOGLEVEL, flags=proto.SD_FLAG_CMD_WRITE,
                                        data_length=len(payload)), payload)[0].result
    assert set_(struct.pack("<i", 3)) == 0 and sheep.levels == [3]
    for bad in (struct.pack("<i", 8), struct.pack("<i", -1), b"\0" * 8, b""):
        assert set_(bad) == CODES["INVALID_PARMS"]
    assert sheep.levels == [3]
    rsp, body = run(sheep, proto.Request(Op.GET_LOGLEVEL, data_length=4))
    assert body == struct.pack("<i", 3)


def test_flush_vdi_is_refused_as_in_1_0_and_get_store_list_names_plain(sheep):
    assert run(sheep, proto.Request(Op.FLUSH_VDI))[0].result == CODES["INVALID_PARMS"]
    rsp, body = run(sheep, proto.Request(Op.GET_STORE_LIST, data_length=512))
    assert (rsp.result, body) == (0, b"plain \0")


def test_vdi_bitmaps_need_the_whole_2_mib_buffer(sheep):
    sheep.vdis = type("V", (), {"inuse": bytearray(proto.VDI_BITMAP_SIZE),
                                "deleted": bytearray(b"\1" * proto.VDI_BITMAP_SIZE)})()
    for op in (Op.READ_VDIS, Op.READ_DEL_VDIS):
        rsp, body = run(sheep, proto.Request(op, data_length=proto.VDI_BITMAP_SIZE - 1))
        assert (rsp.result, body) == (CODES["INVALID_PARMS"], b"")
    rsp, body = run(sheep, proto.Request(Op.READ_DEL_VDIS, data_length=proto.VDI_BITMAP_SIZE))
    assert rsp.result == 0 and body == b"\1" * proto.VDI_BITMAP_SIZE


def test_get_epoch_absent_too_small_and_present(sheep):
    nodes = proto.pack_nodes([proto.SdNode.make("127.0.0.1", 7000)])
    sheep.store.epochs[3] = (nodes, 1234)
    req = proto.Request(Op.GET_EPOCH, proto.ObjArgs(tgt_epoch=4), data_length=1 << 16)
    assert run(sheep, req)[0].result == CODES["NO_TAG"]
    req.args.tgt_epoch = 3
    rsp, body = run(sheep, req)
    assert rsp.result == 0 and body == nodes + struct.pack("<Q", 1234)
    req.data_length = len(body) - 1
    assert run(sheep, req)[0].result == CODES["BUFFER_SMALL"]


@pytest.mark.parametrize("store,policy,shift,code", [
    ("farm", 0, 0, "NO_STORE"), ("plain", 1, 0, "INVALID_PARMS"),
    ("plain", 0, 19, "INVALID_PARMS"), ("plain", 0, 32, "INVALID_PARMS"),
])
def test_make_fs_refuses_what_it_cannot_format_before_the_cluster_op(
        sheep, store, policy, shift, code):
    sheep.group.status = G.WAIT_FOR_FORMAT
    req = proto.Request(Op.MAKE_FS, proto.ClusterArgs(copy_policy=policy, block_size_shift=shift),
                        flags=proto.SD_FLAG_CMD_WRITE, data_length=len(store) + 1)
    rsp, _ = run(sheep, req, store.encode() + b"\0")
    assert rsp.result == CODES[code]
    assert sheep.group.cluster_ops == []


def test_make_fs_before_format_orders_a_format_with_the_defaults(sheep):
    sheep.group.status = G.WAIT_FOR_FORMAT
    sent = []
    work_of = sheep.group.cluster_op

    async def cluster_op(work):
        sent.append(await work())
        return await work_of(work)
    sheep.group.cluster_op = cluster_op
    req = proto.Request(Op.MAKE_FS, proto.ClusterArgs(ctime=99, flags=4))
    assert run(sheep, req)[0].result == 0
    assert sent == [{"op": "format", "ctime": 99, "flags": 4, "copies": proto.SD_DEFAULT_COPIES,
                     "copy_policy": 0, "block_size_shift": proto.SD_DEFAULT_BLOCK_SIZE_SHIFT,
                     "store": "plain"}]


def test_new_vdi_needs_a_nul_terminated_256_byte_name(sheep):
    for payload in (b"v\0" * 10, b"v" * proto.SD_MAX_VDI_LEN):
        req = proto.Request(Op.NEW_VDI, flags=proto.SD_FLAG_CMD_WRITE, data_length=len(payload))
        assert run(sheep, req, payload)[0].result == CODES["INVALID_PARMS"]
    assert sheep.group.cluster_ops == []


# ---------------------------------------------------------------------------
# main steps


def test_apply_main_runs_the_named_step(sheep):
    with pytest.raises(SdError) as e:  # a work step's refusal, re-raised on every node
        ops.apply_main(sheep, {"op": "error", "code": CODES["VDI_EXIST"], "message": "m"})
    assert e.value.code == CODES["VDI_EXIST"]
    ops.apply_main(sheep, {"op": "recovery", "disable": True})
    assert sheep.group.disable_recovery is True and sheep.recovery.kicks == 1
    rsp = ops.apply_main(sheep, {"op": "attr", "vid": 5, "attr_id": 6, "copies": 2})
    assert (rsp.vdi_id, rsp.attr_id, rsp.copies) == (5, 6, 2)
    applied = []
    sheep.group.apply_format = applied.append
    msg = {"op": "format", "copies": 2}
    ops.apply_main(sheep, msg)
    assert applied == [msg] and sheep.locks.cleared == 1  # a format drops every lock
    with pytest.raises(KeyError):
        ops.apply_main(sheep, {"op": "no such step"})


def test_set_recovery_reaches_the_recovery_part_and_get_recovery_reads_it_back(sheep):
    sheep.recovery.throttle = proto.RecoveryThrottling()
    want = proto.RecoveryThrottling(max_exec_count=3, queue_work_interval=250, throttling=1)
    req = proto.Request(Op.SET_RECOVERY, flags=proto.SD_FLAG_CMD_WRITE,
                        data_length=proto.RecoveryThrottling.SIZE)
    assert run(sheep, req, want.pack())[0].result == 0
    assert sheep.recovery.throttle.pack() == want.pack() and sheep.recovery.kicks == 1
    rsp, body = run(sheep, proto.Request(Op.GET_RECOVERY,
                                         data_length=proto.RecoveryThrottling.SIZE))
    assert (rsp.result, body) == (0, want.pack())
