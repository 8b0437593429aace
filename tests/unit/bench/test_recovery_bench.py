"""``python -m bench.recovery`` against real daemons: a two-size sweep on a
small cluster ends with exit 0, one JSON run per size whose restore time
was stamped by the poller and confirmed by the full placement check, and a
Markdown row per size; bad sizes are refused with exit 2."""

from __future__ import annotations

import json

import pytest

from bench import recovery as R

pytestmark = pytest.mark.cluster


def test_a_sweep_measures_each_size_on_a_fresh_cluster(tmp_path, capsys):
    out = tmp_path / "rec.json"
    assert R.main(["--nodes", "4", "--size-mib", "8,16", "--seconds", "0.5", "--qd", "2",
                   "--timeout", "60", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["vdi_mib"] for r in runs] == [8, 16]
    assert [r["objects"] for r in runs] == [3, 5]  # data objects and the inode
    for r in runs:
        # at least the local driver's failure detection, and well within the timeout
        assert 0.0 < r["restore_seconds"] < 60
        assert r["full_checks"] >= 1
        assert r["during_recovery"]["windows"] >= 1 and r["baseline"]["iops"] > 0
    table = capsys.readouterr().out
    assert "| 8 MiB | 3 |" in table and "| 16 MiB | 5 |" in table


@pytest.mark.parametrize("sizes", ["2", "a,b", ","])
def test_bad_sizes_are_refused(sizes, capsys):
    with pytest.raises(SystemExit) as e:
        R.main(["--size-mib", sizes])
    assert e.value.code == 2
    assert "size" in capsys.readouterr().err
