"""``sheep --metrics``: the Prometheus endpoint of real daemons, scraped over
HTTP and parsed with prometheus_client's own parser after real I/O (a
qemu_client writer holding the VDI lock, collie), a node join (recovery
progress), and ``collie node stat``'s counters agreeing with it.

One module cluster (two nodes, two copies, then a third joins), small VDIs.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
from harness import Cluster, collie_ok, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

import qemu_client
from sheep import proto

pytestmark = pytest.mark.cluster
MB = 1 << 20


def scrape(port: int) -> dict:
    """{(sample name, frozenset(labels)): value} of http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m: dict, name: str, **labels) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def op_count(m: dict, op: str, kind: str = "gateway") -> float:
    return val(m, "sheep_requests_total", op=op, kind=kind)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    c = Cluster(root, n=0)
    base = list(c.extra)
    c.mports = []
    for _ in range(2):
        mp = free_port(9100, 9999)
        c.extra = base + ["--metrics", f"127.0.0.1:{mp}"]
        c.add_node()
        c.mports.append(mp)
    c.extra = base
    c.wait_members(2)
    collie_ok(c.nodes[0].port, "cluster", "format", "-c", "2")  # with VDI locks
    wait_for(lambda: all(n.status() == proto.SD_STATUS_OK for n in c.nodes), 10,
             what="cluster running")
    yield c
    c.close()


def test_requests_bytes_latency_objects_locks(cluster):
    n0, n1 = cluster.nodes
    m0, m1 = cluster.mports
    before0, before1 = scrape(m0), scrape(m1)
    collie_ok(n0.port, "vdi", "create", "vm", "20M")
    data = bytes(range(256)) * (4096 * 5)  # 5 MiB: two data objects
    v = qemu_client.open("vm", port=n0.port)
    try:
        v.pwrite(0, data)
        assert v.pread(0, len(data)) == data
        held = scrape(m0)  # the writer holds the VDI lock now
        assert val(held, "sheep_locks") >= 1
        assert val(held, "sheep_lock_sessions") >= 1
    finally:
        v.close()
    wait_for(lambda: val(scrape(m0), "sheep_locks") == 0, 10, what="lock released in metrics")
    after0, after1 = scrape(m0), scrape(m1)

    def delta(after, before, name, **lab):
        return val(after, name, **lab) - val(before, name, **lab)

    writes = sum(delta(after0, before0, "sheep_requests_total", op=op, kind="gateway")
                 for op in ("CREATE_AND_WRITE_OBJ", "WRITE_OBJ"))
    assert writes >= 2
    assert delta(after0, before0, "sheep_requests_total", op="READ_OBJ", kind="gateway") >= 2
    rx = sum(delta(after0, before0, "sheep_request_received_bytes_total", op=op, kind="gateway")
             for op in ("CREATE_AND_WRITE_OBJ", "WRITE_OBJ"))
    assert rx >= len(data)
    assert delta(after0, before0, "sheep_request_sent_bytes_total",
                 op="READ_OBJ", kind="gateway") >= len(data)
    # every request is in its op's latency histogram, once
    for op in ("READ_OBJ", "CREATE_AND_WRITE_OBJ", "NEW_VDI"):
        labs = [dict(k[1]) for k in after0 if k[0] == "sheep_requests_total"
                and dict(k[1])["op"] == op]
        assert labs, op
        kind = labs[0]["kind"]
        count = val(after0, "sheep_request_duration_seconds_count", op=op, kind=kind)
        assert count == val(after0, "sheep_requests_total", op=op, kind=kind) > 0
        assert val(after0, "sheep_request_duration_seconds_bucket", op=op, kind=kind,
                   le="+Inf") == count
        assert val(after0, "sheep_request_duration_seconds_sum", op=op, kind=kind) > 0
    # the replica writes reached the other node as peer requests
    peer = sum(delta(after1, before1, "sheep_requests_total", op=op, kind="peer")
               for op in ("CREATE_AND_WRITE_PEER", "WRITE_PEER"))
    assert peer >= 2
    # two copies on two nodes: each holds the inode and both data objects
    for m in (after0, after1):
        assert val(m, "sheep_objects") >= 3
        assert val(m, "sheep_disk_used_bytes") >= len(data)
        assert val(m, "sheep_disk_capacity_bytes") >= val(m, "sheep_disk_used_bytes")
        assert val(m, "sheep_members") == 2
        assert val(m, "sheep_epoch") >= 1
        assert val(m, "sheep_cluster_status", status="ok") == 1
        assert val(m, "sheep_requests_in_flight", kind="gateway") == 0

    # collie node stat (and dog's) reports the same real counters
    r = collie_ok(n0.port, "node", "stat", "-r").stdout.decode().splitlines()
    client = r[0].split("\t")  # Active Total Read Write Remove Flush AllWR AllRD
    assert int(client[1]) > 0 and int(client[2]) > 0 and int(client[3]) > 0
    m = scrape(m0)
    assert int(client[3]) == sum(op_count(m, op) for op in ("CREATE_AND_WRITE_OBJ", "WRITE_OBJ"))
    assert int(client[2]) == op_count(m, "READ_OBJ")
    assert int(client[6]) >= len(data)
    dog = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'dog'; "
                          "from collie.__main__ import main; sys.exit(main())",
                          "node", "stat", "-r", "-p", str(n0.port)],
                         capture_output=True, text=True, timeout=60)
    assert dog.returncode == 0, dog.stderr
    assert int(dog.stdout.splitlines()[0].split("\t")[1]) >= int(client[1])


