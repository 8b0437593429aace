"""Shared fixtures: paths to the captured Sheepdog 1.0 vectors."""

import json
import pathlib
import sys

import pytest

DATA = pathlib.Path(__file__).parent / "data"
# tests/ holds shared helpers (harness.py); test modules are imported with
# --import-mode=importlib, so put it on the path explicitly.
sys.path.insert(0, str(pathlib.Path(__file__).parent))


def load_wire():
    """Every framed message of tests/data/wire.jsonl, payload rebuilt."""
    out = []
    for line in (DATA / "wire.jsonl").read_text().splitlines():
        rec = json.loads(line)
        payload = bytearray(rec["payload"]["len"])
        for off, hexdata in rec["payload"]["nonzero"]:
            chunk = bytes.fromhex(hexdata)
            payload[off:off + len(chunk)] = chunk
        rec["header_bytes"] = bytes.fromhex(rec["header"])
        rec["payload_bytes"] = bytes(payload)
        out.append(rec)
    return out


@pytest.fixture(scope="session")
def wire():
    return load_wire()


@pytest.fixture(scope="session")
def data8k():
    return (DATA / "data8k.bin").read_bytes()
