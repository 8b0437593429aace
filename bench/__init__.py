"""Benchmarks for pysheepdog: ``python -m bench`` (see README.md, "Tests and benchmarks").

The cluster and its baselines (a local file, ``qemu-nbd`` on a raw file) are
measured side by side on the same machine, written as JSON and a Markdown
table of ratios."""
