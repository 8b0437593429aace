"""Replay fakes for collie tests (no daemon); fixtures are in conftest.py.

* :class:`ReplayServer` answers the requests of one ``cli.txt`` section with
  the responses recorded in ``tests/data/wire.jsonl`` (pairs per ``conn`` in
  order) and records what collie actually sent.
* :class:`NodeFake` stands in for the capture's nodes 127.0.0.1:7200-7202,
  which dog talks to directly (STAT_SHEEP, STAT_RECOVERY, CLUSTER_INFO,
  EXIST); that traffic is not in the capture, so it is synthesised.
"""

from __future__ import annotations

import json
import pathlib
import socket
import struct
import threading

from harness import cli_sections  # noqa: F401  (re-exported for the tests)

from sheep import proto
from sheep.proto import Op

DATA = pathlib.Path(__file__).resolve().parents[2] / "data"
NODE_PORTS = (7200, 7201, 7202)
NODE_SPACE = int(78.7 * (1 << 30))  # prints "79 GB" per node, "236 GB" total


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _payload(rec) -> bytes:
    payload = bytearray(rec["payload"]["len"])
    for off, hexdata in rec["payload"]["nonzero"]:
        chunk = bytes.fromhex(hexdata)
        payload[off:off + len(chunk)] = chunk
    return bytes(payload)


_WIRE = None


def wire_pairs(label: str) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """(req header, req payload, rsp header, rsp payload) of the first conn of label."""
    global _WIRE
    if _WIRE is None:
        _WIRE = [json.loads(line) for line in (DATA / "wire.jsonl").read_text().splitlines()]
    recs = [r for r in _WIRE if r["label"] == label]
    if not recs:
        return []
    conn = recs[0]["conn"]
    recs = [r for r in recs if r["conn"] == conn]
    out = []
    for q, a in zip(recs[0::2], recs[1::2]):
        assert q["dir"] == "req" and a["dir"] == "rsp"
        out.append((bytes.fromhex(q["header"]), _payload(q),
                    bytes.fromhex(a["header"]), _payload(a)))
    return out


class _Base:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            while True:
                hdr = _recv_exact(c, 48)
                req = proto.Request.unpack(hdr)
                payload = _recv_exact(c, req.data_length) if req.has_payload else b""
                ans = self.answer(hdr, payload)
                if ans is None:
                    break
                c.sendall(ans)
        except (ConnectionError, OSError):
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.sock.close()


class ReplayServer(_Base):
    def __init__(self, label: str):
        self.pairs = wire_pairs(label)
        self.sent: list[tuple[bytes, bytes]] = []
        self.lock = threading.Lock()
        super().__init__()

    def answer(self, hdr, payload):
        with self.lock:
            i = len(self.sent)
            self.sent.append((hdr, payload))
            if i >= len(self.pairs):
                return None
            rsp = bytearray(self.pairs[i][2])
        rsp[8:12] = hdr[8:12]  # echo id
        return bytes(rsp) + self.pairs[i][3]


class NodeFake(_Base):
    def __init__(self):
        self.seen: list[int] = []
        super().__init__()

    def answer(self, hdr, payload):
        req = proto.Request.unpack(hdr)
        self.seen.append(req.opcode)
        body = b""
        rsp = proto.Response(req.opcode, id=req.id, epoch=1)
        if req.opcode == Op.STAT_SHEEP:
            rsp.args.store_size = rsp.args.store_free = NODE_SPACE
        elif req.opcode == Op.STAT_RECOVERY:
            body = proto.RecoveryState().pack()
        elif req.opcode == Op.CLUSTER_INFO:
            body = proto.pack_cluster_info(proto.ClusterInfoHeader(
                flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES, status=2), [])
        elif req.opcode == Op.KILL_NODE:
            pass
        elif req.opcode == Op.EXIST:
            pass
        else:
            rsp.result = 0x05
        body = body[:req.data_length]
        rsp.data_length = len(body)
        return rsp.pack() + body


def strip_ids(hdr: bytes, opcode: int) -> bytes:
    """Header bytes with the request id (and MAKE_FS ctime) blanked."""
    h = bytearray(hdr)
    h[8:12] = b"\0" * 4
    if opcode == Op.MAKE_FS:
        h[24:32] = b"\0" * 8
    return bytes(h)


def header_opcode(hdr: bytes) -> int:
    return struct.unpack_from("<B", hdr, 1)[0]
