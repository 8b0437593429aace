"""``sheep`` with one stimulus for the review tests: a store write whose data
starts with ``SLOWSLOW`` first waits REVIEW_DELAY seconds on its I/O thread
-- a disk that stalls on one write (the event loop, and with it the
membership heartbeats, keeps running).

usage: python slow_store_write_sheep.py DELAY <sheep argv...>
"""

import logging
import sys
import time

from sheep.store import plain

DELAY = float(sys.argv[1])
MARK = b"SLOWSLOW"
_orig = plain.PlainStore.write


def _slow_write(self, oid, data, offset, *a, **kw):
    if bytes(data[:len(MARK)]) == MARK:
        logging.getLogger("review").warning("review stimulus: write to %016x waits %.1fs",
                                            oid, DELAY)
        time.sleep(DELAY)
        logging.getLogger("review").warning("review stimulus: write to %016x goes on", oid)
    return _orig(self, oid, data, offset, *a, **kw)


plain.PlainStore.write = _slow_write

if __name__ == "__main__":
    from sheep.__main__ import main

    sys.exit(main(sys.argv[2:]))
