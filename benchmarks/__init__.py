"""Benchmarks: `./run bench` (numbers go to docs/benchmarks.md)."""
