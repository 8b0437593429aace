"""Pure units for dog's other commands (docs/collie-dog-compat.md): dog's argument permutation, the
``sd_md_info`` layout and ``node stat``'s lines."""

import pytest

from collie import node, queries
from collie.__main__ import UsageExit, build_parser, parse_args
from collie.output import Out
from sheep import proto


@pytest.mark.parametrize("argv", [
    ["vdi", "read", "big", "-s", "s1", "0", "16"],
    ["vdi", "read", "-s", "s1", "big", "0", "16"],
    ["vdi", "read", "big", "0", "-s", "s1", "16"],
    ["vdi", "read", "big", "0", "16", "-s", "s1"],
])
def test_options_anywhere_after_the_command_words(argv):
    a = parse_args(build_parser(), argv + ["-p", "7001"])
    assert (a.command, a.vdi_cmd, a.name, a.offset, a.len, a.snapshot, a.port) == \
        ("vdi", "read", "big", "0", "16", "s1", 7001)


def test_nested_command_words_and_double_dash():
    a = parse_args(build_parser(), ["vdi", "object", "map", "x", "-i", "3"])
    assert (a.object_cmd, a.name, a.index) == ("map", "x", "3")
    a = parse_args(build_parser(), ["node", "log", "level", "set", "debug", "-p", "7002"])
    assert (a.action, a.level, a.port) == ("set", "debug", 7002)
    a = parse_args(build_parser(), ["cluster", "snapshot", "save", "t", "/d", "v1", "-a",
                                    "127.0.0.1", "v2"])
    assert (a.tag, a.path, a.vdis) == ("t", "/d", ["v1", "v2"])
    a = parse_args(build_parser(), ["vdi", "create", "--", "-odd", "1M"])
    assert (a.name, a.size) == ("-odd", "1M")


def test_unknown_words_are_usage_errors(capsys):
    with pytest.raises(UsageExit) as e:
        parse_args(build_parser(), ["vdi", "nosuch"])
    assert e.value.code == 64
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_md_info_layout_round_trip():
    disks = [(0, 10 << 30, 1 << 20, "/a"), (1, 5, 6, "/b/c")]
    buf = queries.pack_md_info(disks)
    assert len(buf) == queries.MD_INFO_SIZE == 263688
    assert buf[queries.MD_NR_OFFSET:queries.MD_NR_OFFSET + 4] == (2).to_bytes(4, "little")
    assert buf[4120 + 24:4120 + 28] == b"/b/c"  # second slot's path
    assert queries.unpack_md_info(buf) == disks


def test_stat_lines_print_read_before_write_like_dog():
    st = proto.SdStat(gw_active=1, gw_total=9, gw_read=2, gw_write=3, gw_remove=4,
                      gw_flush=5, gw_rx=1 << 20, gw_tx=0, peer_total=7, peer_read=1,
                      peer_write=6)
    rows = node.stat_lines(st, Out(raw=True))
    assert rows == ["1 9 2 3 4 5 1048576 0".replace(" ", "\t"),
                    "0 7 1 6 0 0 0 0".replace(" ", "\t")]
    rows = node.stat_lines(st, Out(raw=False))
    assert rows[0].split("\n")[1] == "Client\t1\t9\t2\t3\t4\t5\t1.0 MB\t0.0 MB"
    assert rows[1] == "Peer\t0\t7\t1\t6\t0\t0\t0.0 MB\t0.0 MB"
