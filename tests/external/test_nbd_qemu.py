"""The NBD export (sheep --nbd) driven by real qemu-io, qemu-img and qemu-nbd.

Every test uses its own VDI on one module-wide 3-node copies-3 cluster whose
nodes all export over NBD; qemu processes run with timeouts and background
ones are killed in ``finally`` blocks.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import subprocess
import sys

import pytest
from harness import wait_for
from nbd_raw import RawNbd

from sheep import proto
from sheep.nbd import codec

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MiB = 1 << 20
OBJ = proto.SD_DATA_OBJ_SIZE  # 4 MiB


# ---------------------------------------------------------------------------
# helpers


def need_tool(name: str) -> str:
    """The path of a qemu-utils tool; fails (never skips) if it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup.sh (Debian package qemu-utils)")
    return path


def url(node, name: str) -> str:
    return f"nbd://127.0.0.1:{node.nbd_port}/{name}"


def run(argv, timeout=180):
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)


def qemu_io(node, name, *cmds, ro=False, timeout=180):
    argv = [need_tool("qemu-io"), "-f", "raw"] + (["-r"] if ro else [])
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [url(node, name)], timeout)


def ok(r) -> str:
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "fail" not in out.lower(), out
    return out


def collie(node, *args):
    r = run([sys.executable, "-m", "collie", *args, "-p", str(node.port)], 60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def new_vdi(cluster, name, size):
    c = cluster.nodes[0].client()
    try:
        return c.new_vdi(name, size)
    finally:
        c.close()


def inode_index(cluster, vid, n):
    c = cluster.nodes[1].client()
    try:
        raw = c.read_obj(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE, 4 * n)
    finally:
        c.close()
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def daemon_fine(cluster, name):
    """Every node alive, and a fresh client still gets served."""
    assert all(n.alive() for n in cluster.nodes)
    for n in cluster.nodes:
        ok(run([need_tool("qemu-img"), "info", url(n, name)], 60))


# ---------------------------------------------------------------------------
# qemu-img / qemu-io


def test_qemu_img_info(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 100 * MiB)
    for n in nbd_cluster.nodes:
        out = ok(run([need_tool("qemu-img"), "info", "--output=human", url(n, vdi_name)]))
        assert "virtual size: 100 MiB (104857600 bytes)" in out
    r = run([need_tool("qemu-img"), "info", url(nbd_cluster.nodes[0], "no-such-vdi")])
    assert r.returncode != 0


def test_write_read_at_object_offsets(nbd_cluster, vdi_name):
    size = 24 * MiB
    vid = new_vdi(nbd_cluster, vdi_name, size)
    offsets = [0, 512, OBJ - 4096, OBJ - 2048, OBJ, OBJ + 4096, 2 * OBJ - 100,
               3 * OBJ + 12345, size - 4096]
    a, b, c = nbd_cluster.nodes
    for i, off in enumerate(offsets):
        pat = 0xAB if i % 2 == 0 else 0x5C
        ok(qemu_io(a, vdi_name, f"write -P {pat:#x} {off} 4096", f"read -P {pat:#x} {off} 4096"))
    # the data and the inode updates are the cluster's: read back through other nodes
    cmds = []
    for i, off in enumerate(offsets[1:], 1):  # skip 0, overlapped by the 512 write
        if i + 1 < len(offsets) and offsets[i + 1] < off + 4096:
            continue  # overwritten in part by the next write
        cmds.append(f"read -P {0xAB if i % 2 == 0 else 0x5C:#x} {off} 4096")
    ok(qemu_io(b, vdi_name, *cmds, ro=True))
    ok(qemu_io(c, vdi_name, "read -P 0xab 0 512", "read -P 0 8192 4096", ro=True))
    # objects 0..3 and 5 written (5: size - 4096), object 4 never
    assert inode_index(nbd_cluster, vid, 6) == [vid, vid, vid, vid, 0, vid]


def test_writes_crossing_object_boundaries(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 40 * MiB)
    a, b, _ = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, f"write -P 0x11 {OBJ - 1536} 8192",
               f"write -P 0x22 {2 * OBJ - 512} 1024",
               f"write -P 0x33 {3 * OBJ - 7 * MiB // 2} {5 * MiB}",
               f"read -P 0x11 {OBJ - 1536} 8192",
               f"read -P 0x22 {2 * OBJ - 512} 1024"))
    ok(qemu_io(b, vdi_name, f"read -P 0x33 {3 * OBJ - 7 * MiB // 2} {5 * MiB}",
               f"read -P 0 {OBJ - 1536 + 8192} 4096", ro=True))


