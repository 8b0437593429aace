"""Image import/export and progress bars on a real
2-node cluster: ``collie vdi import/export`` keep images sparse and
byte-identical, ``vdi write`` does not allocate all-zero objects, and the
progress bar shows on a pseudo-terminal (stderr) only — never when stderr is
not a terminal or with ``--no-progress``, and stdout is the same either way."""

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest
from harness import Cluster, collie_ok, collie_run

pytestmark = [pytest.mark.cluster, pytest.mark.vdi]

MiB = 1 << 20
OBJ = 4 * MiB


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("image"), 2)
    try:
        c.wait_members(2)
        c.format(copies=2)
        yield c.nodes[0].port
    finally:
        c.close()


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 7 + i * 13) & 0xFF for i in range(256)) * (n // 256)


def allocated(port: int, name: str) -> list[int]:
    """Indices of the VDI's allocated data objects (``vdi object map``)."""
    out = collie_ok(port, "vdi", "object", "map", name).stdout.decode().splitlines()
    assert out[0].split() == ["Index", "VID"]
    return [int(ln.split()[0]) for ln in out[1:]]


def run_tty(port, *argv, stdin=None, tty_stdout=False, tty_stderr=True):
    """Run collie with stderr (and maybe stdout) on a pseudo-terminal, the
    rest on pipes: (exit code, stdout bytes or None, stderr bytes or None,
    everything the terminal got)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = dict(os.environ, TQDM_MININTERVAL="0")  # draw every update
    p = subprocess.Popen([sys.executable, "-m", "collie", *argv, "-p", str(port)],
                         stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                         stdout=slave if tty_stdout else subprocess.PIPE,
                         stderr=slave if tty_stderr else subprocess.PIPE, env=env)
    os.close(slave)
    got = []

    def drain():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the last holder of the terminal is gone
                return
            if not b:
                return
            got.append(b)
    t = threading.Thread(target=drain)
    t.start()
    try:
        out, err = p.communicate(stdin, timeout=120)
    finally:
        t.join(30)
        os.close(master)
    return p.returncode, out, err, b"".join(got)


def states(tty: bytes) -> set[bytes]:
    """The distinct percentages the bar showed."""
    return set(re.findall(rb"(\d+)%\|", tty))


def test_import_export_sparse_roundtrip(port, tmp_path):
    size = 7 * OBJ
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(pattern(1, OBJ))                      # 0: data
        f.seek(2 * OBJ)                               # 1: a hole
        f.write(bytes(OBJ))                           # 2: written zeros
        f.seek(3 * OBJ + 12345 * 4)
        f.write(pattern(2, 4096))                     # 3: a little data mid-object
        f.seek(5 * OBJ)                               # 4: a hole
        f.write(pattern(3, OBJ - 512))                # 5: data up to 512 bytes short
        f.truncate(size)                              # 6: a hole up to the end
    image = src.read_bytes()
    collie_ok(port, "vdi", "import", str(src), "imp")
    assert allocated(port, "imp") == [0, 3, 5]       # neither holes nor zero objects

    dst = tmp_path / "dst.img"
    collie_ok(port, "vdi", "export", "imp", str(dst))
    assert dst.read_bytes() == image
    st = os.stat(dst)
    assert st.st_size == size
    assert st.st_blocks * 512 <= 3 * OBJ + MiB < size // 2   # sparse: data objects only
    assert collie_ok(port, "vdi", "export", "imp", "-").stdout == image  # stdout: every byte

    # a snapshot exports as it was, the working VDI as it is now
    collie_ok(port, "vdi", "snapshot", "-s", "before", "imp")
    collie_ok(port, "vdi", "write", "imp", str(OBJ), "4096", stdin=pattern(4, 4096))
    snap = tmp_path / "snap.img"
    collie_ok(port, "vdi", "export", "-s", "before", "imp", str(snap))
    assert snap.read_bytes() == image
    now = bytearray(image)
    now[OBJ:OBJ + 4096] = pattern(4, 4096)
    assert collie_ok(port, "vdi", "export", "imp", "-").stdout == bytes(now)


def test_import_odd_size_stdin_and_refusals(port, tmp_path):
    # a size that is no multiple of 512 is rounded up; the padding reads as zeros
    odd = tmp_path / "odd.img"
    odd.write_bytes(pattern(5, 4096) + b"xyz")
    collie_ok(port, "vdi", "import", str(odd), "odd")
    assert collie_ok(port, "vdi", "export", "odd", "-").stdout == \
        odd.read_bytes() + bytes(509)                 # 4608 bytes

    # NAME exists: refused (exit 3), the VDI untouched
    r = collie_run(port, "vdi", "import", str(odd), "odd")
    assert r.returncode == 3 and b"already exists" in r.stderr
    # standard input needs --size; then zero objects are skipped as well
    r = collie_run(port, "vdi", "import", "-", "piped", stdin=b"x")
    assert r.returncode == 64 and b"--size" in r.stderr
    data = bytes(OBJ) + pattern(6, OBJ)
    collie_ok(port, "vdi", "import", "--size", "12M", "-", "piped", stdin=data)
    assert allocated(port, "piped") == [1]
    assert collie_ok(port, "vdi", "read", "piped").stdout == data + bytes(OBJ)
    # more input than --size: a clear failure naming the incomplete VDI
    r = collie_run(port, "vdi", "import", "--size", "1M", "-", "toolong", stdin=bytes(2 * MiB))
    assert r.returncode != 0 and b"more than --size" in r.stderr
    assert b"vdi delete toolong" in r.stderr
    # a missing file, an empty file
    r = collie_run(port, "vdi", "import", str(tmp_path / "nope"), "nope")
    assert r.returncode == 1 and b"cannot open" in r.stderr
    (tmp_path / "empty").write_bytes(b"")
    assert collie_run(port, "vdi", "import", str(tmp_path / "empty"), "e").returncode == 64

    # export never overwrites a file; an unknown VDI leaves no file behind
    keep = tmp_path / "keep"
    keep.write_bytes(b"precious")
    r = collie_run(port, "vdi", "export", "odd", str(keep))
    assert r.returncode == 3 and keep.read_bytes() == b"precious"
    r = collie_run(port, "vdi", "export", "nosuch", str(tmp_path / "out"))
    assert r.returncode != 0 and not (tmp_path / "out").exists()


def test_vdi_write_does_not_allocate_zero_objects(port):
    collie_ok(port, "vdi", "create", "zw", "16M")
    data = bytes(8 * MiB) + pattern(7, 8192)
    collie_ok(port, "vdi", "write", "zw", "0", str(len(data)), stdin=data)
    assert allocated(port, "zw") == [2]
    assert collie_ok(port, "vdi", "read", "zw", "0", str(len(data))).stdout == data
    # zeros into an allocated object are written: they replace data
    collie_ok(port, "vdi", "write", "zw", str(8 * MiB), "4096", stdin=bytes(4096))
    got = collie_ok(port, "vdi", "read", "zw", str(8 * MiB), "8192").stdout
    assert got == bytes(4096) + pattern(7, 8192)[4096:]
    # zeros into an object shared with a snapshot are written too (copy-on-write)
    collie_ok(port, "vdi", "snapshot", "-s", "s", "zw")
    collie_ok(port, "vdi", "write", "zw", str(8 * MiB + 4096), "4096", stdin=bytes(4096))
    assert collie_ok(port, "vdi", "read", "zw", str(8 * MiB), "8192").stdout == bytes(8192)
    assert collie_ok(port, "vdi", "read", "-s", "s", "zw", str(8 * MiB), "8192").stdout == \
        bytes(4096) + pattern(7, 8192)[4096:]


def test_progress_bar_on_a_terminal_only(port, tmp_path):
    data = pattern(8, 16 * MiB)
    collie_ok(port, "vdi", "create", "pb", "16M")
    # vdi write: several states on the terminal, 0% .. 100%
    rc, _, _, tty = run_tty(port, "vdi", "write", "pb", stdin=data)
    assert rc == 0 and {b"0", b"25", b"50", b"75", b"100"} <= states(tty), tty
    assert b"write pb" in tty
    # vdi read: stdout (a pipe) is the image, byte for byte; the bar is on the terminal
    rc, out, _, tty = run_tty(port, "vdi", "read", "pb")
    assert rc == 0 and out == data and len(states(tty)) >= 3, tty
    # not a terminal: nothing on stderr; --no-progress: nothing on the terminal
    r = collie_ok(port, "vdi", "read", "pb")
    assert r.stdout == data and r.stderr == b""
    rc, out, _, tty = run_tty(port, "vdi", "read", "pb", "--no-progress")
    assert rc == 0 and out == data and tty == b""
    # stdout a terminal but stderr a pipe: only the dog-compatible text, no bar
    rc, _, err, tty = run_tty(port, "vdi", "check", "pb", tty_stdout=True, tty_stderr=False)
    assert rc == 0 and err == b"" and tty == b"finish check&repair pb\r\n"

    # import, export, check, cluster check, create -P, backup, restore
    img = tmp_path / "pb.img"
    img.write_bytes(data)
    for argv, want in ((("vdi", "import", str(img), "pb2"), 3),
                       (("vdi", "export", "pb2", str(tmp_path / "pb2.img")), 3),
                       (("vdi", "check", "pb"), 3),
                       (("cluster", "check"), 3),
                       (("vdi", "create", "-P", "pre", "12M"), 3)):
        rc, out, _, tty = run_tty(port, *argv)
        assert rc == 0 and len(states(tty)) >= want, (argv, tty)
    assert (tmp_path / "pb2.img").read_bytes() == data
    rc, _, _, tty = run_tty(port, "cluster", "check", "--no-progress", tty_stdout=True)
    assert rc == 0 and b"%|" not in tty and b"finish check&repair pb\r\n" in tty

    collie_ok(port, "vdi", "snapshot", "-s", "b1", "pb")
    collie_ok(port, "vdi", "write", "pb", str(4 * MiB), "4096", stdin=pattern(9, 4096))
    collie_ok(port, "vdi", "snapshot", "-s", "b2", "pb")
    rc, backup, _, tty = run_tty(port, "vdi", "backup", "-F", "b1", "-s", "b2", "pb")
    assert rc == 0 and len(states(tty)) >= 3, tty
    assert backup == collie_ok(port, "vdi", "backup", "-F", "b1", "-s", "b2", "pb").stdout
    rc, _, _, tty = run_tty(port, "vdi", "restore", "-s", "b1", "pb", stdin=backup)
    assert rc == 0 and b"restore pb" in tty, tty
    assert collie_ok(port, "vdi", "read", "-s", "3", "pb", str(4 * MiB), "4096").stdout == \
        pattern(9, 4096)
