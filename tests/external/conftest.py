"""tests/external: real external clients (qemu-io, qemu-img, qemu-nbd) against
real sheep daemons.  The tools come from Debian's ``qemu-utils``, installed by
``scripts/setup.sh``; a missing tool fails the tests (it is never mocked or
skipped)."""

import itertools

import pytest
from harness import Cluster, wait_for

from sheep import proto

_names = itertools.count(1)


@pytest.fixture(scope="module")
def nbd_cluster(tmp_path_factory):
    """A formatted 3-node, copies-3 cluster (locking on), each node with ``--nbd``
    on its own free port (``node.nbd_port``); killed at the end of the module."""
    c = Cluster(tmp_path_factory.mktemp("nbd"), 3, nbd=True)
    try:
        c.wait_members(3)
        cl = c.nodes[0].client()
        try:
            cl.format(3, proto.SD_CLUSTER_FLAG_AUTO_VNODES | proto.SD_CLUSTER_FLAG_USE_LOCK)
        finally:
            cl.close()
        wait_for(lambda: all(n.client().cluster_info().status == proto.SD_STATUS_OK
                             for n in c.nodes), 10, what="cluster running")
        yield c
    finally:
        c.close()


@pytest.fixture
def vdi_name():
    """A VDI name no other test of the session uses."""
    return f"nbdvdi{next(_names)}"
