import pytest

from harness import Cluster


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
