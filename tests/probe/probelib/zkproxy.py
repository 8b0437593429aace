"""A TCP proxy between one sheep and ZooKeeper that can be blackholed.

:class:`ZkProxy` listens on a free loopback port and forwards every
connection to the ZooKeeper server.  :meth:`blackhole` makes it a network
partition between that sheep and ZooKeeper only (the sheep still reaches
its peers and its clients): bytes already flowing are dropped in both
directions, connections stay open and silent, new connections are accepted
and stay silent (a connect that never completes its handshake), so the
sheep's ZooKeeper session expires on the server once its timeout passes.
:meth:`heal` closes every silenced connection (the client reconnects, as
after the network came back) and forwards new ones again.
``last_upstream`` is the time the server last received a byte from this
sheep: its session can expire ``timeout`` seconds after that, not earlier.
One thread, one selector; :meth:`close` ends both and every socket.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from harness import free_port


class ZkProxy:
    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.port = free_port()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.peer: dict[socket.socket, socket.socket | None] = {}
        self.silent: set[socket.socket] = set()  # connections made or silenced while cut
        self.cut = False
        self.last_upstream = time.time()
        self._lock = threading.Lock()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True, name=f"zkproxy:{self.port}")
        self._t.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        with self._lock:
            self.cut = True
            self.silent.update(self.peer)

    def heal(self) -> None:
        with self._lock:
            self.cut = False
            for s in list(self.silent):
                self._close(s)
            self.silent.clear()

    def _close(self, s: socket.socket) -> None:
        other = self.peer.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self.peer.pop(x, None)
            self.silent.discard(x)
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def _accept(self) -> None:
        c, _ = self.lsock.accept()
        if self.cut:
            self.peer[c] = None
            self.silent.add(c)
            self.sel.register(c, selectors.EVENT_READ, "client")
            return
        try:
            u = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            c.close()
            return
        self.peer[c], self.peer[u] = u, c
        self.sel.register(c, selectors.EVENT_READ, "client")
        self.sel.register(u, selectors.EVENT_READ, "server")

    def _run(self) -> None:
        while not self._stop:
            for key, _ev in self.sel.select(0.1):
                with self._lock:
                    s = key.fileobj
                    if s is self.lsock:
                        self._accept()
                        continue
                    if s not in self.peer:
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._close(s)
                        continue
                    if s in self.silent:
                        continue  # dropped: the partition
                    other = self.peer.get(s)
                    if other is None:
                        continue
                    try:
                        other.sendall(data)
                    except OSError:
                        self._close(s)
                        continue
                    if key.data == "client":
                        self.last_upstream = time.time()

    def close(self) -> None:
        self._stop = True
        self._t.join(5)
        with self._lock:
            for s in list(self.peer):
                self._close(s)
        self.sel.close()
        self.lsock.close()
