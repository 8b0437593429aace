"""``sheep`` command line → Config (sheep/config.py): 1.0's values and words."""

import pytest

from sheep import config
from sheep.config import ConfigError, parse


@pytest.mark.parametrize("argv,message", [
    (["-p", "0"], "Invalid port number '0'"),
    (["-p", "0x10"], "Invalid port number '0x10'"),  # decimal only, as str_to_u16
    (["-z", "a"], "Invalid zone id 'a': must be an integer between 0 and 4294967295"),
    (["-V", "0"], "Invalid number of vnodes '0': must be an integer between 1 and 65535"),
    (["-g", "-V", "1"], "Options '-g' and '-V' can not be both specified"),
    (["--vnodes", "1", "--gateway"], "Options '-g' and '-V' can not be both specified"),
    (["-y", "1.2.3"], "Invalid address: '1.2.3'"),
    (["-b", "::g"], "Bad address '::g'"),
    (["-c", "corosync"], "Invalid cluster driver 'corosync'"),
    (["-l", "level=x"], "Invalid log level 'x'"),
])
def test_refusals(argv, message):
    with pytest.raises(ConfigError) as e:
        parse(argv + ["/tmp/store"])
    assert str(e.value) == message


def test_details_for_stdout():
    with pytest.raises(ConfigError) as e:
        parse(["-l", "level=x", "/tmp/s"])
    assert e.value.details == config.LOG_LEVEL_HELP
    with pytest.raises(ConfigError) as e:
        parse(["-c", "nope", "/tmp/s"])
    assert "Cluster drivers: " in e.value.details and "local" in e.value.details


def test_accepted_values():
    cfg = parse(["-p", "65535", "-z", "4294967295", "-V", "65535", "-l", "level=debug", "/s"])
    assert (cfg.port, cfg.zone, cfg.vnodes, cfg.log_level) == (65535, 4294967295, 65535, 7)
    cfg = parse(["-g", "-l", "level=3", "/s"])
    assert cfg.gateway and cfg.vnodes is None and cfg.log_level == 3


def test_unknown_option_exits_1(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["--bogus", "/s"])
    assert e.value.code == 1
    assert "Try 'sheep --help' for more information." in capsys.readouterr().err
