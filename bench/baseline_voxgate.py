"""Run ``voxgate`` from another checkout (``VOXGATE_BASELINE_TREE``, a
directory holding a ``voxgate`` package, e.g. ``git worktree add /tmp/base
b7b901d``) with this environment's dependencies: ``python -m
bench.baseline_voxgate serve …`` is that revision's ``voxgate serve …``.
Used by ``bench.bench_relay_versions``."""

import os
import runpy
import sys

sys.path.insert(0, os.environ["VOXGATE_BASELINE_TREE"])
runpy.run_module("voxgate", run_name="__main__", alter_sys=True)
