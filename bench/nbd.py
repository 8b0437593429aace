"""``python -m bench.nbd``: fio over NBD, qemu-nbd on a raw file vs. sheep --nbd.

In one run, on this machine, with the same fio jobs (``--ioengine=nbd``):

* (a) ``qemu-nbd -f raw -t`` serving a raw file (the NBD limit), and
* (b) the NBD export of a copies-N VDI on a throw-away local cluster of real
  ``sheep --nbd`` daemons (fio talks to node 0; locking is on, as collie
  formats by default).

Workloads: 4 KiB random read and write at queue depth 1 and 16, 1 MiB
sequential read and write (depth 8).  Both targets are written in full before
the timed runs, so reads hit allocated data.  By default neither side syncs
(qemu-nbd's default writeback cache, ``sheep -n``); ``--sync`` runs sheep
without ``-n`` and qemu-nbd with ``--cache=writethrough``.  Prints a Markdown
table of ratios (b)/(a) and writes JSON (``nbd-<time>.json`` in the results
directory, see :func:`bench.results_dir`).
Every process started is killed and the temporary directory removed at the
end, also on errors, Ctrl-C and SIGTERM.  Exit status 0, or 1 if the NBD
target ((b)/(a) >= 0.25 on 4 KiB random read at depth 16) is missed; 130 on
Ctrl-C, 143 on SIGTERM.  Needs ``fio`` and ``qemu-nbd`` (exits 1 naming
the missing one).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from bench import results_dir
from bench.cluster import PORT_SPAN, BenchCluster, SignalUnwind, _cpu_ticks
from bench.daemons import Client, Cluster, free_port, wait_for
from sheep import proto

MiB = 1 << 20
TARGET = ("randread-4k-qd16", 0.25)
NBD_PORTS = (10809, 11808)  # [lo, hi) of the NBD ports, unless --nbd-base-port
NBD_SPAN = 50


@dataclass(frozen=True)
class Job:
    name: str
    rw: str
    bs: int
    depth: int

    @property
    def big(self) -> bool:
        return self.bs >= MiB


JOBS = [Job("randread-4k-qd1", "randread", 4096, 1),
        Job("randread-4k-qd16", "randread", 4096, 16),
        Job("randwrite-4k-qd1", "randwrite", 4096, 1),
        Job("randwrite-4k-qd16", "randwrite", 4096, 16),
        Job("seqread-1m-qd8", "read", MiB, 8),
        Job("seqwrite-1m-qd8", "write", MiB, 8)]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench.nbd] {msg}\n")
    sys.stderr.flush()


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"bench.nbd: {tool} is not installed (scripts/setup.sh installs "
                         f"qemu-utils and fio)")
    return path


def fio(uri: str, job: Job, seconds: float, size: int, ramp: float) -> dict:
    """One fio run; returns {"iops", "mib_s", "lat_us", "cpu"} of the job's direction."""
    argv = [need("fio"), "--name", job.name, "--ioengine=nbd", f"--uri={uri}",
            f"--rw={job.rw}", f"--bs={job.bs}", f"--iodepth={job.depth}", f"--size={size}",
            "--time_based", f"--runtime={seconds}", f"--ramp_time={ramp}",
            "--randrepeat=0", "--norandommap", "--output-format=json"]
    r = subprocess.run(argv, check=False, capture_output=True, text=True,
                       timeout=seconds + ramp + 120)
    if r.returncode != 0:
        raise RuntimeError(f"fio {job.name} on {uri} failed: {r.stderr.strip() or r.stdout}")
    data = json.loads(r.stdout[r.stdout.index("{"):])
    j = data["jobs"][0]
    side = j["read"] if "read" in job.rw else j["write"]
    return {"iops": side["iops"], "mib_s": side["bw_bytes"] / MiB,
            "lat_us": side["clat_ns"]["mean"] / 1000, "errors": j.get("error", 0)}


def fill(uri: str, size: int) -> None:
    """Write the whole target once (1 MiB sequential), so that reads hit data."""
    argv = [need("fio"), "--name", "fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write",
            "--bs=1M", "--iodepth=8", f"--size={size}", "--output-format=json"]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"filling {uri} failed: {r.stderr.strip() or r.stdout}")


