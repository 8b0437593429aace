"""Adversarial review of the progress bars: tqdm is the one new collie
dependency that is imported lazily (only when stderr is a terminal), so an
install that lacks it (an existing environment updated with ``git pull``
before ``pip install -e '.[server]'`` ran again) crashed with a traceback in
``collie vdi read`` on a terminal -- a plain read.  Now the bar is simply
left out (it is cosmetic); everything else works."""

import sys

import pytest

from collie import progress

pytestmark = [pytest.mark.quick]


def test_no_tqdm_means_no_bar_not_a_crash(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # "import tqdm" raises ImportError
    with progress.Progress(100, "read x", enabled=True, stream=sys.stderr) as bar:
        bar.update(50)
        with bar.write_mode():
            print("a line")
        assert not bar.enabled
    out = capsys.readouterr()
    assert out.out == "a line\n" and out.err == ""
