"""The asyncio API of qemu_client, under the same names as the blocking one.

::

    from qemu_client import aio
    async with await aio.bdrv_open("test", port=7000) as bs:
        await bs.bdrv_pwrite(0, b"hello")
        assert await bs.bdrv_pread(0, 5) == b"hello"
"""

from qemu_client.block import (  # noqa: F401
    BDRV_O_INACTIVE,
    BDRV_O_RDONLY,
    BDRV_O_RDWR,
    BDRV_REQ_MAY_UNMAP,
    BDRV_SECTOR_SIZE,
    AsyncVdi,
    SnapshotInfo,
    bdrv_open,
    create,
    delete,
)
from qemu_client.vdis import VdiInfo, list_vdis  # noqa: F401

open = AsyncVdi.open
