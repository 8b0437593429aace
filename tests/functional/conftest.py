import signal

import pytest
from harness import Cluster
from locking import ClientProc


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: ``make_cluster(n, **kw)`` → a started, unformatted Cluster; all killed at teardown."""
    made = []

    def make(n=3, **kw):
        c = Cluster(tmp_path / f"c{len(made)}", n, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


@pytest.fixture
def procs():
    """Factory: ``procs(port, name, mode)`` → a lock_client.py process; all killed at teardown."""
    made = []

    def start(*a, **kw):
        p = ClientProc(*a, **kw)
        made.append(p)
        return p
    yield start
    for p in made:
        try:
            p.signal(signal.SIGCONT)
        except ProcessLookupError:
            pass
        p.kill()
