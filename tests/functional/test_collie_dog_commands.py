"""dog's other commands in collie (docs/collie-dog-compat.md), against a real cluster:
node stat, node log level, node md, vdi graph, options between arguments,
--version.  Expected texts are dog 1.0's formats (dog/node.c, dog/vdi.c,
dog/common.c, dog/dog.c)."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster


def collie(port, *argv, stdin=None):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          input=stdin, capture_output=True, timeout=120)


def ok(port, *argv, stdin=None):
    r = collie(port, *argv, stdin=stdin)
    assert r.returncode == 0, (argv, r.stderr.decode())
    return r.stdout.decode()


STAT_HEAD = "Request\tActive\tTotal\tWrite\tRead\tRemove\tFlush\tAll WR\tAll RD"


def _stat(port):
    lines = ok(port, "node", "stat", "-r").splitlines()
    assert len(lines) == 2
    return [ln.split(" ") if " " in ln else ln.split("\t") for ln in lines]


def test_node_stat_log_level_md(make_cluster, data8k):
    c = make_cluster(3)
    c.format(copies=3)
    port = c.nodes[0].port

    out = ok(port, "node", "stat").splitlines()
    assert out[0] == STAT_HEAD
    assert out[1].startswith("Client\t") and out[2].startswith("Peer\t")
    assert len(out[1].split("\t")) == 9 and out[2].split("\t")[6] == "0"  # peer flush

    before = ok(port, "node", "stat", "-r").splitlines()
    assert len(before) == 2 and "Request" not in before[0]
    ok(port, "vdi", "create", "disk", "16M")
    ok(port, "vdi", "write", "disk", "0", "8192", stdin=data8k)
    after = ok(port, "node", "stat", "-r").splitlines()
    b, a = before[0].split("\t"), after[0].split("\t")
    # Active Total Read Write Remove Flush AllWR AllRD (dog prints read before write)
    assert int(a[1]) > int(b[1])
    assert int(a[2]) > int(b[2]) and int(a[3]) > int(b[3])
    assert int(a[0]) == 0  # nothing in flight once the commands are done
    assert int(a[6]) >= int(b[6]) + 8192  # bytes written through this gateway

    # -w: a sample a second, with bandwidth and requests since the previous one
    w = subprocess.Popen([sys.executable, "-m", "collie", "node", "stat", "-w", "-r",
                          "-p", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        samples = [w.stdout.readline() for _ in range(4)]
    finally:
        w.kill()
        w.wait()
    assert all(len(ln.rstrip("\n").split("\t")) == 11 for ln in samples), samples
    assert samples[0].split("\t")[8:] == ["0", "0", "0\n"]  # first sample: no delta

    assert ok(port, "node", "log", "level", "get") == "info (6)\n"
    ok(port, "node", "log", "level", "set", "debug")
    assert ok(port, "node", "log", "level", "get") == "debug (7)\n"
    r = collie(port, "node", "log", "level", "set", "loud")
    assert r.returncode == 255
    err = r.stderr.decode().splitlines()
    assert err[:3] == ["invalid loglevel: loud", "available loglevels:", "emerg\t(0)"]
    assert err[-1] == "debug\t(7)"
    assert ok(port, "node", "log", "level", "list").splitlines()[6] == "info\t(6)"

    r = collie(port, "node", "md", "info")
    assert r.stdout.decode().splitlines()[0] == "Id\tSize\tUsed\tAvail\tUse%\tPath"
    if r.returncode:  # the multi-disk store is not there yet: dog's message
        assert r.returncode == 1
        assert r.stderr.decode().startswith("failed to get multi-disk infomation: ")
    r = collie(port, "node", "md", "plug", "")
    assert r.returncode == 1 and r.stderr.decode() == "Empty path isn't allowed\n"


def test_vdi_graph_intermixed_options_version(make_cluster):
    c = make_cluster(3)
    c.format(copies=2)
    port = c.nodes[0].port
    ok(port, "vdi", "create", "big", "8M")
    ok(port, "vdi", "write", "big", "0", "5", stdin=b"first")
    ok(port, "vdi", "snapshot", "-s", "s1", "big")
    ok(port, "vdi", "write", "big", "0", "6", stdin=b"second")
    ok(port, "vdi", "clone", "-s", "s1", "big", "cl")

    # getopt_long permutes: options may follow the arguments or sit between them
    assert ok(port, "vdi", "read", "big", "-s", "s1", "0", "5") == "first"
    assert ok(port, "vdi", "read", "big", "0", "-s", "s1", "5") == "first"
    assert ok(port, "vdi", "read", "big", "0", "6") == "second"

    g = ok(port, "vdi", "graph")
    vids = {}
    for ln in ok(port, "vdi", "list", "-r").splitlines():
        f = ln.split()
        vids[(f[1], f[0])] = f[7]
    snap, work, clone = vids[("big", "s")], vids[("big", "=")], vids[("cl", "c")]
    date = r"\d{4}-\d\d-\d\d\\nTime:   \d\d:\d\d:\d\d"
    expect = (
        r'digraph G \{\n  node \[shape = "box", fontname = "Courier"\];\n\n'
        r'  "0" \[shape = "ellipse", label = "root"\];\n\n'
    )
    assert re.match(expect, g), g
    blocks = {
        snap: rf'  "0" -> "{snap}";\n  "{snap}" \[\n    group = "big",\n    label = '
              rf'"Name:        big\\nTag:           1\\nSize:     8\.0 MB\\nDate: {date}"'
              r'\n  \];\n\n',
        work: rf'  "{snap}" -> "{work}";\n  "{work}" \[\n    group = "big",\n    label = '
              rf'"Name:        big\\nTag:           0\\nSize:     8\.0 MB\\nDate: {date}",'
              r'\n    color="red"\n  \];\n\n',
        clone: rf'  "{snap}" -> "{clone}";\n  "{clone}" \[\n    group = "cl",\n    label = '
               rf'"Name:         cl\\nTag:           0\\nSize:     8\.0 MB\\nDate: {date}",'
               r'\n    color="red"\n  \];\n\n',
    }
    for vid, pat in blocks.items():
        assert re.search(pat, g), (vid, g)
    assert g.endswith("}\n") and g.count(" -> ") == 3

    r = subprocess.run([sys.executable, "-m", "collie", "--version"], capture_output=True)
    assert r.returncode == 0
    assert re.fullmatch(r"Sheepdog administrator utility \(version \S+\)\n", r.stdout.decode())
