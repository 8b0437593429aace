"""Review: recovery's own peer connections across membership changes.

Three sheep, copies 2; nodes 1 and 2 are killed (SIGKILL) and restarted on
the same address in turn: 10 rounds, 20 membership changes.  Every round
writes every object while the node is away (the returning node must fetch
them, over its recovery connections, and node 0 fetches from a node of a
new incarnation when objects move back), then waits until every object is
exactly where the ring says and no node recovers.  Asserted each round:
every replica of every object holds the latest data (read from each
holder's own store, no gateway); at the end, node 0 has not gained file
descriptors (connections to dead incarnations are not kept open) and its
recovery pool holds one connection per peer at most.
"""

from __future__ import annotations

import os

import pytest
from harness import Client, Cluster, placement_ok, vdi_oids, wait_for, write_vdi

from sheep import proto
from sheep.cluster.fetch import LIVE
from sheep.proto.placement import Ring

pytestmark = [pytest.mark.probe, pytest.mark.cluster, pytest.mark.review,
              pytest.mark.probe_timeout(180, 0)]

OBJ = proto.SD_DATA_OBJ_SIZE
NOBJ = 4


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def local_copy(node, oid: int) -> bytes:
    """The live copy in ``node``'s own store (READ_PEER: no gateway, no recovery)."""
    cl = Client(node.port)
    try:
        epoch = cl.cluster_info().epoch
        rsp, body = cl.conn.request(proto.Request(
            proto.Op.READ_PEER, proto.ObjArgs(oid=oid, tgt_epoch=LIVE),
            flags=proto.SD_FLAG_CMD_RECOVERY, epoch=epoch, data_length=OBJ))
        assert rsp.result == 0, (node.port, hex(oid), rsp.result)
        return body
    finally:
        cl.close()


def test_kill_restart_same_address_20_changes(probe_dir):
    c = Cluster(probe_dir, n=3)
    try:
        c.format(2)
        cl = Client(c.nodes[0].port)
        try:
            vid = cl.new_vdi("conns", NOBJ * OBJ, copies=2)
        finally:
            cl.close()
        oids = vdi_oids(vid, NOBJ * OBJ)
        fd0 = None
        for rnd in range(11):  # round 0 warms up (every connection opened once)
            victim = c.nodes[1 + rnd % 2]
            victim.kill()
            c.wait_members(2, timeout=20)
            fill = bytes([rnd + 1]) * 4096
            cl = Client(c.nodes[0].port)
            try:
                for i in range(NOBJ):  # written while the victim is away
                    write_vdi(cl, vid, i * OBJ, fill)
            finally:
                cl.close()
            victim.start()
            c.wait_members(3, timeout=20)
            wait_for(lambda: placement_ok(c, oids, copies=2), 30,
                     what=f"round {rnd}: every object in place")
            cl = Client(c.nodes[0].port)
            try:
                ring = Ring(cl.nodes())
            finally:
                cl.close()
            for i in range(NOBJ):
                oid = proto.vid_to_data_oid(vid, i)
                for n in ring.replicas(oid, 2):
                    node = next(x for x in c.nodes if x.port == n.port)
                    assert local_copy(node, oid)[:4096] == fill, (rnd, hex(oid), node.port)
            if rnd == 0:
                fd0 = fds(c.nodes[0].pid)
        fd_end = fds(c.nodes[0].pid)
        print(f"node 0 fds: after warm-up {fd0}, after 20 more membership changes {fd_end}")
        assert fd_end <= fd0 + 2, (fd0, fd_end)
    finally:
        c.close()
