"""Which package may import which (docs/architecture.md, "Import rules"), no
import cycles (in ``collie`` none even counting the imports inside
functions), no module over 600 lines.

Every ``import`` statement of the project is read with :mod:`ast` (module
level and inside functions alike) and checked against the rules:

* ``sheep.proto`` (the wire format) imports the standard library and
  ``sheep.proto`` only; numpy only inside a function (the daemon's bulk
  placement), never at import.
* ``qemu_client`` imports the standard library, itself and ``sheep.proto``.
* ``collie`` imports the standard library, itself, ``sheep.proto`` and the
  version string; ``tqdm`` inside a function (progress bars are optional),
  and nothing else inside a function: collie's modules import one another
  at module level, and without a cycle.
  ``collie.manpage`` also renders sheep(8) from ``sheep.config``'s parser.
* The daemon (``sheep`` outside ``sheep.proto``) never imports ``collie``
  or ``qemu_client``: the NBD export runs the VDI I/O engine of
  ``sheep.proto`` (``vdi_io``), which ``qemu_client`` runs too.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

#: edges that break the rules today, each with the reason it is still there
KNOWN_EDGES = {
    ("collie.manpage", "sheep.config"):
        "the man-page generator renders sheep(8) from the daemon's own parser",
}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: pathlib.Path):
    """(imported name, not run at import?) for every import statement of a file.

    Not run at import: inside a function, or under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    out = []

    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            nested = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING")
            if isinstance(child, ast.Import):
                out.extend((a.name, in_func) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative import
                    base = pkg.rsplit(".", child.level - 1)[0] if child.level > 1 else pkg
                    name = f"{base}.{child.module}" if child.module else base
                else:
                    name = child.module
                out.extend((f"{name}.{a.name}", in_func) for a in child.names)
            visit(child, nested)
    visit(tree, False)
    return out


def files(pkg: str):
    return sorted((ROOT / pkg).rglob("*.py"))


def project(name: str) -> bool:
    return name.split(".")[0] in {"sheep", "collie", "qemu_client", "tests", "bench"}


def known(mod: str, name: str) -> bool:
    return any(mod == a and _in(name, b) for a, b in KNOWN_EDGES)


def violations(pkg: str, allowed) -> list[str]:
    bad = []
    for path in files(pkg):
        mod = module_name(path)
        for name, in_func in imports(path):
            top = name.split(".")[0]
            if top in STDLIB and not project(name):
                continue
            if known(mod, name):
                continue
            if not allowed(mod, name, in_func):
                bad.append(f"{mod} imports {name}{' (in a function)' if in_func else ''}")
    return bad


def _in(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_wire_package_imports_only_the_standard_library():
    def allowed(mod, name, in_func):
        return _in(name, "sheep.proto") or (name == "numpy" and in_func)
    assert violations("sheep/proto", allowed) == []


def test_qemu_client_imports_only_the_wire_package():
    def allowed(mod, name, in_func):
        return _in(name, "qemu_client", "sheep.proto")
    assert violations("qemu_client", allowed) == []


def test_collie_imports_only_the_wire_package():
    def allowed(mod, name, in_func):
        return (_in(name, "collie", "sheep.proto") or name == "sheep.__version__"
                or (_in(name, "tqdm") and in_func))
    assert violations("collie", allowed) == []


def test_the_daemon_never_imports_the_clients():
    def allowed(mod, name, in_func):
        return not _in(name, "collie", "qemu_client")
    assert violations("sheep", allowed) == []


def test_known_edges_are_still_real():
    """An exception that no longer exists must leave the list (so it cannot grow stale)."""
    seen = [(module_name(p), n) for pkg in ("sheep", "collie") for p in files(pkg)
            for n, _f in imports(p)]
    assert {(a, b) for a, b in KNOWN_EDGES if not any(m == a and _in(n, b) for m, n in seen)} == set()


def test_the_rules_catch_a_violation():
    """The checker itself: a client module importing the daemon is reported."""
    bad = ROOT / "qemu_client" / "_import_rule_probe.py"
    bad.write_text("from sheep.datapath import gateway\n")
    try:
        found = violations("qemu_client", lambda m, n, f: _in(n, "qemu_client", "sheep.proto"))
    finally:
        bad.unlink()
    assert found == ["qemu_client._import_rule_probe imports sheep.datapath.gateway"]


def _module_graph(in_functions: bool) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at import time only,
    or also inside functions)."""
    paths = {module_name(p): p for pkg in ("sheep", "collie", "qemu_client") for p in files(pkg)}
    graph: dict[str, set[str]] = {}
    for mod, path in paths.items():
        out = set()
        for name, in_func in imports(path):
            if in_func and not in_functions:
                continue
            parts = name.split(".")
            for n in range(len(parts), 0, -1):  # the longest prefix that is a module
                target = ".".join(parts[:n])
                if target in paths:
                    if target != mod:
                        out.add(target)
                    break
        graph[mod] = out
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (as a path), or []."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return []
    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_no_import_cycles_at_import_time():
    """Importing any module never needs itself half-imported: the module-level
    imports of the project form no cycle."""
    assert _cycle(_module_graph(in_functions=False)) == []


def test_no_import_cycles_even_through_functions():
    """Nor do the imports inside functions close a cycle anywhere in the
    project: no module needs another that needs it back, at any time."""
    assert _cycle(_module_graph(in_functions=True)) == []


def _collie_graph() -> dict[str, set[str]]:
    graph = _module_graph(in_functions=True)
    return {m: {t for t in ts if _in(t, "collie")} for m, ts in graph.items() if _in(m, "collie")}


def test_collie_has_no_import_cycle_even_inside_functions():
    """collie's modules form no cycle even counting the imports inside
    functions: what the commands share lives in modules below them
    (collie.args, collie.prompt, collie.queries, collie.vdi_delete), not in a
    sibling command (docs/architecture.md, "No import cycles")."""
    graph = _collie_graph()
    assert "collie.vdi" in graph and "collie.queries" in graph["collie.vdi"]
    assert _cycle(graph) == []


def test_collie_imports_inside_functions_only_optional_packages():
    """Only tqdm (optional: no progress bar without it) is imported inside a
    function in collie; everything else at module level."""
    lazy = [f"{module_name(p)} imports {n}" for p in files("collie")
            for n, in_func in imports(p) if in_func and not _in(n, "tqdm")]
    assert lazy == []


def test_nothing_imports_an_entry_point():
    """``__main__`` modules run the programs; nothing else depends on them."""
    graph = _module_graph(in_functions=True)
    assert sorted((m, t) for m, ts in graph.items() for t in ts if t.endswith("__main__")) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


MAX_LINES = 600


def test_no_module_is_over_600_lines():
    """Modules are named for what they hold and stay readable in one sitting
    (docs/architecture.md); tests aside."""
    long = {str(p.relative_to(ROOT)): n for pkg in ("sheep", "collie", "qemu_client", "bench")
            for p in files(pkg) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
