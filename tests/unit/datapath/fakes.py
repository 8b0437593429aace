"""An in-memory cluster for the unit tests of the data path
(``sheep.datapath.gateway`` and ``sheep.datapath.replica``): no daemons, no
sockets, no disks.

Each node is a :class:`FakeSheep` with the collaborators those modules use,
behind the same interface:

* ``group`` (:class:`FakeGroup`): this node's view — epoch, ring, node list,
  ``serving()``, ``settled()`` (store jobs of the epoch), the waits on the
  epoch, the op token of a cluster op's work step;
* ``locks`` (:class:`FakeLocks`): this node's copy of the lock table —
  current exclusive grants, draining grants, frozen VDIs, fan-outs in flight;
* ``store`` (:class:`FakeStore`): objects as byte arrays; every change runs
  its ``check`` under the object's lock, as ``sheep.store.plain`` does;
* ``recovery`` (:class:`FakeRecovery`): whether this node holds an object,
  and copies "elsewhere" that on-access recovery and repair fetch;
* ``vdis`` (:class:`FakeVdis`): one known VDI, 4 KiB objects;
* ``gateway``: the real :class:`sheep.datapath.gateway.Gateway`, whose peer
  pool is replaced by :class:`FakeNet`.

:class:`FakeNet` carries peer ops to the real replica handlers of the target
node, packed and unpacked like on the wire; only the result code of an error
crosses it.  Faults are injected per node: unreachable (NETWORK_ERROR), or a
queue of result codes / callables consumed by the next requests.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import types
from collections import defaultdict

from sheep import proto
from sheep.cluster.fetch import Outcome
from sheep.datapath import replica
from sheep.datapath.gateway import Gateway
from sheep.datapath.replica import Replica
from sheep.proto.errors import CODES, SdError, error_for
from sheep.store.base import WouldBlock

Op = proto.Op
SHIFT = 12  # 4 KiB data objects
OBJ = 1 << SHIFT
VID = 0x00ABCD
EPOCH = 5


def data_oid(idx: int = 0) -> int:
    return proto.vid_to_data_oid(VID, idx)


def make_node(i: int) -> proto.SdNode:
    return proto.SdNode.make("127.0.0.1", 7000 + i, 64, i)


def addr(n: proto.SdNode) -> str:
    return f"{n.host}:{n.port}"


async def eventually(pred, timeout: float = 2.0) -> None:
    """Wait until ``pred()`` holds (a condition, not a fixed delay)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


class FakeRing:
    """The ring of one epoch: ``nodes`` (the epoch's node list, whose indexes
    fenced peer writes carry) and ``replicas``: the first ``copies`` of
    ``order`` (default: the node list), for every oid."""

    def __init__(self, nodes, order=None):
        self.nodes = list(nodes)
        self.order = list(order) if order is not None else list(nodes)

    def replicas(self, oid: int, copies: int):
        return self.order[:copies]