def test_recovery_progress_after_a_join(cluster):
    n0 = cluster.nodes[0]
    collie_ok(n0.port, "vdi", "create", "rec", "24M")
    v = qemu_client.open("rec", port=n0.port)
    try:
        for i in range(6):  # six 4 MiB objects, plus the inode
            v.pwrite(i * 4 * MB, bytes([i + 1]) * 4096)
    finally:
        v.close()
    epoch = val(scrape(cluster.mports[0]), "sheep_epoch")
    mp = free_port(9100, 9999)
    base = list(cluster.extra)
    cluster.extra = base + ["--metrics", f"127.0.0.1:{mp}"]
    try:
        new = cluster.add_node()
    finally:
        cluster.extra = base
    cluster.mports.append(mp)
    cluster.wait_members(3)

    def recovered():
        m = scrape(mp)
        done = (val(m, "sheep_recovery_in_progress") == 0
                and val(m, "sheep_recovery_objects") > 0
                and val(m, "sheep_recovery_finished_objects") == val(m, "sheep_recovery_objects"))
        return m if done else None
    m = wait_for(recovered, 30, interval=0.2, what="recovery progress of the new node")
    # with 2 copies out of 3 nodes the newcomer holds about 2/3 of the objects:
    # at least one of the eight or more here (7 of "rec", 3 of "vm")
    assert val(m, "sheep_recovery_handled_objects_total") >= val(m, "sheep_recovery_objects")
    assert val(m, "sheep_objects") >= 1
    assert val(m, "sheep_members") == 3
    assert val(m, "sheep_epoch") == epoch + 1
    assert val(scrape(cluster.mports[0]), "sheep_epoch") == epoch + 1
    assert new.alive()


def test_bad_metrics_option_and_busy_port(cluster, tmp_path):
    r = subprocess.run([sys.executable, "-m", "sheep", "--metrics", "0", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Invalid metrics port number '0'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sheep", "--metrics", "x:9100", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "Invalid metrics address 'x'" in r.stderr
    # a port another daemon's metrics use: the launcher says so and exits 1
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "sheep", "-c", f"local:{tmp_path / 'cl'}",
                        "-p", str(port), "--metrics", f"127.0.0.1:{cluster.mports[0]}",
                        str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{cluster.mports[0]} (metrics)" in r.stderr
    assert val(scrape(cluster.mports[0]), "sheep_members") >= 2  # the other still serves