class QemuNbd:
    """qemu-nbd serving a raw file on a free loopback port."""

    def __init__(self, path: str, size: int, sync: bool, ports: tuple[int, int] = NBD_PORTS):
        self.path, self.size, self.sync = path, size, sync
        self.port = free_port(*ports)
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        with open(self.path, "wb") as f:
            f.truncate(self.size)
        argv = [need("qemu-nbd"), "-f", "raw", "-t", "-p", str(self.port), "-b", "127.0.0.1",
                "-x", "raw", "--cache=" + ("writethrough" if self.sync else "writeback"),
                self.path]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: self._listening() or self.proc.poll() is not None, 10,
                     what="qemu-nbd to listen")
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-nbd failed: {self.proc.stderr.read().decode()}")
        except BaseException:
            self.close()
            raise
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/raw"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __exit__(self, *exc):
        self.close()


class NbdCluster(BenchCluster):
    """BenchCluster whose nodes also run ``--nbd`` (and lock enforcement on)."""

    def __init__(self, *a, sync: bool = False, nbd_ports: tuple[int, int] = NBD_PORTS, **kw):
        super().__init__(*a, **kw)
        self.sync, self.nbd_ports = sync, nbd_ports

    def start(self) -> None:
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="sheepbench-nbd-")
        self.cluster = Cluster(os.path.join(self.root, "cluster"), 0, nosync=not self.sync,
                               nbd=True)
        self.cluster.nbd_ports = self.nbd_ports
        ports: list[int | None] = [None] * self.n
        if self.base_port is not None:  # ascending, as in BenchCluster.start
            ports = sorted(free_port(self.base_port, min(self.base_port + PORT_SPAN, 65536))
                           for _ in range(self.n))
        for port in ports:
            self.cluster.add_node(port=port)
        self.cluster.wait_members(self.n)
        c = Client(self.ports[0])
        try:
            c.format(self.copies, proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
        finally:
            c.close()
        wait_for(lambda: all(self._ok(n.port) for n in self.cluster.nodes), 10,
                 what="cluster running")

    @staticmethod
    def _ok(port: int) -> bool:
        c = Client(port)
        try:
            return c.cluster_info().status == proto.SD_STATUS_OK
        finally:
            c.close()

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.cluster.nodes[0].nbd_port}/{name}"


