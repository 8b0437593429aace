"""The wire codec against real Sheepdog 1.0 traffic (tests/data/wire.jsonl)."""

import hashlib

import pytest

from sheep import proto as p
from sheep.proto.errors import CODES, error_for, strerror


def test_payloads_rebuilt_match_sha256(wire):
    for rec in wire:
        assert hashlib.sha256(rec["payload_bytes"]).hexdigest() == rec["payload"]["sha256"]


def test_every_header_roundtrips_byte_for_byte(wire):
    assert len(wire) == 390
    for rec in wire:
        raw = rec["header_bytes"]
        assert len(raw) == p.HDR_SIZE
        if rec["dir"] == "req":
            hdr = p.Request.unpack(raw)
            assert hdr.opcode == rec["opcode"]
            assert p.version_ok(hdr.opcode, hdr.proto_ver)
        else:
            hdr = p.Response.unpack(raw)
            assert hdr.opcode == rec["opcode"]
            assert hdr.data_length == rec["payload"]["len"]
        assert hdr.pack() == raw


def test_request_payload_rule(wire):
    """A request carries data_length payload bytes iff the WRITE flag is set."""
    for rec in wire:
        if rec["dir"] != "req":
            continue
        hdr = p.Request.unpack(rec["header_bytes"])
        expected = hdr.data_length if hdr.has_payload else 0
        assert rec["payload"]["len"] == expected


def _pairs(wire, label, opcode):
    reqs = [r for r in wire if r["label"] == label]
    out = []
    for i, r in enumerate(reqs):
        if r["dir"] == "req" and r["opcode"] == opcode:
            rsp = next(x for x in reqs[i + 1:] if x["dir"] == "rsp" and x["conn"] == r["conn"])
            out.append((p.Request.unpack(r["header_bytes"]), r["payload_bytes"],
                        p.Response.unpack(rsp["header_bytes"]), rsp["payload_bytes"]))
    return out


def test_new_vdi_create(wire):
    req, payload, rsp, _ = _pairs(wire, "vdi_create", p.Op.NEW_VDI)[0]
    assert isinstance(req.args, p.VdiArgs)
    assert req.args.vdi_size == 100 * 1024 * 1024
    assert req.args.snapid == 0 and req.args.base_vdi_id == 0
    assert p.cstr(payload) == "test" and len(payload) == 256
    assert rsp.result == 0
    assert rsp.args.vdi_id == 0x7C2B25 == p.vdi_name_hash("test")
    assert rsp.args.copies == 3 and rsp.args.block_size_shift == 22


def test_make_fs_and_node_list(wire):
    req, payload, rsp, _ = _pairs(wire, "cluster_format_nolock", p.Op.MAKE_FS)[0]
    assert req.args.copies == 3
    assert req.args.flags & p.SD_CLUSTER_FLAG_AUTO_VNODES
    assert payload == b"plain\0"
    _, _, rsp, body = _pairs(wire, "node_list", p.Op.GET_NODE_LIST)[0]
    nodes = p.unpack_nodes(body, rsp.args.nr_nodes)
    assert [(n.host, n.port, n.nr_vnodes, n.zone) for n in nodes] == [
        ("127.0.0.1", 7200, 128, 0), ("127.0.0.1", 7201, 128, 1), ("127.0.0.1", 7202, 128, 2)]
    assert [str(n) for n in p.sort_nodes(reversed(nodes))] == [str(n) for n in nodes]


def test_stat_cluster_and_cluster_info(wire):
    pairs = _pairs(wire, "cluster_info", p.Op.STAT_CLUSTER)
    req, _, rsp, body = pairs[-1]
    assert rsp.result == 0
    recs = p.unpack_epoch_logs(body, req.args.nodes_nr)
    hdr, nodes = recs[0]
    assert hdr.epoch == 1 and hdr.nr_copies == 3 and p.cstr(hdr.drv_name) == "plain"
    assert hdr.ctime >> 32 == 1795637603
    assert [n.port for n in nodes] == [7200, 7201, 7202]
    _, _, rsp, body = _pairs(wire, "vdi_create", p.Op.CLUSTER_INFO)[0]
    assert len(body) == p.CLUSTER_INFO_SIZE
    info, nodes = p.unpack_cluster_info(body)
    assert info.status == p.SD_STATUS_OK and info.nr_nodes == 3 and info.epoch == 1
    assert info.block_size_shift == 22 and p.cstr(info.default_store) == "plain"
    packed = p.pack_cluster_info(info, nodes)
    assert len(packed) == p.CLUSTER_INFO_SIZE and packed[:48] == body[:48]
    for i in range(3):  # rb (the first 24 bytes of each node) is garbage on the wire
        off = 48 + 80 * i
        assert packed[off + 24:off + 80] == body[off + 24:off + 80]