class FakeGroup:
    def __init__(self, me: proto.SdNode, epoch: int, ring: FakeRing):
        self.me = me
        self.epoch = epoch
        self.ring = ring
        self.up = True  # serving()
        self.jobs: asyncio.Event | None = None  # set: the epoch's store jobs are done
        self.token_error: int | None = None  # check_op_token raises this code
        self.waiting = 0  # callers in a wait on the epoch (or a table change) now
        self._changed = asyncio.Event()

    @property
    def nodes(self):
        return self.ring.nodes

    def is_me(self, n) -> bool:
        return n.addr == self.me.addr and n.port == self.me.port

    def serving(self) -> bool:
        return self.up

    def check_op_token(self) -> None:
        if self.token_error is not None:
            raise error_for(self.token_error, "the work step lost its turn")

    async def settled(self) -> None:
        if self.jobs is not None:
            await self.jobs.wait()

    def set_epoch(self, epoch: int, ring: FakeRing | None = None) -> None:
        self.epoch = epoch
        if ring is not None:
            self.ring = ring
        self.poke()

    def poke(self) -> None:
        """Something this node applied changed (epoch, lock table): wake waiters."""
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def wait_until(self, pred, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while not pred():
                left = deadline - loop.time()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    return pred()
            return True
        finally:
            self.waiting -= 1

    async def wait_epoch_change(self, seen: int, timeout: float) -> bool:
        return await self.wait_until(lambda: self.epoch != seen, timeout)

    async def wait_epoch_at_least(self, epoch: int, timeout: float) -> bool:
        return await self.wait_until(lambda: self.epoch >= epoch, timeout)


class FakeLocks:
    """This node's copy of the lock table, reduced to what fencing reads."""

    def __init__(self, group: FakeGroup, me: str):
        self.group = group
        self.me = me
        self.enforced = True
        self.grants: dict[int, tuple[int, str]] = {}  # vid -> (gen, gateway)
        self.draining: dict[int, tuple[int, str]] = {}
        self.frozen: set[int] = set()
        self.generation = 0  # the newest generation applied here
        self.inflight: dict[tuple[int, int], int] = {}
        self.begun = 0

    def grant(self, vid: int, gen: int, node: str) -> None:
        self.grants[vid] = (gen, node)
        self.generation = max(self.generation, gen)
        self.group.poke()

    def end_grant(self, vid: int, draining: bool = True) -> None:
        old = self.grants.pop(vid)
        if draining:
            self.draining[vid] = old

    def fence_check(self, vid: int, gen: int, node: str, draining_ok: bool = False) -> None:
        if not self.enforced:
            return
        if draining_ok and self.draining.get(vid) == (gen, node):
            return
        if self.grants.get(vid) != (gen, node):
            raise error_for(CODES["FENCED"], f"VDI {vid:#x}: generation {gen} via {node}")

    def check_not_frozen(self, vid: int) -> None:
        if vid in self.frozen:
            raise error_for(CODES["AGAIN"], "being snapshotted")

    def begin_write(self, vid: int, gen: int) -> None:
        self.begun += 1
        self.inflight[(vid, gen)] = self.inflight.get((vid, gen), 0) + 1

    def end_write(self, vid: int, gen: int) -> None:
        n = self.inflight[(vid, gen)] - 1
        if n:
            self.inflight[(vid, gen)] = n
        else:
            del self.inflight[(vid, gen)]

    async def fence_ready(self, gen: int) -> None:
        if gen > self.generation:
            await self.group.wait_until(lambda: self.generation >= gen, 3.0)

    async def check_write(self, req: proto.Request, write: bool = True) -> None:
        gen = proto.fence_of(req)
        if not gen or not self.enforced:
            return
        await self.fence_ready(gen)
        self.fence_check(proto.oid_to_vid(req.args.oid), gen, self.me)

    async def wait_drained(self, vid: int, timeout: float = 15.0, code: str = "VDI_LOCKED"):
        if vid in self.draining:
            raise error_for(CODES[code])


class FakeStore:
    """Objects in memory.  Changes take the object's lock, run ``check``
    under it (then ``on_locked``'s interleaving has already happened), apply,
    then call ``after_change`` still under the lock."""

    def __init__(self):
        self.objs: dict[int, bytearray] = {}
        self.damaged: set[int] = set()  # copies that fail their checksums
        self.stale: dict[tuple[int, int], bytes] = {}
        self.changes: list[tuple[str, int, int]] = []  # (what, oid, epoch)
        self.reads: list[int] = []
        self.cold: set[int] = set()  # not in the page cache: read_cached would wait
        self.waited: list[int] = []  # read_cached calls that would have waited
        self.fail: SdError | None = None  # the next store call raises this
        self.on_locked = None  # fn(oid): runs under the lock before the check
        self.after_change = None  # fn(oid): runs after a change, under the lock
        self._locks: dict[int, threading.Lock] = defaultdict(threading.Lock)

    def _failing(self) -> None:
        if self.fail is not None:
            e, self.fail = self.fail, None
            raise e

    def _enter(self, oid, check) -> None:
        if self.on_locked is not None:
            self.on_locked(oid)
        if check is not None:
            check()

    def _done(self, what, oid, epoch) -> None:
        self.changes.append((what, oid, epoch))
        if self.after_change is not None:
            self.after_change(oid)

    def exists(self, oid: int) -> bool:
        return oid in self.objs

    def write(self, oid: int, data, offset: int, epoch: int = 0, check=None) -> int:
        self._failing()
        with self._locks[oid]:
            self._enter(oid, check)
            buf = self.objs.get(oid)
            if buf is None:
                raise error_for(CODES["NO_OBJ"], f"object {oid:016x} not found")
            if offset + len(data) > len(buf):
                raise error_for(CODES["INVALID_PARMS"], "beyond the end")
            if oid in self.damaged:  # a merge with a damaged block
                raise error_for(CODES["EIO"], f"object {oid:016x} is damaged")
            buf[offset:offset + len(data)] = data
            self._done("write", oid, epoch)
            return 1

    def create_and_write(self, oid: int, size: int, data=b"", offset: int = 0,
                         sparse: bool = False, epoch: int = 0, check=None) -> int:
        self._failing()
        with self._locks[oid]:
            self._enter(oid, check)
            buf = bytearray(size)
            buf[offset:offset + len(data)] = data
            self.objs[oid] = buf
            self.damaged.discard(oid)
            self._done("create", oid, epoch)
            return 1

    def remove(self, oid: int, check=None) -> None:
        self._failing()
        with self._locks[oid]:
            self._enter(oid, check)
            if self.objs.pop(oid, None) is None:
                raise error_for(CODES["NO_OBJ"], f"object {oid:016x} not found")
            self._done("remove", oid, 0)

    def read(self, oid: int, offset: int, length: int) -> bytes:
        self._failing()
        self.reads.append(oid)
        buf = self.objs.get(oid)
        if buf is None:
            raise error_for(CODES["NO_OBJ"], f"object {oid:016x} not found")
        if oid in self.damaged:
            raise error_for(CODES["EIO"], f"object {oid:016x} fails its checksum")
        return bytes(buf[offset:offset + length])

    def read_cached(self, oid: int, offset: int, length: int) -> bytes:
        """``read`` unless the object is ``cold`` (not in the page cache) or
        damaged (a block that fails its record: the locked read decides)."""
        if oid in self.cold or oid in self.damaged:
            self.waited.append(oid)
            raise WouldBlock
        return self.read(oid, offset, length)

    def move_to_stale(self, oid: int, epoch: int) -> None:
        self.stale[(oid, epoch)] = bytes(self.objs.pop(oid))


class FakeRecovery:
    """``elsewhere``: good copies other holders have, fetched by on-access
    recovery and by repairs; ``undecided``: recovery cannot decide now."""

    def __init__(self, store: FakeStore):
        self.store = store
        self.holder = True
        self.elsewhere: dict[int, bytes] = {}
        self.undecided = False
        self.recovered: list[int] = []
        self.later: list[int] = []  # repairs scheduled in the background
        self.soon: list[int] = []  # recoveries started in the background (recover_soon)
        self.fetcher = types.SimpleNamespace(repair=self._repair)
        self.repaired: list[int] = []

    def holds(self, oid: int, ring=None) -> bool:
        return self.holder

    async def recover_object(self, oid: int, wait: float = 5.0) -> Outcome:
        self.recovered.append(oid)
        if self.store.exists(oid):
            return Outcome.PRESENT
        if not self.holder:
            return Outcome.NOT_HOLDER
        if self.undecided:
            return Outcome.UNAVAILABLE
        if oid not in self.elsewhere:
            return Outcome.ABSENT
        self.store.objs[oid] = bytearray(self.elsewhere[oid])
        return Outcome.PRESENT

    def repair_later(self, oid: int) -> None:
        self.later.append(oid)

    def recover_soon(self, oid: int) -> None:
        self.soon.append(oid)

    async def _repair(self, oid: int) -> bool:
        self.repaired.append(oid)
        if oid not in self.elsewhere:
            return False
        self.store.objs[oid] = bytearray(self.elsewhere[oid])
        self.store.damaged.discard(oid)
        return True


class FakeVdis:
    def __init__(self, copies: int = 3):
        self.st = types.SimpleNamespace(vid=VID, copies=copies, snapshot=False, deleted=False,
                                        size=64 * OBJ, block_size_shift=SHIFT)

    def state(self, vid):
        return self.st if vid == VID else None

    async def await_state(self, vid):
        return self.state(vid)

    def copies_of(self, vid) -> int:
        return self.st.copies

    def shift_of(self, vid) -> int:
        return SHIFT

    def obj_size(self, oid) -> int:
        return proto.object_size(oid, SHIFT)


class FakeSheep:
    def __init__(self, me: proto.SdNode, epoch: int, ring: FakeRing, copies: int = 3):
        self.me = me
        self.group = FakeGroup(me, epoch, ring)
        self.locks = FakeLocks(self.group, addr(me))
        self.store = FakeStore()
        self.recovery = FakeRecovery(self.store)
        self.vdis = FakeVdis(copies)
        self.replica = Replica(store=self.store, group=self.group, locks=self.locks,
                               vdis=self.vdis, recovery=self.recovery, io=self.io)
        self.peers = None  # FakeCluster puts its network here
        self.gateway = Gateway(group=self.group, vdis=self.vdis, locks=self.locks,
                               replica=self.replica, peers=self.peers)

    async def io(self, fn, *args, size=None, cached=None):
        """As ``Sheep.io``: the variant that never waits first, if any (inline),
        else the blocking call, which leaves the event loop as on an I/O thread."""
        if cached is not None:
            try:
                return cached(*args)
            except WouldBlock:
                pass
        await asyncio.sleep(0)
        return fn(*args)


PEER_HANDLERS = {Op.READ_PEER: replica.handle_read, Op.WRITE_PEER: replica.handle_write,
                 Op.CREATE_AND_WRITE_PEER: replica.handle_create,
                 Op.REMOVE_PEER: replica.handle_remove}


class FakeNet:
    """The gateway's peer pool (``request(node, req, payload)``)."""

    def __init__(self, cluster: "FakeCluster"):
        self.cluster = cluster
        self.down: set[int] = set()
        self.faults: dict[int, list] = defaultdict(list)
        self.log: list[tuple[str, int, int]] = []  # (op name, node index, epoch)

    def fault(self, i: int, *what) -> None:
        """The next requests to node ``i`` meet these, in order: a result code
        (answered instead of the op) or a callable (run first, awaited if it
        returns an awaitable; may raise)."""
        self.faults[i].extend(what)

    def sent(self, op: str | None = None) -> list[int]:
        return [i for name, i, _e in self.log if op is None or name == op]

    async def request(self, node, req: proto.Request, payload=b""):
        i = self.cluster.index(node)
        self.log.append((Op(req.opcode).name, i, req.epoch))
        await asyncio.sleep(0)
        if i in self.down:
            raise error_for(CODES["NETWORK_ERROR"], f"{node}: connection refused")
        if self.faults[i]:
            f = self.faults[i].pop(0)
            if callable(f):
                r = f()
                if inspect.isawaitable(r):
                    await r
            else:
                raise error_for(f)
        wire = proto.Request.unpack(req.pack())  # what the peer decodes
        try:
            rsp, body = await PEER_HANDLERS[wire.opcode](self.cluster.sheep[i], wire,
                                                         bytes(payload))
        except SdError as e:
            raise error_for(e.code) from None  # only the result code crosses the wire
        return rsp or proto.Response(wire.opcode), body

    def close(self) -> None:
        pass


class FakeCluster:
    """``n`` nodes at ``epoch``; node 0 is the gateway of the tests."""

    def __init__(self, n: int = 4, copies: int = 3, epoch: int = EPOCH, order=None):
        self.nodes = [make_node(i) for i in range(n)]
        ring = FakeRing(self.nodes, order)
        self.sheep = [FakeSheep(nd, epoch, ring, copies) for nd in self.nodes]
        self.net = FakeNet(self)
        for s in self.sheep:
            s.peers = s.gateway.peers = self.net

    def index(self, node) -> int:
        return next(i for i, n in enumerate(self.nodes)
                    if n.addr == node.addr and n.port == node.port)

    @property
    def gw(self) -> Gateway:
        return self.sheep[0].gateway

    def order(self, *idx) -> None:
        """Replicas of every oid at the current epoch: these nodes, in order."""
        ring = FakeRing(self.nodes, [self.nodes[i] for i in idx])
        for s in self.sheep:
            s.group.ring = ring

    def bump(self, *replicas: int, only=None) -> None:
        """A new epoch on every node (or on ``only``), its ring placing every
        oid on ``replicas`` (default: unchanged)."""
        for i, s in enumerate(self.sheep):
            if only is not None and i not in only:
                continue
            ring = FakeRing(self.nodes, [self.nodes[j] for j in replicas]) if replicas else None
            s.group.set_epoch(s.group.epoch + 1, ring)

    def grant(self, gen: int, via: int = 0, vid: int = VID) -> None:
        """An exclusive grant of ``vid`` through node ``via``, applied everywhere."""
        for s in self.sheep:
            s.locks.grant(vid, gen, addr(self.nodes[via]))

    def put(self, oid: int, data: bytes, on=None) -> None:
        """A copy of ``oid`` (whole object) on these nodes (default: all)."""
        for i, s in enumerate(self.sheep):
            if on is None or i in on:
                s.store.objs[oid] = bytearray(data.ljust(OBJ, b"\0"))

    def copy(self, i: int, oid: int) -> bytes | None:
        buf = self.sheep[i].store.objs.get(oid)
        return None if buf is None else bytes(buf)
