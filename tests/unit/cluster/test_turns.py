"""Cluster-op bookkeeping when this node rejoins (sheep.group.Group._lose_turns)."""

import asyncio
from types import SimpleNamespace

import pytest

from sheep.cluster.group import Group
from sheep.proto.errors import CODES, SdError


def test_a_rejoin_fails_every_op_whose_block_the_cluster_no_longer_has():
    async def main():
        loop = asyncio.get_running_loop()
        g = SimpleNamespace(
            _blocks=[("kept", "other-node")],  # what the cluster's join info brought
            _turns={"waiting": loop.create_future(), "kept": loop.create_future()},
            # "running": our turn had come; its UNBLOCK went out in the view we left
            _done={"waiting": loop.create_future(), "running": loop.create_future(),
                   "kept": loop.create_future()})
        Group._lose_turns(g, "rejoined the cluster")
        for fut in (g._turns["waiting"], g._done["waiting"], g._done["running"]):
            with pytest.raises(SdError) as e:
                fut.result()
            assert e.value.code == CODES["HALT"]
        assert not g._turns["kept"].done() and not g._done["kept"].done()

    asyncio.run(main())
