"""A client's connection to the cluster: pipelined, typed errors, gateway failover.

Used by the VDI I/O engine (:mod:`sheep.proto.vdi_io`) under qemu_client and
by collie-style tools that want failover; it imports only the wire package.

Guarantees:

* many requests may be in flight at once on one TCP connection (replies
  matched by id, in any order);
* a non-zero result raises the typed :class:`sheep.proto.errors.SdError` subclass
  for that code (``NoVdiError``, ``VdiLockedError``, ...);
* **gateway failover**: the connection knows the cluster's node list
  (GET_NODE_LIST when it connects, again after every failover and whenever
  :meth:`Connection.refresh_nodes` runs).  When its gateway goes away
  (connection lost or refused, the gateway answering SHUTDOWN/KILLED, or no
  reply for ``stall_timeout`` seconds) the next request that notices it runs
  one failover for everybody: connect to another node, run the
  ``on_reconnect`` hooks (the VDI I/O engine re-attaches its lock session there),
  then every request that failed with the old connection is sent again on
  the new one.  Requests issued meanwhile wait for the failover.  Only when
  no node could be reached for ``failover_timeout`` seconds do callers see a
  :class:`ConnectionError`.
* **transient refusals**: HALT (the gateway or a replica is briefly cut off
  from the cluster, e.g. right after a partition healed) and AGAIN (an
  object not recovered yet) are retried after a short pause; a gateway that
  keeps answering HALT for ``HALT_FAILOVER`` seconds (it is in a minority
  partition) is failed over like a lost one.  Callers see HALT only when no
  node could serve for ``failover_timeout`` seconds.

Resending is safe for what the VDI I/O engine sends: reads, WRITE_OBJ of the same
bytes and the inode index updates are idempotent; callers that send
something that is not (CREATE_AND_WRITE_OBJ, NEW_VDI, DEL_VDI) pass
``retry=False`` and decide themselves (see :mod:`sheep.proto.vdi_io`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from sheep import proto
from sheep.proto.connection import AsyncConnection
from sheep.proto.errors import CODES, SdError, error_for

log = logging.getLogger("sheep.proto.failover")

#: results meaning "this gateway is going away": fail over like a lost connection
GATEWAY_GONE = {CODES["SHUTDOWN"], CODES["KILLED"]}
#: results meaning "not now": the request was not carried out; send it again
TRANSIENT = {CODES["HALT"], CODES["AGAIN"]}
HALT_FAILOVER = 3.0  # seconds of HALT from one gateway before trying another
FAILOVER_TIMEOUT = 60.0  # seconds of trying every node before giving up
STALL_TIMEOUT = 90.0  # no reply at all for this long: the gateway is hung

# set while the on_reconnect hooks run: their calls go straight to the new
# connection (everybody else waits until the hooks are done)
_IN_FAILOVER: contextvars.ContextVar[bool] = contextvars.ContextVar("qc_failover",
                                                                       default=False)


class GatewayLost(ConnectionError):
    """The gateway went away while a request was in flight (internal)."""


GatewayLostError = GatewayLost  # its public name (qemu_client.GatewayLostError)


class Connection:
    """One pipelined connection to a gateway sheep, failing over to others.

    ``host:port`` is the first gateway; ``nodes`` (``(host, port)`` pairs)
    are extra candidates until the node list has been read.  ``failover``
    ``False`` gives a plain single-gateway connection.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = proto.SD_PORT,
                 nodes: list[tuple[str, int]] | None = None, failover: bool = True,
                 failover_timeout: float = FAILOVER_TIMEOUT,
                 stall_timeout: float | None = STALL_TIMEOUT):
        self.host, self.port = host, port
        self.nodes: list[tuple[str, int]] = list(nodes or [])
        self.failover_enabled = failover
        self.failover_timeout = failover_timeout
        self.stall_timeout = stall_timeout
        self.failovers = 0  # how many times we moved to another gateway
        self.on_reconnect: list = []  # async callables run after a failover
        self._conn: AsyncConnection | None = None
        self._ready: asyncio.Event | None = None
        self._failing: asyncio.Future | None = None
        self._closed = False

    @property
    def gateway(self) -> tuple[str, int]:
        """The ``(host, port)`` of the node we currently talk to."""
        return self.host, self.port

    async def connect(self) -> None:
        """Connect to ``host:port`` (or, when refused, to another known node)."""
        self._ready = asyncio.Event()
        try:
            self._conn = await AsyncConnection.open(self.host, self.port,
                                                    stall_timeout=self.stall_timeout)
        except (TimeoutError, OSError) as e:
            if not (self.failover_enabled and self.nodes):
                raise ConnectionError(f"{self.host}:{self.port}: {e}") from None
            await self._move((self.host, self.port), e, hooks=False)
        self._ready.set()
        if self.failover_enabled:
            try:
                await self.refresh_nodes()
            except SdError:  # e.g. not joined yet: keep what we have
                pass

    async def refresh_nodes(self) -> list[tuple[str, int]]:
        """Read the cluster's node list (GET_NODE_LIST) from the gateway."""
        rsp, body = await self.call(proto.Op.GET_NODE_LIST,
                                    data_length=proto.SD_MAX_NODES * proto.SD_NODE_SIZE)
        nodes = [(n.host, n.port) for n in proto.unpack_nodes(body, rsp.args.nr_nodes)]
        if nodes:
            self.nodes = nodes
        return self.nodes

    # -- requests ----------------------------------------------------------

    async def call(self, op: int, args=None, payload=b"", data_length: int = 0,
                   flags: int = 0, retry: bool = True,
                   prepare=None) -> tuple[proto.Response, bytes]:
        """Send one request and wait for its reply.

        ``retry`` (default): if the gateway is lost, fail over and send the
        request again (only for idempotent requests).  Without it the
        caller gets :class:`GatewayLost` after the failover finished (the
        new gateway is ready) and decides what to resend.  ``prepare()``,
        if given, runs before every send and returns extra flags (it may
        also update ``args``, e.g. a fencing generation).
        """
        if payload:
            flags |= proto.SD_FLAG_CMD_WRITE
            data_length = len(payload)
        internal = _IN_FAILOVER.get()
        loop = asyncio.get_running_loop()
        transient_since: float | None = None
        pause = 0.05
        while True:
            if self._closed:
                raise ConnectionError("connection to the cluster closed")
            if self._conn is None or (self._conn.closed and not self.failover_enabled):
                await self.connect()
            if not internal and not self._ready.is_set():
                await self._ready.wait()
            conn = self._conn
            extra = prepare() if prepare is not None else 0
            req = proto.Request(op, args, flags=flags | extra, data_length=data_length)
            try:
                rsp, body = await conn.request(req, payload)
                if rsp.result in GATEWAY_GONE and self.failover_enabled:
                    raise ConnectionError(f"{self.host}:{self.port}: gateway answered "
                                          f"{rsp.result:#x}")
            except (TimeoutError, ConnectionError, OSError) as e:
                if internal or not self.failover_enabled:
                    raise GatewayLost(str(e)) from None
                await self.failover(conn, e)
                if not retry:
                    raise GatewayLost(f"gateway lost ({e}); now on "
                                      f"{self.host}:{self.port}") from None
                continue
            if rsp.result in TRANSIENT and not internal:
                # nothing was done (a node briefly cut off, an object being
                # recovered, a snapshot copying the index): try again, on
                # another gateway if this one keeps saying HALT
                now = loop.time()
                transient_since = transient_since or now
                if now - transient_since > self.failover_timeout:
                    raise error_for(rsp.result)
                if rsp.result == CODES["HALT"] and now - transient_since > HALT_FAILOVER \
                        and self.failover_enabled:
                    log.warning("gateway %s:%d keeps answering HALT; failing over",
                                self.host, self.port)
                    await self.failover(conn, error_for(rsp.result))
                    transient_since, pause = None, 0.05
                else:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 0.5)
                continue
            if rsp.result:
                raise error_for(rsp.result)
            return rsp, body

    # -- failover ------------------------------------------------------------

    async def failover(self, broken: AsyncConnection | None = None,
                       why: BaseException | None = None) -> None:
        """Replace the connection ``broken`` (once, whoever asks first)."""
        if broken is not None and broken is not self._conn and self._failing is None:
            return  # somebody replaced it already
        if self._failing is None:
            self._failing = asyncio.get_running_loop().create_future()
            self._ready.clear()
            try:
                await self._move((self.host, self.port), why, hooks=True)
            except BaseException as e:
                self._failing.set_exception(e if isinstance(e, Exception)
                                            else ConnectionError("failover cancelled"))
                self._failing.exception()  # retrieved: waiters re-raise it
                raise
            else:
                self._failing.set_result(None)
            finally:
                self._failing = None
                self._ready.set()
            return
        await asyncio.shield(self._failing)

    def _candidates(self, dead: tuple[str, int]) -> list[tuple[str, int]]:
        nodes = list(dict.fromkeys([*self.nodes, (self.host, self.port)]))
        if dead in nodes:  # start after the dead node: spreads clients around
            i = nodes.index(dead)
            nodes = nodes[i + 1:] + nodes[:i] + [dead]
        return nodes

    async def _move(self, dead: tuple[str, int], why, hooks: bool) -> None:
        old = self._conn
        if old is not None:
            old.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_timeout
        log.warning("gateway %s:%d lost (%s); failing over", dead[0], dead[1], why)
        delay = 0.05
        last: BaseException | None = why
        while True:
            for host, port in self._candidates(dead):
                try:
                    conn = await AsyncConnection.open(host, port, timeout=3.0,
                                                      stall_timeout=self.stall_timeout)
                except (TimeoutError, OSError) as e:
                    last = e
                    continue
                self._conn, self.host, self.port = conn, host, port
                token = _IN_FAILOVER.set(True)
                try:
                    rsp, body = await self.call(
                        proto.Op.GET_NODE_LIST,
                        data_length=proto.SD_MAX_NODES * proto.SD_NODE_SIZE)
                    nodes = proto.unpack_nodes(body, rsp.args.nr_nodes)
                    if not nodes:  # not a member (yet/any more): try another
                        raise GatewayLost(f"{host}:{port} is not in a cluster")
                    self.nodes = [(n.host, n.port) for n in nodes]
                    if hooks:
                        for hook in self.on_reconnect:
                            await hook()
                except (TimeoutError, ConnectionError, OSError) as e:
                    last = e
                    conn.close()
                    continue
                except SdError as e:
                    if e.code not in GATEWAY_GONE | TRANSIENT | {CODES["WAIT_FOR_JOIN"],
                                                                 CODES["WAIT_FOR_FORMAT"]}:
                        raise  # e.g. the lock is gone: the caller must know
                    last = e
                    conn.close()
                    continue
                finally:
                    _IN_FAILOVER.reset(token)
                self.failovers += 1
                log.warning("now talking to gateway %s:%d", host, port)
                return
            if loop.time() > deadline:
                raise ConnectionError(f"no sheep of the cluster reachable for "
                                      f"{self.failover_timeout:.0f}s: {last}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
