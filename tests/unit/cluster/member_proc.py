"""Test helper: one cluster member in its own process.

    python member_proc.py SPEC IDENT [--opaque TEXT]

Joins the cluster SPEC (e.g. ``local:/tmp/x``) as IDENT and prints every
event as one JSON line on stdout.  Commands on stdin, one per line:
``notify N [PREFIX]`` (send N notifies "PREFIX#i" back to back; PREFIX
defaults to IDENT; a notify that raises RuntimeError is reported as
``notify_failed``), ``leave``, ``close``.  SPEC may name any driver
(``local:/tmp/x``, ``zmq:127.0.0.1:7100,...``); ``on_quorum`` calls are
printed as ``{"ev": "quorum", "ok": ...}``.
Exits on stdin EOF (closing the driver).  The check_join it implements
rejects a joiner whose opaque is b"reject".
"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))

from sheep.cluster.base import JoinRejected, Member, create_driver  # noqa: E402


def node_of(ident: str) -> bytes:
    return ident.encode().ljust(80, b"\0")


def emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def view(members) -> list[str]:
    assert all(m.node == node_of(m.ident) for m in members), "node bytes mangled"
    return [m.ident for m in members]


class Events:
    def check_join(self, joiner, opaque):
        emit(ev="check_join", who=joiner.ident)
        if opaque == b"reject":
            return False, b"go away " + joiner.ident.encode()
        return True, b"welcome " + joiner.ident.encode()

    def on_join(self, joined, members, reply):
        emit(ev="join", who=joined.ident, members=view(members), reply=reply.decode())

    def on_leave(self, left, members):
        emit(ev="leave", who=left.ident, members=view(members))

    def on_notify(self, sender, msg):
        view([sender])
        emit(ev="notify", frm=sender.ident, msg=msg.decode())

    def on_quorum(self, has_quorum):
        emit(ev="quorum", ok=has_quorum)


async def main() -> int:
    spec, ident = sys.argv[1], sys.argv[2]
    opaque = sys.argv[4].encode() if len(sys.argv) > 4 and sys.argv[3] == "--opaque" else b""
    driver = create_driver(spec, Events())
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
                except RuntimeError as e:   # not a member (e.g. cut off in a minority)
                    emit(ev="notify_failed", msg=f"{prefix}#{i}", error=str(e))
            emit(ev="notified", count=sent)
        elif line[0] == "leave":
            await driver.leave()
            emit(ev="left")
        elif line[0] == "close":
            await driver.close()
            emit(ev="closed")
    await driver.close()
    return 0


if __name__ == "__main__":
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
