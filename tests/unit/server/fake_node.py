"""A node without a cluster, for the unit tests of ``sheep.server.ops`` and
``sheep.server.listener``: the attributes of the daemon object (``sheep``)
that admission, ``dispatch`` and the listener read, and a gateway whose
object handlers (``handle_read`` & co., the interface ``ops._gw`` calls) are
scripted by the test.

Nothing here starts a daemon or touches a disk.  A handler may block on an
event the test releases; every call is recorded in ``calls``.
"""

from __future__ import annotations

import asyncio
import types

from sheep import proto
from sheep.cluster import group as G

EPOCH = 7


class FakeGroup:
    """What admission and dispatch read from ``sheep.group``."""

    def __init__(self):
        self.status = G.OK
        self.epoch = EPOCH
        self.up = True
        self.quorum = True
        self.formatted = True
        self.nodes = []
        self.disable_recovery = False
        self.config = types.SimpleNamespace(ctime=0, copies=3, copy_policy=0, flags=0,
                                            block_size_shift=22, default_store="plain")
        self.cluster_ops = []  # work steps handed to cluster_op (not run)

    def serving(self):
        return self.up

    async def cluster_op(self, work):
        self.cluster_ops.append(work)
        return await work()


class FakeGateway:
    """``sheep.gateway``: the object handlers of the op table.

    ``script[method]`` is an ``async (req, payload) -> reply`` run for that
    method (default: an empty success); every call is appended to ``calls``
    as ``(method, req, payload)``.
    """

    METHODS = ("handle_create", "handle_read", "handle_write", "handle_remove",
               "handle_discard")

    def __init__(self):
        self.script = {}
        self.calls = []
        for m in self.METHODS:
            setattr(self, m, self._method(m))

    def _method(self, name):
        async def handler(req, payload):
            self.calls.append((name, req, bytes(payload)))
            fn = self.script.get(name)
            if fn is None:
                return None, b""
            return await fn(req, payload)
        return handler



class FakeVdis:
    """``sheep.vdis`` as the listener reads it: the size of an object (``size``)."""

    def __init__(self, size=4 << 20):
        self.size = size

    def obj_size(self, oid):
        return self.size


class FakeLocks:
    """``sheep.locks`` as the listener and the format main step use it."""

    def __init__(self):
        self.touched = []
        self.closed_conns = []
        self.cleared = 0

    def touch(self, conn):
        self.touched.append(conn)

    def conn_closed(self, conn):
        self.closed_conns.append(conn)

    def clear(self):
        self.cleared += 1


class FakeStore:
    """``sheep.store.read_epoch`` only (GET_EPOCH, STAT_CLUSTER)."""

    def __init__(self):
        self.epochs = {}  # epoch -> (packed nodes, time)

    def read_epoch(self, epoch):
        return self.epochs.get(epoch)


class FakeSheep:
    def __init__(self, tmp_path=None):
        self.group = FakeGroup()
        self.gateway = FakeGateway()
        self.vdis = FakeVdis()
        self.locks = FakeLocks()
        self.store = FakeStore()
        self.connections = set()
        self.cfg = types.SimpleNamespace(log_level=6, gateway=False, vnodes=None,
                                         bindaddr="127.0.0.1", port=0,
                                         base_dir=str(tmp_path) if tmp_path else None)
        self.levels = []
        self.recovery = types.SimpleNamespace(kicks=0)
        self.recovery.kick = lambda: setattr(self.recovery, "kicks", self.recovery.kicks + 1)

    def set_log_level(self, level):
        self.levels.append(level)
        self.cfg.log_level = level


def blocking(gateway: FakeGateway, method: str, reply=lambda req: (None, b"")):
    """Make ``method`` wait until released: returns (started, release) where
    ``started`` is the list of requests that entered the handler (in order)
    and ``release(req_id)`` lets that one return ``reply(req)``."""
    started = []
    gates: dict[int, asyncio.Event] = {}

    async def handler(req, payload):
        gate = gates.setdefault(req.id, asyncio.Event())
        started.append(req)
        await gate.wait()
        return reply(req)

    def release(req_id):
        gates.setdefault(req_id, asyncio.Event()).set()
    gateway.script[method] = handler
    return started, release


async def until(pred, timeout=5.0):
    """Wait (yielding to the loop) until ``pred()`` is true; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s")
        await asyncio.sleep(0.001)


def read_req(rid, oid=1, length=0, **kw):
    return proto.Request(proto.Op.READ_OBJ, proto.ObjArgs(oid=oid), id=rid,
                         data_length=length, **kw)


def write_req(rid, payload_len, oid=1, flags=0, op=proto.Op.WRITE_OBJ):
    return proto.Request(op, proto.ObjArgs(oid=oid), id=rid, data_length=payload_len,
                         flags=proto.SD_FLAG_CMD_WRITE | flags)
