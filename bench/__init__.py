"""voxgate benchmarks: ``make bench`` (``python -m bench.run``) runs them all
on loopback, bounded, and writes ``docs/benchmarks.md``."""