def profile_start(ns, pid: int, job: Job):
    if not ns.profile:
        return None
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("bench.nbd: --profile needs py-spy")
    os.makedirs(ns.profile, exist_ok=True)
    out = os.path.join(ns.profile, f"nbd-{job.name}.txt")
    p = subprocess.Popen([exe, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", out,
                          "-d", str(max(1, int(ns.seconds))), "--pid", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return p


def fmt(job: Job, r: dict | None) -> str:
    if r is None:
        return "—"
    if job.big:
        return f"{r['mib_s']:,.1f} MiB/s"
    return f"{r['iops']:,.0f} IOPS ({r['lat_us']:,.0f} µs)"


def metric(job: Job, r: dict) -> float:
    return r["mib_s"] if job.big else r["iops"]


def table(rows) -> str:
    out = ["| workload | qemu-nbd, raw file (a) | sheep --nbd, copies-3 VDI (b) | (b)/(a) |",
           "|---|---:|---:|---:|"]
    for job, ra, rb in rows:
        ratio = f"{metric(job, rb) / metric(job, ra):.2f}" if ra and rb and metric(job, ra) else "—"
        out.append(f"| {job.name} | {fmt(job, ra)} | {fmt(job, rb)} | {ratio} |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.nbd", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="per run (default %(default)s)")
    p.add_argument("--ramp", type=float, default=1.0, help="fio ramp time (default %(default)s)")
    p.add_argument("--size-mib", type=int, default=256, help="working set (default %(default)s)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--sync", action="store_true",
                   help="durable writes on both sides (sheep without -n, qemu-nbd writethrough)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these jobs")
    p.add_argument("--base-port", type=int, metavar="PORT",
                   help=f"the daemons listen on free ports in [PORT, PORT+{PORT_SPAN}) "
                        "(default: anywhere in 7000-7999)")
    p.add_argument("--nbd-base-port", type=int, metavar="PORT",
                   help=f"the NBD servers (sheep --nbd, qemu-nbd) listen on free ports in "
                        f"[PORT, PORT+{NBD_SPAN}) (default: anywhere in 10809-11807)")
    p.add_argument("--json", metavar="PATH",
                   help="default nbd-<time>.json in bench/results of a checkout, else in "
                        "./bench-results")
    p.add_argument("--profile", metavar="DIR",
                   help="py-spy the serving sheep during each (b) run (collapsed stacks in DIR)")
    ns = p.parse_args(argv)
    if ns.base_port is not None and not 1024 <= ns.base_port <= 65535 - ns.nodes:
        p.error("--base-port must be in 1024..65535 with room for --nodes ports")
    if ns.nbd_base_port is not None and not 1024 <= ns.nbd_base_port <= 65535 - NBD_SPAN:
        p.error(f"--nbd-base-port must be in 1024..{65535 - NBD_SPAN}")
    ns.nbd_ports = (NBD_PORTS if ns.nbd_base_port is None
                    else (ns.nbd_base_port, ns.nbd_base_port + NBD_SPAN))
    ns.jobs = JOBS
    if ns.only:
        want = set(ns.only.split(","))
        ns.jobs = [j for j in JOBS if j.name in want]
        if not ns.jobs or len(ns.jobs) != len(want):
            p.error(f"jobs are: {', '.join(j.name for j in JOBS)}")
    return ns


def main(argv=None) -> int:
    ns = parse_args(argv)
    for t in ("fio", "qemu-nbd"):
        need(t)
    signals = SignalUnwind()
    size = ns.size_mib * MiB
    root = tempfile.mkdtemp(prefix="sheepbench-nbd-")
    rows = []
    try:
        with NbdCluster(ns.nodes, ns.copies, root=os.path.join(root, "sheep"),
                        sync=ns.sync, base_port=ns.base_port, nbd_ports=ns.nbd_ports) as bc, \
                QemuNbd(os.path.join(root, "raw.img"), size, ns.sync, ns.nbd_ports) as qn:
            bc.new_vdi("bench", size)
            ours = bc.uri("bench")
            log(f"filling {ns.size_mib} MiB on both targets")
            t0 = time.perf_counter()
            fill(qn.uri, size)
            t1 = time.perf_counter()
            fill(ours, size)
            t2 = time.perf_counter()
            log(f"  qemu-nbd {t1 - t0:.1f} s, sheep {t2 - t1:.1f} s")
            pid = bc.cluster.nodes[0].pid
            hz = os.sysconf("SC_CLK_TCK")
            for job in ns.jobs:
                ra = fio(qn.uri, job, ns.seconds, size, ns.ramp)
                log(f"(a) qemu-nbd {job.name}: {fmt(job, ra)}")
                spy = profile_start(ns, pid, job)
                c0 = _cpu_ticks(pid)
                try:
                    rb = fio(ours, job, ns.seconds, size, ns.ramp)
                finally:
                    if spy is not None:
                        spy.wait()
                rb["gateway_cpu"] = (_cpu_ticks(pid) - c0) / hz / (ns.seconds + ns.ramp)
                bc.check_alive()
                log(f"(b) sheep    {job.name}: {fmt(job, rb)}, gateway sheep "
                    f"{rb['gateway_cpu']:.2f} cores")
                rows.append((job, ra, rb))
    except KeyboardInterrupt:
        log("interrupted; processes killed, directories removed")
        return signals.exit_code()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(rows))
    res = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(),
           "cpus": os.cpu_count(), "seconds": ns.seconds, "size_mib": ns.size_mib,
           "nodes": ns.nodes, "copies": ns.copies, "sync": ns.sync,
           "results": [{"job": j.name, "qemu_nbd": ra, "sheep_nbd": rb,
                        "ratio": metric(j, rb) / metric(j, ra) if metric(j, ra) else None}
                       for j, ra, rb in rows]}
    path = (pathlib.Path(ns.json) if ns.json
            else results_dir() / time.strftime("nbd-%Y%m%dT%H%M%S.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    log(f"results written to {path}")
    name, want = TARGET
    got = next((r["ratio"] for r in res["results"] if r["job"] == name), None)
    if got is not None:
        print(f"\ntarget {name} (b)/(a) >= {want}: {got:.2f} -> {'met' if got >= want else 'MISSED'}")
        return 0 if got >= want else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
