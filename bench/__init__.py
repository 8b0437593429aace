"""Benchmarks for pysheepdog (DESIGN §10): ``python -m bench``."""
