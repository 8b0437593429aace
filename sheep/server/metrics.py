"""Prometheus metrics of one daemon (``sheep --metrics [HOST:]PORT``).

Two halves, so that counting never slows the request path:

* :class:`RequestMetrics` is updated once per request by ``ops.dispatch``
  (the event loop thread): a few integer additions and one ``bisect`` into
  plain Python lists and dicts — no locks, no prometheus objects.
* :class:`SheepCollector` turns those counters, and gauges read from the
  daemon's state (objects, disk use, epoch, members, locks, recovery), into
  metric families when ``/metrics`` is scraped.  It runs on the HTTP
  server's own thread (prometheus_client's ``start_http_server``), never on
  the event loop; it only reads daemon state (copying a dict or list before
  iterating it) and scans the object directories (like ``collie node info``
  would), so a scrape costs one directory listing and changes nothing.

Each daemon has its own :class:`CollectorRegistry` (not the global one), so
several daemons in one process (tests) do not mix their numbers.  Metric
names and meanings: docs/metrics-and-logs.md.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from sheep import proto

log = logging.getLogger("sheep.server.metrics")

# latency bucket upper bounds in seconds (the last, +Inf, is implicit)
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
           0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OpStats:
    """Counters of one opcode (plain ints; see the module docstring)."""

    __slots__ = ("name", "kind", "count", "errors", "rx", "tx", "seconds", "buckets")

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.count = self.errors = self.rx = self.tx = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last = +Inf


class RequestMetrics:
    """Per-op request counters: count, failures, bytes in and out, latency."""

    def __init__(self):
        self.ops: dict[int, OpStats] = {}

    def record(self, opcode: int, name: str, kind: str, rx: int, tx: int,
               seconds: float, failed: bool) -> None:
        """Count one finished request (called once per request, event loop only)."""
        st = self.ops.get(opcode)
        if st is None:
            st = self.ops[opcode] = OpStats(name, kind)
        st.count += 1
        st.rx += rx
        st.tx += tx
        st.seconds += seconds
        st.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        if failed:
            st.errors += 1

    def snapshot(self) -> list[OpStats]:
        """A copy of every op's counters (safe from another thread)."""
        out = []
        for st in list(self.ops.values()):
            c = OpStats(st.name, st.kind)
            c.count, c.errors, c.rx, c.tx, c.seconds = st.count, st.errors, st.rx, st.tx, st.seconds
            c.buckets = list(st.buckets)
            out.append(c)
        return sorted(out, key=lambda s: s.name)


def requests(sheep) -> RequestMetrics:
    """This daemon's :class:`RequestMetrics` (created on first use)."""
    rm = getattr(sheep, "request_metrics", None)
    if rm is None:
        rm = sheep.request_metrics = RequestMetrics()
    return rm


def _store_usage(store) -> tuple[int, int]:
    """(objects, bytes) in the object directories (one listing)."""
    n = size = 0
    for ent in store._scan():
        with contextlib.suppress(FileNotFoundError):
            size += ent.stat(follow_symlinks=False).st_size
            n += 1
    return n, size


