"""sheep.store.meta: the block check a read uses agrees with the numpy one."""

import random

import pytest

from sheep.store import meta as M

BLOCK = M.BLOCK


def _record(data: bytes, prev: bytes) -> M.Meta:
    return M.Meta.fresh(7, M.block_crcs(data), M.block_crcs(prev))


@pytest.mark.parametrize("size", [1, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK, 4 * BLOCK,
                                  4 * BLOCK + 1, 9 * BLOCK + 100])
def test_first_bad_agrees_with_bad_blocks(size):
    rnd = random.Random(size)
    cur = bytes(rnd.getrandbits(8) for _ in range(size))
    prev = bytes(rnd.getrandbits(8) for _ in range(size))
    meta = _record(cur, prev)
    n = M.nblocks(size)
    for b0 in range(n):
        for b1 in range(b0 + 1, min(n, b0 + 6) + 1):
            piece = bytearray(cur[b0 * BLOCK:min(b1 * BLOCK, size)])
            assert meta.first_bad(piece, b0) == -1
            # a block holding its previous content still reads
            pb = b1 - 1
            lo, hi = (pb - b0) * BLOCK, min((pb - b0 + 1) * BLOCK, len(piece))
            piece[lo:hi] = prev[pb * BLOCK:pb * BLOCK + hi - lo]
            assert meta.first_bad(piece, b0) == -1
            # a block matching neither is found, the first one first
            bad = rnd.randrange(b1 - b0)
            piece[bad * BLOCK] ^= 0xFF
            want = M.Meta.bad_blocks(meta, M.block_crcs(piece), b0)
            assert len(want) and meta.first_bad(piece, b0) == int(want[0])



def test_first_bad_fails_closed_for_blocks_without_an_entry():
    data = bytes(range(256)) * 32  # 2 blocks
    meta = _record(data, data)
    assert meta.first_bad(data + b"x" * BLOCK, 0) == 2
    assert meta.first_bad(data, 1) == 1
