"""The daemon object wires the parts together and is not reached through by
them (docs/architecture.md, "How the parts know each other").

The parts are the classes of ``sheep.datapath``, ``sheep.cluster``,
``sheep.vdi`` and ``sheep.store``: each is given its collaborators (the
group, the store, the VDI table, ...) when the daemon builds it.  None of
them may take the daemon object (a parameter named ``sheep``) or keep it
(``self.sheep``).  The request path (``sheep.server``: listener, op table,
handlers; the NBD export) is the daemon's front and takes it by design, as
do the op handlers of the part packages (module-level functions whose first
argument is the daemon, registered in the op table).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).resolve().parents[2]
PART_PACKAGES = ("sheep/datapath", "sheep/cluster", "sheep/vdi", "sheep/store")


def daemon_reaches(source: str, filename: str = "<string>") -> list[str]:
    """Where a class of ``source`` takes or keeps the daemon object."""
    out = []
    for cls in ast.walk(ast.parse(source, filename)):
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                if "sheep" in names:
                    out.append(f"{filename}:{node.lineno}: {cls.name}.{node.name} takes `sheep`")
            elif (isinstance(node, ast.Attribute) and node.attr == "sheep"
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                out.append(f"{filename}:{node.lineno}: {cls.name} uses self.sheep")
    return out


def part_modules():
    for pkg in PART_PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_no_part_takes_or_keeps_the_daemon_object():
    found = []
    for path in part_modules():
        found += daemon_reaches(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []


def test_the_checker_finds_a_part_holding_the_daemon():
    src = ("class Gateway:\n"
           "    def __init__(self, sheep):\n"
           "        self.sheep = sheep\n"
           "    def read(self):\n"
           "        return self.sheep.group.epoch\n"
           "def handler(sheep, req):\n"  # an op handler: allowed
           "    return sheep.gateway\n")
    found = daemon_reaches(src)
    assert len(found) == 3 and all("Gateway" in f for f in found)
    assert daemon_reaches("class Replica:\n    def __init__(self, *, store, group):\n"
                          "        self.store = store\n") == []


def test_the_part_packages_exist():
    # a moved package would make the first test pass vacuously
    assert all(sum(1 for _ in (ROOT / pkg).glob("*.py")) >= 3 for pkg in PART_PACKAGES)
