"""Benchmarks for pysheepdog: ``python -m bench`` and its siblings (docs/bench.md).

The cluster and its baselines (a local file, ``qemu-nbd`` on a raw file) are
measured side by side on the same machine, written as JSON and a Markdown
table of ratios.  Everything needed to start the daemons ships in this
package (:mod:`bench.daemons`), so the benchmarks run after a plain
``pip install 'pysheepdog[server,bench]'`` as well as from a checkout."""

from __future__ import annotations

import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent


def in_checkout(package: pathlib.Path = PACKAGE) -> bool:
    """True when ``package`` sits in a source tree (its parent holds
    ``setup.cfg`` and ``sheep/``), False for an installed copy."""
    root = package.parent
    return (root / "setup.cfg").is_file() and (root / "sheep").is_dir()


def results_dir(package: pathlib.Path = PACKAGE, cwd: pathlib.Path | None = None) -> pathlib.Path:
    """Where a benchmark writes its JSON when no ``--json`` is given: the
    checkout's ``bench/results/``; for an installed package
    ``./bench-results`` in the current directory (never into site-packages)."""
    if in_checkout(package):
        return package / "results"
    return (cwd or pathlib.Path.cwd()) / "bench-results"