@pytest.mark.parametrize("mib", [8, 16, 32])
def test_multi_object_writes(nbd_cluster, vdi_name, mib):
    new_vdi(nbd_cluster, vdi_name, 80 * MiB)
    a, b, c = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, f"write -P 0xa{mib % 10} 0 {mib}M",
               f"write -P 0x5{mib % 10} {40 * MiB + 512} {mib}M",
               f"read -P 0xa{mib % 10} 0 {mib}M"))
    ok(qemu_io(b, vdi_name, f"read -P 0x5{mib % 10} {40 * MiB + 512} {mib}M",
               f"read -P 0 {mib}M 4096", ro=True))
    ok(qemu_io(c, vdi_name, f"readv -P 0xa{mib % 10} 0 {mib // 2}M {mib // 2}M", ro=True))


def test_sparse_reads_are_zeros(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 64 * MiB)
    a = nbd_cluster.nodes[0]
    ok(qemu_io(a, vdi_name, "read -P 0 0 32M", "read -P 0 32M 32M", "read -P 0 12345 777",
               ro=True))
    ok(qemu_io(a, vdi_name, "write -P 0x77 20M 4096", "read -P 0 0 20M",
               f"read -P 0 {20 * MiB + 4096} 4M", "read -P 0x77 20M 4096"))


def test_discard_and_write_zeroes(nbd_cluster, vdi_name):
    vid = new_vdi(nbd_cluster, vdi_name, 20 * MiB)
    a, b, _ = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, "write -P 0x66 0 20M",
               f"discard {OBJ} {2 * OBJ}",  # objects 1 and 2 whole: unlinked
               "discard 1000 5000",  # part of object 0: zeroed
               f"write -z {3 * OBJ + 100} 8192",  # write-zeroes inside object 3
               f"write -z -u {4 * OBJ} {OBJ}",  # write-zeroes may unmap: object 4 unlinked
               "read -P 0 1000 5000", f"read -P 0 {OBJ} {2 * OBJ}",
               f"read -P 0 {3 * OBJ + 100} 8192", f"read -P 0 {4 * OBJ} {OBJ}",
               "read -P 0x66 0 1000", f"read -P 0x66 6000 {OBJ - 6000}",
               f"read -P 0x66 {3 * OBJ} 100", f"read -P 0x66 {3 * OBJ + 8292} 4096"))
    assert inode_index(nbd_cluster, vid, 5) == [vid, 0, 0, vid, 0]
    ok(qemu_io(b, vdi_name, f"read -P 0 {OBJ} {2 * OBJ}", "read -P 0x66 0 1000", ro=True))
    # an unlinked object is created again by the next write
    ok(qemu_io(b, vdi_name, f"write -P 0x67 {OBJ + 4096} 4096", f"read -P 0 {OBJ} 4096",
               f"read -P 0x67 {OBJ + 4096} 4096"))
    assert inode_index(nbd_cluster, vid, 2) == [vid, vid]


def test_qemu_img_convert_roundtrip(nbd_cluster, vdi_name, tmp_path):
    size = 22 * MiB + 64 * 1024  # the last object is partial
    rnd = random.Random(7)
    img = bytearray(rnd.randbytes(size))
    for lo, hi in [(3 * MiB, 9 * MiB),  # covers object 1 whole: zeroes may unlink it
                   (10 * MiB + 4096, 10 * MiB + 3 * 4096), (size - 70000, size)]:
        img[lo:hi] = bytes(hi - lo)
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    src.write_bytes(img)
    new_vdi(nbd_cluster, vdi_name, size)
    a, b, _ = nbd_cluster.nodes
    # dirty the VDI first, so that the zero regions really have to be zeroed
    ok(qemu_io(a, vdi_name, f"write -P 0xff 0 {size}"))
    qimg = need_tool("qemu-img")
    ok(run([qimg, "convert", "-n", "-f", "raw", "-O", "raw", str(src), url(a, vdi_name)]))
    ok(run([qimg, "convert", "-f", "raw", "-O", "raw", url(b, vdi_name), str(back)]))
    assert os.path.getsize(back) == size
    assert run(["cmp", str(src), str(back)]).returncode == 0
    ok(run([qimg, "compare", "-f", "raw", "-F", "raw", str(src), url(b, vdi_name)]))


