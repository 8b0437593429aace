"""The duties of the ``zookeeper`` cluster driver (dead removal, answering
joins, queue garbage collection) and its znode record helpers.

A mixin of :class:`sheep.cluster.drivers.zookeeper.ZookeeperDriver` (it uses the
driver's state); the protocol is described in :mod:`sheep.cluster.drivers.zookeeper`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time

from .base import Member

log = logging.getLogger("sheep.cluster.drivers.zookeeper")

GC_INTERVAL = 2.0         # seconds between queue garbage collections
PUBLISH_INTERVAL = 0.5    # seconds between updates of our alive/ pos


def _stem(ident: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", ident)[:40]
    return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"


def _seq(name: str) -> int:
    return int(name[-10:])


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb(text: str) -> bytes:
    return base64.b64decode(text)


def _enc(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _enc_view(members: list[Member]) -> list:
    return [[m.ident, _b(m.node)] for m in members]


def _dec_view(data: list) -> list[Member]:
    return [Member(_unb(n), i) for i, n in data]


class Duties:
    """What a process does besides reading the queue: the duties of the
    module docstring of :mod:`sheep.cluster.drivers.zookeeper`."""

    async def _refresh(self) -> None:
        """Re-read the watched directories whose watch fired."""
        zk = self._zk
        if "alive" in self._dirty:
            self._dirty.discard("alive")
            self._alive = set(await self._call(zk.get_children_async(
                self._p("alive"), watch=self._watch("alive"))))
        if "joins" in self._dirty:
            self._dirty.discard("joins")
            names = await self._call(zk.get_children_async(
                self._p("joins"), watch=self._watch("joins")))
            self._joins = sorted(names, key=_seq)
        if "view" in self._dirty and not self.joined:
            self._dirty.discard("view")
            data, stat = await self._call(zk.get_async(self._p("view"), watch=self._watch("view")))
            self._zview = (_dec_view(json.loads(data)["view"]), stat.version)

    def _is_alive(self, ident: str) -> bool:
        return ident == self.me.ident or _stem(ident) in self._alive

    async def _really_dead(self, ident: str) -> bool:
        stat = await self._call(self._zk.exists_async(self._p("alive", _stem(ident))))
        return stat is None

    async def _duties(self) -> bool:
        """Do one duty if one is due; True when something was appended."""
        from kazoo.exceptions import BadVersionError, NoNodeError
        await self._refresh()
        view, v = (self.view, self.version) if self.joined else self._zview
        live = [m for m in view if self._is_alive(m.ident)]
        first_joiner = self._joins[0] if self._joins else None
        mine = self._req_path.rsplit("/", 1)[-1]
        responsible = (live and live[0].ident == self.me.ident) or \
            (not live and not self.joined and first_joiner == mine)
        try:
            if responsible:
                for m in view:
                    if self._is_alive(m.ident):
                        continue
                    if not await self._really_dead(m.ident):
                        self._dirty.add("alive")   # our listing was stale
                        continue
                    rest = [x for x in view if x.ident != m.ident]
                    await self._append_change(rest, v, {"k": "leave", "id": m.ident})
                    log.info("zookeeper cluster: %s failed; removed", m.ident)
                    return True
            if self.joined and view and view[0].ident == self.me.ident and self._joins:
                return await self._answer(self._joins[0], view, v)
            if not self.joined and not view and first_joiner == mine:
                return await self._answer(mine, view, v)
        except (BadVersionError, NoNodeError):
            self._dirty.update(("joins", "view"))
            return True    # somebody else acted first: catch up and re-decide
        return False

    async def _answer(self, req: str, view: list[Member], v: int) -> bool:
        """Answer the join request ``req`` (we are the master, or forming)."""
        from kazoo.exceptions import NoNodeError
        path = self._p("joins", req)
        try:
            data, _ = await self._call(self._zk.get_async(path))
        except NoNodeError:   # joiner died or answered already
            self._dirty.add("joins")
            return True
        r = json.loads(data)
        joiner, opaque = Member(_unb(r["node"]), r["ident"]), _unb(r["opaque"])
        # The joiner gets our state now (check_join) and the queue after its
        # ACK.  Read queue/'s version, consume every entry up to it, and make
        # the ACK conditional on that version: an entry appended meanwhile
        # (a member's notify) fails the ACK, and we answer again.
        qstat = await self._call(self._zk.exists_async(self._p("queue")))
        await self._catch_up()
        if not self._current() or (self.joined and self.version != v):
            self._dirty.add("joins")
            return True  # our view moved on while catching up: re-decide
        if any(m.ident == joiner.ident for m in view):
            accept, reply = False, b"ident already a member"
        else:
            try:
                accept, reply = self.events.check_join(joiner, opaque)
                accept, reply = bool(accept), bytes(reply)
            except Exception:
                log.exception("zookeeper cluster: check_join raised; rejecting %s", joiner.ident)
                accept, reply = False, b""
        rec = {"k": "ack", "id": joiner.ident, "ok": accept, "reply": _b(reply)}
        if accept:
            await self._append_change(view + [joiner], v, rec, delete=path,
                                      check=(self._p("queue"), qstat.version))
        else:
            await self._commit(("check", self._p("view"), v), ("delete", path),
                               ("create", self._p("queue", "e-"), _enc(rec)))
        self._dirty.add("joins")
        return True

    async def _append_change(self, new_view: list[Member], v: int, rec: dict,
                             delete: str | None = None, check: tuple | None = None) -> None:
        """CAS the view from version ``v`` to ``new_view`` and append ``rec``
        (and, with ``check=(path, version)``, only if ``path`` has that version)."""
        rec = dict(rec, ver=v + 1)
        if rec["k"] == "ack":
            rec["view"] = _enc_view(new_view)
        ops = [("set_data", self._p("view"), _enc({"view": _enc_view(new_view)}), v),
               ("create", self._p("queue", "e-"), _enc(rec))]
        if delete:
            ops.insert(1, ("delete", delete))
        if check:
            ops.insert(0, ("check", *check))
        await self._commit(*ops)
        self._dirty.add("view")

    async def _housekeeping(self) -> None:
        """Publish our queue position; the master garbage-collects the queue."""
        now = time.monotonic()
        pos = self._last_seq + 1
        if pos != self._published and now - self._last_publish >= PUBLISH_INTERVAL:
            self._last_publish = now
            await self._call(self._zk.set_async(
                self._my_alive, _enc({"ident": self.me.ident, "pos": pos})))
            self._published = pos
        if not (self.joined and self.view and self.view[0].ident == self.me.ident) \
                or now - self._last_gc < GC_INTERVAL:
            return
        self._last_gc = now
        limit = pos
        stems = await self._call(self._zk.get_children_async(self._p("alive")))
        datas = await asyncio.gather(*[self._call(self._zk.get_async(self._p("alive", s)))
                                       for s in stems], return_exceptions=True)
        for d in datas:
            if not isinstance(d, Exception):
                limit = min(limit, int(json.loads(d[0]).get("pos", 0)))
        names = await self._call(self._zk.get_children_async(self._p("queue")))
        old = [n for n in names if _seq(n) < limit]
        if old:
            await asyncio.gather(*[self._call(self._zk.delete_async(self._p("queue", n)))
                                   for n in old], return_exceptions=True)
            log.debug("zookeeper cluster: collected %d queue entries", len(old))
