"""Python client library for pysheepdog VDIs, in the style of QEMU's block driver.

Blocking use::

    import qemu_client
    with qemu_client.bdrv_open("test", port=7000) as bs:
        bs.bdrv_pwrite(0, b"hello")
        assert bs.bdrv_pread(0, 5) == b"hello"
        bs.bdrv_snapshot_create("before-upgrade")

asyncio use: the same names in :mod:`qemu_client.aio` (``await
aio.bdrv_open(...)``, ``await bs.bdrv_pread(...)``).  ``python -m
qemu_client.io`` is a qemu-io-like command line.  Errors are the typed
exceptions of :mod:`sheep.errors` (``NoVdiError``, ``VdiLockedError``, ...).
"""

from qemu_client.session import FencedError, InactiveError, VdiLockedError  # noqa: F401
from qemu_client.sync import (  # noqa: F401
    BDRV_O_INACTIVE,
    BDRV_O_RDONLY,
    BDRV_O_RDWR,
    BDRV_REQ_MAY_UNMAP,
    BDRV_SECTOR_SIZE,
    SnapshotInfo,
    Vdi,
    bdrv_open,
    create,
    delete,
    open,
)