def test_qemu_img_bench(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 64 * MiB)
    qimg = need_tool("qemu-img")
    a, b, _ = nbd_cluster.nodes
    out = ok(run([qimg, "bench", "-f", "raw", "-w", "-c", "3000", "-d", "16", "-s", "4096",
                  "-S", "1052672", url(a, vdi_name)]))
    assert "Run completed" in out
    out = ok(run([qimg, "bench", "-f", "raw", "-c", "3000", "-d", "16", "-s", "4096",
                  "-S", "1052672", url(b, vdi_name)]))
    assert "Run completed" in out
    ok(run([qimg, "bench", "-f", "raw", "-w", "-c", "40", "-d", "4", "-s", "1M",
            url(a, vdi_name)]))


def test_snapshots_exported_read_only(nbd_cluster, vdi_name):
    a, b, c = nbd_cluster.nodes
    new_vdi(nbd_cluster, vdi_name, 12 * MiB)
    ok(qemu_io(a, vdi_name, "write -P 0x01 0 6M"))
    collie(a, "vdi", "snapshot", "-s", "first", vdi_name)
    ok(qemu_io(a, vdi_name, "write -P 0x02 1M 4096", "read -P 0x02 1M 4096"))
    collie(a, "vdi", "snapshot", vdi_name)  # snapshot id 2, no tag
    ok(qemu_io(b, vdi_name, "write -P 0x03 5M 4096"))
    # the snapshots keep their contents, through any node, by tag or by id
    ok(qemu_io(b, f"{vdi_name}:first", "read -P 0x01 0 6M", ro=True))
    ok(qemu_io(c, f"{vdi_name}@1", "read -P 0x01 1M 4096", ro=True))
    ok(qemu_io(c, f"{vdi_name}@2", "read -P 0x02 1M 4096", "read -P 0x01 5M 4096", ro=True))
    ok(qemu_io(a, vdi_name, "read -P 0x02 1M 4096", "read -P 0x03 5M 4096", ro=True))
    out = ok(run([need_tool("qemu-img"), "info", url(a, f"{vdi_name}:first")]))
    assert "12 MiB" in out
    # read-only: a read-write open is refused, and so is a write on the wire
    r = qemu_io(a, f"{vdi_name}:first", "write -P 0x09 0 4096")
    assert r.returncode != 0
    raw = RawNbd(a)
    try:
        raw.greet()
        size, flags = raw.go(f"{vdi_name}:first")
        assert size == 12 * MiB and flags & codec.TF_READ_ONLY
        raw.request(codec.CMD_WRITE, 1, 0, 4096, data=b"x" * 4096)
        raw.request(codec.CMD_TRIM, 2, 0, 4096)
        assert sorted([raw.reply(), raw.reply()]) == [(codec.EPERM, 1), (codec.EPERM, 2)]
    finally:
        raw.close()
    ok(qemu_io(b, f"{vdi_name}:first", "read -P 0x01 0 4096", ro=True))
    r = qemu_io(a, f"{vdi_name}:nosuchtag", "read 0 512", ro=True)
    assert r.returncode != 0


def test_clone_copy_on_write(nbd_cluster, vdi_name):
    a, b, _ = nbd_cluster.nodes
    new_vdi(nbd_cluster, vdi_name, 16 * MiB)
    ok(qemu_io(a, vdi_name, "write -P 0x41 0 16M"))
    collie(a, "vdi", "snapshot", "-s", "base", vdi_name)
    clone = vdi_name + "-clone"
    collie(a, "vdi", "clone", "-s", "base", vdi_name, clone)
    # partial writes to objects still owned by the parent copy the rest of them
    ok(qemu_io(b, clone, "write -P 0x42 4096 4096", f"write -P 0x43 {OBJ - 512} 1024",
               "read -P 0x41 0 4096", "read -P 0x42 4096 4096",
               f"read -P 0x41 8192 {OBJ - 512 - 8192}", f"read -P 0x43 {OBJ - 512} 1024",
               f"read -P 0x41 {OBJ + 512} {3 * OBJ - 512}"))
    ok(qemu_io(a, f"{vdi_name}:base", "read -P 0x41 0 16M", ro=True))
    ok(qemu_io(a, vdi_name, "read -P 0x41 0 16M", ro=True))
    c = nbd_cluster.nodes[0].client()
    try:
        rsp, _ = c.call(proto.Op.GET_VDI_INFO, payload=proto.vdi_name_payload(clone, ""))
        cvid = rsp.args.vdi_id
    finally:
        c.close()
    idx = inode_index(nbd_cluster, cvid, 4)
    assert idx[0] == idx[1] == cvid and idx[2] == idx[3] != cvid


