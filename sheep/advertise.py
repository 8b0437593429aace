"""The address a ``sheep`` advertises to its peers when ``-y`` is not given.

Every node of a cluster tells the others (in its ``sd_node``) the address at
which clients and peers reach its Sheepdog port.  ``-y ADDR`` sets it.
Without ``-y`` (Sheepdog 1.0 asks the cluster driver for "the local
address" the same way):

1. ``-b ADDR`` with a specific address (not ``0.0.0.0`` / ``::``): that
   address — the daemon listens only there, so no other address can work;
2. the ``zmq`` and ``zookeeper`` drivers: the source address this host
   uses to reach the driver's first endpoint (the first ``self=``/seed
   entry, or the first ZooKeeper server), as the kernel's routing table
   picks it.  It is found with ``connect()`` on a UDP socket, which sends
   no packet.  A seed or server on loopback gives ``127.0.0.1``, as before;
3. otherwise (``local`` driver, an unresolvable or unroutable endpoint):
   ``127.0.0.1``.

:func:`resolve` never raises: a failed look-up falls through to the next
rule.  Only the daemon's start-up (``sheep.__main__``) calls it; the option
parser (``sheep.config``) stays free of network calls.
"""

from __future__ import annotations

import ipaddress
import re
import socket

LOOPBACK = "127.0.0.1"


def _specific(addr: str | None) -> bool:
    if not addr:
        return False
    try:
        return not ipaddress.ip_address(addr).is_unspecified
    except ValueError:
        return False


def driver_endpoint(cluster: str) -> tuple[str, int] | None:
    """(host, port) of the first endpoint the ``-c`` value names, or None
    for drivers without one (``local``) or a value it cannot read."""
    name, _, option = cluster.partition(":")
    try:
        if name == "zmq":
            from sheep.cluster.drivers import zmq_proto

            seeds, me = zmq_proto.parse_option(option)
            ep = me or seeds[0]
            host, _, port = ep[len("tcp://"):].rpartition(":")
            return host.strip("[]"), int(port)
        if name == "zookeeper":
            from sheep.cluster.drivers.zookeeper import parse_option

            hosts, _cid, _timeout = parse_option(option)
            host, _, port = hosts.split(",")[0].rpartition(":")
            return host.strip("[]"), int(port)
    except (ValueError, IndexError):
        return None
    return None


def route_source(host: str, port: int) -> str | None:
    """The local address the kernel would use to send to ``host:port``
    (no packet is sent), or None if there is no route / no such host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                addr = s.getsockname()[0]
        except OSError:
            continue
        return re.sub(r"%.*$", "", addr)  # no IPv6 scope id
    return None


def resolve(myaddr: str | None, bindaddr: str | None, cluster: str) -> str:
    """The address to advertise (rules in the module docstring)."""
    if myaddr:
        return myaddr
    if _specific(bindaddr):
        return bindaddr
    ep = driver_endpoint(cluster)
    if ep is not None:
        src = route_source(*ep)
        if src and not ipaddress.ip_address(src).is_unspecified:
            return src
    return LOOPBACK
