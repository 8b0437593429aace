"""The write-ahead journal with real daemons (durable mode): writes of a
node killed with -9 are replayed by its next start, which says so; a journal
it must not drop stops the start with a clear error."""

import os
import re
import subprocess

from harness import wait_for

import qemu_client
from sheep import proto

MiB = 1 << 20


def _launch(node) -> subprocess.CompletedProcess:
    r = subprocess.run(node.argv(), capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        node.pid = int(wait_for(lambda: open(node.pidfile).read().strip(), 10, what="pidfile"))
    return r


def test_a_killed_nodes_journal_is_replayed_and_said(make_cluster):
    c = make_cluster(3, nosync=False)
    c.format(copies=3)
    vid = c.nodes[0].client().new_vdi("j", 8 * MiB)
    with qemu_client.open("j", port=c.nodes[0].port) as v:
        v.pwrite(0, b"\1" * (4 * MiB))  # creates (synced on their own)
        blob = bytes(range(256)) * 16
        for i in range(64):  # overwrites: journaled
            v.pwrite(i * 4096 + 7, blob)
        want = v.pread(0, 4 * MiB)
    n = c.nodes[1]
    assert os.path.getsize(os.path.join(n.store, "journal")) > 4096
    n.kill()
    c.wait_members(2)
    r = _launch(n)
    assert r.returncode == 0, r.stderr
    m = re.search(r"journal: replayed (\d+) write", r.stderr)
    assert m and int(m.group(1)) >= 64, r.stderr  # every overwrite since the create
    c.wait_members(3)
    c.wait_running()
    # its own copy, as on disk (replicas are identical), and as its gateway
    # serves it (the local replica first, checked against its record)
    path = os.path.join(n.store, "obj", "%016x" % proto.vid_to_data_oid(vid, 0))
    wait_for(lambda: os.path.exists(path), 30, what="its copy, recovered if it was stale")
    with open(path, "rb") as f:
        assert f.read(4 * MiB) == want
    with qemu_client.open("j", port=n.port, readonly=True) as v:
        assert v.pread(0, 4 * MiB) == want


def test_a_journal_with_both_headers_damaged_stops_the_start(make_cluster):
    c = make_cluster(1, nosync=False)
    c.format(copies=1)
    c.nodes[0].client().new_vdi("j", 4 * MiB)
    with qemu_client.open("j", port=c.nodes[0].port) as v:
        v.pwrite(0, b"\1" * MiB)
        v.pwrite(4096, b"\2" * 4096)  # an entry
    n = c.nodes[0]
    n.kill()
    with open(os.path.join(n.store, "journal"), "r+b") as f:
        for off in (0, 2048):
            f.seek(off)
            f.write(b"junk")
    r = _launch(n)
    assert r.returncode == 1
    assert "both headers are damaged" in r.stderr and "refusing to drop" in r.stderr