def test_list_exports(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    a = nbd_cluster.nodes[0]
    ok(qemu_io(a, vdi_name, "write -P 1 0 512"))
    collie(a, "vdi", "snapshot", "-s", "listed", vdi_name)
    out = ok(run([need_tool("qemu-nbd"), "-L", "-b", "127.0.0.1", "-p", str(a.nbd_port)]))
    assert f"export: '{vdi_name}'" in out
    assert f"export: '{vdi_name}:listed'" in out
    assert f"size:  {8 * MiB}" in out


# ---------------------------------------------------------------------------
# locking


def _holder(node, name, log):
    """A qemu-io that opens ``name`` read-write, writes, then sleeps a minute
    (line-buffered output to ``log``, so that we see the write happen)."""
    argv = [shutil.which("stdbuf") or "stdbuf", "-oL", need_tool("qemu-io"), "-f", "raw",
            "-c", "write -P 0x5a 0 4096", "-c", "sleep 60000", url(node, name)]
    with open(log, "w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.lock
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_two_writers(nbd_cluster, vdi_name, how, tmp_path):
    a, b, c = nbd_cluster.nodes
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    log = tmp_path / "holder.out"
    first = _holder(a, vdi_name, log)
    try:
        wait_for(lambda: "wrote 4096/4096" in log.read_text() or first.poll() is not None, 30,
                 what="the first writer to write")
        assert first.poll() is None, log.read_text()
        # the first holds the lock: a second opener is refused, through any node
        for n in (b, c, a):
            r = qemu_io(n, vdi_name, "write -P 0x6b 0 4096")
            assert r.returncode != 0 and "locked" in (r.stdout + r.stderr), r.stdout + r.stderr
        assert first.poll() is None
        if how == "exit":
            first.send_signal(signal.SIGTERM)
        else:
            first.kill()
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    # the lock went with the connection: the second writer gets in
    wait_for(lambda: qemu_io(b, vdi_name, "read -P 0x5a 0 4096", "write -P 0x6b 0 4096",
                             "read -P 0x6b 0 4096").returncode == 0, 15,
             what="the second writer to get the lock")
    ok(qemu_io(c, vdi_name, "read -P 0x6b 0 4096"))


def _refused(node, name) -> bool:
    r = qemu_io(node, name, "read 0 512")
    return r.returncode != 0 and "locked" in (r.stdout + r.stderr)


# ---------------------------------------------------------------------------
# the protocol by hand: many in flight, options, malformed traffic


def test_many_requests_in_flight(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 32 * MiB)
    raw = RawNbd(nbd_cluster.nodes[0], timeout=60)
    try:
        raw.greet()
        assert raw.go(vdi_name)[0] == 32 * MiB
        blocks = {h: (h * 997 * 4096 % (32 * MiB - 65536), bytes([h]) * (4096 + h * 100))
                  for h in range(1, 97)}
        # non-overlapping: spread, each a distinct pattern and length
        used, plan = set(), {}
        for h, (off, data) in blocks.items():
            off -= off % (128 * 1024)
            if off in used:
                continue
            used.add(off)
            plan[h] = (off, data)
        for h, (off, data) in plan.items():
            raw.request(codec.CMD_WRITE, h, off, len(data), codec.CMD_FLAG_FUA, data)
        got = sorted(raw.reply() for _ in plan)
        assert got == sorted((0, h) for h in plan)
        for h, (off, data) in plan.items():
            raw.request(codec.CMD_READ, 1000 + h, off, len(data))
        for _ in plan:
            err, handle = raw.reply()
            assert err == 0
            off, data = plan[handle - 1000]
            assert raw.recv(len(data)) == data
        raw.request(codec.CMD_FLUSH, 7, 0, 0)
        assert raw.reply() == (0, 7)
        raw.request(codec.CMD_DISC, 8, 0, 0)
        assert raw.is_closed()
    finally:
        raw.close()


def test_export_name_option_and_errors(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    a = nbd_cluster.nodes[0]
    # NBD_OPT_EXPORT_NAME, without NO_ZEROES: size, flags and 124 zero bytes
    raw = RawNbd(a)
    try:
        raw.greet(codec.FLAG_FIXED_NEWSTYLE)
        raw.option(codec.OPT_EXPORT_NAME, vdi_name.encode())
        size, flags = struct.unpack(">QH", raw.recv(10))
        assert size == 8 * MiB and not flags & codec.TF_READ_ONLY
        assert raw.recv(124) == bytes(124)
        raw.request(codec.CMD_WRITE, 1, 8 * MiB - 4096, 4096, data=b"\x99" * 4096)
        assert raw.reply() == (0, 1)
        raw.request(codec.CMD_READ, 2, 8 * MiB - 4096, 4096)
        assert raw.reply() == (0, 2) and raw.recv(4096) == b"\x99" * 4096
        # out of range, unknown commands and flags: errors, the connection goes on
        raw.request(codec.CMD_READ, 3, 8 * MiB - 4096, 8192)
        assert raw.reply() == (codec.EINVAL, 3)
        raw.request(codec.CMD_WRITE, 4, 8 * MiB, 512, data=bytes(512))
        assert raw.reply() == (codec.ENOSPC, 4)
        raw.request(codec.CMD_WRITE_ZEROES, 5, 8 * MiB - 512, 1024)
        assert raw.reply() == (codec.ENOSPC, 5)
        raw.request(codec.CMD_TRIM, 6, 2 ** 63, 512)
        assert raw.reply() == (codec.EINVAL, 6)
        raw.request(77, 7, 0, 512)
        assert raw.reply() == (codec.EINVAL, 7)
        raw.request(codec.CMD_READ, 8, 0, 512, flags=0x4000)
        assert raw.reply() == (codec.EINVAL, 8)
        raw.request(codec.CMD_CACHE, 9, 0, 512)
        assert raw.reply() == (codec.EINVAL, 9)
        raw.request(codec.CMD_READ, 10, 0, 64 * MiB)
        assert raw.reply() == (codec.EOVERFLOW, 10)
        raw.request(codec.CMD_READ, 11, 0, 0)
        assert raw.reply() == (0, 11)
        # garbage instead of a request: the connection is closed
        raw.s.sendall(os.urandom(28))
        assert raw.is_closed()
    finally:
        raw.close()
    # an export that does not exist: EXPORT_NAME cannot fail politely, so it hangs up
    raw = RawNbd(a)
    try:
        raw.greet()
        raw.option(codec.OPT_EXPORT_NAME, b"no-such-vdi")
        assert raw.is_closed()
    finally:
        raw.close()
    daemon_fine(nbd_cluster, vdi_name)


def test_option_errors(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    a = nbd_cluster.nodes[1]
    raw = RawNbd(a)
    try:
        raw.greet()
        meta = struct.pack(">I", len(vdi_name)) + vdi_name.encode() + struct.pack(">I", 0)
        raw.option(codec.OPT_LIST_META_CONTEXT, meta)  # before structured replies
        assert raw.rep()[:2] == (codec.OPT_LIST_META_CONTEXT, codec.REP_ERR_INVALID)
        raw.option(codec.OPT_STRUCTURED_REPLY, b"x")
        assert raw.rep()[:2] == (codec.OPT_STRUCTURED_REPLY, codec.REP_ERR_INVALID)
        raw.structured()
        raw.option(codec.OPT_SET_META_CONTEXT, meta[:-1])  # truncated
        assert raw.rep()[:2] == (codec.OPT_SET_META_CONTEXT, codec.REP_ERR_INVALID)
        raw.option(codec.OPT_SET_META_CONTEXT, struct.pack(">I", 5) + b"nosuc" + bytes(4))
        assert raw.rep()[:2] == (codec.OPT_SET_META_CONTEXT, codec.REP_ERR_UNKNOWN)
        assert raw.meta_context(codec.OPT_LIST_META_CONTEXT, vdi_name) == \
            [(0, "base:allocation")]
        assert raw.meta_context(codec.OPT_LIST_META_CONTEXT, vdi_name, "qemu:") == []
        raw.option(codec.OPT_STARTTLS)
        assert raw.rep()[:2] == (codec.OPT_STARTTLS, codec.REP_ERR_POLICY)
        raw.option(4242, b"whatever")
        assert raw.rep()[:2] == (4242, codec.REP_ERR_UNSUP)
        raw.option(codec.OPT_LIST, b"junk")
        assert raw.rep()[:2] == (codec.OPT_LIST, codec.REP_ERR_INVALID)
        raw.option(codec.OPT_GO, b"\0\0")  # too short
        assert raw.rep()[:2] == (codec.OPT_GO, codec.REP_ERR_INVALID)
        raw.option(codec.OPT_GO, struct.pack(">I", 500) + b"abc\0\0")  # name past the end
        assert raw.rep()[:2] == (codec.OPT_GO, codec.REP_ERR_INVALID)
        raw.option(codec.OPT_INFO, struct.pack(">I", 3) + b"abc" + struct.pack(">H", 5))
        assert raw.rep()[:2] == (codec.OPT_INFO, codec.REP_ERR_INVALID)  # 5 requests, none sent
        raw.option(codec.OPT_GO, struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">H", 0))
        assert raw.rep()[:2] == (codec.OPT_GO, codec.REP_ERR_INVALID)  # not UTF-8
        raw.option(codec.OPT_INFO, struct.pack(">I", 11) + b"no-such-vdi" + struct.pack(">H", 0))
        _o, rtype, msg = raw.rep()
        assert rtype == codec.REP_ERR_UNKNOWN and b"no-such-vdi" in msg
        # NBD_OPT_INFO describes without opening; NBD_OPT_LIST lists
        raw.option(codec.OPT_INFO, struct.pack(">I", len(vdi_name)) + vdi_name.encode()
                   + struct.pack(">HH", 1, codec.INFO_NAME))
        replies = []
        while True:
            _o, rtype, data = raw.rep()
            replies.append((rtype, data))
            if rtype == codec.REP_ACK:
                break
        infos = {struct.unpack(">H", d[:2])[0]: d[2:] for t, d in replies if t == codec.REP_INFO}
        assert struct.unpack(">Q", infos[codec.INFO_EXPORT][:8])[0] == 8 * MiB
        assert infos[codec.INFO_NAME] == vdi_name.encode()
        raw.option(codec.OPT_LIST)
        names = []
        while True:
            _o, rtype, data = raw.rep()
            if rtype == codec.REP_ACK:
                break
            assert rtype == codec.REP_SERVER
            names.append(data[4:4 + struct.unpack(">I", data[:4])[0]].decode())
        assert vdi_name in names
        raw.option(codec.OPT_ABORT)
        assert raw.rep()[:2] == (codec.OPT_ABORT, codec.REP_ACK)
        assert raw.is_closed()
    finally:
        raw.close()
    daemon_fine(nbd_cluster, vdi_name)


def test_qemu_img_map_sees_holes_and_data(nbd_cluster, vdi_name):
    """base:allocation (NBD_CMD_BLOCK_STATUS): qemu-img map reports data
    exactly where objects were written, zeros everywhere else; a clone's
    objects still owned by its parent are data too."""
    import json
    new_vdi(nbd_cluster, vdi_name, 32 * MiB)
    a, b, _ = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, f"write -P 0x11 {OBJ + 100} 4096",
               f"write -P 0x12 {5 * OBJ} {OBJ + 1}"))  # objects 1, 5 and 6

    def data_ranges(node, name):
        out = ok(run([need_tool("qemu-img"), "map", "--output=json", "-f", "raw",
                      url(node, name)]))
        extents = json.loads(out)
        assert sum(e["length"] for e in extents) == 32 * MiB
        assert all(e["zero"] for e in extents if not e["data"])
        merged = []
        for e in extents:
            if e["data"]:
                if merged and merged[-1][1] == e["start"]:
                    merged[-1][1] += e["length"]
                else:
                    merged.append([e["start"], e["start"] + e["length"]])
        return merged
    assert data_ranges(b, vdi_name) == [[OBJ, 2 * OBJ], [5 * OBJ, 7 * OBJ]]
    collie(a, "vdi", "snapshot", "-s", "m", vdi_name)
    clone = vdi_name + "-c"
    collie(a, "vdi", "clone", "-s", "m", vdi_name, clone)
    ok(qemu_io(b, clone, "write -P 0x13 0 512"))  # object 0: the clone's own
    assert data_ranges(a, clone) == [[0, 2 * OBJ], [5 * OBJ, 7 * OBJ]]
    assert data_ranges(a, f"{vdi_name}:m") == [[OBJ, 2 * OBJ], [5 * OBJ, 7 * OBJ]]


def test_structured_replies_and_block_status_on_the_wire(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 16 * MiB)
    a, b, _ = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, f"write -P 0x21 {2 * OBJ} 4096"))
    raw = RawNbd(b)
    try:
        raw.greet()
        raw.structured()
        assert raw.meta_context(codec.OPT_SET_META_CONTEXT, vdi_name, "base:allocation") == \
            [(codec.BASE_ALLOCATION_ID, "base:allocation")]
        size, flags = raw.go(vdi_name)
        assert size == 16 * MiB and flags & codec.TF_SEND_DF
        assert not flags & codec.TF_CAN_MULTI_CONN  # writable: one writer
        raw.request(codec.CMD_READ, 1, 2 * OBJ, 4096, flags=codec.CMD_FLAG_DF)
        f, t, h, body = raw.chunk()
        assert (f, t, h) == (codec.REPLY_FLAG_DONE, codec.REPLY_TYPE_OFFSET_DATA, 1)
        assert struct.unpack(">Q", body[:8])[0] == 2 * OBJ and body[8:] == b"\x21" * 4096
        raw.request(codec.CMD_READ, 2, 16 * MiB - 10, 20)  # past the end: an error chunk
        f, t, h, body = raw.chunk()
        assert (f, t, h) == (codec.REPLY_FLAG_DONE, codec.REPLY_TYPE_ERROR, 2)
        assert struct.unpack(">I", body[:4])[0] == codec.EINVAL
        raw.request(codec.CMD_BLOCK_STATUS, 3, OBJ, 3 * OBJ)
        f, t, h, body = raw.chunk()
        assert (f, t, h) == (codec.REPLY_FLAG_DONE, codec.REPLY_TYPE_BLOCK_STATUS, 3)
        hz = codec.STATE_HOLE | codec.STATE_ZERO
        assert struct.unpack(">7I", body) == (codec.BASE_ALLOCATION_ID, OBJ, hz, OBJ, 0,
                                              OBJ, hz)
        raw.request(codec.CMD_BLOCK_STATUS, 4, 0, 16 * MiB, flags=codec.CMD_FLAG_REQ_ONE)
        assert struct.unpack(">3I", raw.chunk()[3]) == (codec.BASE_ALLOCATION_ID, 2 * OBJ, hz)
        raw.request(codec.CMD_WRITE, 5, 0, 512, data=b"w" * 512)  # simple replies still fine
        assert raw.reply() == (0, 5)
        raw.request(codec.CMD_BLOCK_STATUS, 6, 0, OBJ, flags=codec.CMD_FLAG_FUA)  # (FUA: fine)
        # our own write is data at once
        assert struct.unpack(">3I", raw.chunk()[3]) == (codec.BASE_ALLOCATION_ID, OBJ, 0)
        raw.request(codec.CMD_DISC, 7, 0, 0)
    finally:
        raw.close()
    other = vdi_name + "-other"
    new_vdi(nbd_cluster, other, 4 * MiB)
    raw = RawNbd(a)  # base:allocation selected for another export: BLOCK_STATUS is EINVAL
    try:
        raw.greet()
        raw.structured()
        assert raw.meta_context(codec.OPT_SET_META_CONTEXT, other, "base:allocation")
        raw.go(vdi_name)
        raw.request(codec.CMD_BLOCK_STATUS, 1, 0, 4096)
        f, t, h, body = raw.chunk()  # (errors as ERROR chunks once structured)
        assert (f, t, h) == (codec.REPLY_FLAG_DONE, codec.REPLY_TYPE_ERROR, 1)
        assert struct.unpack(">I", body[:4])[0] == codec.EINVAL
        raw.request(codec.CMD_READ, 2, 0, 0)  # no bytes: a NONE chunk, never empty data
        assert raw.chunk() == (codec.REPLY_FLAG_DONE, codec.REPLY_TYPE_NONE, 2, b"")
    finally:
        raw.close()
    raw = RawNbd(a)  # a failed SET_META_CONTEXT drops the earlier selection too
    try:
        raw.greet()
        raw.structured()
        assert raw.meta_context(codec.OPT_SET_META_CONTEXT, vdi_name, "base:allocation")
        raw.option(codec.OPT_SET_META_CONTEXT, struct.pack(">I", 5) + b"nosuc" + bytes(4))
        assert raw.rep()[:2] == (codec.OPT_SET_META_CONTEXT, codec.REP_ERR_UNKNOWN)
        raw.go(vdi_name)
        raw.request(codec.CMD_BLOCK_STATUS, 1, 0, 4096, flags=codec.CMD_FLAG_FUA)
        f, t, h, body = raw.chunk()
        assert t == codec.REPLY_TYPE_ERROR and struct.unpack(">I", body[:4])[0] == codec.EINVAL
    finally:
        raw.close()
    daemon_fine(nbd_cluster, vdi_name)


