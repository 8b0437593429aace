"""``collie vdi read`` and ``vdi write``: a VDI's bytes to standard output and
from standard input, object by object, as dog's vdi_read/vdi_write.

Guarantees: ``vdi write`` never writes past the VDI end (input that does not
fit is refused: from a regular file before anything is written, from a pipe
before the chunk that overflows); all-zero data is not written into an object
that is not allocated (not even shared with a parent) -- it reads as zeros --
and the object table entry is re-read first, so zeros still land in an object
another writer allocated meanwhile.  Progress bars go to stderr only
(:mod:`collie.progress`).
"""

from __future__ import annotations

import os
import stat
import sys

from collie import progress, vdi_image
from collie.args import size_arg, snapshot_arg
from collie.client import EXIT_SUCCESS, Client, CollieError, unpack_vids
from collie.output import Out
from sheep import proto


def _range_args(args) -> tuple[int, int | None]:
    offset = size_arg(args.offset) if args.offset is not None else 0
    length = size_arg(args.len) if args.len is not None else None
    return offset, length


def vdi_read(args, client: Client, out: Out) -> int:
    offset, length = _range_args(args)
    snapid, tag = snapshot_arg(args.snapshot)
    _, inode, raw = client.read_vdi_obj(args.name, snapid, tag, proto.SD_INODE_SIZE)
    if inode.vdi_size < offset:
        raise CollieError("Read offset is beyond the end of the VDI")
    vids = unpack_vids(raw[proto.SD_INODE_HEADER_SIZE:proto.SD_INODE_INDEX_END])
    osize = inode.object_size
    total = inode.vdi_size - offset
    if length is not None:
        total = min(total, length)
    idx, off, done = offset // osize, offset % osize, 0
    with progress.bar(args, total, f"read {args.name}") as bar:
        while done < total:
            n = min(total - done, osize - off)
            vid = vids[idx] if idx < len(vids) else 0
            if vid:
                try:
                    data = client.read_object(proto.vid_to_data_oid(vid, idx), n, off)
                except CollieError as e:
                    raise CollieError(*e.messages, "Failed to read VDI") from None
            else:
                data = bytes(n)
            out.write_bytes(data)
            off, idx, done = 0, idx + 1, done + n
            bar.update(n)
    return EXIT_SUCCESS


def _read_stdin(n: int) -> bytes:
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    chunks, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        if isinstance(b, str):
            b = b.encode()
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _refuse_oversized_file(room: int, offset: int, vdi_size: int) -> None:
    """``vdi write NAME [OFFSET]`` from a regular file longer than the space
    up to the VDI end: refused before anything is written (a pipe is checked
    as it is read, see :func:`vdi_write`)."""
    try:
        st = os.fstat(sys.stdin.fileno())
        if not stat.S_ISREG(st.st_mode):
            return
        left = st.st_size - os.lseek(sys.stdin.fileno(), 0, os.SEEK_CUR)
    except (OSError, ValueError, AttributeError):
        return
    if left > room:
        raise CollieError(f"Input is larger than the VDI: {left} bytes from offset {offset} "
                          f"do not fit in {vdi_size} bytes (nothing was written)")


def _inode_entry(client: Client, vid: int, idx: int) -> int:
    """data_vdi_id[idx] of VDI ``vid`` as the cluster has it now."""
    raw = client.read_object(proto.vid_to_vdi_oid(vid), 4, proto.data_vdi_id_offset(idx),
                             direct=True)
    return int.from_bytes(raw, "little")


def vdi_write(args, client: Client, out: Out) -> int:
    """Write stdin to the VDI from OFFSET.  With LEN, exactly LEN bytes (a
    range past the end is refused).  Without, stdin up to EOF: input longer
    than the room up to the VDI end is an error (exit 1) — nothing is
    written when stdin is a regular file, and from a pipe nothing past the
    end and not the last chunk (the message says how much was written)."""
    offset, length = _range_args(args)
    vid, inode, raw = client.read_vdi_obj(args.name, 0, "", proto.SD_INODE_SIZE)
    if inode.vdi_size < offset:
        raise CollieError("Write offset is beyond the end of the VDI")
    if length is not None and offset + length > inode.vdi_size:
        raise CollieError(f"Write range {offset}+{length} is beyond the end of the VDI "
                          f"(size {inode.vdi_size})")
    vids = unpack_vids(raw[proto.SD_INODE_HEADER_SIZE:proto.SD_INODE_INDEX_END])
    osize = inode.object_size
    total = inode.vdi_size - offset if length is None else length
    if length is None:
        _refuse_oversized_file(inode.vdi_size - offset, offset, inode.vdi_size)
        if total == 0 and _read_stdin(1):
            raise CollieError(f"Input is larger than the VDI (size {inode.vdi_size}): "
                              f"offset {offset} is its end (nothing was written)")
    flags = proto.SD_FLAG_CMD_CACHE if args.writeback else 0
    idx, off, done = offset // osize, offset % osize, 0
    bar = progress.bar(args, total, f"write {args.name}")
    while done < total:
        n = min(total - done, osize - off)
        last = length is None and done + n == total
        data = _read_stdin(n + 1 if last else n)  # the last chunk: is there more?
        if len(data) > n:  # input past the VDI end: this chunk is not written
            bar.close()
            raise CollieError(f"Input is larger than the VDI (size {inode.vdi_size}): "
                              f"{done} bytes were written from offset {offset}, the "
                              f"last {n} bytes up to the end and the rest were not")
        if len(data) < n:  # short read: send this (zero-padded) chunk and stop
            data = data + bytes(n - len(data))
            total = done + n
        cur = vids[idx]
        if not cur and vdi_image.is_zero(data):
            # the table was read before standard input: another writer may
            # have allocated the object since; its data must get the zeros
            try:
                cur = vids[idx] = _inode_entry(client, vid, idx)
            except CollieError as e:
                bar.close()
                raise CollieError(*e.messages, "Failed to write VDI") from None
        create, old_oid = not cur, 0
        if cur and cur != inode.vdi_id:
            create, old_oid = True, proto.vid_to_data_oid(cur, idx)
        # an unallocated object (not even shared with a parent) reads as
        # zeros: writing zeros into it would only allocate it
        if cur or not vdi_image.is_zero(data):
            vids[idx] = inode.vdi_id
            try:
                client.write_object(proto.vid_to_data_oid(inode.vdi_id, idx), data, off,
                                    cow_oid=old_oid, flags=flags, copies=inode.nr_copies,
                                    copy_policy=inode.copy_policy, create=create)
                if create:
                    client.write_inode_vid(inode, vid, idx, vid, flags=flags)
            except CollieError as e:
                bar.close()
                raise CollieError(*e.messages, "Failed to write VDI") from None
        off += n
        if off == osize:
            off, idx = 0, idx + 1
        done += n
        bar.update(n)
    bar.close()
    return EXIT_SUCCESS
