"""Test helper: one cluster member in its own process.

    python member_proc.py SPEC IDENT [--opaque TEXT]

Joins the cluster SPEC (e.g. ``local:/tmp/x``) as IDENT and prints every
event as one JSON line on stdout, each with ``t``: ``time.monotonic()`` when
it was printed (CLOCK_MONOTONIC, comparable between processes of one host,
network namespaces included).  Commands on stdin, one per line:

* ``notify N [PREFIX]``: send N notifies "PREFIX#i" back to back (PREFIX
  defaults to IDENT; a notify that raises is reported as ``notify_failed``);
* ``leave``, ``close``;
* ``serving``: print ``{"ev": "may_serve", "ok": driver.may_serve()}``;
* ``raise_next KIND``: the next callback of KIND (``join``, ``leave``,
  ``notify``, ``quorum``, ``join_opaque``) prints ``{"ev": "raising", "cb":
  KIND}`` and raises RuntimeError; answered with ``{"ev": "armed"}``.

Serving stream: a sampler calls ``driver.may_serve()`` every 5 ms and prints
``{"ev": "serving", "ok": ...}`` whenever the answer changes, and also for
the first sample after a stall of the loop (a gap of more than 50 ms between
two samples, e.g. SIGSTOP/SIGCONT), with ``gap`` set.  It starts before the
join, whose first sample is False.  On SIGCONT, a signal handler takes one
sample before the process does anything else (CPython runs it in the main
thread ahead of any other Python code, so before the driver read what waits
on its sockets), printed as ``{"ev": "sigcont", "ok": ...}``.

SPEC may name any driver; ``on_quorum`` calls are printed as ``{"ev":
"quorum", "ok": ...}``, ``join_opaque`` calls as ``{"ev": "join_opaque",
"n": ...}`` (it returns ``b"IDENT/rejoin-n"``), ``on_driver_failure`` as
``{"ev": "driver_failure", "error": ...}``.  The check_join it implements
prints the opaque it got and rejects a joiner whose opaque is b"reject".
Exits on stdin EOF (closing the driver).
"""

import asyncio
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from sheep.cluster.drivers.base import JoinRejected, Member, create_driver

SAMPLE = 0.005   # serving sampler period
STALL = 0.05     # a gap between samples this long is reported


def node_of(ident: str) -> bytes:
    return ident.encode().ljust(80, b"\0")


def emit(**event) -> None:
    event["t"] = time.monotonic()
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def view(members) -> list[str]:
    assert all(m.node == node_of(m.ident) for m in members), "node bytes mangled"
    return [m.ident for m in members]


class Events:
    def __init__(self, ident: str) -> None:
        self.ident = ident
        self.raise_next: set[str] = set()
        self.opaques = 0

    def _maybe_raise(self, kind: str) -> None:
        if kind in self.raise_next:
            self.raise_next.discard(kind)
            emit(ev="raising", cb=kind)
            raise RuntimeError(f"test: {kind} callback fails")

    def check_join(self, joiner, opaque):
        emit(ev="check_join", who=joiner.ident, opaque=opaque.decode(errors="replace"))
        if opaque == b"reject":
            return False, b"go away " + joiner.ident.encode()
        return True, b"welcome " + joiner.ident.encode()

    def on_join(self, joined, members, reply):
        self._maybe_raise("join")
        emit(ev="join", who=joined.ident, members=view(members), reply=reply.decode())

    def on_leave(self, left, members):
        self._maybe_raise("leave")
        emit(ev="leave", who=left.ident, members=view(members))

    def on_notify(self, sender, msg):
        self._maybe_raise("notify")
        view([sender])
        emit(ev="notify", frm=sender.ident, msg=msg.decode())

    def on_quorum(self, has_quorum):
        self._maybe_raise("quorum")
        emit(ev="quorum", ok=has_quorum)

    def join_opaque(self):
        self._maybe_raise("join_opaque")
        self.opaques += 1
        emit(ev="join_opaque", n=self.opaques)
        return f"{self.ident}/rejoin-{self.opaques}".encode()

    def on_driver_failure(self, exc):
        emit(ev="driver_failure", error=repr(exc))


async def sample_serving(driver) -> None:
    resumed: list = []

    def on_sigcont(_sig, _frame) -> None:   # only records: printing waits for the loop
        resumed.append((time.monotonic(), driver.may_serve()))
    signal.signal(signal.SIGCONT, on_sigcont)
    last, prev_t = None, time.monotonic()
    while True:
        while resumed:
            t, ok = resumed.pop(0)
            emit(ev="sigcont", ok=ok, at=t)
        now = time.monotonic()
        ok = driver.may_serve()
        gap = now - prev_t
        if ok != last or gap > STALL:
            emit(ev="serving", ok=ok, gap=round(gap, 4) if gap > STALL else 0)
            last = ok
        prev_t = now
        await asyncio.sleep(SAMPLE)


async def main() -> int:
    spec, ident = sys.argv[1], sys.argv[2]
    opaque = sys.argv[4].encode() if len(sys.argv) > 4 and sys.argv[3] == "--opaque" else b""
    events = Events(ident)
    driver = create_driver(spec, events)
    sampler = asyncio.get_running_loop().create_task(sample_serving(driver))
    try:
        await driver.join(Member(node_of(ident), ident), opaque)
    except JoinRejected as e:
        emit(ev="rejected", reply=e.reply.decode())
        return 2
    emit(ev="joined")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "notify":   # notify N [PREFIX]: messages "PREFIX#i" (default IDENT#i)
            prefix = line[2] if len(line) > 2 else ident
            sent = 0
            for i in range(int(line[1])):
                try:
                    await driver.notify(f"{prefix}#{i}".encode())
                    sent += 1
                except (RuntimeError, ConnectionError) as e:   # not a member (cut off, failed)
                    emit(ev="notify_failed", msg=f"{prefix}#{i}", error=str(e))
            emit(ev="notified", count=sent)
        elif line[0] == "leave":
            await driver.leave()
            emit(ev="left")
        elif line[0] == "close":
            await driver.close()
            emit(ev="closed")
        elif line[0] == "serving":
            emit(ev="may_serve", ok=driver.may_serve())
        elif line[0] == "raise_next":
            events.raise_next.add(line[1])
            emit(ev="armed", cb=line[1])
    sampler.cancel()
    await driver.close()
    return 0


if __name__ == "__main__":
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
