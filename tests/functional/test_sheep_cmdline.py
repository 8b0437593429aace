"""``sheep`` command-line errors in Sheepdog 1.0's words (sheep/config.py):
the real program, started like a user would, refuses bad values with 1.0's
message on stderr, exit code 1, and starts nothing (no pid file, no store)."""

import os
import subprocess
import sys

import pytest

CASES = [
    (["-p", "0"], "Invalid port number '0'"),
    (["-p", "65536"], "Invalid port number '65536'"),
    (["-p", "abc"], "Invalid port number 'abc'"),
    (["-z", "a"], "Invalid zone id 'a': must be an integer between 0 and 4294967295"),
    (["-z", "4294967296"],
     "Invalid zone id '4294967296': must be an integer between 0 and 4294967295"),
    (["-z", "-1"], "Invalid zone id '-1': must be an integer between 0 and 4294967295"),
    (["-V", "0"], "Invalid number of vnodes '0': must be an integer between 1 and 65535"),
    (["-V", "65536"],
     "Invalid number of vnodes '65536': must be an integer between 1 and 65535"),
    (["-g", "-V", "8"], "Options '-g' and '-V' can not be both specified"),
    (["-V", "8", "-g"], "Options '-g' and '-V' can not be both specified"),
    (["-y", "not-an-ip"], "Invalid address: 'not-an-ip'"),
    (["-b", "not-an-ip"], "Bad address 'not-an-ip'"),
    (["-c", "bogus"], "Invalid cluster driver 'bogus'"),
    (["-l", "level=nonsense"], "Invalid log level 'nonsense'"),
    (["--no-such-option"], "Try 'sheep --help' for more information."),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_refused_with_1_0_message(tmp_path, args, message):
    store = tmp_path / "store"
    pidfile = tmp_path / "sheep.pid"
    r = subprocess.run([sys.executable, "-m", "sheep", "-P", str(pidfile), *args, str(store)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert message + "\n" in r.stderr, r.stderr
    assert not pidfile.exists()
    assert not store.exists()


def test_bad_log_level_lists_the_levels(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sheep", "-l", "level=loud", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout.startswith("Available log levels:\n")
    assert "  debug      debugging messages\n" in r.stdout


def test_bad_driver_lists_the_drivers(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sheep", "-c", "corosync", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "sheep: Invalid cluster driver 'corosync'\n" in r.stderr
    assert "Cluster drivers: local" in r.stdout
    assert not os.path.exists(tmp_path / "s")
