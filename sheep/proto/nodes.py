"""Node records, their addresses and order (docs/protocol.md §14.1, §14.2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sheep.proto.constants import SD_DEFAULT_VNODES, SD_NODE_SIZE
from sheep.proto.records import Z4, Record

# nodes (docs/protocol.md §14.1, §14.2)


def addr_from_str(host: str) -> bytes:
    """16-byte address field for a textual IPv4/IPv6 address."""
    import ipaddress  # stdlib, no I/O

    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return b"\0" * 12 + ip.packed
    return ip.packed


def addr_to_str(addr: bytes) -> str:
    """Text form of a 16-byte address (IPv4 when bytes 0..11 are zero, §14.1)."""
    import ipaddress

    if addr[:12] == b"\0" * 12 and addr[12] != 0:
        return str(ipaddress.IPv4Address(addr[12:16]))
    return str(ipaddress.IPv6Address(addr))


def default_zone(addr: bytes) -> int:
    """Default zone: the last four address bytes as a little-endian u32."""
    return struct.unpack("<I", addr[12:16])[0]


@dataclass(slots=True, frozen=True)
class SdNode(Record):
    """``sd_node`` (80 bytes) with its ``node_id`` flattened in."""

    FMT = "<24s16sH16sH4sH2sIQ"
    rb: bytes = b"\0" * 24
    addr: bytes = b"\0" * 16
    port: int = 0
    io_addr: bytes = b"\0" * 16
    io_port: int = 0
    nid_pad: bytes = Z4
    nr_vnodes: int = 0
    pad: bytes = b"\0\0"
    zone: int = 0
    space: int = 0

    @classmethod
    def make(cls, host: str, port: int, nr_vnodes: int = SD_DEFAULT_VNODES,
             zone: int | None = None, space: int = 0) -> "SdNode":
        addr = addr_from_str(host)
        return cls(addr=addr, port=port, nr_vnodes=nr_vnodes,
                   zone=default_zone(addr) if zone is None else zone, space=space)

    @property
    def host(self) -> str:
        return addr_to_str(self.addr)

    @property
    def nid(self) -> bytes:
        """The 40-byte ``node_id``."""
        return self.pack()[24:64]

    @property
    def key(self) -> tuple[bytes, int]:
        """Node order key: address bytes, then port."""
        return (self.addr, self.port)

    def wire(self) -> bytes:
        """On-wire/epoch-file form: ``rb`` zeroed."""
        return SdNode.pack(self if self.rb == b"\0" * 24 else self.replace(rb=b"\0" * 24))

    def replace(self, **kw) -> "SdNode":
        import dataclasses

        return dataclasses.replace(self, **kw)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def pack_nodes(nodes) -> bytes:
    return b"".join(n.wire() for n in nodes)


def unpack_nodes(buf, count: int | None = None) -> list[SdNode]:
    n = len(buf) // SD_NODE_SIZE if count is None else count
    return [SdNode.unpack(buf, i * SD_NODE_SIZE) for i in range(n)]


def sort_nodes(nodes) -> list[SdNode]:
    return sorted(nodes, key=lambda n: (n.addr, n.port))


def nid_to_str(nid: bytes) -> str:
    """``addr:port`` of a 40-byte node_id."""
    port = struct.unpack_from("<H", nid, 16)[0]
    return f"{addr_to_str(nid[:16])}:{port}"
