"""``collie vdi backup/restore``, ``collie vdi alter-copy``, ``collie cluster alter-copy``.

Backup format (Sheepdog 1.0's ``dog vdi backup``, dog/vdi.c), little-endian:

* header ``<II``: version = 1, magic = 0x11921192;
* per changed object: ``<IIII`` idx, offset, length, reserved (0), then
  ``length`` bytes: bytes [offset, offset+length) of object ``idx`` of the
  *to* snapshot.  ``offset``/``length`` are the object with the leading and
  trailing 512-byte sectors that equal the *from* snapshot's object cut off;
  objects that are identical (or unallocated in both) are skipped;
* end marker: the same 16-byte record with idx = 0xFFFFFFFF, rest 0.

Restore (also as dog): the working VDI is deleted, a clone of the -s
snapshot is created under the name and every record is written into it
(copy-on-write from the snapshot's object), then the name is snapshotted
back by a rebase onto the former working VDI's parent: the restored image
becomes a snapshot (id = the previous latest + 1) and the working VDI is a
fresh child of the snapshot it descended from before.

Unlike dog, the whole stream is validated before anything changes (header,
every record inside the snapshot's size and object size, all data present,
the end marker): a bad or empty stream (``< /dev/null``) is refused with the
working VDI untouched.  A regular file on stdin is read twice (validated,
then rewound); a pipe is copied to a temporary file (``$TMPDIR``) while it is
validated, so restoring from a pipe needs that much free space there.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import tempfile

from collie import progress
from collie.args import parse_copy, snapshot_arg
from collie.client import EXIT_SUCCESS, EXIT_SYSFAIL, EXIT_USAGE, Client, CollieError
from collie.output import Out
from collie.prompt import confirm
from collie.queries import inode_index
from collie.vdi_delete import do_vdi_delete
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import strerror

VDI_BACKUP_FORMAT_VERSION = 1
VDI_BACKUP_MAGIC = 0x11921192
HDR = struct.Struct("<II")
REC = struct.Struct("<IIII")
END_IDX = 0xFFFFFFFF
SECTOR_SIZE = 512
SD_DEFAULT_COPIES = 3


def compact(to_data: bytes, from_data: bytes) -> tuple[int, int]:
    """(offset, length) of ``to_data`` without the sectors equal to ``from_data`` at both ends."""
    size = len(to_data)
    off, length = 0, size
    while length > 0 and to_data[off:off + SECTOR_SIZE] == from_data[off:off + SECTOR_SIZE]:
        off += SECTOR_SIZE
        length -= SECTOR_SIZE
    end = size
    while length > 0 and to_data[end - SECTOR_SIZE:end] == from_data[end - SECTOR_SIZE:end]:
        end -= SECTOR_SIZE
        length -= SECTOR_SIZE
    return off, max(length, 0)


def vdi_backup(args, client: Client, out: Out) -> int:
    to_id, to_tag = snapshot_arg(args.snapshot)
    from_id, from_tag = snapshot_arg(args.from_snapshot)
    if (not to_id and not to_tag) or (not from_id and not from_tag):
        raise CollieError("Please specify snapshots with '-F' and '-s' options", code=EXIT_USAGE)
    _, from_inode, from_raw = client.read_vdi_obj(args.name, from_id, from_tag, proto.SD_INODE_SIZE)
    _, to_inode, to_raw = client.read_vdi_obj(args.name, to_id, to_tag, proto.SD_INODE_SIZE)
    osize = from_inode.object_size
    from_vids = inode_index(from_raw, from_inode)
    to_vids = inode_index(to_raw, to_inode)
    write = out.write_bytes
    write(HDR.pack(VDI_BACKUP_FORMAT_VERSION, VDI_BACKUP_MAGIC))
    with progress.bar(args, len(to_vids), f"backup {args.name}", unit="obj") as bar:
        for idx, to_vid in enumerate(to_vids):
            _backup_one(client, write, osize, idx, to_vid, from_vids)
            bar.update(1)
    write(REC.pack(END_IDX, 0, 0, 0))
    return EXIT_SUCCESS


def _backup_one(client: Client, write, osize: int, idx: int, to_vid: int,
                from_vids: list[int]) -> None:
    """Write the record of object ``idx`` (nothing when it did not change)."""
    from_vid = from_vids[idx] if idx < len(from_vids) else 0
    if not to_vid and not from_vid:
        return
    if to_vid == from_vid:
        return  # the same object: nothing changed
    to_data = (client.read_object(proto.vid_to_data_oid(to_vid, idx), osize, 0, direct=True)
               if to_vid else bytes(osize))
    from_data = (client.read_object(proto.vid_to_data_oid(from_vid, idx), osize, 0,
                                    direct=True) if from_vid else bytes(osize))
    off, length = compact(to_data, from_data)
    if not length:
        return
    write(REC.pack(idx, off, length, 0) + to_data[off:off + length])


def _read_exact(stream, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _seekable_file(stream) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and stream.seekable()
    except (OSError, ValueError, AttributeError):
        return False


def validated_stream(stream, inode: proto.InodeHeader):
    """Read the whole backup stream and check it against the snapshot
    ``inode``; return a file positioned at the stream's start to restore
    from (the stream itself when it is a regular file, else a temporary copy).
    Raises CollieError (EXIT_SYSFAIL, as dog's "corrupted") on any defect."""
    copy = None
    if _seekable_file(stream):
        start = stream.tell()
    else:
        copy = tempfile.TemporaryFile(prefix="collie-restore-")
    try:
        def read(n):
            b = _read_exact(stream, n)
            if copy is not None:
                copy.write(b)
            return b
        hdr = read(HDR.size)
        if len(hdr) != HDR.size or HDR.unpack(hdr) != (VDI_BACKUP_FORMAT_VERSION,
                                                       VDI_BACKUP_MAGIC):
            raise CollieError("The backup file is corrupted: no backup header"
                              + (" (empty input)" if not hdr else ""),
                              "nothing was changed", code=EXIT_SYSFAIL)
        osize = inode.object_size
        nr_objs = (inode.vdi_size + osize - 1) // osize
        nrec = 0
        while True:
            rec = read(REC.size)
            if len(rec) != REC.size:
                raise CollieError(f"The backup file is corrupted: it ends after {nrec} "
                                  "records without the end marker", "nothing was changed",
                                  code=EXIT_SYSFAIL)
            idx, off, length, _ = REC.unpack(rec)
            if idx == END_IDX:
                break
            if idx >= nr_objs or off + length > osize:
                raise CollieError(f"The backup file is corrupted: record {nrec} (object "
                                  f"{idx}, bytes {off}+{length}) is outside the snapshot "
                                  f"({nr_objs} objects of {osize} bytes)",
                                  "nothing was changed", code=EXIT_SYSFAIL)
            while length:  # in bounded pieces: a record may be a whole object
                n = min(length, 1 << 20)
                if len(read(n)) != n:
                    raise CollieError(f"The backup file is corrupted: record {nrec} is cut "
                                      "short", "nothing was changed", code=EXIT_SYSFAIL)
                length -= n
            nrec += 1
        if copy is None:
            stream.seek(start)
            return stream
        copy.seek(0)
        return copy
    except BaseException:
        if copy is not None:
            copy.close()
        raise


def _do_restore(client: Client, name: str, snapid: int, tag: str, stream,
                bar=progress.NULL) -> None:
    hdr = _read_exact(stream, HDR.size)
    if len(hdr) != HDR.size or HDR.unpack(hdr) != (VDI_BACKUP_FORMAT_VERSION, VDI_BACKUP_MAGIC):
        raise CollieError("The backup file is corrupted", code=EXIT_SYSFAIL)
    base_vid, inode, raw = client.read_vdi_obj(name, snapid, tag, proto.SD_INODE_SIZE)
    parent_vids = inode_index(raw, inode)
    vid = client.do_vdi_create(name, inode.vdi_size, base_vid, False, inode.nr_copies,
                               inode.copy_policy, inode.store_policy, inode.block_size_shift)
    while True:
        rec = _read_exact(stream, REC.size)
        if len(rec) != REC.size:
            raise CollieError("failed to read backup data", code=EXIT_SYSFAIL)
        idx, off, length, _ = REC.unpack(rec)
        if idx == END_IDX:
            return
        data = _read_exact(stream, length)
        bar.update(REC.size + len(data))
        if len(data) != length or off + length > inode.object_size:
            raise CollieError("failed to read backup data", code=EXIT_SYSFAIL)
        parent = parent_vids[idx] if idx < len(parent_vids) else 0
        try:
            client.write_object(proto.vid_to_data_oid(vid, idx), data, off,
                                cow_oid=proto.vid_to_data_oid(parent, idx) if parent else 0,
                                copies=inode.nr_copies, copy_policy=inode.copy_policy,
                                create=True, direct=True)
            client.write_object(proto.vid_to_vdi_oid(vid), vid.to_bytes(4, "little"),
                                proto.data_vdi_id_offset(idx), copies=inode.nr_copies,
                                copy_policy=inode.copy_policy, direct=True)
        except CollieError as e:
            try:
                do_vdi_delete(client, name, 0, "")
            except CollieError:
                pass
            raise CollieError(*e.messages, "failed to restore backup") from None


def vdi_restore(args, client: Client, out: Out) -> int:
    snapid, tag = snapshot_arg(args.snapshot)
    if not snapid and not tag:
        raise CollieError("We can restore a backup file only to snapshots",
                          "Please specify the '-s' option", code=EXIT_USAGE)
    try:
        _, snap_inode, _ = client.read_vdi_obj(args.name, snapid, tag,
                                               proto.SD_INODE_HEADER_SIZE)
    except CollieError as e:
        raise CollieError(*e.messages, f"Snapshot ID {snapid} or tag {tag} doesn't exist",
                          code=e.code) from None
    _, current, _ = client.read_vdi_obj(args.name, 0, "", proto.SD_INODE_HEADER_SIZE)
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    if hasattr(stream, "isatty") and stream.isatty():
        raise CollieError("stdin must be pipe", code=EXIT_USAGE)
    stream = validated_stream(stream, snap_inode)  # before anything changes
    try:
        do_vdi_delete(client, args.name, 0, "", force_option="'collie vdi lock unlock'")
    except CollieError as e:
        raise CollieError(*e.messages, "Failed to delete the current state") from None
    ret, err = EXIT_SUCCESS, None
    try:
        with progress.bar(args, None, f"restore {args.name}") as bar:
            _do_restore(client, args.name, snapid, tag, stream, bar)
    except CollieError as e:
        ret, err = e.code, e
    try:  # recreate the current VDI (the restored one becomes a snapshot)
        client.do_vdi_create(args.name, current.vdi_size, current.parent_vdi_id, True,
                             current.nr_copies, current.copy_policy, current.store_policy,
                             current.block_size_shift)
    except CollieError as e:
        raise CollieError(*(err.messages if err else []), *e.messages,
                          "failed to resume the current vdi", code=e.code) from None
    if err:
        raise err
    return ret


# ---------------------------------------------------------------------------
# redundancy


def _copies_arg(text: str | None, what: str, out: Out) -> int:
    if not text:
        out.line(f"The {what}'s redundancy level is not specified, use "
                 f"{SD_DEFAULT_COPIES} as default.")
        return SD_DEFAULT_COPIES
    copies, policy = parse_copy(text)
    if policy:
        raise CollieError("Changing redundancy level of erasure coded vdi is not supported yet.",
                          code=EXIT_USAGE)
    return copies


def vdi_alter_copy(args, client: Client, out: Out) -> int:
    client.update_node_list()
    copies = _copies_arg(args.copies, "vdi", out)
    if not args.force and copies > len(client.nodes):
        confirm(out, f"Number of copies ({copies}) is larger than number of nodes "
                     f"({len(client.nodes)}).\nAre you sure you want to continue? [yes/no]: ")
    try:
        vid, inode, _ = client.read_vdi_obj(args.name, 0, "", proto.SD_INODE_HEADER_SIZE)
    except CollieError:
        raise CollieError(f"Reading {args.name}'s vdi object failure.") from None
    if inode.copy_policy:
        raise CollieError(f"{args.name}'s copy policy is erasure code, changing it is not "
                          f"supported yet.")
    old = inode.nr_copies
    if old == copies:
        raise CollieError(f"{args.name}'s redundancy level is already set to {old}, "
                          f"nothing changed.")
    entries = client.parse_vdi(with_index=False)
    if inode.parent_vdi_id or any(e.inode.parent_vdi_id == vid for e in entries):
        raise CollieError("Only standalone vdi supports changing redundancy level.",
                          f"Please clone {args.name} with -n (--no-share) option first.")
    if not args.force:
        confirm(out, "    __\n   ()'`;\n   /\\|`  Caution! Changing VDI's redundancy level "
                     "will affect\n  /  |   the VDI itself only and trigger recovery.\n"
                     "(/_)_|_  Are you sure you want to continue? [yes/no]: ")
    inode.nr_copies = copies
    try:
        client.write_object(proto.vid_to_vdi_oid(vid), inode.pack(), 0, copies=old,
                            copy_policy=inode.copy_policy, direct=True)
    except CollieError as e:
        raise CollieError(*e.messages, f"Overwrite the vdi object's header of {args.name} "
                                       f"failure while setting its redundancy level.") from None
    req = Request(Op.ALTER_VDI_COPY)
    req.args.new_vid, req.args.copies = vid, copies
    req.args.block_size_shift = inode.block_size_shift
    rsp, _ = client.exec(req)
    if rsp.result != 0:
        raise CollieError(f"Changing {args.name}'s redundancy level failure: "
                          f"{strerror(rsp.result)}")
    out.line(f"{args.name}'s redundancy level is set to {copies}, the old one was {old}.")
    return EXIT_SUCCESS


def cluster_alter_copy(args, client: Client, out: Out) -> int:
    client.update_node_list()
    copies = _copies_arg(args.copies, "cluster", out)
    if not args.force and copies > len(client.nodes):
        confirm(out, f"Number of copies ({copies}) is larger than number of nodes "
                     f"({len(client.nodes)}).\nAre you sure you want to continue? [yes/no]: ")
    rsp, data = client.exec(Request(Op.STAT_CLUSTER, data_length=proto.EpochLogHeader.SIZE))
    if rsp.result != 0:
        raise CollieError(f"Response's result: {strerror(rsp.result)}")
    log = proto.EpochLogHeader.unpack(data.ljust(proto.EpochLogHeader.SIZE, b"\0"))
    if log.copy_policy:
        raise CollieError("The cluster's copy policy is erasure code, changing it is not "
                          "supported yet.")
    if log.nr_copies == copies:
        raise CollieError(f"The cluster's redundancy level is already set to {copies}, "
                          f"nothing changed.")
    if not args.force:
        confirm(out, "    __\n   ()'`;\n   /\\|`  Caution! Changing cluster's redundancy "
                     "level will affect\n  /  |   all the VDIs to be created later.\n"
                     "(/_)_|_  Are you sure you want to continue? [yes/no]: ")
    req = Request(Op.ALTER_CLUSTER_COPY)
    req.args.copies = copies
    rsp, _ = client.exec(req)
    if rsp.result != 0:
        raise CollieError(f"Changing the cluster's redundancy level failure: "
                          f"{strerror(rsp.result)}")
    out.line(f"The cluster's redundancy level is set to {copies}, the old one was "
             f"{log.nr_copies}.")
    return EXIT_SUCCESS


def register_vdi(cmd) -> None:
    p = cmd("backup", vdi_backup, "create an incremental backup between two snapshots",
            ("name",), snap=True)
    p.add_argument("-F", "--from", dest="from_snapshot", metavar="SNAPSHOT",
                   help="the older snapshot (id or tag) of the increment")
    progress.add_option(p)
    p = cmd("restore", vdi_restore, "restore snapshot images from a backup", ("name",),
            snap=True)
    progress.add_option(p)
    p = cmd("alter-copy", vdi_alter_copy, "set the vdi's redundancy level", ("name",))
    p.add_argument("-c", "--copies", metavar="COPIES", help="specify the data redundancy level")
    p.add_argument("-f", "--force", action="store_true", help="do operation forcibly")


def register_cluster(reg, sub) -> None:
    p = reg.add("alter-copy", cluster_alter_copy, "set the cluster's redundancy level",
                subparsers=sub)
    p.add_argument("-c", "--copies", metavar="COPIES", help="specify the data redundancy level")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")

