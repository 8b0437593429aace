"""Start, stop and inspect a local development cluster (the README's main job).

``python -m sheep.launcher start`` runs N sheep daemons on this machine
(ports BASE..BASE+N-1, zones 0..N-1, the ``local`` cluster driver), each with
its store under DIR/N, and formats the cluster with 3 copies the first time.
Started again later, the same stores come back with their data (no
re-format).  ``stop`` shuts the cluster down cleanly (SHUTDOWN, so every node
keeps the same epoch); ``status`` lists the nodes.

DIR defaults to ``$PYSHEEPDOG_DIR`` or ``/tmp/pysheepdog``.

Guarantee of ``stop`` (and ``status``): it acts only on the daemons this
data directory started.  ``start`` records each node's port, pid and store in
``DIR/nodes.json``; ``stop`` takes the ports from that record, not from
``--base-port``, and sends SHUTDOWN (or SIGTERM) only to a recorded pid that
is alive and still is a ``sheep`` of that store on that port (its command
line says so).  Another cluster listening on ``--base-port`` is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from sheep import proto
from sheep.proto.connection import BlockingConnection

DEFAULT_DIR = os.environ.get("PYSHEEPDOG_DIR", "/tmp/pysheepdog")


def _call(port, op, args=None, payload=b"", data_length=0):
    with BlockingConnection("127.0.0.1", port, timeout=30) as c:
        flags = proto.SD_FLAG_CMD_WRITE if payload else 0
        return c.request(proto.Request(op, args, flags=flags,
                                       data_length=len(payload) or data_length), payload)


def _info(port):
    rsp, body = _call(port, proto.Op.CLUSTER_INFO, data_length=proto.CLUSTER_INFO_SIZE)
    return proto.unpack_cluster_info(body)


def _pid(path):
    try:
        pid = int(open(path).read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _record_path(d):
    return os.path.join(d, "nodes.json")


def _load_record(d) -> list[dict]:
    """The nodes ``start`` recorded in ``d`` ([] when none)."""
    try:
        with open(_record_path(d)) as f:
            return list(json.load(f)["nodes"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _save_record(d, nodes: list[dict]) -> None:
    tmp = _record_path(d) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"nodes": nodes}, f, indent=1)
    os.replace(tmp, _record_path(d))


def _is_our_sheep(node: dict) -> bool:
    """The recorded pid is alive and its command line is a ``sheep`` with
    the recorded store and port (a reused pid, or another program, is not)."""
    pid = node.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    is_sheep = any(os.path.basename(a) == "sheep" for a in argv[:3]) or "sheep" in argv[1:3]
    port_ok = any(a == "-p" and b == str(node.get("port")) for a, b in zip(argv, argv[1:]))
    return is_sheep and port_ok and argv[-1:] == [node.get("store")]


def _recorded(args) -> list[dict]:
    """The recorded nodes, each with ``alive`` (a verified sheep of ours)."""
    nodes = _load_record(args.dir)
    for n in nodes:
        n["alive"] = _is_our_sheep(n)
    return nodes


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"localcluster: timed out waiting for {what}")


def start(args) -> int:
    os.makedirs(args.dir, exist_ok=True)
    record = {n.get("node"): n for n in _recorded(args)}
    ports = []
    for i in range(args.nodes):
        old = record.get(i)
        if old and old["alive"]:  # running: keep its recorded port
            print(f"node {i} (port {old['port']}) is already running")
            ports.append(old["port"])
            continue
        port = args.base_port + i
        ports.append(port)
        pidfile = os.path.join(args.dir, f"sheep{i}.pid")
        store = os.path.join(args.dir, str(i))
        cmd = [sys.executable, "-m", "sheep", "-c", f"local:{os.path.join(args.dir, 'cluster')}",
               "-p", str(port), "-z", str(i), "-P", pidfile, *(["-n"] if args.nosync else []),
               store]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(f"localcluster: node {i} failed to start: {r.stderr.strip()}\n")
            return 1
        _wait(lambda: _pid(pidfile), 10, f"the pid file of node {i}")
        record[i] = {"node": i, "port": port, "pid": _pid(pidfile), "store": store}
        _save_record(args.dir, [{k: v for k, v in n.items() if k != "alive"}
                                for _, n in sorted(record.items())])
        print(f"started node {i}: 127.0.0.1:{port} zone {i}, store {store}")
    _wait(lambda: _info(ports[0])[0].nr_nodes == len(ports), 20, "all nodes to join")
    hdr, _ = _info(ports[0])
    if hdr.ctime == 0:
        rsp, _ = _call(ports[0], proto.Op.MAKE_FS,
                       proto.ClusterArgs(ctime=proto.sd_time(time.time()), copies=args.copies,
                                         # as "collie cluster format": VDI locks enforced
                                         flags=proto.SD_CLUSTER_FLAG_AUTO_VNODES
                                         | proto.SD_CLUSTER_FLAG_USE_LOCK), b"plain\0")
        if rsp.result:
            sys.stderr.write(f"localcluster: format failed: result {rsp.result:#x}\n")
            return 1
        print(f"formatted the cluster with {args.copies} copies (VDI locks enforced)")
    _wait(lambda: _info(ports[0])[0].status == proto.SD_STATUS_OK, 30, "the cluster to run")
    p = ports[0]
    bindir = os.path.dirname(sys.executable)
    hint = "" if shutil.which("collie") == os.path.join(bindir, "collie") else \
        f"\n(first put the tools on your PATH: source {os.path.dirname(bindir)}/bin/activate)"
    print(f"""
