"""One sheep node: wires the store, membership, VDI table, gateway and server
(how the parts fit and how a request goes through them: docs/architecture.md).

Guarantees: the store is locked before anything listens; the node listens
before it joins (so peers can reach it as soon as they see it); blocking
disk calls go through :meth:`Sheep.io` / :meth:`Sheep.io_thread` (the event
loop, which also carries the membership heartbeats, never waits on a disk);
:meth:`request_exit` stops serving, leaves the cluster and releases the port
within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from sheep import __version__, proto
from sheep.cluster.drivers.base import JoinRejected
from sheep.cluster.events import Events
from sheep.cluster.group import KILLED, Group
from sheep.cluster.joins import restart_vnodes_error
from sheep.cluster.recovery import Recovery
from sheep.datapath.gateway import Gateway, PeerPool
from sheep.datapath.replica import Replica
from sheep.proto.errors import CODES, SdError, error_for
from sheep.server import md_ops, ops
from sheep.server.listener import start_servers
from sheep.store.base import WouldBlock
from sheep.store.plain import PlainStore
from sheep.store.space import node_space
from sheep.vdi.locks import Locks
from sheep.vdi.table import VdiTable

log = logging.getLogger("sheep")

JOIN_TIMEOUT = 30.0
# with -n, store calls on at most this many bytes run inline (page cache only)
INLINE_MAX = 64 << 10
LOOP_STALL = 0.3  # s without the event loop running that is worth a warning

LEVELS = [logging.CRITICAL, logging.CRITICAL, logging.CRITICAL, logging.ERROR,
          logging.WARNING, logging.INFO, logging.INFO, logging.DEBUG]


class Sheep:
    def __init__(self, cfg):
        self.cfg = cfg
        self.store = PlainStore(cfg.base_dir, cfg.stores[1:], nosync=cfg.nosync)
        self.connections: set = set()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="sheep-io")
        self._exit: asyncio.Event | None = None
        self.exit_code = 0
        self.max_loop_lag = 0.0

    def open_store(self) -> None:
        """Lock and prepare the store; raises StoreLockedError / OSError."""
        self.store.open()

    async def io(self, fn, *args, size: int | None = None, cached=None):
        """Run a blocking store call on the I/O threads.  With ``-n`` (no sync)
        a call on at most ``INLINE_MAX`` bytes (``size``) only touches the page
        cache and runs inline.  Without ``-n``, ``cached`` (a variant of ``fn``
        taking the same arguments that raises :class:`WouldBlock` instead of
        waiting on the disk or a lock, such as ``store.read_cached``) is tried
        inline first for such a call: a read of cached data costs no thread
        hop (it opens only objects whose record is cached, so their directory
        entries are hot; a disk that hangs even those opens stalls the loop,
        and with it the heartbeats: the node is then taken out of the
        cluster, as a node that cannot serve should be).  A failing disk (not
        a damaged object) takes the node out of the cluster, so that its
        objects are recovered elsewhere: see :meth:`disk_failed`."""
        try:
            if size is not None and size <= INLINE_MAX:
                if self.cfg.nosync:
                    return fn(*args)
                if cached is not None:
                    try:
                        return cached(*args)
                    except WouldBlock:
                        pass
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except SdError as e:
            # several disks: a lost one is dropped and the call redone on the others
            if ((e.code == CODES["EIO"] or getattr(e, "disk_failure", False))
                    and self.store.multi_disk and await md_ops.drop_failed_disks(self, deep=True)):
                return await self.io(fn, *args, size=size, cached=cached)
            why = self._disk_failure(e)
            if why is None:
                raise
            self.disk_failed(why)
            raise error_for(CODES["NETWORK_ERROR"], f"disk failure: {why}") from e

    def _disk_failure(self, e: SdError) -> str | None:
        """What failed, if the store error ``e`` is the disk's, not one object's:
        an errno of a failing device (``disk_failure``, see
        :func:`sheep.store.basedir.oserror`), or an object directory that is
        gone (it then answers NO_OBJ / ENOENT for everything, as with 1.0's
        ``err_to_sderr`` ENOENT case whose directory no longer stats)."""
        if getattr(e, "disk_failure", False):
            return e.message
        if e.code in (CODES["EIO"], CODES["NO_OBJ"]):
            try:
                return self.store.healthy()
            except OSError as ex:
                return f"cannot check the object directories: {ex}"
        return None

    def disk_failed(self, why: str) -> None:
        """A disk failed (EIO from the device, or its object directory vanished).

        Single-disk store: the node leaves the cluster at once (status KILLED,
        then exit), like 1.0's ``md_do_recover`` once no disk is left
        (``leave_cluster``); the request that met the failure is answered
        NETWORK_ERROR (1.0's ``md_handle_eio``: "fool the requester to
        retry"), so the gateway retries it on the ring of the next epoch,
        without this node, and the client never sees the error.

        This is the hook of the multi-disk layer: with several disks it drops
        the failed one (its objects are recovered from the replicas) and leaves
        only when none is left."""
        group = getattr(self, "group", None)
        if group is None:  # not running yet: the start-up fails on its own
            return
        group.fatal(f"disk failure: {why}")

    async def io_thread(self, fn, *args):
        """Run ``fn(*args)`` on an I/O thread, whatever its size."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _watch_loop(self) -> None:
        """Warn when the event loop did not run for a while: it carries the
        membership heartbeats, so a stall can look like a failure to peers."""
        loop = asyncio.get_running_loop()
        tick = 0.1
        last = loop.time()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            lag, last = now - last - tick, now
            self.max_loop_lag = max(self.max_loop_lag, lag)
            if lag > LOOP_STALL:
                log.warning("event loop stalled for %.2fs", lag)

    async def _watch_store(self) -> None:
        """Leave the cluster if the store vanishes (checked every second); with
        several disks, drop a lost one instead (``sheep.server.md_ops``)."""
        if self.store.multi_disk:  # objects left off their home by a changed disk list
            md_ops.rebalance_later(self)
        while True:
            await asyncio.sleep(1.0)
            await md_ops.drop_failed_disks(self, deep=False)
            why = self.store.healthy()
            if why:
                self.disk_failed(why)
                return

    def dump_tasks(self) -> None:
        """SIGUSR1: log every asyncio task with its stack (what is this node waiting on?)."""
        tasks = asyncio.all_tasks()
        log.warning("SIGUSR1: %d tasks", len(tasks))
        for t in tasks:
            buf = io.StringIO()
            t.print_stack(limit=12, file=buf)
            log.warning("%s", buf.getvalue().rstrip())

    def apply_main(self, msg: dict):
        return ops.apply_main(self, msg)

    def set_log_level(self, level: int) -> None:
        self.cfg.log_level = level
        logging.getLogger().setLevel(LEVELS[level])

    def request_exit(self, delay: float = 0.0, code: int = 0) -> None:
        """Stop the daemon after ``delay`` seconds (lets pending replies go out)."""
        self.exit_code = code
        loop = asyncio.get_running_loop()
        if self._exit is not None:
            loop.call_later(delay, self._exit.set)

    async def run(self, ready) -> int:
        """Serve until asked to exit; ``ready(error_or_None)`` is called once."""
        self._exit = asyncio.Event()
        cfg = self.cfg
        # 1.0's init_disk_space: free space, measured once and kept in config;
        # several disks: the sum of each disk's recorded free space (md_init_space)
        if cfg.gateway:
            space = 0
        elif self.store.multi_disk:
            space = self.store.md_space()
        else:
            space = await self.io_thread(node_space, self.store, self.store.obj_dirs)
        vnodes = 0 if cfg.gateway else (cfg.vnodes or proto.SD_DEFAULT_VNODES)
        self.me = proto.SdNode.make(cfg.myaddr, cfg.port, vnodes, cfg.zone, space)
        # the parts, each given what it works with (docs/architecture.md); the
        # request path (listener, op table, NBD export) reaches them through
        # this object, the parts never do
        self.events = Events()
        self.group = Group(cfg=cfg, store=self.store, me=self.me, io_thread=self.io_thread,
                           request_exit=self.request_exit, events=self.events,
                           main_step=self.apply_main)
        self.peers = PeerPool()  # forwarded I/O
        # recovery traffic (fetches, object lists, repairs): served from the
        # peer's local store only, never queued behind forwarded I/O
        self.recovery_peers = PeerPool()
        self.vdis = VdiTable(store=self.store, group=self.group, nosync=cfg.nosync)
        self.locks = Locks(me=self.me, group=self.group, store=self.store, vdis=self.vdis,
                           grace=cfg.lock_grace)
        throttle = proto.RecoveryThrottling(
            max_exec_count=cfg.recovery_max, queue_work_interval=cfg.recovery_interval,
            throttling=bool(cfg.recovery_max or cfg.recovery_interval))
        self.recovery = Recovery(me=self.me, group=self.group, store=self.store,
                                 vdis=self.vdis, throttle=throttle, peers=self.recovery_peers,
                                 io=self.io, io_thread=self.io_thread)
        self.replica = Replica(store=self.store, group=self.group, locks=self.locks,
                               vdis=self.vdis, recovery=self.recovery, io=self.io)
        self.gateway = Gateway(group=self.group, vdis=self.vdis, locks=self.locks,
                               replica=self.replica, peers=self.peers)
        self.vdis.bind(gateway=self.gateway, locks=self.locks)
        # the parts follow the cluster through its events (sheep.cluster.events);
        # the order matters: VDIs before locks (a join merges VDIs first, a
        # joiner restores the VDI table before the lock table)
        for part in (self.vdis, self.locks, self.recovery):
            part.subscribe(self.events)
        local_vdis = await self.io_thread(self.vdis.local_snapshot)
        self.vdis.merge(local_vdis)
        try:
            servers = await start_servers(self)
        except OSError as e:
            ready(f"cannot listen on {cfg.bindaddr}:{cfg.port}: {e.strerror or e}")
            return 1
        if cfg.nbd:  # the NBD export (sheep.nbd), next to the Sheepdog protocol
            from sheep.nbd import export
            try:
                servers.append(await export.start_server(self))
            except OSError as e:
                for s in servers:
                    s.close()
                ready(f"cannot listen on {cfg.nbd[0]}:{cfg.nbd[1]} (NBD): {e.strerror or e}")
                return 1
        metrics_server = None
        if cfg.metrics:  # Prometheus endpoint on its own thread (sheep.metrics)
            from sheep.server import metrics
            try:
                metrics_server = metrics.start(self, *cfg.metrics)
            except OSError as e:
                for s in servers:
                    s.close()
                ready(f"cannot listen on {cfg.metrics[0]}:{cfg.metrics[1]} (metrics): "
                      f"{e.strerror or e}")
                return 1
        for name in cfg.unsupported:
            log.warning("option --%s is accepted for compatibility but not implemented", name)
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump_tasks)
        except (NotImplementedError, RuntimeError):  # not the main thread (in-process tests)
            pass
        refusal = restart_vnodes_error(self.group.config, cfg.vnodes is not None, cfg.gateway)
        if refusal:  # 1.0 refuses it at start-up, before joining (sheep.joins)
            log.error("%s", refusal)
            ready(None)  # the daemon did start; its refusal is in the log (1.0)
            for s in servers:
                s.close()
            return 1
        loop_watch = asyncio.ensure_future(self._watch_loop())
        joining = asyncio.ensure_future(self.group.start(local_vdis))
        stopping = asyncio.ensure_future(self._exit.wait())
        await asyncio.wait({joining, stopping}, timeout=JOIN_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        if not joining.done():  # SIGTERM (or timeout) while still joining
            joining.cancel()
            stopping.cancel()
            for s in servers:
                s.close()
            await self.group.driver.close()
            if self._exit.is_set():
                log.info("stopped while joining the cluster")
                ready("stopped while joining the cluster")
                return self.exit_code
            msg = f"failed to join the cluster within {JOIN_TIMEOUT:.0f}s"
            log.error(msg)
            ready(msg)
            return 1
        stopping.cancel()
        try:
            joining.result()
        except JoinRejected as e:  # the master could not even judge the join
            log.error("failed to join the cluster: %s", e.reply.decode(errors="replace"))
            ready(None)  # the daemon started; a refused join is only logged (1.0)
            for s in servers:
                s.close()
            return 1
        except Exception as e:  # driver errors
            msg = f"failed to join the cluster: {e}"
            log.error(msg)
            ready(msg)
            for s in servers:
                s.close()
            return 1
        if self.group.status == KILLED:  # refused (logged by the group): join, then leave
            ready(None)
        else:
            log.info("sheepdog daemon (version %s) started: %s, zone %d, vnodes %d, driver %s, "
                     "store %s%s", __version__, self.me, self.me.zone, self.me.nr_vnodes,
                     cfg.cluster, ",".join(cfg.stores), " (nosync)" if cfg.nosync else "")
            ready(None)
        watchers = [asyncio.ensure_future(self._watch_store()), loop_watch]
        await self._exit.wait()
        for w in watchers:
            w.cancel()
        log.info("exiting")
        self.recovery.stop()
        try:  # what membership events already changed must reach the disk
            await asyncio.wait_for(self.group.settled(), 10.0)
        except Exception as e:  # noqa: BLE001 - a failed job already took the node out
            log.warning("pending store work not finished at exit: %r", e)
        for s in servers:
            s.close()
        for conn in list(self.connections):
            conn.close()
        self.peers.close()
        self.recovery_peers.close()
        try:
            await asyncio.wait_for(self.group.stop(), 1.0)
        except Exception:
            log.debug("leaving the cluster failed", exc_info=True)
        if metrics_server is not None:  # the port is free once the daemon exits
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.to_thread(metrics_server.shutdown), 1.0)
            metrics_server.server_close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return self.exit_code
