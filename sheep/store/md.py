"""Multi-disk placement: which local disk holds an object (Sheepdog 1.0's md).

Sheepdog 1.0 (``sheep/md.c``) spreads a node's objects over its disks with a
second consistent-hash ring, a ring of *vdisks*:

* a disk is identified by its path (trailing slashes removed) and weighted
  by its space: it owns ``ceil(space / 1 GiB)`` vdisks (:func:`vdisk_count`);
* its vdisk points are ``h = sd_hash(path)`` then that many times
  ``h = sd_hash_next(h)`` (the same hash steps as the node ring,
  ``sheep.proto.placement``);
* an object lives on the disk of the first point ``>= sd_hash_oid(oid)``,
  wrapping to the smallest point (``rb_nsearch`` in 1.0);
* two disks yielding the same point is refused (1.0 panics).

Paths are made absolute first (1.0 hashes the string as given: the same
for the absolute paths one normally gives).  The disks are the extra
directories given on the command line
(``sheep BASE,DIR1,DIR2``; objects go straight into ``DIRn/``), or
``BASE/obj`` alone when none is given.  A disk's space is measured once, when
the disk is first used, and kept in the directory's ``user.md.size`` extended
attribute (u64, little-endian) as 1.0 does, so placement survives restarts
and the disk filling up.  1.0 measures the *free* space then
(``f_bavail * f_frsize``); so do we.  Decision where 1.0 gives up (a
filesystem without user xattrs makes 1.0 treat the disk as broken): we keep
the value in a ``.md.size`` file in the directory instead (names starting
with a dot are never objects).

:class:`Placement` is pure (no I/O): a function of the ``(path, space)``
list.  :func:`disk_space` is the only part that touches a disk.
"""

from __future__ import annotations

import errno
import os
import struct
from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from sheep.proto.placement import sd_hash, sd_hash_next, sd_hash_oid, sd_hash_oid_array

VDISK_SIZE = 1 << 30  # MD_VDISK_SIZE: one vdisk per GiB
MAX_DISKS = 64  # MD_MAX_DISK (size of sd_md_info)
XATTR = "user.md.size"
SIZE_FILE = ".md.size"
_U64 = struct.Struct("<Q")


def norm_path(path: str) -> str:
    """The disk's identity: the path with trailing slashes removed (1.0's
    ``trim_last_slash``).  The root directory stays ``/``."""
    p = path.rstrip("/")
    return p or "/"


def vdisk_count(space: int) -> int:
    """``DIV_ROUND_UP(space, 1 GiB)``: a disk of 0 bytes has none (1.0 drops it)."""
    return -(-int(space) // VDISK_SIZE)


def vdisk_points(path: str, space: int) -> list[int]:
    """The vdisk points of one disk, in generation order."""
    h = sd_hash(norm_path(path).encode())
    out = []
    for _ in range(vdisk_count(space)):
        h = sd_hash_next(h)
        out.append(h)
    return out


class Placement:
    """Immutable vdisk ring of a disk list ``[(path, space), ...]``.

    ``disk_of(oid)`` is the index (into that list) of the disk holding ``oid``.
    Guarantees: the result depends only on the set of ``(path, space)`` pairs
    and the oid, exactly as 1.0's ``oid_to_vdisk``; an empty ring or a disk
    without space raises ValueError at construction.
    """

    def __init__(self, disks: Sequence[tuple[str, int]]):
        pts: list[tuple[int, int]] = []
        for i, (path, space) in enumerate(disks):
            if vdisk_count(space) == 0:
                raise ValueError(f"disk {path} has no space")
            pts.extend((h, i) for h in vdisk_points(path, space))
        if not pts:
            raise ValueError("no disks")
        pts.sort()
        for a, b in pairwise(pts):
            if a[0] == b[0]:
                raise ValueError(f"vdisk hash collision between {disks[a[1]][0]} "
                                 f"and {disks[b[1]][0]}")
        self.disks = [(norm_path(p), int(s)) for p, s in disks]
        self.points = [h for h, _ in pts]
        self.owners = [i for _, i in pts]
        self._np_points = np.array(self.points, dtype=np.uint64)
        self._np_owners = np.array(self.owners, dtype=np.int64)

    def disk_of(self, oid: int) -> int:
        if len(self.disks) == 1:
            return 0
        p = bisect_left(self.points, sd_hash_oid(oid))
        return self.owners[p if p < len(self.points) else 0]

    def disks_of(self, oids) -> np.ndarray:
        """Vectorised :meth:`disk_of` (an int64 array of disk indices)."""
        h = sd_hash_oid_array(oids)
        p = np.searchsorted(self._np_points, h, side="left")
        p[p == len(self._np_points)] = 0
        return self._np_owners[p]


# -- the one part that touches disks ------------------------------------------

def _free_space(path: str) -> int:
    vfs = os.statvfs(path)
    return vfs.f_frsize * vfs.f_bavail


def disk_space(path: str) -> int:
    """The recorded space of a disk (measured and recorded on first use).

    Reads ``user.md.size``, else ``.md.size``; if neither exists, measures
    the free space and records it (durably).  Raises OSError if the
    directory is unusable."""
    try:
        raw = os.getxattr(path, XATTR)
        if len(raw) == 8:
            return _U64.unpack(raw)[0]
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    fpath = os.path.join(path, SIZE_FILE)
    try:
        with open(fpath, "rb") as f:
            raw = f.read()
        if len(raw) == 8:
            return _U64.unpack(raw)[0]
    except FileNotFoundError:
        pass
    space = _free_space(path)
    raw = _U64.pack(space)
    try:
        os.setxattr(path, XATTR, raw)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        tmp = fpath + ".tmp"
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, fpath)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return space


def disk_ok(path: str) -> bool:
    """Is the disk directory still there and usable (1.0's ``md_access``)?"""
    return os.path.isdir(path) and os.access(path, os.R_OK | os.W_OK | os.X_OK)


# -- sd_md_info (SD_OP_MD_INFO reply) -------------------------------------------

_MD_ENTRY = struct.Struct("<i4xQQ4096s")  # idx, pad, free, used, path[PATH_MAX]
MD_INFO_SIZE = MAX_DISKS * _MD_ENTRY.size + 8  # + i32 nr, padded to 8


def pack_md_info(disks: Sequence[tuple[str, int, int]]) -> bytes:
    """``struct sd_md_info`` for ``[(path, free, used), ...]`` (at most 64)."""
    buf = bytearray(MD_INFO_SIZE)
    for i, (path, free, used) in enumerate(disks[:MAX_DISKS]):
        _MD_ENTRY.pack_into(buf, i * _MD_ENTRY.size, i, free, used, path.encode()[:4095])
    struct.pack_into("<i", buf, MAX_DISKS * _MD_ENTRY.size, min(len(disks), MAX_DISKS))
    return bytes(buf)


def unpack_md_info(raw: bytes) -> list[tuple[int, str, int, int]]:
    """``[(idx, path, free, used), ...]`` of an ``sd_md_info``."""
    nr = struct.unpack_from("<i", raw, MAX_DISKS * _MD_ENTRY.size)[0]
    out = []
    for i in range(max(0, min(nr, MAX_DISKS))):
        idx, free, used, path = _MD_ENTRY.unpack_from(raw, i * _MD_ENTRY.size)
        out.append((idx, path.split(b"\0", 1)[0].decode(errors="replace"), free, used))
    return out