def test_inode_read_and_snapshot_marker(wire):
    for req, _, rsp, body in _pairs(wire, "vdi_list_after_snapshot", p.Op.READ_OBJ):
        if req.args.offset == 0 and p.is_vdi_obj(req.args.oid) and len(body) >= p.SD_INODE_HEADER_SIZE:
            ino = p.InodeHeader.unpack(body)
            assert ino.vdi_id == p.oid_to_vid(req.args.oid)
            assert ino.is_snapshot == (ino.vdi_id == 0x7C2B25 and ino.name_str == "test")
            if ino.is_snapshot:
                assert ino.tag_str == "snap1"
            assert ino.pack() == body[:p.SD_INODE_HEADER_SIZE]


def test_oid_helpers_and_vectors():
    assert p.vid_to_vdi_oid(0x7C2B25) == 0x807C2B2500000000
    assert p.vdi_name_hash("alice") == 0xA03907
    oid = p.vid_to_data_oid(0x7C2B25, 1)
    assert oid == 0x007C2B2500000001 and p.is_data_obj(oid)
    assert p.oid_to_vid(oid) == 0x7C2B25 and p.data_oid_to_idx(oid) == 1
    assert p.vid_to_attr_oid(0x7C2B25, p.attr_slot(b"test", b"", 0, b"foo")) == 0x207C2B2517D2D865
    assert p.object_size(p.vid_to_vdi_oid(1)) == 12587576
    assert p.default_zone(p.addr_from_str("127.0.0.1")) == 16777343
    assert p.is_ledger_obj(p.data_oid_to_ledger_oid(oid))


@pytest.mark.parametrize("cls,size", [(p.SdNode, 80), (p.SheepdogConfig, 40), (p.EpochLogHeader, 48),
                                      (p.ClusterInfoHeader, 48), (p.VdiStateRecord, 1428),
                                      (p.RecoveryState, 24), (p.RecoveryThrottling, 24), (p.SdStat, 120),
                                      (p.InodeHeader, 4664), (p.VdiAttr, 66320)])
def test_record_sizes(cls, size):
    assert cls.SIZE == size
    assert len(cls().pack()) == size


def test_result_codes_and_errors():
    assert CODES["READONLY"] == 0x1A and CODES["NO_VDI"] == 0x08
    assert strerror(0x08) == "No VDI found"
    err = error_for(0x02)
    assert err.code == 0x02 and type(err).__name__ == "NoObjError"
    assert p.result_name(0x81) == "OLD_NODE_VER"


def test_reply_capacity_rule():
    r = p.Request(p.Op.WRITE_OBJ, flags=p.SD_FLAG_CMD_WRITE, data_length=4096)
    assert r.reply_capacity == 0
    r = p.Request(p.Op.OIDS_EXIST, flags=p.SD_FLAG_CMD_WRITE | p.SD_FLAG_CMD_PIGGYBACK, data_length=16)
    assert r.reply_capacity == 16
    r = p.Request(p.Op.READ_OBJ, data_length=512)
    assert r.reply_capacity == 512 and r.proto_ver == 2
    assert p.Request(p.Op.GET_NODE_LIST).proto_ver == 0x0A


def test_the_package_re_exports_every_codec_name():
    """``proto.X`` reaches every public name of the codec modules (the
    package's facade may not fall behind a module)."""
    import importlib

    import sheep.proto as package
    for name in ("constants", "opcodes", "oids", "records", "nodes", "cluster", "inode",
                 "sessions"):
        mod = importlib.import_module(f"sheep.proto.{name}")
        own = [k for k, v in vars(mod).items() if not k.startswith("_")
               and getattr(v, "__module__", mod.__name__) == mod.__name__
               and not isinstance(v, type(importlib))]
        missing = [k for k in own if getattr(package, k, None) is not getattr(mod, k)]
        assert missing == [], (name, missing)


def test_no_module_of_the_package_shadows_a_re_exported_name():
    """Importing ``sheep.proto.X`` binds ``X`` on the package: a module named
    like a re-exported function would replace it (``proto.lock_session``)."""
    import ast
    import pathlib

    import sheep.proto as package
    root = pathlib.Path(package.__file__).parent
    tree = ast.parse((root / "__init__.py").read_text())
    exported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for a in node.names}
    modules = {f.stem for f in root.glob("*.py")} - {"__init__"}
    assert modules & exported == set()
