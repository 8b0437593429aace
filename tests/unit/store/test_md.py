"""sheep.store.md: 1.0's multi-disk placement (vdisk ring), checked against a
reference written from 1.0's definitions (sheep/md.c, include/sheep.h)."""

import os
import struct

import numpy as np
import pytest

from sheep.store import md

GiB = 1 << 30
_M = (1 << 64) - 1


# -- reference, from 1.0's definitions, deliberately naive -----------------------

def _fnv_buf(b, h=0xCBF29CE484222325):  # fnv_64a_buf
    for c in b:
        h ^= c
        h = (h * 0x100000001B3) & _M
    return h


def _fnv_64(v, h):  # fnv_64a_64: the 8 bytes of v, LSB first
    return _fnv_buf(v.to_bytes(8, "little"), h)


def _sd_hash(b):
    h = _fnv_buf(b)
    return _fnv_64(h, h)


def _ref_place(disks, oid):
    """create_vdisks + oid_to_vdisk + rb_nsearch (first >=, else the first)."""
    vd = []
    for i, (path, space) in enumerate(disks):
        h = _sd_hash(path.encode())
        for _ in range(-(-space // GiB)):  # DIV_ROUND_UP(space, MD_VDISK_SIZE)
            h = _fnv_64(h, h)  # sd_hash_next
            vd.append((h, i))
    vd.sort()
    key = _sd_hash(oid.to_bytes(8, "little"))  # sd_hash_oid
    for h, i in vd:
        if h >= key:
            return i
    return vd[0][1]


DISKS = [("/mnt/disk0", 3 * GiB), ("/mnt/disk1", GiB + 1), ("/mnt/disk2", GiB)]
OIDS = [0x8000000100000000, 0x0000000100000000, 0x0000000100000001, 0x80A0390700000000,
        0x00A0390700000005, 0x00A0390700000010, 0x00A0390700000011, 0x00A0390700000012]
# computed with _ref_place (1.0's definition) and pinned
KNOWN = [0, 1, 0, 1, 1, 2, 0, 1]


def test_known_values():
    assert [_ref_place(DISKS, o) for o in OIDS] == KNOWN
    p = md.Placement(DISKS)
    assert [p.disk_of(o) for o in OIDS] == KNOWN
    assert p.disks_of(np.array(OIDS, dtype=np.uint64)).tolist() == KNOWN


def test_vdisk_counts_and_points():
    assert [md.vdisk_count(s) for s in (0, 1, GiB, GiB + 1, 3 * GiB)] == [0, 1, 1, 2, 3]
    assert md.vdisk_points("/mnt/disk0", 2 * GiB)[0] == _fnv_64(*(2 * [_sd_hash(b"/mnt/disk0")]))
    # trailing slashes are not part of the identity (trim_last_slash)
    assert md.vdisk_points("/mnt/disk0//", GiB) == md.vdisk_points("/mnt/disk0", GiB)
    assert len(md.Placement(DISKS).points) == 3 + 2 + 1


def test_matches_reference_on_many_oids_and_weights_by_space():
    oids = [0x00A0390700000000 + i for i in range(3000)] + [(i * 0x9E3779B97F4A7C15) & _M
                                                             for i in range(1, 1000)]
    p = md.Placement(DISKS)
    got = p.disks_of(np.array(oids, dtype=np.uint64)).tolist()
    assert got == [_ref_place(DISKS, o) for o in oids]
    assert got == [p.disk_of(o) for o in oids]
    counts = np.bincount(got, minlength=3)
    assert counts[0] > counts[1] > counts[2] > 0  # 3, 2 and 1 vdisks


def test_only_the_changed_disks_objects_move():
    oids = [0x00A0390700000000 + i for i in range(2000)]
    before = md.Placement(DISKS)
    after = md.Placement(DISKS[:2])  # disk2 removed
    for o in oids:
        b = before.disk_of(o)
        if b != 2:
            assert after.disk_of(o) == b
        else:
            assert after.disk_of(o) in (0, 1)


def test_single_disk_and_bad_sets():
    assert md.Placement([("/a", 1)]).disk_of(12345) == 0
    with pytest.raises(ValueError):
        md.Placement([])
    with pytest.raises(ValueError):
        md.Placement([("/a", GiB), ("/b", 0)])
    with pytest.raises(ValueError):
        md.Placement([("/a", GiB), ("/a/", GiB)])  # same points: 1.0 panics


def test_disk_space_is_recorded_once(tmp_path):
    d = str(tmp_path)
    s = md.disk_space(d)
    assert s > 0
    try:
        raw = os.getxattr(d, md.XATTR)
    except OSError:
        with open(os.path.join(d, md.SIZE_FILE), "rb") as f:
            raw = f.read()
    assert struct.unpack("<Q", raw)[0] == s
    os.setxattr(d, md.XATTR, struct.pack("<Q", 5 * GiB))
    assert md.disk_space(d) == 5 * GiB  # the recorded value wins over a new measure


def test_md_info_layout():
    raw = md.pack_md_info([("/mnt/disk0", 10, 20), ("/mnt/disk1", 30, 40)])
    assert len(raw) == md.MD_INFO_SIZE == 263688
    assert struct.unpack_from("<i", raw, 263680)[0] == 2
    assert struct.unpack_from("<iiQQ", raw, 4120) == (1, 0, 30, 40)
    assert raw[4120 + 24:4120 + 24 + 11] == b"/mnt/disk1\0"
    assert md.unpack_md_info(raw) == [(0, "/mnt/disk0", 10, 20), (1, "/mnt/disk1", 30, 40)]
