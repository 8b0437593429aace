"""The replica side of object I/O: what a holder does with a read, write,
create or remove — sent by a gateway as a peer op, or run by the gateway on
itself as its local leg (the same code, so the same checks).

Guarantees:

* **Epoch.**  A request carries the gateway's epoch.  One older than ours is
  refused with OLD_NODE_VER (the gateway redoes it on the new ring); one
  newer waits until our view catches up (bounded by ``EPOCH_WAIT``, then
  NEW_NODE_VER); then it waits for that epoch's store jobs.  The epoch is
  checked again under the object's store lock right before anything changes,
  and a change that finished after the epoch moved is answered OLD_NODE_VER
  too (if this node no longer holds the object, the copy becomes stale in
  the same I/O call): a replica never acts on a placement it has not seen,
  and never keeps a live copy it does not hold.
* **Serving.**  A node that may not serve (cut off from the cluster, its
  membership lease lapsed) answers HALT, checked under the object lock too.
* **Fencing.**  A write that carries a lock generation (and the gateway it
  came through) lands only if that is the VDI's current exclusive grant,
  checked under the object's lock against this node's copy of the lock
  table: whatever the arrival order, a write of a fenced writer never lands
  after the new holder's (``sheep.vdi.locks``).
* **Missing objects.**  A holder that lacks the object recovers it first
  (``sheep.cluster.recovery``); NO_OBJ only if no copy exists anywhere, AGAIN if that
  cannot be decided now — never NO_OBJ because recovery was not done yet.
  The one exception is the gateway's own leg of a read (``wait=False``):
  the recovery only starts and NO_OBJ marked ``recovering`` sends the
  gateway to the other holders first (safe: a missing copy here means no
  write was acknowledged at this epoch, see docs/data-safety.md).
* **Damage.**  A live copy that fails its checksum answers EIO to reads
  (the gateway reads another replica) and is repaired from another holder in
  the background; a write that must merge with a damaged block repairs the
  copy first, then writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sheep import proto
from sheep.cluster.fetch import LIVE, Outcome, Retry, best_local, probe_reply
from sheep.proto.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.datapath.replica")

# What the gateway (sheep.datapath.gateway, which imports them from here)
# retries: once the epoch changed (or after at most 5 s) ...
EPOCH_CODES = {CODES["OLD_NODE_VER"], CODES["NEW_NODE_VER"], CODES["NETWORK_ERROR"],
               CODES["WAIT_FOR_JOIN"], CODES["WAIT_FOR_FORMAT"], CODES["KILLED"],
               CODES["SHUTDOWN"]}
# ... or after a short pause, the epoch may stay
PAUSE_CODES = {CODES["HALT"], CODES["AGAIN"]}
RETRY_CODES = EPOCH_CODES | PAUSE_CODES

EPOCH_WAIT = 10.0


@dataclass(frozen=True)
class Fence:
    """A write's lock credentials: the generation and the gateway it used."""

    gen: int
    node: str  # "addr:port" of the gateway


