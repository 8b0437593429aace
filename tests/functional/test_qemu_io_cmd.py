"""``python -m qemu_client.io``: the qemu-io-like command, against real daemons."""

import subprocess
import sys

import pytest
from harness import wait_for

import qemu_client
from sheep import proto

pytestmark = pytest.mark.cluster

MB = 1024 * 1024


def qio(port, vdi, *cmds, extra=()):
    argv = [sys.executable, "-m", "qemu_client.io", vdi, "-p", str(port), *extra]
    for c in cmds:
        argv += ["-c", c]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def cluster(make_cluster):
    c = make_cluster(3)
    c.format(copies=3)
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 10, what="cluster running")
    return c


def test_round_trip(cluster):
    p0, p1 = cluster.nodes[0].port, cluster.nodes[1].port
    qemu_client.create("vm", 32 * MB, port=p0)
    r = qio(p0, "vm", "write -P 0xab 0 4M", "read -P 0xab 0 4M", "read -v 0 32",
            "write -P 0x11 4194000 1000", "read -P 0x11 4194000 1000",
            "read -P 0xab 0 4194000", "flush", "info", "length")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert "wrote 4194304/4194304 bytes at offset 0" in out
    assert "read 4194304/4194304 bytes at offset 0" in out
    assert "00000000:  " + "ab " * 16 + " " + "." * 16 in out
    assert "00000010:  " + "ab " * 16 + " " + "." * 16 in out
    assert "wrote 1000/1000 bytes at offset 4194000" in out
    assert "read 1000/1000 bytes at offset 4194000" in out
    assert any(line.startswith("4 MiB, 1 ops; ") for line in out)
    assert "format name: sheepdog" in out and "cluster size: 4 MiB" in out
    assert "32 MiB" in out
    assert "Pattern verification failed" not in r.stdout
    # through another node: discard and write-zeroes read back as zeros
    r = qio(p1, "vm", "read -P 0x11 4194000 1000", "discard 0 4M", "read -P 0 0 4M",
            "write -P 0x22 8M 4M", "write -z 8M 4M", "read -P 0 8M 4M",
            "write -P 0x33 12M 4M", "write -z -u 12M 4M", "read -P 0 12M 4M",
            "read -P 0x11 4194304 696", "truncate 48M", "length", extra=["-q"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "discard" not in r.stdout and "wrote" not in r.stdout  # -q
    assert r.stdout.splitlines()[-1] == "48 MiB"


def test_pattern_mismatch_fails(cluster):
    port = cluster.nodes[2].port
    qemu_client.create("vm", 8 * MB, port=port)
    r = qio(port, "vm", "write -P 0xab 0 4k", "read -P 0xcd 0 4k", "read -P 0xab 0 4k")
    assert r.returncode == 1
    assert "Pattern verification failed at offset 0, 4096 bytes" in r.stdout
    assert r.stdout.count("read 4096/4096 bytes at offset 0") == 2  # later commands still ran
    # a sparse read verifies against zeros; a mismatch there fails as well
    assert qio(port, "vm", "read -P 0 1M 1M").returncode == 0
    assert qio(port, "vm", "read -P 0x01 1M 512").returncode == 1


def test_errors_and_read_only(cluster):
    port = cluster.nodes[0].port
    r = qio(port, "missing", "read 0 512")
    assert r.returncode == 1 and "can't open device missing" in r.stderr
    qemu_client.create("vm", 8 * MB, port=port)
    r = qio(port, "vm", "write -P 1 0 512", extra=["-r"])
    assert r.returncode == 1 and "write failed" in r.stdout
    r = qio(port, "vm", "read 8M 1")
    assert r.returncode == 1 and "read failed" in r.stdout
    r = qio(port, "vm", "bogus 1 2")
    assert r.returncode == 1 and 'command "bogus" not found' in r.stdout
    r = qio(port, "vm", "read 0 1X")
    assert r.returncode == 1 and "invalid number" in r.stdout
    r = qio(port, "vm", "truncate 4M")
    assert r.returncode == 1 and "shrink" in r.stdout
    # snapshots through the command
    r = qio(port, "vm", "write -P 0x44 0 4k", "snapshot -c snap1", "write -P 0x55 0 4k",
            "snapshot -l", extra=["-q"])
    assert r.returncode == 0, r.stdout
    assert any(line.split()[:2] == ["1", "snap1"] for line in r.stdout.splitlines())
    assert qio(port, "vm", "read -P 0x44 0 4k", extra=["-l", "snap1"]).returncode == 0
    assert qio(port, "vm", "snapshot -a snap1", "read -P 0x44 0 4k").returncode == 0


def test_help():
    r = subprocess.run([sys.executable, "-m", "qemu_client.io", "--help"], check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    assert "-c COMMAND" in r.stdout and "read [-v] [-P pat]" in r.stdout
