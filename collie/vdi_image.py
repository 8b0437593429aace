"""``collie vdi import FILE NAME`` and ``collie vdi export NAME FILE``: whole
images between the cluster and a local raw file (like ``rbd import/export``
or ``qemu-img convert``).

Import guarantees:

* NAME must not exist (exit 3, nothing created); the VDI is created with the
  file's size rounded **up to a multiple of 512** (a sector: what a block
  device or qemu can use); the padding reads as zeros.  ``--size`` may make
  the VDI larger than the file (never smaller); it is required when FILE is
  ``-`` (standard input), which must then hold at most that many bytes;
* the file is read one data object (4 MiB by default) at a time; holes
  (``SEEK_DATA``/``SEEK_HOLE``) and all-zero objects are **not written at
  all**, so the VDI stays sparse (unallocated objects read as zeros).
  ``-P`` allocates every object anyway, like ``vdi create -P``;
* each object is written like ``vdi write`` does (create-and-write through
  the gateway, acknowledged once every replica has it, then its inode
  entry), so the imported part is as safe as any write;
* a failure midway (I/O error, a lost daemon, interrupt) exits non-zero and
  says at which offset it stopped.  The partly imported VDI is **left** in
  place (as ``rbd import`` does), so nothing the cluster acknowledged is
  thrown away; the message says to delete it (``collie vdi delete NAME``)
  before retrying.

Export guarantees:

* FILE must not exist (exit 3; nothing is overwritten); it is written
  **sparse**: objects that are unallocated in the inode's ``data_vdi_id``
  table are not even read from the cluster, all-zero objects are not
  written, and the file is truncated to the VDI size at the end and fsynced
  before the command reports success;
* ``-`` writes the image to standard output (every byte, zeros included;
  refused when stdout is a terminal); a reader that goes away before the
  end (a closed pipe) makes the command fail (exit 2), never exit 0;
* ``-s`` exports a snapshot;
* on failure the partial FILE (which this command created) is removed and
  the exit status is non-zero.

Both show a progress bar on stderr when it is a terminal (``--no-progress``
turns it off; see :mod:`collie.progress`).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from collie import progress
from collie.args import parse_copy, parse_shift, size_arg, snapshot_arg
from collie.client import (
    EXIT_EXISTS,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    EXIT_SYSFAIL,
    EXIT_USAGE,
    Client,
    CollieError,
    unpack_vids,
)
from collie.output import Out
from sheep import proto

SECTOR = 512
OLD_MAX_DATA_OBJS = 1 << 20


def is_zero(data, _zeros: dict = {}) -> bool:  # noqa: B006 - a cache of zero buffers
    """True when ``data`` holds only zero bytes (a memcmp against a zero buffer)."""
    n = len(data)
    z = _zeros.get(n)
    if z is None:
        if len(_zeros) > 8:
            _zeros.clear()
        z = _zeros[n] = bytes(n)
    return data == z


class FileSource:
    """Object-sized chunks of a regular file or block device; ``None`` for a
    chunk that lies entirely in a hole (found with ``SEEK_DATA``, nothing read)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.seek_data = hasattr(os, "SEEK_DATA")
        self.data_end = False  # no data at or after the last probed offset

    def chunk(self, start: int, n: int) -> bytes | None:
        if self.data_end:
            return None
        if self.seek_data:
            try:
                pos = os.lseek(self.fd, start, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole up to the end of the file
                    self.data_end = True
                    return None
                self.seek_data = False  # not supported here: read everything
            else:
                if pos >= start + n:
                    return None
        parts, got = [], 0
        while got < n:
            b = os.pread(self.fd, n - got, start + got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        data = b"".join(parts)
        if len(data) < n:  # the file shrank while being imported
            raise CollieError(f"unexpected end of the file at offset {start + len(data)}",
                              code=EXIT_SYSFAIL)
        return data


class StreamSource:
    """Object-sized chunks of a pipe (standard input); short at its end."""

    def __init__(self, stream):
        self.stream = stream

    def chunk(self, start: int, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            b = self.stream.read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        return b"".join(parts)

    def at_end(self) -> bool:
        return not self.stream.read(1)


def _file_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise CollieError("the import source must be a regular file, a block device or '-' "
                      "(standard input)", code=EXIT_USAGE)


def vdi_import(args, client: Client, out: Out) -> int:
    want = size_arg(args.size) if args.size is not None else None
    copies, policy = parse_copy(args.copies) if args.copies else (0, 0)
    shift = parse_shift(args.block_size_shift) if args.block_size_shift else 0
    fd = None
    if args.file == "-":
        if want is None:
            raise CollieError("importing from standard input needs the image size: "
                              "--size SIZE", code=EXIT_USAGE)
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        if hasattr(stream, "isatty") and stream.isatty():
            raise CollieError("standard input is a terminal, not an image", code=EXIT_USAGE)
        source, length = StreamSource(stream), want
    else:
        try:
            fd = os.open(args.file, os.O_RDONLY)
        except OSError as e:
            raise CollieError(f"cannot open {args.file}: {e.strerror}",
                              code=EXIT_FAILURE) from None
        try:
            length = _file_size(fd)
        except BaseException:
            os.close(fd)
            raise
        if want is not None and want < length:
            os.close(fd)
            raise CollieError(f"--size {want} is smaller than {args.file} ({length} bytes)",
                              code=EXIT_USAGE)
        source = FileSource(fd)
    try:
        return _import(args, client, out, source, length,
                       max(length, want or 0), copies, policy, shift)
    finally:
        if fd is not None:
            os.close(fd)


def _import(args, client: Client, out: Out, source, length: int, size: int,
            copies: int, policy: int, shift: int) -> int:
    vdi_size = -(-size // SECTOR) * SECTOR
    if vdi_size == 0:
        raise CollieError(f"{args.file} is empty: nothing to import", code=EXIT_USAGE)
    ret, _ = client.find_vdi_name(args.name)
    if ret == 0:
        raise CollieError(f"VDI {args.name} already exists: import refuses to overwrite it",
                          code=EXIT_EXISTS)
    osize = 1 << (shift or proto.SD_DEFAULT_BLOCK_SIZE_SHIFT)
    if vdi_size > osize * OLD_MAX_DATA_OBJS:
        raise CollieError(f"the image ({vdi_size} bytes) is larger than a VDI of "
                          f"{osize}-byte objects can be; use -z for larger objects",
                          code=EXIT_USAGE)
    vid = client.do_vdi_create(args.name, vdi_size, 0, False, copies, policy, 0, shift)
    raw = client.read_object(proto.vid_to_vdi_oid(vid), proto.SD_INODE_HEADER_SIZE, 0,
                             direct=True)
    inode = proto.InodeHeader.unpack(raw)
    osize = inode.object_size
    done = 0
    try:
        with progress.bar(args, vdi_size, f"import {args.name}") as bar:
            for idx in range(inode.nr_objects):
                start = idx * osize
                n = max(0, min(osize, length - start))
                data = source.chunk(start, n) if n else None
                if data is not None and len(data) < n:  # standard input ended early
                    length = start + len(data)
                if data is not None and not is_zero(data):
                    _write(client, inode, vid, idx, data)
                elif args.prealloc:
                    _write(client, inode, vid, idx, b"")
                done = min(vdi_size, start + osize)
                bar.update(done - start)
            if isinstance(source, StreamSource) and not source.at_end():
                raise CollieError(f"standard input holds more than --size {size} bytes",
                                  code=EXIT_FAILURE)
    except (CollieError, OSError, KeyboardInterrupt) as e:
        msgs = (e.messages if isinstance(e, CollieError)
                else ["interrupted"] if isinstance(e, KeyboardInterrupt) else [str(e)])
        code = e.code if isinstance(e, CollieError) else EXIT_FAILURE
        raise CollieError(*msgs, f"Failed to import {args.file} into {args.name} after "
                          f"{done} of {vdi_size} bytes: the VDI is incomplete; delete "
                          f"it ('collie vdi delete {args.name}') before importing again",
                          code=code) from None
    if args.verbose:
        out.line(f"{vid:x}" if out.raw else f"VDI ID of the imported VDI: {vid:x}")
    return EXIT_SUCCESS


def _write(client: Client, inode, vid: int, idx: int, data: bytes) -> None:
    client.write_object(proto.vid_to_data_oid(vid, idx), data, 0, copies=inode.nr_copies,
                        copy_policy=inode.copy_policy, create=True)
    client.write_inode_vid(inode, vid, idx, vid)


# ---------------------------------------------------------------------------


def vdi_export(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_INDEX_END)
    vids = unpack_vids(raw[proto.SD_INODE_HEADER_SIZE:proto.SD_INODE_INDEX_END],
                       inode.nr_objects)
    if args.file == "-":
        if out.isatty():
            raise CollieError("standard output is a terminal: give a FILE or redirect it",
                              code=EXIT_USAGE)
        out.stdout.flush()
        stream = getattr(out.stdout, "buffer", out.stdout)
        try:
            _export(args, client, inode, vids, lambda off, data: stream.write(data),
                    sparse=False)
            stream.flush()
        except BrokenPipeError:  # the reader went away: the image is incomplete
            _drop_stdout(out)
            raise CollieError(f"Failed to export {args.name}: standard output was closed "
                              "before the whole image was written", code=EXIT_SYSFAIL) from None
        return EXIT_SUCCESS
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise CollieError(f"{args.file} exists: export refuses to overwrite it",
                          code=EXIT_EXISTS) from None
    except OSError as e:
        raise CollieError(f"cannot create {args.file}: {e.strerror}",
                          code=EXIT_FAILURE) from None
    ok = False
    try:
        def pwrite(off: int, data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, off)
                view, off = view[n:], off + n
        _export(args, client, inode, vids, pwrite, sparse=True)
        os.ftruncate(fd, inode.vdi_size)
        os.fsync(fd)
        ok = True
    except OSError as e:
        raise CollieError(f"cannot write {args.file}: {e.strerror}",
                          f"Failed to export {args.name}; removed the partial {args.file}",
                          code=EXIT_SYSFAIL) from None
    except CollieError as e:
        raise CollieError(*e.messages, f"Failed to export {args.name}; removed the partial "
                                       f"{args.file}", code=e.code) from None
    finally:
        os.close(fd)
        if not ok:
            try:
                os.unlink(args.file)
            except OSError:
                pass
    return EXIT_SUCCESS


def _drop_stdout(out: Out) -> None:
    """Point standard output at /dev/null: what is still buffered for the
    closed pipe must not fail again (or be reported) when collie exits."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _export(args, client: Client, inode, vids: list[int], write, sparse: bool) -> None:
    osize, size = inode.object_size, inode.vdi_size
    with progress.bar(args, size, f"export {args.name}") as bar:
        for idx in range(inode.nr_objects):
            start = idx * osize
            n = min(osize, size - start)
            vid = vids[idx] if idx < len(vids) else 0
            data = client.read_object(proto.vid_to_data_oid(vid, idx), n, 0) if vid else None
            if data is not None and not (sparse and is_zero(data)):
                write(start, data)
            elif not sparse:
                write(start, bytes(n))
            bar.update(n)


def register_vdi(cmd) -> None:
    p = cmd("import", vdi_import, "import a raw image file as a new VDI (sparse: holes "
            "and zero objects are not written)", ("file", "name"), raw=True)
    p.add_argument("--size", metavar="SIZE",
                   help="VDI size (required when FILE is '-', standard input; may be larger "
                        "than FILE, never smaller); the size is rounded up to 512 bytes")
    p.add_argument("-P", "--prealloc", action="store_true",
                   help="allocate every data object, zero ones included")
    p.add_argument("-c", "--copies", metavar="COPIES",
                   help="specify the data redundancy level")
    p.add_argument("-z", "--block_size_shift", metavar="SHIFT",
                   help="specify the bit shift num for data object size")
    progress.add_option(p)
    p = cmd("export", vdi_export, "export a VDI (or a snapshot with -s) to a sparse raw "
            "image file ('-': standard output)", ("name", "file"), snap=True)
    progress.add_option(p)
