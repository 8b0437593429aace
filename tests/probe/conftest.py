"""Probe tier options and fixtures.

Options (``./test.sh tests/probe --rounds 300`` for a soak run):

* ``--rounds N``: kill/restart rounds per thrash probe (default 20, the CI
  budget);
* ``--probe-seed S``: the random seed of every probe (default: random,
  printed, so a failing run can be replayed);
* ``--probe-seconds S``: how long the fuzz probes fuzz (default 8);
* ``--thrash-driver local|zmq``: the thrash probes' cluster driver (default
  local; zmq detects a SIGSTOPped node after 1 s and removes it).

``probe_dir`` is a directory for one probe's clusters and writer files; it
is removed after a passing probe; after a failing one its logs (every
daemon's ``sheep.log``), epoch logs, writer models and ``probe-summary.json``
are kept and the path printed (``SHEEP_KEEP_TEST_DIRS=1`` keeps everything,
object data included, also after a pass).
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # probelib


def pytest_addoption(parser):
    g = parser.getgroup("probe", "probe tier (tests/probe)")
    g.addoption("--rounds", type=int, default=20,
                help="kill/restart rounds per thrash probe (default 20; soak: 300)")
    g.addoption("--probe-seed", type=int, default=None,
                help="random seed of the probes (default: random, printed)")
    g.addoption("--probe-seconds", type=float, default=8.0,
                help="seconds each fuzz probe fuzzes (default 8)")
    g.addoption("--thrash-driver", choices=("local", "zmq"), default="local",
                help="cluster driver of the thrash probes (default local)")


def pytest_collection_modifyitems(config, items):
    """``probe_timeout(base, per_round)``: the test's timeout grows with --rounds."""
    rounds = config.getoption("--rounds")
    for item in items:
        m = item.get_closest_marker("probe_timeout")
        if m is not None:
            base, per_round = m.args
            item.add_marker(pytest.mark.timeout(base + per_round * rounds))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"probe_rep_{rep.when}", rep)


def _failed(item) -> bool:
    return any(getattr(item, f"probe_rep_{w}", None) is not None
               and getattr(item, f"probe_rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def rounds(request) -> int:
    return request.config.getoption("--rounds")


@pytest.fixture
def thrash_driver(request) -> str:
    return request.config.getoption("--thrash-driver")


@pytest.fixture
def probe_seconds(request) -> float:
    return request.config.getoption("--probe-seconds")


@pytest.fixture
def rnd(request) -> random.Random:
    seed = request.config.getoption("--probe-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    print(f"\nprobe seed: {seed} (replay with --probe-seed {seed})")
    return random.Random(seed)


@pytest.fixture
def probe_dir(request):
    """A fresh directory; kept (path printed) when the probe fails."""
    d = tempfile.mkdtemp(prefix=f"pysheepdog-probe-{request.node.name[:40]}-".replace("/", "_"))
    request.node.probe_dir = d
    yield d
    if os.environ.get("SHEEP_KEEP_TEST_DIRS"):
        sys.stderr.write(f"\nprobe directory kept: {d}\n")
    elif _failed(request.node):
        # keep the logs, epoch logs, writer models and summary; drop the
        # object data (hundreds of MiB; the summary names what each replica held)
        for root, dirs, _files in os.walk(d):
            if "obj" in dirs:
                shutil.rmtree(os.path.join(root, "obj"), ignore_errors=True)
                dirs.remove("obj")
        sys.stderr.write(f"\nprobe failed; kept {d}: sheep.log and epoch logs of every node, "
                         f"writer models (*.json), probe-summary.json (object data removed; "
                         f"SHEEP_KEEP_TEST_DIRS=1 keeps it)\n")
    else:
        shutil.rmtree(d, ignore_errors=True)

