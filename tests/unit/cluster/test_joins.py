"""sheep.cluster.joins: the master's verdict for a joiner and the start-up vnode check."""

import pytest

from sheep import proto
from sheep.cluster.joins import (
    KILLED,
    OK,
    SHUTDOWN,
    WAIT_FOR_FORMAT,
    WAIT_FOR_JOIN,
    restart_vnodes_error,
    verdict,
)

AUTO = proto.SD_CLUSTER_FLAG_AUTO_VNODES
CTIME = 1_700_000_000 << 32
HIST = [[1, "aa", 0], [2, "bb", 0]]


def _cfg(ctime=CTIME, flags=AUTO):
    return proto.SheepdogConfig(ctime=ctime, flags=flags, copies=3)


def _node(vnodes=128):
    return proto.SdNode.make("127.0.0.1", 7000, vnodes)


def _info(ctime=CTIME, epoch=2, fixed=False, config=True):
    return {"ctime": ctime, "epoch": epoch, "history": HIST[:epoch] if ctime else [],
            "fixed_vnodes": fixed,
            "config": _cfg(ctime).pack().hex() if ctime and config else None}


def _refused(v):
    return v.refused[0] if v.refused else None


@pytest.mark.parametrize("jepoch", [1, 2])
def test_older_or_same_epoch_admitted_while_waiting(jepoch):
    v = verdict(WAIT_FOR_JOIN, _cfg(), 2, _node(), _info(epoch=jepoch))
    assert (v.refused, v.adopt, v.config) == (None, None, None)


def test_newer_epoch_while_waiting_brings_its_history():
    v = verdict(WAIT_FOR_JOIN, _cfg(), 1, _node(), _info(epoch=2))
    assert v.refused is None and v.adopt == HIST and v.config is None


def test_wiped_node_refused_while_waiting_admitted_once_running():
    assert _refused(verdict(WAIT_FOR_JOIN, _cfg(), 2, _node(), _info(ctime=0))) == "INVALID_CTIME"
    assert verdict(OK, _cfg(), 2, _node(), _info(ctime=0)).refused is None


@pytest.mark.parametrize("status", [WAIT_FOR_JOIN, OK])
def test_other_creation_time_refused(status):
    v = verdict(status, _cfg(), 2, _node(), _info(ctime=CTIME + 1))
    assert _refused(v) == "INVALID_CTIME" and "creation time" in v.refused[1]


def test_unformatted_cluster_takes_over_a_formatted_joiner():
    v = verdict(WAIT_FOR_FORMAT, proto.SheepdogConfig(), 0, _node(), _info(epoch=2))
    assert v.refused is None and v.adopt == HIST
    assert proto.SheepdogConfig.unpack(bytes.fromhex(v.config)).ctime == CTIME
    # an unformatted joiner of an unformatted cluster: nothing to take over
    v = verdict(WAIT_FOR_FORMAT, proto.SheepdogConfig(), 0, _node(), _info(ctime=0))
    assert (v.refused, v.adopt, v.config) == (None, None, None)


@pytest.mark.parametrize("flags,fixed,refused", [
    (AUTO, True, "INVALID_VNODES_STRATEGY"), (0, False, "INVALID_VNODES_STRATEGY"),
    (AUTO, False, None), (0, True, None)])
def test_vnode_strategy(flags, fixed, refused):
    for info in (_info(fixed=fixed), _info(ctime=0, fixed=fixed)):  # restarted or new
        assert _refused(verdict(OK, _cfg(flags=flags), 2, _node(), info)) == refused
    # gateways store nothing: exempt
    assert verdict(OK, _cfg(flags=flags), 2, _node(0), _info(fixed=fixed)).refused is None


def test_newer_epoch_than_a_running_cluster_refused():
    assert _refused(verdict(OK, _cfg(), 2, _node(), _info(epoch=3))) == "NEW_NODE_VER"
    assert verdict(OK, _cfg(), 3, _node(), _info(epoch=2)).refused is None


@pytest.mark.parametrize("status", [SHUTDOWN, KILLED])
def test_shutting_down_refuses_everyone(status):
    assert _refused(verdict(status, _cfg(), 2, _node(), _info())) == "SHUTDOWN"


@pytest.mark.parametrize("flags,fixed,gateway,refused", [
    (AUTO, True, False, True), (0, False, False, True),
    (AUTO, False, False, False), (0, True, False, False),
    (AUTO, True, True, False), (0, False, True, False)])
def test_restart_vnodes_error(flags, fixed, gateway, refused):
    msg = restart_vnodes_error(_cfg(flags=flags), fixed, gateway)
    assert (msg is not None) == refused
    if refused:
        assert msg.startswith("Designation of before a restart and a vnodes option is different.")
    # an unformatted store has no strategy yet
    assert restart_vnodes_error(_cfg(ctime=0, flags=flags), fixed, gateway) is None
