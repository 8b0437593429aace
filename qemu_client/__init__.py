"""Python client library for pysheepdog VDIs, in the style of QEMU's block driver.

Blocking use::

    import qemu_client
    with qemu_client.open("test", port=7000) as vdi:
        vdi.pwrite(0, b"hello")
        assert vdi.pread(0, 5) == b"hello"

``qemu_client.block.AsyncVdi`` offers the same calls for asyncio code.
"""

from qemu_client.sync import Vdi, create, open  # noqa: A004,F401
from qemu_client.session import FencedError, InactiveError, VdiLockedError  # noqa: F401
