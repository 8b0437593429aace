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


@pytest.fixture(scope="session")
def zookeeper():
    """A real standalone ZooKeeper server (tests/zkserver.py) for the session;
    returns ``"127.0.0.1:PORT"``.  Fails (does not skip) when ZooKeeper is
    not installed: scripts/setup.sh installs it."""
    from zkserver import ZooKeeperServer

    server = ZooKeeperServer().start()
    try:
        yield server.address
    finally:
        server.stop()
