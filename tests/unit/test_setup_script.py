"""``scripts/setup.sh`` installs only what the chosen command needs.

Pure: the script runs in its dry-run mode (``SETUP_DRY_RUN=1``), which
changes nothing and prints the Debian packages of the mode, the pip spec and
whether a virtualenv would be made; no apt, no pip, no network.  The script
is run from a copy in a temporary directory without ``.venv``, as on a fresh
clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup.sh"

pytestmark = pytest.mark.quick


@pytest.fixture
def clone(tmp_path):
    """A directory that looks like a fresh clone: scripts/setup.sh, no .venv."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "setup.sh")
    return tmp_path


def dry_run(clone, *args, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("SETUP_VENV_MISSING", "PYTHON")}
    full_env.update(SETUP_DRY_RUN="1", **env)
    r = subprocess.run(["bash", str(clone / "scripts" / "setup.sh"), *args],
                       capture_output=True, text=True, env=full_env, timeout=30)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    assert {"mode", "apt-packages", "apt-missing", "venv", "pip-spec"} <= out.keys(), r.stdout
    out["apt"] = out["apt-packages"].split()
    out["missing"] = out["apt-missing"].split()
    return out


def test_run_needs_no_java_zookeeper_qemu_or_fio(clone):
    out = dry_run(clone, "run")
    assert out["mode"] == "run"
    assert "procps" in out["apt"]
    for pkg in out["apt"]:
        assert not any(word in pkg for word in ("zookeeper", "java", "jre", "jdk", "fio",
                                                "qemu")), out["apt"]
    assert out["pip-spec"] == ".[server]"


def test_default_mode_is_run(clone):
    assert dry_run(clone)["mode"] == "run"


def test_test_mode_installs_everything_the_tests_use(clone):
    out = dry_run(clone, "test")
    assert {"zookeeper", "qemu-utils", "fio", "iproute2", "procps"} <= set(out["apt"])
    assert out["pip-spec"] == ".[server,test]"


def test_bench_mode_and_extra_extras(clone):
    out = dry_run(clone, "bench")
    assert {"qemu-utils", "fio"} <= set(out["apt"])
    assert "zookeeper" not in out["apt"]
    assert out["pip-spec"] == ".[server,bench]"
    assert dry_run(clone, "test", "bench")["pip-spec"] == ".[server,test,bench]"


def test_python3_venv_installed_when_venv_cannot_work(clone):
    # the real probe, with an interpreter that cannot make a venv
    out = dry_run(clone, "run", PYTHON="false")
    assert "python3-venv" in out["apt"]
    assert out["venv"].startswith("create")
    # the forced path, as documented in the script
    out = dry_run(clone, "run", SETUP_VENV_MISSING="1")
    assert "python3-venv" in out["apt"] and "python3-venv" in out["missing"]
    assert "zookeeper" not in out["apt"]


def test_python3_venv_not_added_when_venv_works(clone):
    venv_ok = subprocess.run(["python3", "-c", "import venv, ensurepip"]).returncode == 0
    if not venv_ok:
        pytest.skip("python3 here cannot make a venv")
    assert "python3-venv" not in dry_run(clone, "run")["apt"]


def test_unknown_mode_is_refused(clone):
    r = subprocess.run(["bash", str(clone / "scripts" / "setup.sh"), "nonsense"],
                       capture_output=True, text=True, env={**os.environ, "SETUP_DRY_RUN": "1"},
                       timeout=30)
    assert r.returncode == 2
    assert "unknown mode 'nonsense'" in r.stderr


def test_run_and_test_scripts_pick_their_mode():
    assert "scripts/setup.sh run" in (REPO / "run.sh").read_text()
    assert "scripts/setup.sh test" in (REPO / "test.sh").read_text()