class SheepCollector:
    """Builds the metric families of one daemon at scrape time."""

    def __init__(self, sheep):
        self.sheep = sheep

    def describe(self):
        return []  # families depend on what ran; no up-front description

    def collect(self):
        yield from self._requests()
        yield from self._node()

    def _requests(self):
        ops = requests(self.sheep).snapshot()
        total = CounterMetricFamily("sheep_requests", "Requests served, by opcode",
                                    labels=["op", "kind"])
        errors = CounterMetricFamily("sheep_request_errors",
                                     "Requests answered with a non-zero result, by opcode",
                                     labels=["op", "kind"])
        rx = CounterMetricFamily("sheep_request_received_bytes",
                                 "Request payload bytes received, by opcode", labels=["op", "kind"])
        tx = CounterMetricFamily("sheep_request_sent_bytes",
                                 "Reply payload bytes sent, by opcode", labels=["op", "kind"])
        lat = HistogramMetricFamily("sheep_request_duration_seconds",
                                    "Time from a request's admission to its reply, by opcode",
                                    labels=["op", "kind"])
        for st in ops:
            lab = [st.name, st.kind]
            total.add_metric(lab, st.count)
            errors.add_metric(lab, st.errors)
            rx.add_metric(lab, st.rx)
            tx.add_metric(lab, st.tx)
            cum, acc = [], 0
            for bound, n in zip(BUCKETS + (float("inf"),), st.buckets):
                acc += n
                cum.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            lat.add_metric(lab, cum, sum_value=st.seconds)
        yield from (total, errors, rx, tx, lat)
        sd = getattr(self.sheep, "sd_stat", None) or proto.SdStat()
        active = GaugeMetricFamily("sheep_requests_in_flight",
                                   "Gateway and peer requests in progress", labels=["kind"])
        active.add_metric(["gateway"], sd.gw_active)
        active.add_metric(["peer"], sd.peer_active)
        yield active

    def _node(self):
        s = self.sheep
        g = getattr(s, "group", None)
        if g is not None:
            yield GaugeMetricFamily("sheep_epoch", "Current epoch of the cluster", value=g.epoch)
            nodes = list(g.nodes)
            yield GaugeMetricFamily("sheep_members", "Nodes in the current membership",
                                    value=len(nodes))
            yield GaugeMetricFamily("sheep_vnodes", "Virtual nodes of the whole membership",
                                    value=sum(n.nr_vnodes for n in nodes))
            st = GaugeMetricFamily("sheep_cluster_status",
                                   "1 for the cluster status this node is in", labels=["status"])
            st.add_metric([str(g.status)], 1)
            yield st
        locks = getattr(s, "locks", None)
        if locks is not None:
            held = sum(len(h) for h in list(locks.table.locks.values()))
            yield GaugeMetricFamily("sheep_locks", "VDI lock holders in the cluster's lock table",
                                    value=held)
            yield GaugeMetricFamily("sheep_lock_sessions",
                                    "Lock sessions of this node's clients",
                                    value=len(locks.sessions))
            yield GaugeMetricFamily("sheep_lock_generation",
                                    "Highest lock generation issued", value=locks.table.generation)
        rec = getattr(s, "recovery", None)
        if rec is not None:
            r = rec.state
            yield GaugeMetricFamily("sheep_recovery_in_progress",
                                    "1 while this node recovers objects of the current epoch",
                                    value=r.in_recovery)
            yield GaugeMetricFamily("sheep_recovery_objects",
                                    "Objects to recover in the current (or last) recovery pass",
                                    value=r.nr_total)
            yield GaugeMetricFamily("sheep_recovery_finished_objects",
                                    "Objects of that pass already handled", value=r.nr_finished)
            done = CounterMetricFamily("sheep_recovery_handled_objects",
                                       "Objects handled by this node's recovery passes "
                                       "since it started")
            done.add_metric([], getattr(rec, "handled_total", 0))
            yield done
        yield from self._disk()
        yield GaugeMetricFamily("sheep_event_loop_max_lag_seconds",
                                "Longest event loop stall seen since start",
                                value=getattr(s, "max_loop_lag", 0.0))

    def _disk(self):
        store = self.sheep.store
        try:
            n, used = _store_usage(store)
            cap = store.capacity()
        except OSError as e:  # a failing disk: the daemon handles it; the scrape goes on
            log.debug("metrics: cannot measure the store: %s", e)
            return
        yield GaugeMetricFamily("sheep_objects", "Objects stored on this node", value=n)
        yield GaugeMetricFamily("sheep_disk_used_bytes",
                                "Bytes of the objects stored on this node", value=used)
        yield GaugeMetricFamily("sheep_disk_capacity_bytes",
                                "Size of the filesystems holding the objects", value=cap)
        with contextlib.suppress(OSError):
            vfs = os.statvfs(store.obj_dirs[0])
            yield GaugeMetricFamily("sheep_disk_free_bytes",
                                    "Free bytes of the first object directory's filesystem",
                                    value=vfs.f_bavail * vfs.f_frsize)


def start(sheep, host: str, port: int):
    """Serve ``http://HOST:PORT/metrics`` from a daemon thread; raises OSError
    if the port cannot be bound.  Returns the HTTP server (``shutdown()``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SheepCollector(sheep))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
