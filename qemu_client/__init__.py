"""Python client library for pysheepdog VDIs, in the style of QEMU's block driver.

Blocking use::

    import qemu_client
    qemu_client.create("test", 1 << 30, port=7000)      # size in bytes, required
    with qemu_client.bdrv_open("test", port=7000) as bs:
        bs.bdrv_pwrite(0, b"hello")
        assert bs.bdrv_pread(0, 5) == b"hello"
        bs.bdrv_snapshot_create("before-upgrade")
    for v in qemu_client.list_vdis(port=7000):
        print(v.name, v.size, v.id, v.snapshot)

Functions: :func:`bdrv_open` / :func:`open` (a :class:`Vdi`), :func:`create`,
:func:`delete`, :func:`list_vdis` (:class:`VdiInfo` records).  asyncio use:
the same names in :mod:`qemu_client.aio` (``await aio.bdrv_open(...)``,
``await bs.bdrv_pread(...)``).  ``python -m qemu_client.io`` is a
qemu-io-like command line.

Guarantees: a write returns once every replica of the data has it; a
read-write open holds the VDI's exclusive lock, and a writer whose lock was
taken away gets :class:`FencedError` instead of overwriting the new holder.

Errors: every failure the cluster reports is an :class:`SdError` subclass
named for its result code, all importable from here (:class:`NoVdiError`,
:class:`VdiExistError`, :class:`VdiLockedError`, :class:`InvalidParmsError`,
:class:`ReadonlyError`, :class:`NoTagError`, :class:`ClusterError`, ...;
``ERROR_CLASSES`` maps every name to its class).  :class:`InactiveError`: I/O
on a VDI opened inactive; :class:`GatewayLostError` (a ``ConnectionError``):
the gateway died and failover is disabled; ``ConnectionError``: no sheep
reachable.

Importing qemu_client loads no server module and none of the server's
dependencies (uvloop, pyzmq, kazoo, numpy): ``pip install pysheepdog`` is
enough for the client; the daemon needs ``pip install 'pysheepdog[server]'``.
"""

from qemu_client.sync import (
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
    list_vdis,
    open,
)
from qemu_client.vdis import VdiInfo
from sheep.proto.errors import ERROR_CLASSES, SdError
from sheep.proto.failover import GatewayLostError
from sheep.proto.lock_client import InactiveError

globals().update(ERROR_CLASSES)  # NoVdiError, VdiLockedError, FencedError, ...

__all__ = [
    "bdrv_open", "open", "create", "delete", "list_vdis",
    "Vdi", "VdiInfo", "SnapshotInfo",
    "BDRV_O_RDWR", "BDRV_O_RDONLY", "BDRV_O_INACTIVE", "BDRV_REQ_MAY_UNMAP",
    "BDRV_SECTOR_SIZE",
    "SdError", "InactiveError", "GatewayLostError", "ERROR_CLASSES",
    *sorted(ERROR_CLASSES),
]

