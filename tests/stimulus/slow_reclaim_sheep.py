"""``sheep`` with one stimulus for the review tests: ``Refs._remove`` (the
removal step of a reclaim, inside a cluster-op work step) first waits
REVIEW_DELAY seconds -- a slow disk, a GC pause, a busy loop: any stall of
the reclaiming gateway between deciding and removing.

usage: python slow_reclaim_sheep.py DELAY <sheep argv...>
"""

import asyncio
import logging
import sys

from sheep.vdi import refcount

DELAY = float(sys.argv[1])
_orig = refcount.Refs._remove


async def _slow_remove(self, oid):
    logging.getLogger("review").warning("review stimulus: reclaim of %016x waits %.1fs",
                                        oid, DELAY)
    await asyncio.sleep(DELAY)
    logging.getLogger("review").warning("review stimulus: reclaim of %016x removes now", oid)
    return await _orig(self, oid)


refcount.Refs._remove = _slow_remove

if __name__ == "__main__":
    from sheep.__main__ import main

    sys.exit(main(sys.argv[2:]))