def test_a_snapshot_is_exported_to_many_connections_at_once(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    a, b, _ = nbd_cluster.nodes
    ok(qemu_io(a, vdi_name, "write -P 0x31 0 8M"))
    collie(a, "vdi", "snapshot", "-s", "mc", vdi_name)
    conns = [RawNbd(n) for n in (a, a, b)]
    try:
        for r in conns:
            r.greet()
            _size, flags = r.go(f"{vdi_name}:mc")
            assert flags & codec.TF_CAN_MULTI_CONN and flags & codec.TF_READ_ONLY
        for i, r in enumerate(conns):
            r.request(codec.CMD_READ, i, i * MiB, 4096)
        for i, r in enumerate(conns):
            assert r.reply() == (0, i) and r.recv(4096) == b"\x31" * 4096
    finally:
        for r in conns:
            r.close()


@pytest.mark.parametrize("garbage,closes", [
    (b"", False),  # connect and hang up
    (b"\x00\x00", False),  # half the client flags, then hang up
    (b"\xff\xff\xff\xff", True),  # unknown client flags
    (struct.pack(">I", 3) + b"NOTOPTIONMAGIC!!", True),  # bad option magic
    (struct.pack(">I", 3) + struct.pack(">QII", codec.IHAVEOPT, codec.OPT_GO, 1 << 30), True),
    (struct.pack(">I", 3) + struct.pack(">QII", codec.IHAVEOPT, codec.OPT_GO, 100) + b"x" * 10,
     False),  # a truncated option, then the client vanishes
], ids=["nothing", "half-flags", "bad-flags", "bad-magic", "huge-option", "cut-option"])
def test_garbage_during_negotiation(nbd_cluster, vdi_name, garbage, closes):
    new_vdi(nbd_cluster, vdi_name, 4 * MiB)
    a = nbd_cluster.nodes[2]
    for _ in range(3):
        raw = RawNbd(a)
        try:
            assert raw.recv(18)[:8] == b"NBDMAGIC"
            raw.s.sendall(garbage)
            if closes:
                assert raw.is_closed()
        finally:
            raw.close()
    raw = RawNbd(a)
    try:
        raw.s.sendall(os.urandom(4096))
        assert raw.is_closed()
    finally:
        raw.close()
    daemon_fine(nbd_cluster, vdi_name)


def test_garbage_after_negotiation_releases_the_lock(nbd_cluster, vdi_name):
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    a, b, _ = nbd_cluster.nodes
    for junk in (os.urandom(300),  # garbage requests
                 struct.pack(">IHHQQI", codec.REQUEST_MAGIC, 0, codec.CMD_WRITE, 1, 0, 1 << 31),
                 struct.pack(">IHHQQI", codec.REQUEST_MAGIC, 0, codec.CMD_WRITE, 1, 0, 4096)
                 + b"short"):  # a write cut short, then the client vanishes
        raw = RawNbd(a)
        try:
            raw.greet()
            raw.go(vdi_name)
            # while we hold it, nobody else writes
            assert _refused(b, vdi_name)
            raw.s.sendall(junk)
            if not junk.endswith(b"short"):
                assert raw.is_closed()
        finally:
            raw.close()
        # closed, however it ended: the lock is released
        wait_for(lambda: qemu_io(b, vdi_name, "write -P 1 0 512").returncode == 0, 15,
                 what="the lock to be released")
    daemon_fine(nbd_cluster, vdi_name)


def test_snapshot_taken_under_an_open_export(nbd_cluster, vdi_name):
    """Writes and discards after a snapshot go to the new working VDI (copy-on-write);
    the snapshot keeps what was there."""
    a, b, _ = nbd_cluster.nodes
    new_vdi(nbd_cluster, vdi_name, 8 * MiB)
    raw = RawNbd(a, timeout=30)
    try:
        raw.greet()
        raw.go(vdi_name)
        for h, off in ((1, 0), (2, OBJ)):
            raw.request(codec.CMD_WRITE, h, off, OBJ, data=b"\x10" * OBJ)
        assert sorted([raw.reply(), raw.reply()]) == [(0, 1), (0, 2)]
        collie(b, "vdi", "snapshot", "-s", "under", vdi_name)
        raw.request(codec.CMD_TRIM, 3, 0, OBJ)
        assert raw.reply() == (0, 3)
        raw.request(codec.CMD_WRITE, 4, OBJ + 8192, 4096, data=b"\x20" * 4096)
        assert raw.reply() == (0, 4)
        raw.request(codec.CMD_WRITE_ZEROES, 5, OBJ + 4096, 512, codec.CMD_FLAG_NO_HOLE)
        assert raw.reply() == (0, 5)
        raw.request(codec.CMD_DISC, 6, 0, 0)
        assert raw.is_closed()
    finally:
        raw.close()
    ok(qemu_io(b, f"{vdi_name}:under", "read -P 0x10 0 8M", ro=True))
    ok(qemu_io(b, vdi_name, f"read -P 0 0 {OBJ}", f"read -P 0x10 {OBJ} 4096",
               f"read -P 0 {OBJ + 4096} 512", f"read -P 0x10 {OBJ + 4608} 3584",
               f"read -P 0x20 {OBJ + 8192} 4096", f"read -P 0x10 {OBJ + 12288} {OBJ - 12288}",
               ro=True))