The cluster is running ({len(ports)} nodes, data under {args.dir}).{hint} Try:
  collie node list -p {p}
  collie cluster info -p {p}
  collie vdi create -p {p} demo 1G
  echo hello | collie vdi write -p {p} demo 0 6
  collie vdi read -p {p} demo 0 6
  collie vdi list -p {p}
  python -c "import qemu_client; v = qemu_client.open('demo', port={p}); print(v.pread(0, 6)); v.close()"
Stop it with: ./run.sh stop   (or: python -m sheep.launcher stop)""")
    return 0


def stop(args) -> int:
    ours = [n for n in _recorded(args) if n["alive"]]
    pids = [n["pid"] for n in ours]
    if not pids:
        print(f"no node of {args.dir} is running (nothing stopped)")
        return 0
    try:
        # our own node's port (from the record): the whole cluster shuts down
        _call(ours[0]["port"], proto.Op.SHUTDOWN)
    except OSError:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)

    def gone():
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        return not alive
    try:
        _wait(gone, 10, "the daemons to exit")
    except SystemExit:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _wait(gone, 5, "the daemons to exit after SIGTERM")
    print(f"stopped {len(pids)} node(s); data kept under {args.dir}")
    return 0


def status(args) -> int:
    nodes = _recorded(args)
    if not nodes:
        print(f"no node was started from {args.dir}")
    for n in nodes:
        print(f"node {n['node']}: port {n['port']}: "
              + (f"running (pid {n['pid']})" if n["alive"] else "stopped"))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sheep.launcher",
                                 description="Run a pysheepdog cluster on this machine.",
                                 epilog="stop and status act only on the daemons started "
                                        "from --dir (recorded in DIR/nodes.json), never on "
                                        "whatever listens on --base-port.")
    ap.add_argument("action", choices=["start", "stop", "status"], nargs="?", default="start")
    ap.add_argument("--dir", default=DEFAULT_DIR, help=f"data directory (default {DEFAULT_DIR})")
    ap.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    ap.add_argument("--base-port", type=int, default=7000, help="port of node 0 when starting (default 7000); "
                         "stop/status use the recorded ports")
    ap.add_argument("--copies", type=int, default=3, help="copies when formatting (default 3)")
    ap.add_argument("-n", "--nosync", action="store_true", help="start the daemons with -n")
    args = ap.parse_args(argv)
    args.dir = os.path.abspath(args.dir)
    return {"start": start, "stop": stop, "status": status}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())
