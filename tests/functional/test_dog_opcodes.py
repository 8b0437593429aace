"""Every opcode Sheepdog 1.0's dog can send, sent the way dog sends it
(docs/collie-dog-compat.md), to a real cluster: none may get the "unknown opcode"
answer (INVALID_PARMS) unless a 1.0 daemon answers so too -- FLUSH_VDI
without the object cache, NFS_CREATE/NFS_DELETE without NFS.

Sources of the request shapes: dog/cluster.c, dog/node.c, dog/vdi.c,
dog/common.c, dog/farm/farm.c, dog/trace.c, dog/nfs.c (header fields, flags,
payload and reply lengths)."""

import struct
import time

import pytest
from harness import wait_for

from collie.queries import MD_INFO_SIZE
from sheep import proto
from sheep.proto import Op, Request
from sheep.proto.errors import CODES

pytestmark = pytest.mark.cluster

W = proto.SD_FLAG_CMD_WRITE
INVALID = CODES["INVALID_PARMS"]


def _req(op, flags=0, data_length=0, **fields):
    r = Request(op, flags=flags, data_length=data_length)
    for k, v in fields.items():
        setattr(r.args, k, v)
    return r


def test_every_dog_opcode_is_known(make_cluster, tmp_path):
    c = make_cluster(3, extra=["-V", "128"])  # fixed vnodes: SET_VNODES applies
    c.wait_members(3)
    cl = c.nodes[0].client()
    cl.format(copies=2, flags=0)
    wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                         for n in c.nodes), 10, what="cluster running")
    conn = cl.conn
    seen = {}

    def send(name, req, payload=b"", expect=None):
        rsp, body = conn.request(req, payload)
        seen[name] = rsp.result
        if expect is not None:
            assert rsp.result in expect, (name, hex(rsp.result))
        else:
            assert rsp.result != INVALID, f"{name}: answered as an unknown opcode"
        return rsp, body

    name256 = proto.vdi_name_payload("v")
    name512 = proto.vdi_name_payload("v", "")
    # cluster / node queries (dog/cluster.c, dog/node.c, dog/dog.c update_node_list)
    send("GET_NODE_LIST", _req(Op.GET_NODE_LIST, data_length=proto.SD_MAX_NODES * 80), expect={0})
    send("STAT_CLUSTER", _req(Op.STAT_CLUSTER, data_length=48 + 80 * 3, nodes_nr=3), expect={0})
    send("CLUSTER_INFO", _req(Op.CLUSTER_INFO, data_length=proto.CLUSTER_INFO_SIZE), expect={0})
    send("GET_STORE_LIST", _req(Op.GET_STORE_LIST, data_length=512), expect={0})
    send("STAT_SHEEP", _req(Op.STAT_SHEEP), expect={0})
    send("STAT_RECOVERY", _req(Op.STAT_RECOVERY, data_length=24), expect={0})
    rsp, body = send("STAT", _req(Op.STAT, data_length=proto.SdStat.SIZE), expect={0})
    assert len(body) == proto.SdStat.SIZE
    send("GET_LOGLEVEL", _req(Op.GET_LOGLEVEL, data_length=4), expect={0})
    send("SET_LOGLEVEL", _req(Op.SET_LOGLEVEL, W, 4), struct.pack("<i", 6), expect={0})
    rsp, thr = send("GET_RECOVERY", _req(Op.GET_RECOVERY, data_length=24), expect={0})
    send("SET_RECOVERY", _req(Op.SET_RECOVERY, W, 24), thr.ljust(24, b"\0"), expect={0})
    send("GET_VNODES", _req(Op.GET_VNODES, data_length=4), expect={0})
    # dog's "node vnodes set" payload is 8 bytes; the daemon reads the int at offset 0
    send("SET_VNODES", _req(Op.SET_VNODES, W, 8), struct.pack("<q", 100), expect={0})
    wait_for(lambda: [n.nr_vnodes for n in cl.nodes()][0] == 100, 10, what="vnodes 100")
    send("DISABLE_RECOVER", _req(Op.DISABLE_RECOVER), expect={0})
    send("ENABLE_RECOVER", _req(Op.ENABLE_RECOVER), expect={0})
    send("REWEIGHT", _req(Op.REWEIGHT), expect={0})
    send("FORCE_RECOVER", _req(Op.FORCE_RECOVER, data_length=proto.SD_MAX_NODES * 80),
         expect={CODES["FORCE_RECOVER"]})  # a running cluster refuses, as 1.0
    send("ALTER_CLUSTER_COPY", _req(Op.ALTER_CLUSTER_COPY, copies=2), expect={0})

    # VDIs and objects (dog/vdi.c, dog/common.c)
    rsp, _ = send("NEW_VDI", _req(Op.NEW_VDI, W, 256, vdi_size=8 << 20, copies=2), name256,
                  expect={0})
    vid = rsp.args.vdi_id
    rsp, _ = send("GET_VDI_INFO", _req(Op.GET_VDI_INFO, W, 512), name512, expect={0})
    assert rsp.args.vdi_id == vid
    send("READ_VDIS", _req(Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE), expect={0})
    send("READ_DEL_VDIS", _req(Op.READ_DEL_VDIS, data_length=proto.VDI_BITMAP_SIZE),
         expect={0})
    ioid = proto.vid_to_vdi_oid(vid)
    send("READ_OBJ", _req(Op.READ_OBJ, proto.SD_FLAG_CMD_DIRECT, 4672, oid=ioid), expect={0})
    send("WRITE_OBJ", _req(Op.WRITE_OBJ, W, 256, oid=ioid, offset=256, copies=2),
         bytes(256), expect={0})
    doid = proto.vid_to_data_oid(vid, 0)
    send("CREATE_AND_WRITE_OBJ", _req(Op.CREATE_AND_WRITE_OBJ, W, 512, oid=doid, copies=2),
         b"x" * 512, expect={0})
    send("WRITE_OBJ(index)", _req(Op.WRITE_OBJ, W, 4, oid=ioid, copies=2,
                                  offset=proto.data_vdi_id_offset(0)),
         vid.to_bytes(4, "little"), expect={0})
    # local: this node may not hold doid (copies 2 of 3)
    send("GET_HASH", _req(Op.GET_HASH, oid=doid), expect={0, CODES["NO_OBJ"]})
    send("EXIST", _req(Op.EXIST, oid=doid), expect={0, CODES["NO_OBJ"]})
    send("OIDS_EXIST", _req(Op.OIDS_EXIST, W | proto.SD_FLAG_CMD_PIGGYBACK, 8),
         struct.pack("<Q", doid), expect={0, CODES["NO_OBJ"]})
    results = set()
    for n in c.nodes[1:]:  # fetch the object from a node holding it (2 copies of 3)
        rep = _req(Op.REPAIR_REPLICA, oid=doid, port=n.port)
        rep.args.addr = proto.addr_from_str("127.0.0.1")
        results.add(send("REPAIR_REPLICA", rep)[0].result)
    assert 0 in results
    attr = proto.VdiAttr(name=proto.pad("v", 256), key=proto.pad("k", 256), value_len=1,
                         value=proto.pad("1", 65536))
    send("GET_VDI_ATTR", _req(Op.GET_VDI_ATTR, W | proto.SD_FLAG_CMD_CREAT,
                              proto.SD_ATTR_OBJ_SIZE), attr.pack(), expect={0})
    send("GET_VDI_COPIES", _req(Op.GET_VDI_COPIES, data_length=1 << 20), expect={0})
    send("RELEASE_VDI", _req(Op.RELEASE_VDI, base_vdi_id=vid, type=proto.LOCK_TYPE_NORMAL),
         expect={0})
    alt = _req(Op.ALTER_VDI_COPY, new_vid=vid, copies=2)
    send("ALTER_VDI_COPY", alt)
    # vdi cache (dog/vdi.c): a daemon without the object cache, as 1.0 built so
    send("FLUSH_VDI", _req(Op.FLUSH_VDI), expect={INVALID})
    send("DELETE_CACHE", _req(Op.DELETE_CACHE, oid=ioid), expect={0})
    rsp, body = send("GET_CACHE_INFO", _req(Op.GET_CACHE_INFO, data_length=4096), expect={0})
    assert body == bytes(len(body))
    send("CACHE_PURGE", _req(Op.CACHE_PURGE, W, 0, oid=ioid), expect={0})
    # multi-disk (dog/node.c md_info, do_plug_unplug)
    send("MD_INFO", _req(Op.MD_INFO, data_length=MD_INFO_SIZE))
    disk = str(tmp_path / "extra").encode() + b"\0"
    send("MD_PLUG", _req(Op.MD_PLUG, W, len(disk)), disk)
    send("MD_UNPLUG", _req(Op.MD_UNPLUG, W, len(disk)), disk)
    # tracer (dog/trace.c, built with HAVE_TRACE): nothing traced, nothing to read
    send("TRACE_ENABLE", _req(Op.TRACE_ENABLE, W, 6), b"graph\0", expect={0})
    send("TRACE_DISABLE", _req(Op.TRACE_DISABLE, W, 6), b"graph\0", expect={0})
    send("TRACE_STATUS", _req(Op.TRACE_STATUS, data_length=4096), expect={0})
    send("TRACE_READ_BUF", _req(Op.TRACE_READ_BUF, data_length=4096), expect={0})
    # NFS (dog/nfs.c, only built with HAVE_NFS): a 1.0 daemon without NFS has no handler
    send("NFS_CREATE", _req(Op.NFS_CREATE, W, 256), name256, expect={INVALID})
    send("NFS_DELETE", _req(Op.NFS_DELETE, W, 256), name256, expect={INVALID})
    # farm (dog/farm/farm.c notify_vdi_add): register a vid with its copies
    free_vid = vid ^ 0x1
    send("NOTIFY_VDI_ADD", _req(Op.NOTIFY_VDI_ADD, new_vid=free_vid, copies=2, set_bitmap=1),
         expect={0})
    _, bm = conn.request(_req(Op.READ_VDIS, data_length=proto.VDI_BITMAP_SIZE))
    assert bm[free_vid >> 3] & (1 << (free_vid & 7))
    send("DEL_VDI", _req(Op.DEL_VDI, W, 512), name512, expect={0})

    # the destructive ones last: format, kill a node, shut down
    send("MAKE_FS", _req(Op.MAKE_FS, W, 6, copies=2, ctime=proto.sd_time(time.time())),
         b"plain\0", expect={0})
    k = c.nodes[2].client()
    rsp, _ = k.conn.request(_req(Op.KILL_NODE))
    assert rsp.result == 0
    wait_for(lambda: not c.nodes[2].alive(), 10, what="node 2 killed")
    send("SHUTDOWN", _req(Op.SHUTDOWN), expect={0})
    assert len(seen) >= 50
