"""A TCP proxy on 127.0.0.1 for fault injection: it forwards to an upstream
port and can cut the link in two ways.

* :meth:`TcpProxy.blackhole`: from now on nothing goes through, in either
  direction, but no connection is closed (like a network that silently
  drops packets): data is read and discarded, new connections are accepted
  and go nowhere.  The client only notices by its own timeouts.
* :meth:`TcpProxy.drop_and_hold`: every connection is closed at once (the
  client sees it break), new connections are accepted but held: what the
  client sends is kept until :meth:`heal` connects them upstream.

:meth:`heal` forwards again: blackholed connections are closed (their byte
streams have holes), held ones are connected upstream and flushed.  All
socket work happens in one thread; the methods wait until it applied them.
"""

from __future__ import annotations

import queue
import select
import socket
import threading


class _Conn:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.server: socket.socket | None = None
        self.held = bytearray()
        self.blackholed = False

    def close(self) -> None:
        for s in (self.client, self.server):
            if s is not None:
                s.close()


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "forward"
        self._conns: list[_Conn] = []
        self._ctl: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="tcpproxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self._do("blackhole")

    def drop_and_hold(self) -> None:
        self._do("hold")

    def heal(self) -> None:
        self._do("forward")

    def close(self) -> None:
        if self._thread.is_alive():
            self._do("close")
            self._thread.join(5)

    def _do(self, cmd: str) -> None:
        done = threading.Event()
        self._ctl.put((cmd, done))
        self._wake_w.send(b"!")
        if not done.wait(5):
            raise RuntimeError(f"tcpproxy: {cmd} not applied")

    # ---- the thread -------------------------------------------------------

    def _connect(self, conn: _Conn) -> None:
        try:
            conn.server = socket.create_connection(self.upstream, timeout=5)
            if conn.held:
                conn.server.sendall(conn.held)
            conn.held.clear()
        except OSError:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        conn.close()
        if conn in self._conns:
            self._conns.remove(conn)

    def _command(self, cmd: str) -> bool:
        if cmd == "blackhole":
            for c in self._conns:
                c.blackholed = True
        elif cmd == "hold":
            for c in list(self._conns):
                self._drop(c)
        elif cmd == "forward":
            for c in list(self._conns):
                if c.blackholed:
                    self._drop(c)
                elif c.server is None:
                    self._connect(c)
        elif cmd == "close":
            for c in list(self._conns):
                self._drop(c)
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            return False
        self._mode = cmd
        return True

    def _loop(self) -> None:
        while True:
            socks = [self._listener, self._wake_r]
            for c in self._conns:
                socks += [c.client] + ([c.server] if c.server is not None else [])
            readable, _, _ = select.select(socks, [], [], 0.5)
            for s in readable:
                if s is self._wake_r:
                    self._wake_r.recv(64)
                    while not self._ctl.empty():
                        cmd, done = self._ctl.get()
                        go_on = self._command(cmd)
                        done.set()
                        if not go_on:
                            return
                elif s is self._listener:
                    client, _ = self._listener.accept()
                    conn = _Conn(client)
                    self._conns.append(conn)
                    if self._mode == "forward":
                        self._connect(conn)
                    conn.blackholed = self._mode == "blackhole"
                else:
                    self._pump(s)

    def _pump(self, s: socket.socket) -> None:
        conn = next((c for c in self._conns if s in (c.client, c.server)), None)
        if conn is None:   # dropped earlier in this round
            return
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            return self._drop(conn)
        if conn.blackholed:
            return
        if s is conn.client and conn.server is None:
            conn.held += data
            return
        try:
            (conn.server if s is conn.client else conn.client).sendall(data)
        except OSError:
            self._drop(conn)
