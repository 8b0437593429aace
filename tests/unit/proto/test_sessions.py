"""The lock-session wire extension (SD_FLAG_CMD_SESSION): exact byte layout,
and Sheepdog 1.0 traffic never uses the flag nor the bytes it gives meaning to."""

import struct

from sheep import proto as p
from sheep.proto.errors import CODES, FencedError, error_for, strerror


def test_flag_is_unused_by_sheepdog_1_0(wire):
    assert p.SD_FLAG_CMD_SESSION == 0x8000
    known = (p.SD_FLAG_CMD_WRITE | p.SD_FLAG_CMD_COW | p.SD_FLAG_CMD_CACHE | p.SD_FLAG_CMD_DIRECT
             | p.SD_FLAG_CMD_PIGGYBACK | p.SD_FLAG_CMD_TGT | p.SD_FLAG_CMD_FWD
             | p.SD_FLAG_CMD_RECOVERY | p.SD_FLAG_CMD_WILDCARD | p.SD_FLAG_CMD_EXCL
             | p.SD_FLAG_CMD_DEL)
    assert not known & p.SD_FLAG_CMD_SESSION
    for rec in wire:
        if rec["dir"] == "req":
            assert not p.Request.unpack(rec["header_bytes"]).flags & p.SD_FLAG_CMD_SESSION


def test_captured_1_0_requests_carry_no_session_or_generation(wire):
    """The bytes the extension uses are zero in real QEMU/dog traffic, so a 1.0
    request read as an extended one would mean "no session, no generation"."""
    seen = set()
    for rec in wire:
        if rec["dir"] != "req":
            continue
        req = p.Request.unpack(rec["header_bytes"])
        if req.opcode in (p.Op.LOCK_VDI, p.Op.RELEASE_VDI):
            assert p.lock_session(req.args)[0] == 0 and req.args.unused == bytes(8)
            seen.add(req.opcode)
        if req.opcode in (p.Op.WRITE_OBJ, p.Op.CREATE_AND_WRITE_OBJ):
            assert req.args.pad == 0
            assert p.fence_of(req) == 0
            seen.add(req.opcode)
    assert p.Op.WRITE_OBJ in seen and p.Op.CREATE_AND_WRITE_OBJ in seen


def test_lock_request_layout():
    args = p.VdiArgs(snapid=3, type=p.LOCK_TYPE_NORMAL)
    p.set_lock_session(args, 0x1122334455667788, p.LOCK_MODE_REATTACH, 0xA0B0C0D0)
    req = p.Request(p.Op.LOCK_VDI, args, flags=p.SD_FLAG_CMD_WRITE | p.SD_FLAG_CMD_SESSION,
                    data_length=512)
    raw = req.pack()
    assert len(raw) == 48
    assert struct.unpack_from("<H", raw, 2)[0] == 0x8001
    assert struct.unpack_from("<Q", raw, 40)[0] == 0x1122334455667788  # session @40
    assert struct.unpack_from("<I", raw, 16)[0] == p.LOCK_MODE_REATTACH  # mode @16
    assert struct.unpack_from("<I", raw, 20)[0] == 0xA0B0C0D0  # held generation @20
    assert struct.unpack_from("<I", raw, 32)[0] == 3  # snapid keeps its place
    back = p.Request.unpack(raw)
    assert p.lock_session(back.args) == (0x1122334455667788, p.LOCK_MODE_REATTACH, 0xA0B0C0D0)
    assert back.pack() == raw


def test_release_request_layout():
    args = p.VdiArgs(base_vdi_id=0x7C2B27, type=p.LOCK_TYPE_NORMAL)
    p.set_release_session(args, 5, handover_to=0xFEDCBA9876543210)
    raw = p.Request(p.Op.RELEASE_VDI, args, flags=p.SD_FLAG_CMD_SESSION).pack()
    assert struct.unpack_from("<Q", raw, 16)[0] == 0xFEDCBA9876543210  # target @16
    assert struct.unpack_from("<I", raw, 24)[0] == 0x7C2B27  # base_vdi_id as in 1.0
    assert struct.unpack_from("<Q", raw, 40)[0] == 5
    assert p.release_session(p.Request.unpack(raw).args) == (5, 0xFEDCBA9876543210)


def test_fenced_write_layout():
    args = p.ObjArgs(oid=p.vid_to_data_oid(0x7C2B27, 1), offset=4096)
    p.set_fence(args, 0xDEADBEEF)
    req = p.Request(p.Op.WRITE_OBJ, args, flags=p.SD_FLAG_CMD_WRITE | p.SD_FLAG_CMD_SESSION,
                    data_length=512)
    raw = req.pack()
    assert struct.unpack_from("<I", raw, 44)[0] == 0xDEADBEEF  # generation @44
    assert struct.unpack_from("<I", raw, 40)[0] == 4096  # offset unchanged
    back = p.Request.unpack(raw)
    assert p.fence_of(back) == 0xDEADBEEF
    back.flags &= ~p.SD_FLAG_CMD_SESSION  # without the flag the bytes mean nothing
    assert p.fence_of(back) == 0


def test_lock_reply_layout():
    rsp = p.Response(p.Op.LOCK_VDI, args=p.VdiRsp(vdi_id=0x7C2B27, copies=3, block_size_shift=22))
    p.set_session_reply(rsp.args, p.LOCK_STATUS_SESSION | p.LOCK_STATUS_ENFORCED, 42, 8000, 2)
    raw = rsp.pack()
    assert struct.unpack_from("<IIBB", raw, 24) == (0x7C2B27, 0, 3, 22)  # 1.0 fields in place
    assert struct.unpack_from("<HIII", raw, 34) == (3, 42, 8000, 2)
    assert p.session_reply(p.Response.unpack(raw).args) == (3, 42, 8000, 2)
    # a 1.0 server leaves the bytes zero: "no session support"
    assert p.session_reply(p.VdiRsp()) == (0, 0, 0, 0)


def test_lock_record_and_fenced_code():
    rec = p.LockRecord(vid=7, kind=p.LOCK_KIND_EXCLUSIVE, session=9, generation=11, since=12,
                       owner=p.SdNode.make("10.0.0.1", 7000).nid)
    raw = rec.pack()
    assert len(raw) == p.LockRecord.SIZE == 72
    assert p.LockRecord.unpack(raw) == rec
    assert p.nid_to_str(p.LockRecord.unpack(raw).owner) == "10.0.0.1:7000"
    assert p.Op.GET_LOCKS == 0xD0 and p.Op.GET_LOCKS not in (0x12, 0x13)
    assert CODES["FENCED"] == 0x1B
    assert isinstance(error_for(0x1B), FencedError)
    assert "fenced" in strerror(0x1B).lower()
