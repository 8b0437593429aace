"""The benchmarks work from an installed package, not only from a checkout:
no bench module reaches into tests/ (bench.membership aside, which says so),
the tests' harness re-exports bench.daemons' very objects (one copy of the
daemon starter), an installed copy of the package (no tests/, no setup.cfg
beside it) imports every entry point and writes results to the current
directory, and setup.cfg ships sdload.c and installs matplotlib for the
bench extra and for the tests."""

from __future__ import annotations

import ast
import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import bench
from bench import daemons

pytestmark = pytest.mark.quick

REPO = pathlib.Path(__file__).resolve().parents[3]
#: needs the drivers' test programs of tests/unit/cluster; exits 1 saying so elsewhere
NEEDS_CHECKOUT = {"membership.py"}


def _reaches_into_tests(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] in ("harness", "tests")]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in ("harness", "tests"):
            out.append(node.module)
        elif isinstance(node, ast.Constant) and node.value == "tests":
            out.append("the path 'tests'")
    return out


def test_no_bench_module_uses_the_tests_directory():
    found = {p.name: bad for p in sorted((REPO / "bench").glob("*.py"))
             if p.name not in NEEDS_CHECKOUT and (bad := _reaches_into_tests(p))}
    assert found == {}
    assert _reaches_into_tests(REPO / "bench" / "membership.py")  # the checker sees it


def test_the_harness_shares_the_daemon_starter():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import harness
    finally:
        sys.path.remove(str(REPO / "tests"))
    for name in ("Client", "Cluster", "Node", "free_port", "wait_for", "placement_ok",
                 "vdi_oids"):
        assert getattr(harness, name) is getattr(daemons, name), name


def test_daemons_start_as_the_installed_sheep_module(tmp_path):
    c = daemons.Cluster(str(tmp_path / "c"), 0, nosync=True)
    node = daemons.Node(c, 0, 7601, str(tmp_path / "store0"), 0, list(c.extra))
    argv = node.argv()
    assert argv[:3] == [sys.executable, "-m", "sheep"] and argv[-1] == str(tmp_path / "store0")
    assert argv[argv.index("-c") + 1] == f"local:{tmp_path / 'c' / 'cluster'}"
    assert "-n" in argv and argv[argv.index("-p") + 1] == "7601"


def test_free_port_stays_in_range_and_is_claimed():
    # (a window of 100: ports of earlier tests' daemons may sit in TIME_WAIT)
    ports = {daemons.free_port(7900, 8000) for _ in range(3)}
    assert len(ports) == 3 and all(7900 <= p < 8000 for p in ports)
    for p in ports:
        with open(os.path.join(daemons._PORT_DIR, str(p))) as f:
            assert int(f.read()) == os.getpid()


def test_results_dir_checkout_and_installed(tmp_path):
    assert bench.in_checkout() and bench.results_dir() == REPO / "bench" / "results"
    site = tmp_path / "site-packages"
    (site / "bench").mkdir(parents=True)
    assert not bench.in_checkout(site / "bench")
    assert bench.results_dir(site / "bench", cwd=tmp_path) == tmp_path / "bench-results"


def test_an_installed_copy_imports_every_entry_point(tmp_path):
    """bench/ and sheep/ copied into a bare directory, as pip lays them out:
    every benchmark imports without tests/harness.py and finds its C source."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(REPO / "bench", site / "bench",
                    ignore=shutil.ignore_patterns("results", "__pycache__"))
    os.symlink(REPO / "sheep", site / "sheep")
    code = ("import sys, bench, bench.__main__, bench.sdload, bench.nbd, bench.recovery, "
            "bench.sweep, bench.plots, bench.sdload_build as B\n"
            "assert 'harness' not in sys.modules, 'harness imported'\n"
            "assert not any(p.endswith('tests') for p in sys.path), sys.path\n"
            "print(bench.results_dir(), B.SOURCE.is_file(), bench.in_checkout())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, "
                        f"{str(site)!r}); exec({code!r})"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "bench-results"), "True", "False"]


def test_setup_cfg_ships_the_source_and_matplotlib():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "sdload.c" in cfg["options.package_data"]["bench"].split()
    extras = cfg["options.extras_require"]
    for extra in ("bench", "test"):  # test: the plot tests run wherever the tests run
        assert any(line.strip().startswith("matplotlib") for line in extras[extra].splitlines())


def test_nbd_ports_follow_the_options(tmp_path):
    from bench import nbd as N

    ns = N.parse_args(["--base-port", "7600", "--nbd-base-port", "10900"])
    assert (ns.base_port, ns.nbd_ports) == (7600, (10900, 10950))
    assert N.parse_args([]).nbd_ports == (10809, 11808)  # the default range
    c = daemons.Cluster(str(tmp_path / "c"), 0, nbd=True)
    c.nbd_ports = ns.nbd_ports
    node = c.add_node(start=False)
    assert 10900 <= node.nbd_port < 10950
    assert node.argv()[node.argv().index("--nbd") + 1] == f"127.0.0.1:{node.nbd_port}"
    with pytest.raises(SystemExit):
        N.parse_args(["--nbd-base-port", "65530"])
