"""collie argument handling, help, error reporting and formatting helpers."""

import json
import socket

import pytest
from collie_fakes import ReplayServer, _Base

from collie.__main__ import build_parser
from collie.output import parse_size, size_to_str
from sheep import proto
from sheep.proto import Op
from sheep.proto.errors import CODES

# ---------------------------------------------------------------------------
# formatting


@pytest.mark.parametrize("size,text", [
    (100 << 20, "100 MB"), (8 << 20, "8.0 MB"), (0, "0.0 MB"), (12 << 20, "12 MB"),
    (int(78.7 * (1 << 30)), "79 GB"), (236 << 30, "236 GB"), (4096, "0.0 MB"),
    (3 << 40, "3.0 TB"), (1 << 20, "1.0 MB"), ((10 << 20) - 1, "10.0 MB"),
])
def test_size_to_str(size, text):
    assert size_to_str(size) == text


def test_size_to_str_raw():
    assert size_to_str(104857600, raw=True) == "104857600"


@pytest.mark.parametrize("text,value", [
    ("100M", 100 << 20), ("1G", 1 << 30), ("4096", 4096), ("4k", 4096),
    ("4K", 4096), ("2T", 2 << 40), ("1.5M", 3 << 19), ("512b", 512),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["10X", "abc", "", "1MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


# ---------------------------------------------------------------------------
# help and usage


def _all_leaf_commands():
    parser = build_parser()
    out = []

    def walk(p, path):
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            out.append(path)
            return
        for name, sp in subs[0].choices.items():
            walk(sp, path + [name])

    walk(parser, [])
    return out


LEAVES = _all_leaf_commands()


def test_expected_commands_exist():
    have = {" ".join(p) for p in LEAVES}
    for c in ("cluster format", "cluster info", "cluster shutdown", "node list",
              "node info", "node recovery", "node kill", "vdi create", "vdi list",
              "vdi delete", "vdi read", "vdi write", "vdi setattr", "vdi getattr",
              "vdi object map", "vdi object location", "vdi tree", "vdi snapshot",
              "vdi clone", "vdi rollback", "vdi resize", "vdi lock list"):
        assert c in have


@pytest.mark.parametrize("path", [[]] + [p[:i] for p in LEAVES for i in range(1, len(p) + 1)])
def test_help_everywhere(run, path):
    res = run(path + ["--help"])
    assert res.code == 0
    assert "usage:" in res.text
    assert res.err == ""


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["vdi"], ["vdi", "bogus"], ["vdi", "create"], ["vdi", "create", "x"],
    ["vdi", "read"], ["vdi", "getattr", "x"], ["node", "kill"], ["cluster", "info", "-x"],
    ["node", "list", "-p", "0"], ["node", "list", "-p", "abc"],
    ["node", "list", "-a", "not-an-ip"], ["vdi", "object", "map"],
])
def test_usage_errors(run, argv):
    res = run(argv)
    assert res.code == 64
    assert res.err
    assert res.text == ""


def test_global_options_after_subcommand():
    args = build_parser().parse_args(["vdi", "list", "-a", "10.0.0.1", "-p", "7001", "-r"])
    assert (args.address, args.port, args.raw) == ("10.0.0.1", 7001, True)
    args = build_parser().parse_args(["node", "info"])
    assert (args.address, args.port, args.raw) == ("127.0.0.1", 7000, False)


def test_invalid_size_is_usage_error(run):
    srv = ReplayServer("vdi_create")
    try:
        res = run(["vdi", "create", "x", "10X", "-p", str(srv.port)])
    finally:
        srv.close()
    assert res.code == 64
    assert "Invalid size '10X'" in res.err


def test_unreachable_daemon(run):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = run(["node", "list", "-p", str(port)])
    assert res.code == 2
    assert f"failed to connect to 127.0.0.1:{port}" in res.err


# ---------------------------------------------------------------------------
# server errors are never hidden


class ScriptServer(_Base):
    """Answers by opcode: GET_VDI_INFO -> lookup result; READ_OBJ -> an inode."""

    def __init__(self, lookup=0, vdi_size=8 << 20, result_for=None):
        self.lookup, self.vdi_size = lookup, vdi_size
        self.result_for = result_for or {}
        self.ops = []
        super().__init__()

    def answer(self, hdr, payload):
        req = proto.Request.unpack(hdr)
        self.ops.append(req.opcode)
        rsp = proto.Response(req.opcode, id=req.id, epoch=1)
        body = b""
        if req.opcode in self.result_for:
            rsp.result = self.result_for[req.opcode]
        elif req.opcode == Op.GET_VDI_INFO:
            rsp.result = self.lookup
            if not self.lookup:
                rsp.args.vdi_id = 0x7C2B25
        elif req.opcode == Op.READ_OBJ:
            ino = proto.InodeHeader(name=proto.pad("test", 256), vdi_size=self.vdi_size,
                                    nr_copies=3, vdi_id=0x7C2B25, snap_id=1)
            body = (ino.pack() + bytes(req.data_length))[:req.data_length]
        rsp.data_length = len(body)
        return rsp.pack() + body


@pytest.fixture
def script():
    servers = []

    def make(**kw):
        s = ScriptServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.mark.parametrize("argv", [
    ["vdi", "read", "nosuch"], ["vdi", "write", "nosuch", "0", "1"],
    ["vdi", "object", "map", "nosuch"], ["vdi", "resize", "nosuch", "1G"],
])
def test_unknown_vdi(run, script, argv):
    srv = script(lookup=CODES["NO_VDI"])
    res = run(argv + ["-p", str(srv.port)])
    assert res.code != 0
    assert ("Failed to open VDI nosuch (snapshot id: 0 snapshot tag: ): No VDI found"
            in res.err)


def test_delete_unknown_vdi(run, script):
    srv = script(lookup=CODES["NO_VDI"])
    res = run(["vdi", "delete", "nosuch", "-p", str(srv.port)])
    assert res.code == 5
    assert "No VDI found" in res.err
    assert Op.DEL_VDI not in srv.ops


def test_getattr_errors(run, script):
    srv = script(result_for={Op.GET_VDI_ATTR: CODES["NO_OBJ"]})
    res = run(["vdi", "getattr", "test", "nokey", "-p", str(srv.port)])
    assert res.code == 5
    assert "Attribute 'nokey' not found" in res.err
    srv = script(result_for={Op.GET_VDI_ATTR: CODES["NO_VDI"]})
    res = run(["vdi", "getattr", "nosuch", "k", "-p", str(srv.port)])
    assert (res.code, res.err.strip()) == (5, "VDI not found")


def test_setattr_exclusive_exists(run, script):
    srv = script(result_for={Op.GET_VDI_ATTR: CODES["VDI_EXIST"]})
    res = run(["vdi", "setattr", "-x", "test", "k", "v", "-p", str(srv.port)])
    assert res.code == 3
    assert "The attribute 'k' already exists" in res.err


def test_write_beyond_end_refused(run, script):
    srv = script(vdi_size=8 << 20)
    res = run(["vdi", "write", "test", str((8 << 20) - 10), "20", "-p", str(srv.port)],
              stdin=b"x" * 20)
    assert res.code == 1
    assert "beyond the end of the VDI" in res.err
    assert Op.CREATE_AND_WRITE_OBJ not in srv.ops and Op.WRITE_OBJ not in srv.ops
    res = run(["vdi", "write", "test", "9M", "-p", str(srv.port)])
    assert res.code == 1
    assert "Write offset is beyond the end of the VDI" in res.err


def test_read_beyond_end_refused(run, script):
    srv = script(vdi_size=8 << 20)
    res = run(["vdi", "read", "test", "9M", "-p", str(srv.port)])
    assert res.code == 1
    assert "Read offset is beyond the end of the VDI" in res.err


def test_read_unallocated_is_zero(run, script):
    srv = script(vdi_size=8 << 20)
    res = run(["vdi", "read", "test", "4194300", "8", "-p", str(srv.port)])
    assert res.code == 0
    assert res.out == bytes(8)
    assert srv.ops.count(Op.READ_OBJ) == 1  # only the inode


def test_write_failure_reported(run, script):
    srv = script(result_for={Op.CREATE_AND_WRITE_OBJ: CODES["NO_SPACE"]})
    res = run(["vdi", "write", "test", "0", "4", "-p", str(srv.port)], stdin=b"abcd")
    assert res.code == 1
    assert "Server has no space for new objects" in res.err
    assert "Failed to write VDI" in res.err


def test_create_on_unformatted_cluster(run, script):
    class Unformatted(ScriptServer):
        def answer(self, hdr, payload):
            req = proto.Request.unpack(hdr)
            if req.opcode == Op.GET_NODE_LIST:
                body = proto.SdNode.make("127.0.0.1", 7000).wire()
                rsp = proto.Response(req.opcode, id=req.id, data_length=len(body))
                rsp.args.nr_nodes = 1
                return rsp.pack() + body
            if req.opcode == Op.STAT_CLUSTER:
                return proto.Response(req.opcode, CODES["WAIT_FOR_FORMAT"], id=req.id).pack()
            if req.opcode == Op.CLUSTER_INFO:
                body = proto.pack_cluster_info(proto.ClusterInfoHeader(), [])
                return proto.Response(req.opcode, id=req.id,
                                      data_length=len(body)).pack() + body
            return super().answer(hdr, payload)

    srv = Unformatted()
    try:
        res = run(["vdi", "create", "x", "1G", "-p", str(srv.port)])
    finally:
        srv.close()
    assert res.code == 1
    assert ("Failed to create VDI x: Waiting for cluster to be formatted"
            in res.err)
    assert Op.NEW_VDI not in srv.ops


def test_shutdown_error(run, script):
    srv = script(result_for={Op.SHUTDOWN: CODES["SHUTDOWN"]})
    res = run(["cluster", "shutdown", "-p", str(srv.port)])
    assert res.code == 1
    assert "System is shutting down" in res.err


# ---------------------------------------------------------------------------
# JSON output


def test_json_outputs(run, utc):
    for label, argv, check in [
        ("vdi_list_after_snapshot", ["vdi", "list", "--json"],
         lambda d: [(r["name"], r["id"], r["tag"], r["type"]) for r in d][:2]
         == [("test", 1, "snap1", "snapshot"), ("test", 0, "", "vdi")]),
        ("node_list", ["node", "list", "--json"],
         lambda d: [(n["id"], n["port"], n["zone"], n["nr_vnodes"]) for n in d]
         == [(0, 7200, 0, 128), (1, 7201, 1, 128), (2, 7202, 2, 128)]),
        ("cluster_info", ["cluster", "info", "--json"],
         lambda d: d["status"] == "running"
         and d["status_text"] == "running, auto-recovery enabled" and d["auto_recovery"] is True
         and d["created"] == 1795637603 and d["epochs"][0]["epoch"] == 1
         and len(d["epochs"][0]["nodes"]) == 3 and d["copies"] == 3
         and d["store"] == "plain"),
    ]:
        srv = ReplayServer(label)
        try:
            res = run(argv + ["-p", str(srv.port)])
        finally:
            srv.close()
        assert res.code == 0, res.err
        assert check(json.loads(res.text)), res.text
