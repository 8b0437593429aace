"""Request counters of one daemon: ``sd_stat`` as 1.0 keeps it (request.c's
stat_request_begin/end) and as ``SD_OP_STAT`` / ``collie node stat`` report it.

Only gateway and peer requests are counted: totals, in flight, bytes received
(requests with SD_FLAG_CMD_WRITE, their ``data_length``) or sent (the others,
the length asked for), and reads / writes (create-and-write too) / removes.
The flush counter stays 0: FLUSH_VDI is a local op, as in 1.0.  Counters
live in memory and start at zero with the daemon.
"""

from __future__ import annotations

from sheep import proto

Op = proto.Op


def counters(sheep) -> proto.SdStat:
    """This daemon's request counters (``sd_stat``, what ``node stat`` shows)."""
    st = getattr(sheep, "sd_stat", None)
    if st is None:
        st = sheep.sd_stat = proto.SdStat()
    return st


_GW_COUNT = {Op.READ_OBJ: "gw_read", Op.WRITE_OBJ: "gw_write",
             Op.CREATE_AND_WRITE_OBJ: "gw_write", Op.REMOVE_OBJ: "gw_remove"}
_PEER_COUNT = {Op.READ_PEER: "peer_read", Op.WRITE_PEER: "peer_write",
               Op.CREATE_AND_WRITE_PEER: "peer_write", Op.REMOVE_PEER: "peer_remove"}


# per kind: prefix, then the total / active / rx / tx counter names and the per-op table
_KINDS = {kind: (pre, f"{pre}_total", f"{pre}_active", f"{pre}_rx", f"{pre}_tx", table)
          for kind, pre, table in (("gateway", "gw", _GW_COUNT), ("peer", "peer", _PEER_COUNT))}
_ACTIVE = {pre: active for pre, _t, active, *_ in _KINDS.values()}


def count_begin(sheep, req, kind: str) -> str | None:
    """Count a gateway or peer request as 1.0's stat_request_begin does: totals,
    in flight, bytes in (writes) or out (the rest: the length asked for) and
    per-op counts.  Returns the prefix whose ``*_active`` to drop at the end."""
    names = _KINDS.get(kind)
    if names is None:
        return None
    pre, total, active, rx, tx, table = names
    st = counters(sheep)
    setattr(st, total, getattr(st, total) + 1)
    setattr(st, active, getattr(st, active) + 1)
    way = rx if req.flags & proto.SD_FLAG_CMD_WRITE else tx
    setattr(st, way, getattr(st, way) + req.data_length)
    name = table.get(req.opcode)
    if name:
        setattr(st, name, getattr(st, name) + 1)
    return pre


def count_end(sheep, pre: str) -> None:
    st = counters(sheep)
    active = _ACTIVE[pre]
    setattr(st, active, getattr(st, active) - 1)
