"""Effective redundancy: how many copies the cluster can really store.

Objects are placed on distinct *zones* (``sheep -z``; without it the zone
comes from the node's address, so several sheep on one host share a zone):
an object with C copies is stored min(C, Z) times, Z the number of zones
with storing (non-gateway) nodes.  dog says nothing when C > Z; collie warns
on stderr (stdout stays as dog prints it):

* ``cluster format`` and ``vdi create`` when the copies asked for exceed Z;
* ``cluster info`` when the cluster's copies exceed Z (``--json`` always
  has ``zones`` and ``effective_copies``), and ``node list --json`` (the text
  ``node list`` sends exactly dog's requests, which do not include the copies);
* ``vdi check`` / ``cluster check`` count the objects stored on fewer zones
  than their copies ("under-replicated"): a repair cannot fix that, so it is
  a warning and the exit status stays dog's (0).
"""

from __future__ import annotations

from collie.client import Client, CollieError
from collie.output import Out
from sheep import proto


def nr_zones(nodes) -> int:
    """Distinct zones of the nodes that store objects (gateways do not)."""
    return len({n.zone for n in nodes if n.nr_vnodes})


def cluster_copies(client: Client) -> int:
    """The cluster's default copies (CLUSTER_INFO), 0 if not formatted."""
    rsp, data = client.cluster_info()
    if rsp.result != 0:
        return 0
    return proto.ClusterInfoHeader.unpack(data.ljust(48, b"\0")).nr_copies


def warn_short_cluster(client: Client, out: Out, nodes) -> None:
    """``node list``'s warning: the cluster's copies against the zones of
    ``nodes`` (one more request, after the output; a daemon that does not
    answer it just gets no warning)."""
    try:
        copies = cluster_copies(client)
    except CollieError:
        return
    warn_short(out, copies, nodes)


def short_text(copies: int, zones: int) -> str:
    return (f"only {zones} zone{'s' if zones != 1 else ''} for {copies} copies: each object "
            f"is stored {zones} time{'s' if zones != 1 else ''} (effective redundancy "
            f"{min(copies, zones)}); start sheep in distinct zones (sheep -z) to store "
            f"every copy")


def warn_short(out: Out, copies: int, nodes, what: str = "Warning") -> bool:
    """stderr warning if ``copies`` exceed the zones of ``nodes``; True if so."""
    zones = nr_zones(nodes)
    if copies > zones:
        out.err(f"{what}: {short_text(copies, zones)}")
        return True
    return False


def under_replicated_warning(out: Out, name: str, nr_objs: int, copies: int,
                             zones: int) -> None:
    """The check's report for a VDI whose objects cannot all be stored."""
    if copies > zones and nr_objs:
        out.err(f"Warning: {nr_objs} object{'s' if nr_objs != 1 else ''} of {name} "
                f"{'are' if nr_objs != 1 else 'is'} under-replicated: stored in {zones} "
                f"zone{'s' if zones != 1 else ''}, {copies} copies wanted (cannot be "
                f"repaired until the cluster has {copies} zones)")
