"""Wire format, option parsing and log helpers of the ``zmq`` cluster driver.

Every message is one ZeroMQ frame holding a JSON object; ``"t"`` is its type
and ``"f"`` the sender's ident.  Bytes (node records, opaque data, notify
payloads, replies) travel base64-encoded.  Log entries are JSON objects too::

    {"g": gseq, "v": view id it was sequenced in, "k": kind, "i": ident, ...}

kinds: ``join`` (+ ``node``, ``ep``, ``r`` reply, ``nb`` first notify number),
``leave``, ``notify`` (+ ``n`` per-sender number, ``d`` payload) and ``nop``.
See :mod:`sheep.cluster.drivers.zmq` for the protocol.
"""

from __future__ import annotations

import base64
import json
import re
import socket

# timing (seconds); see "Failure detection" and "Serving" in sheep.cluster.drivers.zmq
TICK = 0.1           # heartbeat period
FAIL = 1.0           # silence after which a peer is considered dead
LEASE = 0.5          # longest lease the evidence of one heartbeat round grants
VC_ANSWER = 0.75     # a member answers a view change only after this much master silence
OUT_AFTER = 3.0      # seconds without a master before a member is out
VC_RETRY = 1.0       # a candidate retries its view change after this
JOIN_RETRY = 0.25    # joiners resend their request
VC_GRACE = 0.5       # a candidate waits this long for answers beyond a majority
BOOT_WAIT = 0.6      # a fresh joiner hearing nobody forms the cluster
KEEP = 2000          # committed entries kept for lagging members
CHUNK = 256          # entries per resend

# message types
JOIN_REQ = "J"      # joiner -> anyone: {i, node, ep, o, nb, ts}
JOIN_SEEN = "JN"    # member -> joiner: a cluster exists, your request went on
JOINER = "JJ"       # joiner -> joiner: {rank} (bootstrap arbitration)
REJECT = "JR"       # master -> joiner: {r}
WELCOME = "W"       # master -> joiner: {g, e, members, seqn, es, c} + lease
ENTRIES = "E"       # master -> member: {p, pv, es, c} + lease (empty es: heartbeat)
ACK = "A"           # member -> master: {a: last gseq held} + echo
NACK = "N"          # member -> master: {c: commit}, resend from c+1; + echo
LEASE_MSG = "L"     # master -> member, answering an ACK: lease
# lease fields (master -> member): ts: master's clock at sending; te: the
# member's own latest ts the master received; rl: the master's remaining
# lease at sending.  echo fields (member -> master): ts: member's clock at
# sending; te: ts of the latest message of its master it accepted.
PING = "P"          # member -> member heartbeat
NOTIFY_REQ = "NR"   # member -> master: {n, d}
LEAVE_REQ = "LR"    # member -> master
STALE = "ST"        # anyone -> sender of an outdated view: {v}
VC_START = "VS"     # candidate -> members: {c: candidate's commit}
VC_ACK = "VA"       # member -> candidate: {nv, last, c, es}


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text)


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def decode(frame: bytes) -> dict | None:
    try:
        msg = json.loads(frame)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) and "t" in msg and "f" in msg else None


def parse_option(option: str) -> tuple[list[str], str | None]:
    """``HOST:PORT[,HOST:PORT...][,self=HOST:PORT]`` -> (seed endpoints,
    explicit own endpoint or None).  Endpoints are ``tcp://HOST:PORT``."""
    seeds, me = [], None
    for item in filter(None, (x.strip() for x in option.split(","))):
        key, eq, value = item.partition("=")
        if eq and key == "self":
            me = _endpoint(value)
        elif eq:
            raise ValueError(f"zmq cluster: unknown option {key!r} in {option!r}")
        else:
            seeds.append(_endpoint(item))
    if not seeds and me is None:
        raise ValueError("zmq cluster: -c zmq:HOST:PORT[,HOST:PORT...] needs at least one address")
    return seeds, me


def _endpoint(hostport: str) -> str:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"zmq cluster: bad address {hostport!r}, expected HOST:PORT")
    host = host.strip("[]")
    if not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", host):
        try:
            host = socket.gethostbyname(host)
        except OSError as e:
            raise ValueError(f"zmq cluster: cannot resolve {host!r}: {e}") from None
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def host_of(endpoint: str) -> str:
    return endpoint[len("tcp://"):].rpartition(":")[0]


def cfg_after(members: list[dict], entries: list[dict]) -> list[dict]:
    """The membership after applying ``entries`` (oldest member first)."""
    cfg = list(members)
    for e in entries:
        if e["k"] in ("join", "leave"):
            cfg = [m for m in cfg if m["i"] != e["i"]]
        if e["k"] == "join":
            cfg.append({"i": e["i"], "node": e["node"], "ep": e["ep"]})
    return cfg


def majority(voters: list[str], have: set[str]) -> bool:
    return 2 * sum(1 for i in voters if i in have) > len(voters)


def merge_logs(acks: dict[str, dict], own: dict[int, dict], own_commit: int) -> list[dict] | None:
    """The flush of a view change: the log the new master adopts.

    ``acks`` maps each responder to its ``VC_ACK`` (``nv``: the last view it
    was normal in, ``last``, ``c``: its commit, ``es``: its entries after the
    candidate's commit).  As in Viewstamped Replication, the authoritative
    suffix is that of the responder with the highest ``(nv, last)``; a
    position it lacks is taken from the responder with the highest ``nv``
    that has it.  Returns the entries from min(commit)+1 on, or None when a
    position is held by nobody (the view change must be abandoned)."""
    ranked = sorted(acks.values(), key=lambda a: (a["nv"], a["last"]), reverse=True)
    held = [{e["g"]: e for e in a["es"]} for a in ranked]
    start = min(a["c"] for a in ranked) + 1
    out = []
    for g in range(start, ranked[0]["last"] + 1):
        e = own.get(g) if g <= own_commit else None
        for h in held:
            if e is not None:
                break
            e = h.get(g)
        if e is None:
            return None
        out.append(e)
    return out
