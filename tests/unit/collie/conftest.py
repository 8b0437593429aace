"""Fixtures for the collie tests; the fakes themselves are in collie_fakes.py."""

from __future__ import annotations

import io
import pathlib
import sys
import time

import pytest

# make the sibling helper module importable from the test modules too
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from collie_fakes import NODE_PORTS, NodeFake  # noqa: E402


@pytest.fixture
def node_fake(monkeypatch):
    from collie import client as cl
    from sheep.proto import connection

    fake = NodeFake()
    real = connection.BlockingConnection

    def connect(host, port, *a, **kw):
        if port in NODE_PORTS:
            port = fake.port
        return real(host, port, *a, **kw)

    monkeypatch.setattr(cl, "connect", connect)
    yield fake
    fake.close()


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class Run:
    def __init__(self, code, out: bytes, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")


@pytest.fixture
def run(monkeypatch):
    """run(argv, stdin=b"") -> Run(code, stdout bytes, stderr text)."""
    from collie.__main__ import main

    def _run(argv, stdin: bytes = b""):
        out_b, err_b = io.BytesIO(), io.BytesIO()
        out = io.TextIOWrapper(out_b, encoding="utf-8", newline="")
        err = io.TextIOWrapper(err_b, encoding="utf-8", newline="")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        try:
            code = main(list(argv))
        finally:
            out.flush()
            err.flush()
            monkeypatch.setattr(sys, "stdout", sys.__stdout__)
            monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        return Run(code, out_b.getvalue(), err_b.getvalue().decode())

    return _run