class Replica:
    """This node as a holder of objects (the guarantees above).

    ``store`` this node's objects; ``group`` the membership (epoch, serving,
    the epoch's nodes); ``locks`` the lock table (fencing); ``vdis`` the VDI
    table (object sizes); ``recovery`` recovers a missing object and repairs
    a damaged one; ``io`` runs store calls off the event loop."""

    def __init__(self, *, store, group, locks, vdis, recovery, io):
        self.store, self.group, self.locks = store, group, locks
        self.vdis, self.recovery, self.io = vdis, recovery, io

    async def admit_epoch(self, epoch: int) -> None:
        """Refuse an older epoch, wait for a newer one, then for its store jobs."""
        group = self.group
        if epoch != group.epoch:
            if (epoch - group.epoch) & 0x80000000:  # request is older (serial arithmetic)
                raise error_for(CODES["OLD_NODE_VER"])
            if not await group.wait_epoch_at_least(epoch, EPOCH_WAIT):
                raise error_for(CODES["NEW_NODE_VER"])
            if group.epoch != epoch:
                raise error_for(CODES["OLD_NODE_VER"])
        await group.settled()
        if group.epoch != epoch:
            raise error_for(CODES["OLD_NODE_VER"])

    def _guard(self, oid: int, epoch: int, fence: Fence | None):
        """The check run under the object's store lock (any thread)."""
        group, locks = self.group, self.locks
        vid = proto.oid_to_vid(oid)

        def check():
            if group.epoch != epoch:
                raise error_for(CODES["OLD_NODE_VER"],
                                f"epoch moved from {epoch} to {group.epoch}")
            if not group.serving():
                raise error_for(CODES["HALT"], "this node is cut off from the cluster")
            if fence is not None:  # a former holder's draining writes still land
                locks.fence_check(vid, fence.gen, fence.node, draining_ok=True)
        return check

    def _settle(self, oid: int, epoch: int) -> None:
        """After a change admitted at ``epoch`` (same I/O call): if the epoch moved
        meanwhile, the new holders may have copied the object without it — refuse
        so the gateway redoes it on the new ring, and keep no live orphan."""
        g = self.group
        if g.epoch == epoch:
            return
        if not self.recovery.holds(oid):
            self.store.move_to_stale(oid, epoch)
        raise error_for(CODES["OLD_NODE_VER"],
                        f"epoch moved from {epoch} to {g.epoch} during a write")

    async def _with_recovery(self, oid: int, call, size: int, repair_later: bool = True,
                             cached=None, wait: bool = True):
        """Run ``call()`` (a store call on ``size`` bytes; ``cached()`` its
        variant that never waits, tried inline first, see ``Sheep.io``); on
        NO_OBJ recover the object first (or, without ``wait``, start its
        recovery in the background and raise NO_OBJ marked ``recovering``);
        on a damaged copy schedule its repair (``repair_later``)."""
        try:
            return await self.io(call, size=size, cached=cached)
        except SdError as e:
            if e.code != CODES["NO_OBJ"]:
                if (repair_later and e.code == CODES["EIO"]
                        and not getattr(e, "disk_failure", False)):
                    self.recovery.repair_later(oid)
                raise
            if not wait and self.recovery.holds(oid):
                self.recovery.recover_soon(oid)
                e.recovering = True
                raise
        outcome = await self.recovery.recover_object(oid)
        if outcome is Outcome.ABSENT:
            raise error_for(CODES["NO_OBJ"], f"object {oid:016x} exists nowhere")
        if outcome is not Outcome.PRESENT:
            raise error_for(CODES["AGAIN"],
                            f"object {oid:016x} is not recovered yet ({outcome.value})")
        return await self.io(call, size=size)

    # -- the operations (local leg and peer handlers share them) ------------------

    async def write(self, oid: int, data, offset: int, epoch: int,
                    fence: Fence | None = None) -> None:
        await self.admit_epoch(epoch)
        if fence is not None:
            await self.locks.fence_ready(fence.gen)
        store, check = self.store, self._guard(oid, epoch, fence)

        def call():
            store.write(oid, data, offset, epoch, check)
            self._settle(oid, epoch)
        try:
            await self._with_recovery(oid, call, len(data), repair_later=False)
        except SdError as e:
            # a partial write over a damaged block cannot be merged: repair the
            # copy from another holder first, then write (the other replicas have
            # the data; the client must not fail for one bad disk block)
            if e.code != CODES["EIO"] or getattr(e, "disk_failure", False):
                raise
            undecided = None
            try:
                await self.recovery.fetcher.repair(oid)
            except SdError as ex:
                if ex.code in RETRY_CODES:
                    raise  # (an epoch change, a halt: the gateway redoes the write)
                undecided = ex
            except Retry as ex:  # a holder did not answer, or no fetch succeeded
                undecided = ex
            if undecided is not None:
                log.warning("repairing the damaged copy of %016x before a write: %s",
                            oid, undecided)
            # Written again whether this repair replaced the copy or not: another
            # one (a concurrent write's, a read's) may have; still damaged, the
            # write's own check fails it with EIO as before, nothing merged, or
            # with AGAIN (the gateway retries) if the repair could not decide.
            try:
                await self.io(call, size=len(data))
            except SdError as ex:
                if undecided is None or ex.code != CODES["EIO"] or getattr(
                        ex, "disk_failure", False):
                    raise
                raise error_for(CODES["AGAIN"], f"object {oid:016x} has a damaged block "
                                                f"not repaired yet: {undecided}") from ex

    async def create(self, oid: int, data, offset: int, epoch: int,
                     fence: Fence | None = None) -> None:
        await self.admit_epoch(epoch)
        if proto.is_data_obj(oid):  # its size comes from the VDI: know the VDI first
            await self.vdis.await_state(proto.oid_to_vid(oid))
        if fence is not None:
            await self.locks.fence_ready(fence.gen)
        size = self.vdis.obj_size(oid)
        store, check = self.store, self._guard(oid, epoch, fence)

        def call():
            store.create_and_write(oid, size, data, offset, proto.is_sparse_obj(oid), epoch,
                                   check)
            self._settle(oid, epoch)
        await self.io(call)

    async def remove(self, oid: int, epoch: int) -> None:
        await self.admit_epoch(epoch)
        store, check = self.store, self._guard(oid, epoch, None)
        try:
            await self.io(store.remove, oid, check)
        except SdError as e:
            if e.code != CODES["NO_OBJ"]:  # gone already: what a remove wants
                raise

    async def read(self, oid: int, offset: int, length: int, epoch: int,
                   wait: bool = True) -> bytes:
        """The bytes of this node's live copy.  A copy this node should hold
        but lacks is recovered first; without ``wait`` (a gateway that can
        ask the other holders) its recovery only starts, and NO_OBJ marked
        ``recovering`` is raised."""
        await self.admit_epoch(epoch)
        store, group = self.store, self.group

        def call(read=store.read):
            data = read(oid, offset, length)
            if not group.serving():  # cut off while we read: the data may be stale
                raise error_for(CODES["HALT"], "this node is cut off from the cluster")
            return data

        def cached():  # page-cached data, no lock: inline (WouldBlock: on a thread)
            return call(store.read_cached)
        return await self._with_recovery(oid, call, length, cached=cached, wait=wait)

    def fence_of(self, req: proto.Request) -> Fence | None:
        """Fencing credentials a gateway forwarded (SD_FLAG_CMD_SESSION): the
        generation in ``__pad`` and 1 + the gateway's index in the epoch's node
        list in ``cow_oid`` (unused by peer writes)."""
        gen = proto.fence_of(req)
        if not gen:
            return None
        nodes = self.group.nodes
        idx = req.args.cow_oid - 1
        if not 0 <= idx < len(nodes):
            raise error_for(CODES["INVALID_PARMS"], "fenced peer write without its gateway")
        n = nodes[idx]
        return Fence(gen, f"{n.host}:{n.port}")

    async def recovery_read(self, req: proto.Request):
        """A read by another node's recovery or repair: never triggers recovery here.

        WILDCARD without a buffer: a probe (``sheep.cluster.fetch.probe_reply``: live
        version, best stale copy).  Otherwise a whole copy with its version in
        ``rsp.obj.offset``: the live one (no WILDCARD, or ``tgt_epoch`` = LIVE),
        or the stale copy of epoch ``tgt_epoch``."""
        await self.admit_epoch(req.epoch)
        a, store = req.args, self.store
        if req.flags & proto.SD_FLAG_CMD_WILDCARD and req.data_length == 0:
            live, stale = await self.io(best_local, store, a.oid)
            if live is None and stale is None:
                raise error_for(CODES["NO_OBJ"])
            return probe_reply(live, stale), b""
        if not req.flags & proto.SD_FLAG_CMD_WILDCARD or a.tgt_epoch == LIVE:
            version, data = await self.io(store.read_object, a.oid)
        else:
            version, data = await self.io(store.read_stale, a.oid, a.tgt_epoch)
        if a.offset or req.data_length < len(data):
            data = bytes(memoryview(data)[a.offset:a.offset + req.data_length])
        return proto.ObjRsp(offset=version), data


# -- peer op handlers (the op table's entries; ``sheep`` is the daemon) ----------

async def handle_create(sheep, req: proto.Request, payload: bytes):
    a, r = req.args, sheep.replica
    await r.admit_epoch(req.epoch)  # the fence names a node of this epoch
    await r.create(a.oid, payload, a.offset, req.epoch, r.fence_of(req))
    return None, b""


async def handle_write(sheep, req: proto.Request, payload: bytes):
    a, r = req.args, sheep.replica
    await r.admit_epoch(req.epoch)
    await r.write(a.oid, payload, a.offset, req.epoch, r.fence_of(req))
    return None, b""


async def handle_remove(sheep, req: proto.Request, payload: bytes):
    await sheep.replica.remove(req.args.oid, req.epoch)
    return None, b""


async def handle_read(sheep, req: proto.Request, payload: bytes):
    a = req.args
    if req.flags & proto.SD_FLAG_CMD_RECOVERY:
        return await sheep.replica.recovery_read(req)
    return None, await sheep.replica.read(a.oid, a.offset, req.data_length, req.epoch)
