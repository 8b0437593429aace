"""The pure parts of the operator safety checks (docs/operations-safety.md):
restore stream validation, the VDI name limit, effective redundancy, the
store requirement of ``sheep`` and localcluster's "is this our sheep"."""

import io
import os
import struct
import subprocess
import sys

import pytest

from collie.client import EXIT_USAGE, CollieError, check_vdi_name
from collie.vdi_backup import END_IDX, HDR, REC, validated_stream
from collie.zones import nr_zones, short_text
from sheep import proto
from sheep.config import ConfigError, parse
from sheep.launcher import _is_our_sheep

MB = 1 << 20


def _inode(size=4 * MB):
    return proto.InodeHeader(vdi_size=size, block_size_shift=22)


def _stream(*records, end=True):
    out = HDR.pack(1, 0x11921192)
    for idx, off, data in records:
        out += REC.pack(idx, off, len(data), 0) + data
    return out + (REC.pack(END_IDX, 0, 0, 0) if end else b"")


def test_restore_stream_valid_is_returned_whole():
    raw = _stream((0, 512, b"a" * 512), (0, 0, b"b"))
    f = validated_stream(io.BytesIO(raw), _inode())
    assert f.read() == raw  # a pipe is copied: the restore reads all of it again


@pytest.mark.parametrize("raw,why", [
    (b"", "no backup header (empty input)"),
    (struct.pack("<II", 2, 0x11921192), "no backup header"),
    (_stream((0, 0, b"x"), end=False), "ends after 1 records without the end marker"),
    (_stream((1, 0, b"x")), "outside the snapshot (1 objects"),  # a 4 MiB VDI: object 0
    (_stream((0, 4 * MB - 1, b"xy")), "outside the snapshot"),
    (_stream()[:8] + REC.pack(0, 0, 10, 0) + b"short", "record 0 is cut short"),
])
def test_restore_stream_defects(raw, why):
    with pytest.raises(CollieError) as e:
        validated_stream(io.BytesIO(raw), _inode())
    assert why in e.value.messages[0]
    assert e.value.messages[1] == "nothing was changed"


def test_restore_regular_file_is_rewound(tmp_path):
    f = tmp_path / "b"
    f.write_bytes(_stream((0, 0, b"z" * 4096)))
    with open(f, "rb") as src:
        assert validated_stream(src, _inode()) is src and src.tell() == 0


def test_vdi_name_limit():
    check_vdi_name("n" * 255)
    check_vdi_name("é" * 127)  # 254 bytes
    for name in ("n" * 256, "é" * 128):
        with pytest.raises(CollieError) as e:
            check_vdi_name(name)
        assert e.value.code == EXIT_USAGE and "at most 255" in e.value.messages[0]


def test_effective_redundancy():
    nodes = [proto.SdNode(zone=0, nr_vnodes=64), proto.SdNode(zone=0, nr_vnodes=64),
             proto.SdNode(zone=7, nr_vnodes=0)]  # a gateway stores nothing
    assert nr_zones(nodes) == 1
    assert "only 1 zone for 3 copies" in short_text(3, 1)
    assert "effective redundancy 2" in short_text(3, 2)


def test_sheep_needs_a_store():
    with pytest.raises(ConfigError) as e:
        parse(["-p", "7000"])
    assert str(e.value).startswith("no store directory given")
    with pytest.raises(ConfigError) as e:  # a bad option is still reported first
        parse(["-p", "0"])
    assert str(e.value) == "Invalid port number '0'"
    assert parse(["/s"]).stores == ["/s"]


def test_localcluster_recognises_only_its_sheep():
    me = {"pid": os.getpid(), "port": 7000, "store": "/nowhere"}
    assert not _is_our_sheep(me)  # pytest is no sheep of that store
    assert not _is_our_sheep({"pid": 0, "port": 7000, "store": "/x"})
    assert not _is_our_sheep({"pid": "1", "port": 7000, "store": "/x"})
    # a process whose command line is "sheep ... -p 7000 /x" (not a daemon: the
    # real one is in tests/functional/test_operator_safety.py)
    code = "import sys, time; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)"
    p = subprocess.Popen(["bash", "-c", f'exec -a sheep "{sys.executable}" -c "{code}" '
                                        "-p 7000 /x"], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"up\n"
        assert _is_our_sheep({"pid": p.pid, "port": 7000, "store": "/x"})
        assert not _is_our_sheep({"pid": p.pid, "port": 7001, "store": "/x"})
        assert not _is_our_sheep({"pid": p.pid, "port": 7000, "store": "/y"})
    finally:
        p.kill()
        p.wait()
    assert not _is_our_sheep({"pid": p.pid, "port": 7000, "store": "/x"})
