"""qemu_client's public surface: ``help(qemu_client)``
documents the API, every exception the client raises is importable from
``qemu_client`` under a clean name, ``create`` needs a size, the package
splits the server's dependencies into an extra, and ``sheep`` started
without them says which package is missing.  (The listing against a real
cluster and the lean import while doing I/O are in
tests/functional/test_json_output.py.)"""

from __future__ import annotations

import ast
import asyncio
import configparser
import inspect
import os
import pathlib
import pydoc
import re
import socket
import subprocess
import sys

import pytest
from harness import SERVER_BLOCKER as BLOCKER

import qemu_client
from qemu_client import aio
from sheep.proto import errors, failover, lock_client

ROOT = pathlib.Path(__file__).resolve().parents[3]
SERVER_PACKAGES = {"uvloop", "pyzmq", "kazoo", "numpy", "crcmod", "crc32c", "prometheus-client",
                   "tqdm"}



def test_help_lists_the_api_and_the_errors():
    text = pydoc.render_doc(qemu_client, renderer=pydoc.plaintext)
    for name in ("bdrv_open", "create", "delete", "list_vdis", "Vdi", "VdiInfo",
                 "NoVdiError", "VdiExistError", "VdiLockedError", "FencedError",
                 "InvalidParmsError", "ReadonlyError", "ClusterError", "InactiveError",
                 "GatewayLostError", "SdError"):
        assert name in text, name
    assert "ErrorError" not in text
    for name in ("bdrv_open", "create", "delete", "list_vdis"):
        assert getattr(qemu_client, name).__doc__, name
    assert "size" in qemu_client.create.__doc__ and "required" in qemu_client.create.__doc__


def test_all_names_exist_and_are_clean():
    assert len(set(qemu_client.__all__)) == len(qemu_client.__all__)
    for name in qemu_client.__all__:
        assert hasattr(qemu_client, name), name
        assert "ErrorError" not in name
    for code, (rname, _) in errors.RESULTS.items():
        if code == 0:
            continue
        cls = type(errors.error_for(code))
        assert cls.code == code and cls.__name__ in qemu_client.__all__, rname
        assert getattr(qemu_client, cls.__name__) is cls
        assert cls.__module__ == "sheep.proto.errors" and not hasattr(__builtins__, cls.__name__)
    assert qemu_client.ClusterError.code == errors.CODES["CLUSTER_ERROR"]
    assert qemu_client.SheepSystemError.code == errors.CODES["SYSTEM_ERROR"]
    assert errors.ClusterErrorError is qemu_client.ClusterError  # the old name stays


def _raised_names(path: pathlib.Path) -> set[str]:
    """Names of the classes a module raises directly (``raise X(...)``) and the
    result names it raises through ``error_for(CODES["..."])`` / ``sd_error("...")``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            f = node.exc.func
            if isinstance(f, ast.Name) and f.id not in ("error_for", "sd_error"):
                names.add(f.id)
            elif isinstance(f, ast.Name) and node.exc.args:
                a = node.exc.args[0]
                if isinstance(a, ast.Subscript) and isinstance(a.slice, ast.Constant):
                    names.add(errors.class_name(a.slice.value))
                elif isinstance(a, ast.Constant) and isinstance(a.value, str):
                    names.add(errors.class_name(a.value))
    return names


ENGINE = {"failover", "lock_client", "fenced_calls", "vdi_io", "vdi_snapshots"}


def test_every_raised_exception_is_exported():
    mods = {p.stem: p for p in (ROOT / "qemu_client").glob("*.py") if p.stem != "io"}
    # the VDI I/O engine the client runs on (shared with the NBD export)
    mods.update({p.stem: p for p in (ROOT / "sheep" / "proto").glob("*.py")
                 if p.stem in ENGINE})
    raised = set().union(*(_raised_names(p) for p in mods.values()))
    assert {"InactiveError", "GatewayLost", "ReadonlyError", "FencedError"} <= raised
    import builtins
    for name in raised:
        if hasattr(builtins, name):
            continue  # ConnectionError, TypeError, ...
        cls = next((getattr(m, name) for m in (qemu_client.block, failover, lock_client, errors)
                    if hasattr(m, name)), None)
        assert cls is not None and issubclass(cls, Exception), name
        public = [n for n in qemu_client.__all__ if getattr(qemu_client, n) is cls]
        assert public and all(n.endswith("Error") and "ErrorError" not in n for n in public), \
            (name, public)


def test_create_requires_a_size():
    with pytest.raises(TypeError):
        qemu_client.create("x")
    with pytest.raises(TypeError):
        asyncio.run(aio.create("x"))
    assert inspect.signature(qemu_client.create).parameters["size"].default \
        is inspect.Parameter.empty


def test_setup_cfg_splits_the_server_extra():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")

    def names(text):
        return {ln.split(">")[0].split("=")[0].strip() for ln in text.splitlines() if ln.strip()}
    assert names(cfg["options"]["install_requires"]) == set()  # the client: stdlib only
    assert names(cfg["options.extras_require"]["server"]) == SERVER_PACKAGES
    setup_sh = (ROOT / "scripts" / "setup.sh").read_text()
    extras = re.search(r"declare -A PIP_EXTRAS=\((.*)\)", setup_sh).group(1)
    modes = dict(re.findall(r'\[(\w+)\]="([^"]*)"', extras))
    assert modes and all("server" in v.split(",") for v in modes.values()), modes


def test_import_loads_no_server_module():
    code = BLOCKER + """
import qemu_client, qemu_client.aio, qemu_client.io
bad = sorted(m for m in sys.modules if m.split(".")[0] in _NotInstalled.BLOCK
             or (m.startswith("sheep.") and not m.startswith("sheep.proto")))
print(bad)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_sheep_without_the_server_extra_names_the_package(tmp_path):
    code = BLOCKER + """
from sheep.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
    store = tmp_path / "store"
    r = subprocess.run([sys.executable, "-c", code, "-f", "-p", "1", str(store)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    assert "numpy" in r.stderr and "crcmod" in r.stderr and "crc32c" in r.stderr
    assert "pip install 'pysheepdog[server]'" in r.stderr
    assert not store.exists()  # refused before touching anything


def test_collie_runs_without_the_server_extra():
    """collie needs only the wire package: with every server package blocked it
    parses, connects and reports a refused connection as dog does."""
    code = BLOCKER + """
import runpy
try:
    runpy.run_module("collie", run_name="__main__")
finally:
    bad = sorted(m for m in sys.modules if m.split(".")[0] in _NotInstalled.BLOCK
                 or (m.startswith("sheep.") and not m.startswith("sheep.proto")))
    print(bad)
"""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-c", code, "node", "list", "-p", str(port)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout.strip().endswith("[]"), r.stdout
    assert "Traceback" not in r.stderr and "connect" in r.stderr.lower(), r.stderr
