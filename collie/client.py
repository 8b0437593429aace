"""Talking to sheep the way dog does (docs/protocol.md §8.2).

:class:`Client` wraps one :class:`sheep.proto.connection.BlockingConnection` to the daemon
given with ``-a/-p`` plus lazily opened connections to the other cluster
members (for requests dog sends "to every node").  Every reply's ``result``
is checked by the caller or by the helpers here; failures are raised as
:class:`CollieError` carrying dog's message and exit code, and
``collie.__main__`` prints the message on stderr and exits with the code.

Helpers named after dog's: ``update_node_list`` ("node list refresh"),
``parse_vdi``, ``find_vdi_name``, ``read_vdi_obj``, ``read_object``,
``write_object``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sheep import proto
from sheep.proto import Op, Request, connection
from sheep.proto.errors import strerror

# exit codes (include/exits.h)
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_SYSFAIL = 2
EXIT_EXISTS = 3
EXIT_FULL = 4
EXIT_MISSING = 5
EXIT_USAGE = 64

SD_RES_SUCCESS = 0
NODE_LIST_BUF = proto.SD_MAX_NODES * proto.SD_NODE_SIZE  # 491520
INODE_HEADER_READ = 4672  # what dog's parse_vdi reads for the header (§8.2)

#: connection factory; tests replace it to route node addresses to fakes
connect = connection.BlockingConnection


class CollieError(Exception):
    """A failure to report: ``messages`` go to stderr, ``code`` is the exit status."""

    def __init__(self, *messages: str, code: int = EXIT_FAILURE):
        super().__init__("\n".join(messages))
        self.messages = [m for m in messages if m]
        self.code = code


@dataclass
class VdiEntry:
    """One VDI as seen by parse_vdi: its header and (maybe) its index."""

    vid: int
    inode: proto.InodeHeader
    data_vdi_id: list[int]

    @property
    def name(self) -> str:
        return self.inode.name_str

    @property
    def tag(self) -> str:
        return self.inode.tag_str

    @property
    def snapid(self) -> int:
        return self.inode.snap_id if self.inode.is_snapshot else 0

    @property
    def is_clone(self) -> bool:
        return self.inode.snap_id == 1 and self.inode.parent_vdi_id != 0


def count_data_objs(inode: proto.InodeHeader) -> int:
    return inode.nr_objects


def unpack_vids(buf: bytes, count: int | None = None) -> list[int]:
    n = len(buf) // 4 if count is None else min(count, len(buf) // 4)
    return list(memoryview(buf[:4 * n]).cast("I")) if n else []


_NONZERO = re.compile(rb"[^\x00]")


def bitmap_bits(bitmap: bytes):
    """Yield the set bit numbers of a little-endian bitmap, ascending."""
    for m in _NONZERO.finditer(bitmap):
        byte_no = m.start()
        b = bitmap[byte_no]
        for bit in range(8):
            if b & (1 << bit):
                yield byte_no * 8 + bit


def bitmap_test(bitmap: bytes, nr: int) -> bool:
    return bool(bitmap[nr >> 3] & (1 << (nr & 7)))


def check_vdi_name(name: str) -> None:
    """Refuse a VDI name that does not fit 1.0's ``SD_MAX_VDI_LEN`` (256 bytes
    with the terminating NUL, so at most 255 bytes of UTF-8): dog cut it
    silently, and the cut name could then not be opened over NBD."""
    n = len(name.encode())
    if n >= proto.SD_MAX_VDI_LEN:
        raise CollieError(f"VDI name is too long: {n} bytes, at most "
                          f"{proto.SD_MAX_VDI_LEN - 1} (nothing was created)",
                          code=EXIT_USAGE)


class Client:
    def __init__(self, host: str = "127.0.0.1", port: int = proto.SD_PORT):
        self.host, self.port = host, port
        self._conn = None
        self._node_conns: dict[tuple[str, int], object] = {}
        self.nodes: list[proto.SdNode] = []
        self.epoch = 0
        self.cluster_flags = 0
        self.cluster_copies = 0  # from STAT_CLUSTER's first record (0: not known)

    # ---- transport -------------------------------------------------------

    def _open(self, host: str, port: int):
        try:
            return connect(host, port)
        except OSError as e:
            reason = e.strerror or str(e)
            raise CollieError(f"failed to connect to {host}:{port}: {reason}",
                              code=EXIT_SYSFAIL) from None

    def exec(self, req: Request, payload: bytes = b"") -> tuple[proto.Response, bytes]:
        """Send ``req`` to the -a/-p daemon; return (response, reply payload)."""
        if self._conn is None:
            self._conn = self._open(self.host, self.port)
        return self._do(self._conn, req, payload, f"{self.host}:{self.port}")

    def node_exec(self, node: proto.SdNode, req: Request,
                  payload: bytes = b"") -> tuple[proto.Response, bytes]:
        """Send ``req`` to one cluster member (its io address when it has one)."""
        if node.io_port:
            host, port = proto.addr_to_str(node.io_addr), node.io_port
        else:
            host, port = node.host, node.port
        key = (host, port)
        conn = self._node_conns.get(key)
        if conn is None:
            conn = self._node_conns[key] = self._open(host, port)
        return self._do(conn, req, payload, f"{host}:{port}")

    @staticmethod
    def _do(conn, req, payload, where):
        try:
            rsp, data = conn.request(req, payload)
        except (OSError, ConnectionError, ValueError) as e:
            raise CollieError(f"failed to communicate with {where}: {e}",
                              code=EXIT_SYSFAIL) from None
        expect = req.reply_capacity
        return rsp, data[:expect]

    def close(self) -> None:
        for c in [self._conn, *self._node_conns.values()]:
            if c is not None:
                c.close()
        self._conn = None
        self._node_conns.clear()

    # ---- node list -------------------------------------------------------

    def update_node_list(self) -> list[proto.SdNode]:
        """GET_NODE_LIST, then STAT_CLUSTER(48, nodes_nr 0) for flags/epoch."""
        req = Request(Op.GET_NODE_LIST, data_length=NODE_LIST_BUF)
        rsp, data = self.exec(req)
        if rsp.result != SD_RES_SUCCESS:
            raise CollieError(f"Failed to update node list: {strerror(rsp.result)}",
                              "Failed to get node list", code=EXIT_SYSFAIL)
        nodes = proto.unpack_nodes(data)
        if not nodes:
            raise CollieError("There are no active sheep daemons", code=EXIT_FAILURE)
        self.nodes = nodes
        self.epoch = rsp.epoch
        req = Request(Op.STAT_CLUSTER, data_length=proto.EpochLogHeader.SIZE)
        rsp, data = self.exec(req)
        if rsp.result == SD_RES_SUCCESS and len(data) >= proto.EpochLogHeader.SIZE:
            hdr = proto.EpochLogHeader.unpack(data)
            self.cluster_flags = hdr.flags
            self.cluster_copies = hdr.nr_copies
            self.epoch = hdr.epoch or rsp.epoch or self.epoch
        return nodes

    @property
    def nr_zones(self) -> int:
        return len({n.zone for n in self.nodes if n.nr_vnodes})

    # ---- objects ---------------------------------------------------------

    def read_object(self, oid: int, length: int, offset: int = 0,
                    direct: bool = False, copies: int = 0) -> bytes:
        req = Request(Op.READ_OBJ, data_length=length,
                      flags=proto.SD_FLAG_CMD_DIRECT if direct else 0)
        req.args.oid, req.args.offset, req.args.copies = oid, offset, copies
        rsp, data = self.exec(req)
        if rsp.result != SD_RES_SUCCESS:
            raise CollieError(f"Failed to read object {oid:x} {strerror(rsp.result)}",
                              code=EXIT_FAILURE)
        if len(data) < length:  # untrim_zero_blocks
            data = data + bytes(length - len(data))
        return data

    def write_object(self, oid: int, data: bytes, offset: int = 0, *,
                     cow_oid: int = 0, flags: int = 0, copies: int = 0,
                     copy_policy: int = 0, create: bool = False,
                     direct: bool = False) -> None:
        op = Op.CREATE_AND_WRITE_OBJ if create else Op.WRITE_OBJ
        f = flags | proto.SD_FLAG_CMD_WRITE
        if cow_oid:
            f |= proto.SD_FLAG_CMD_COW
        if direct:
            f |= proto.SD_FLAG_CMD_DIRECT
        req = Request(op, flags=f, data_length=len(data))
        a = req.args
        a.oid, a.cow_oid, a.copies, a.copy_policy, a.offset = (
            oid, cow_oid, copies, copy_policy, offset)
        rsp, _ = self.exec(req, data)
        if rsp.result != SD_RES_SUCCESS:
            raise CollieError(f"Failed to write object {oid:x}: {strerror(rsp.result)}",
                              code=EXIT_FAILURE)

    def write_inode_vid(self, inode: proto.InodeHeader, vid: int, idx: int,
                        value: int, flags: int = 0, direct: bool = False) -> None:
        """sd_inode_write_vid: update one 4-byte ``data_vdi_id`` entry."""
        self.write_object(proto.vid_to_vdi_oid(vid), value.to_bytes(4, "little"),
                          proto.data_vdi_id_offset(idx), flags=flags,
                          copies=inode.nr_copies, copy_policy=inode.copy_policy,
                          direct=direct)

    # ---- vdi bitmaps and inodes ------------------------------------------

    def _bitmap(self, op: int) -> bytes:
        rsp, data = self.exec(Request(op, data_length=proto.VDI_BITMAP_SIZE))
        if rsp.result != SD_RES_SUCCESS:
            raise CollieError(strerror(rsp.result), code=EXIT_SYSFAIL)
        return data.ljust(proto.VDI_BITMAP_SIZE, b"\0")

    def read_vdis(self) -> bytes:
        return self._bitmap(Op.READ_VDIS)

    def read_del_vdis(self) -> bytes:
        return self._bitmap(Op.READ_DEL_VDIS)

    def parse_vdi(self, with_index: bool = True, no_deleted: bool = True,
                  errors: list | None = None) -> list[VdiEntry]:
        """dog's parse_vdi: every live VDI with its header (and index)."""
        inuse = self.read_vdis()
        deleted = self.read_del_vdis()
        out = []
        for vid in bitmap_bits(inuse):
            if no_deleted and bitmap_test(deleted, vid):
                continue
            oid = proto.vid_to_vdi_oid(vid)
            try:
                hdr_buf = self.read_object(oid, INODE_HEADER_READ, 0, direct=True)
            except CollieError as e:
                if errors is not None:
                    errors.extend(e.messages + ["Failed to read inode header"])
                continue
            inode = proto.InodeHeader.unpack(hdr_buf)
            if inode.name[0] == 0:
                continue
            vids: list[int] = []
            if with_index:
                rlen = 4 * count_data_objs(inode)
                rlen = min(rlen, proto.SD_INODE_SIZE - proto.SD_INODE_HEADER_SIZE - 4)
                try:
                    idx_buf = self.read_object(oid, rlen, proto.SD_INODE_HEADER_SIZE,
                                               direct=True)
                except CollieError as e:
                    if errors is not None:
                        errors.extend(e.messages + ["Failed to read inode"])
                    continue
                vids = unpack_vids(idx_buf)
            out.append(VdiEntry(vid, inode, vids))
        return out

    def find_vdi_name(self, name: str, snapid: int = 0, tag: str = "") -> tuple[int, int]:
        """GET_VDI_INFO with the 512-byte name+tag payload; (result, vid)."""
        req = Request(Op.GET_VDI_INFO, flags=proto.SD_FLAG_CMD_WRITE,
                      data_length=proto.SD_MAX_VDI_LEN + proto.SD_MAX_VDI_TAG_LEN)
        req.args.snapid = snapid
        rsp, _ = self.exec(req, proto.vdi_name_payload(name, tag or ""))
        self.last_vdi_info = rsp  # its in-use bits: collie.vdi_delete
        if rsp.result != SD_RES_SUCCESS:
            return rsp.result, 0
        return SD_RES_SUCCESS, rsp.args.vdi_id

    def read_vdi_obj(self, name: str, snapid: int, tag: str,
                     size: int) -> tuple[int, proto.InodeHeader, bytes]:
        """find + READ_OBJ of the first ``size`` inode bytes: (vid, header, raw)."""
        ret, vid = self.find_vdi_name(name, snapid, tag)
        if ret != SD_RES_SUCCESS:
            raise CollieError(f"Failed to open VDI {name} (snapshot id: {snapid} "
                              f"snapshot tag: {tag}): {strerror(ret)}",
                              code=EXIT_FAILURE)
        try:
            buf = self.read_object(proto.vid_to_vdi_oid(vid), size, 0, direct=True)
        except CollieError as e:
            if snapid:
                what = f"Failed to read a snapshot {name}:{snapid}"
            elif tag:
                what = f"Failed to read a snapshot {name}:{tag}"
            else:
                what = f"Failed to read a vdi {name}"
            raise CollieError(*e.messages, what, code=EXIT_FAILURE) from None
        return vid, proto.InodeHeader.unpack(buf), buf

    def do_vdi_create(self, name: str, size: int, base_vid: int = 0,
                      snapshot: bool = False, copies: int = 0,
                      copy_policy: int = 0, store_policy: int = 0,
                      block_size_shift: int = 0) -> int:
        check_vdi_name(name)
        req = Request(Op.NEW_VDI, flags=proto.SD_FLAG_CMD_WRITE,
                      data_length=proto.SD_MAX_VDI_LEN)
        a = req.args
        a.base_vdi_id, a.snapid, a.vdi_size = base_vid, 1 if snapshot else 0, size
        a.copies, a.copy_policy = copies, copy_policy
        a.store_policy, a.block_size_shift = store_policy, block_size_shift
        rsp, _ = self.exec(req, proto.vdi_name_payload(name))
        if rsp.result != SD_RES_SUCCESS:
            raise CollieError(f"Failed to create VDI {name}: {strerror(rsp.result)}",
                              code=EXIT_FAILURE)
        self.last_new_vdi_copies = rsp.args.copies  # the VDI's copies (0: not told)
        return rsp.args.vdi_id

    def cluster_info(self) -> tuple[proto.Response, bytes]:
        return self.exec(Request(Op.CLUSTER_INFO, data_length=proto.CLUSTER_INFO_SIZE))
