"""The captured dog session (tests/data/cli.txt) replayed with collie against
a real 3-node cluster: same output (times, dates, sizes and ports aside), same
exit codes, same data read back."""

import re
import subprocess
import sys

import pytest

from harness import cli_sections

pytestmark = pytest.mark.cluster

# the steps of the session that the foundation supports, in capture order
STEPS = ["cluster_format_nolock", "node_list", "node_list_raw", "node_info", "cluster_info",
         "cluster_info_raw", "vdi_create", "vdi_create_prealloc", "vdi_create_copies",
         "vdi_list", "vdi_list_raw", "vdi_write", "vdi_read", "vdi_setattr", "vdi_getattr",
         "vdi_object_map", "vdi_lock_list", "node_recovery"]

_DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?|\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}")
_SIZE = re.compile(r"\b\d+(\.\d+)? [KMGT]B\b")


def normalize(text: str, ports: list[int]) -> str:
    for i, p in enumerate(ports):
        text = text.replace(f"127.0.0.1:{p}", f"127.0.0.1:NODE{i}")
    for i in range(3):
        text = text.replace(f"127.0.0.1:{7200 + i}", f"127.0.0.1:NODE{i}")
    text = _DATE.sub("DATE", text)
    text = re.sub(r"^(\d{10}) ", "TIME ", text, flags=re.M)  # raw cluster info epoch time
    text = re.sub(r"^(= \S+ \d+ \d+ \d+ \d+ )\d{10}", r"\1TIME", text, flags=re.M)
    if "Size" in text and "Use%" in text:  # node info: disk sizes are the machine's
        text = _SIZE.sub("SIZE", text)
    return text


def collie(port, argv, stdin=None):
    return subprocess.run([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                          input=stdin, capture_output=True, timeout=120)


def test_dog_session_replayed_with_collie(make_cluster, data8k):
    c = make_cluster(3)
    c.wait_members(3)
    ports = [n.port for n in c.nodes]
    sections = cli_sections()
    for label in STEPS:
        sec = sections[label]
        stdin = data8k if label == "vdi_write" else (b"myvalue" if label == "vdi_setattr" else None)
        r = collie(ports[0], sec["cmd"], stdin)
        assert r.returncode == sec["exit"], (label, r.stderr)
        if label == "vdi_read":
            assert r.stdout == data8k
            continue
        got = normalize(r.stdout.decode(), ports)
        want = normalize(sec["out"], ports)
        if label == "vdi_getattr":
            want = want.rstrip("\n")
        assert got == want, f"{label}:\n--- got\n{got}\n--- want\n{want}"
    # the same data through every node as gateway
    for p in ports:
        r = collie(p, ["vdi", "read", "test", "4190208", "8192"])
        assert r.returncode == 0 and r.stdout == data8k


def test_collie_errors_are_clear(make_cluster):
    c = make_cluster(1)
    port = c.nodes[0].port
    r = collie(port, ["vdi", "create", "x", "1M"])
    assert r.returncode != 0 and b"format" in (r.stderr + r.stdout).lower()
    c.format(copies=1)
    r = collie(port, ["vdi", "read", "nosuch"])
    assert r.returncode != 0 and b"No VDI found" in r.stderr
    r = collie(port, ["vdi", "create", "x", "1M"])
    assert r.returncode == 0
    r = collie(port, ["vdi", "create", "x", "1M"])
    assert r.returncode != 0 and b"exists" in r.stderr.lower()
    r = collie(port, ["vdi", "write", "x", "1048570", "100"], b"z" * 100)
    assert r.returncode != 0
    r = collie(port, ["vdi", "delete", "x"])
    assert r.returncode == 0
    r = collie(port, ["vdi", "create", "x", "2M"])  # a deleted name can be created again
    assert r.returncode == 0
