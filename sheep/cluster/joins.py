"""The join rules: who may join, what a joiner brings, and the start-up check.

Sheepdog 1.0 (``sheep/group.c``: ``sd_join_handler``, ``cluster_wait_check``,
``enough_nodes_gathered``, ``cluster_join_check``, ``sd_accept_handler``,
``update_cluster_info``; ``sheep/config.c``: ``init_config_file``) is the
contract; :func:`verdict` is what the master decides for one joiner, and
:class:`sheep.cluster.group.Group` applies it on every member in delivery order.

Guarantees:

* **A refused join is still a join.**  As in 1.0, where the master always
  accepts and the joiner itself exits when ``cluster_join_check`` fails, the
  driver delivers the join of a refused node to every member: a running
  cluster logs an epoch with it, then an epoch without it when it leaves.
  The refused node logs the reason and exits (code 1) on its own join event,
  before it was ever in state OK, so it never serves or recovers an object
  (peer and gateway I/O need state OK, ``sheep.server.ops.admit``); the members do
  not merge its VDIs and do not count it as present for a restart.  Unlike
  1.0, the members give it 0 vnodes (it is logged as ``ADDR:PORT:0``): no
  object is ever placed on it, so no write waits for it and no epoch of the
  history has it as the only holder of an object (which would make recovery
  wait for it forever, ``sheep.cluster.fetch`` rule 2) — deliberately stronger.
* **Refused** (1.0's checks, plus the ones marked *stronger*):

  - a formatted node whose cluster creation time differs from the
    cluster's (INVALID_CTIME; 1.0 ``cluster_ctime_check``);
  - a storing node whose vnode strategy differs from the cluster's
    (INVALID_VNODES_STRATEGY): ``-V`` in an automatic-vnodes cluster or no
    ``-V`` in a fixed-vnodes one.  1.0 refuses this at start-up from the
    node's own config (:func:`restart_vnodes_error`), which we do too; a
    node with an empty store is refused here as well (*stronger*: 1.0 gave
    it the cluster's strategy silently).  Gateways (0 vnodes) are exempt;
  - a node with an empty store while the cluster waits for the nodes of its
    last epoch (INVALID_CTIME, *stronger*: 1.0 counted a wiped node as
    present, so the cluster started without that node's data; here
    ``collie cluster recover force`` decides);
  - a formatted node with an epoch newer than a running cluster's
    (NEW_NODE_VER, *stronger*: it comes from a history the cluster does not
    have);
  - any join while the cluster shuts down (SHUTDOWN).
* **Admitted while the cluster waits** (``cluster_wait_check``): a node
  with an older epoch (it keeps its objects only as stale copies: it missed
  writes), one with the same epoch, and one with a newer epoch, whose epoch
  history becomes the cluster's (the others' objects become stale copies).
  The cluster starts once every node of the newest epoch is a member
  (except those that epoch gave 0 vnodes: they hold none of its objects —
  a refused joiner logged before its leave, when the cluster died in
  between, can never come back); if the members differ from that epoch's
  nodes, it starts in a new epoch.
* **A formatted node joining an unformatted cluster**: the cluster takes
  over its cluster info (config and epoch history) as 1.0 does; it then
  waits for the nodes of that node's last epoch like any restarted cluster
  (or starts at once if they are all present).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sheep import proto

log = logging.getLogger("sheep.cluster.joins")

WAIT_FOR_FORMAT = "wait_for_format"
WAIT_FOR_JOIN = "wait_for_join"
OK = "ok"
SHUTDOWN = "shutdown"
KILLED = "killed"

# 1.0's message (sheep/config.c, init_config_file)
RESTART_VNODES_MSG = "Designation of before a restart and a vnodes option is different."


@dataclass
class Verdict:
    """The master's decision: ``refused`` = (code name, message) or None;
    ``adopt`` = the joiner's epoch history to take over (newer, or the
    cluster is not formatted); ``config`` = the joiner's config (hex) when
    an unformatted cluster takes over its cluster info."""

    refused: tuple[str, str] | None = None
    adopt: list | None = None
    config: str | None = None


def _auto(flags: int) -> bool:
    return bool(flags & proto.SD_CLUSTER_FLAG_AUTO_VNODES)


def verdict(status: str, config: proto.SheepdogConfig, epoch: int,
            jnode: proto.SdNode, info: dict) -> Verdict:
    """The join rules (module docstring) for a joiner of ``jnode`` with join
    data ``info``, in a cluster in ``status`` with ``config`` at ``epoch``."""
    jctime, jepoch = info.get("ctime", 0), info.get("epoch", 0)
    formatted = config.ctime != 0
    if status in (SHUTDOWN, KILLED):
        return Verdict(refused=("SHUTDOWN", f"node {jnode} refused: the cluster is shutting "
                                            f"down"))
    if not formatted:
        if jctime and info.get("config"):  # the cluster takes over its cluster info
            return Verdict(adopt=info.get("history", []), config=info["config"])
        return Verdict()
    if jctime and jctime != config.ctime:
        return Verdict(refused=("INVALID_CTIME",
                                f"node {jnode} refused: its cluster creation time {jctime} "
                                f"differs from the cluster's {config.ctime} (it was formatted "
                                f"for another cluster)"))
    if jnode.nr_vnodes:
        auto, fixed = _auto(config.flags), bool(info.get("fixed_vnodes"))
        if auto and fixed:
            return Verdict(refused=("INVALID_VNODES_STRATEGY",
                                    f"node {jnode} refused: it uses fixed vnodes (-V) but the "
                                    f"cluster uses automatic vnodes"))
        if not auto and not fixed:
            return Verdict(refused=("INVALID_VNODES_STRATEGY",
                                    f"node {jnode} refused: the cluster uses fixed vnodes "
                                    f"(formatted with -V); start the node with -V"))
    if status == WAIT_FOR_JOIN:
        if not jctime:
            return Verdict(refused=("INVALID_CTIME",
                                    f"node {jnode} refused: its store is empty (wiped?) while "
                                    f"the cluster waits for the nodes of epoch {epoch} with "
                                    f"their data; it may join once the cluster runs"))
        if jepoch > epoch:
            return Verdict(adopt=info.get("history", []))
        return Verdict()  # same or older epoch: admitted, it waits with the others
    if status == OK and jctime and jepoch > epoch:
        return Verdict(refused=("NEW_NODE_VER",
                                f"node {jnode} refused: its epoch {jepoch} is newer than the "
                                f"cluster's {epoch}"))
    return Verdict()


def restart_vnodes_error(config: proto.SheepdogConfig, fixed_vnodes: bool,
                         gateway: bool) -> str | None:
    """1.0's start-up check: a formatted store restarted with the other vnode
    strategy (``-V`` on an automatic-vnodes cluster, or none on a fixed one)
    is refused before joining; gateways are exempt.  The log message, or None."""
    if gateway or not config.ctime or _auto(config.flags) != fixed_vnodes:
        return None
    return (f"{RESTART_VNODES_MSG} (the cluster uses "
            f"{'automatic' if _auto(config.flags) else 'fixed'} vnodes; this node was started "
            f"{'with -V' if fixed_vnodes else 'without -V'})")


def comparable_tombs(info: dict, v: Verdict, logs: dict, epoch: int) -> dict:
    """The joiner's tombstones (``sheep.vdi.recycle``) whose epoch the
    cluster's records can be compared with: those of the history the
    joiner shares with the cluster.  A tombstone at an epoch number of a
    history the cluster does not have (the joiner was in a cluster
    force-recovered without it, or the other way round) says nothing
    about the cluster's records of that id: it would drop live VDIs.
    ``logs``: the cluster's epoch logs (epoch -> (nodes, time)); ``epoch``: its epoch."""
    tombs = info.get("tombs") or {}
    if not tombs or v.config or v.adopt:  # the joiner's history is the cluster's
        return tombs
    theirs = {e: nodes for e, nodes, _ts in info.get("history", [])}
    diff = [e for e in theirs if e in logs and logs[e][0].hex() != theirs[e]]
    limit = min(diff) - 1 if diff else epoch
    kept = {k: e for k, e in tombs.items() if e <= limit}
    if len(kept) != len(tombs):
        log.warning("a joiner's tombstones of VDI ids %s are of a history the cluster "
                    "does not have: ignored", sorted(set(tombs) - set(kept)))
    return kept
