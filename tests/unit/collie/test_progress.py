"""Pure parts of the progress bars and of image import (no daemons):
when a bar is drawn, that a disabled one writes nothing, zero detection and
hole skipping on a real sparse file."""

import argparse
import io
import os

import pytest

from collie import progress, vdi_image

pytestmark = pytest.mark.quick


class Tty(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def ns(**kw):
    return argparse.Namespace(**kw)


def test_wanted_only_on_a_terminal_without_no_progress():
    assert progress.wanted(ns(no_progress=False), Tty(True))
    assert not progress.wanted(ns(no_progress=True), Tty(True))
    assert not progress.wanted(ns(no_progress=False), Tty(False))
    assert progress.wanted(ns(), Tty(True))         # a command without the option
    assert not progress.wanted(ns(), object())      # no isatty at all


def test_enabled_bar_draws_states_disabled_writes_nothing(monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    tty = Tty(True)
    with progress.Progress(4, "job", unit="obj", stream=tty) as bar:
        assert bar.enabled
        for _ in range(4):
            bar.update(1)
    text = tty.getvalue()
    assert "job" in text and all(f"{p}%" in text for p in (0, 25, 50, 75, 100))
    with progress.Progress(4, "job", enabled=False) as off:
        off.update(4)
        with off.write_mode():
            pass
    assert not off.enabled and progress.NULL.enabled is False


def test_option_parses():
    p = argparse.ArgumentParser()
    progress.add_option(p)
    assert p.parse_args(["--no-progress"]).no_progress is True
    assert p.parse_args([]).no_progress is False


def test_is_zero():
    assert vdi_image.is_zero(bytes(4096)) and vdi_image.is_zero(b"")
    assert not vdi_image.is_zero(bytes(4095) + b"\1")
    assert not vdi_image.is_zero(b"\1" + bytes(1 << 20))


def test_file_source_skips_holes_and_reads_data(tmp_path):
    obj = 1 << 20
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.write(b"a" * 100)
        f.seek(3 * obj + 5)
        f.write(b"b" * 10)
        f.truncate(5 * obj)
    fd = os.open(path, os.O_RDONLY)
    try:
        src = vdi_image.FileSource(fd)
        chunks = [src.chunk(i * obj, obj) for i in range(5)]
    finally:
        os.close(fd)
    assert chunks[0] == b"a" * 100 + bytes(obj - 100)
    assert chunks[3] == bytes(5) + b"b" * 10 + bytes(obj - 15)
    # holes come back as None where the filesystem reports them (SEEK_DATA)
    for c in (chunks[1], chunks[2], chunks[4]):
        assert c is None or c == bytes(obj)
    if src.seek_data:
        assert chunks[4] is None and src.data_end


def test_stream_source_short_at_the_end():
    src = vdi_image.StreamSource(io.BytesIO(b"x" * 10))
    assert src.chunk(0, 6) == b"x" * 6
    assert src.chunk(6, 6) == b"x" * 4
    assert src.at_end()
