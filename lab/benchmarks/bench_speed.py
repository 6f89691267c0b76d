"""Single-process speed of modzoo's hot paths (pytest-benchmark; not part of the fast test suite).

    python -m pytest lab/benchmarks/bench_speed.py --benchmark-only -o addopts="" -p no:cacheprovider
    BENCH_THREADS=2 python -m pytest lab/benchmarks/bench_speed.py --benchmark-only -o addopts=""

Cases (hopper shapes: obs 15, act 3; batch 256; T=5; each half's default config) are defined in
``speed_common.case``: guidance updates (IQL critics, DQL twin Q), policy updates (IDQL actor, DQL actor with
its Q term through the chain), the joint DQL step ``modzoo.train`` runs, action selection for 1 and 50 states
with 50 and 256 candidates, and batch sampling. One intra-op thread unless ``BENCH_THREADS`` says otherwise
(see speed_common's docstring for why). Before/after comparisons of code changes are not made here but with
``ab_commits.py``, which alternates two revisions in one run; this file gives each case's absolute figure.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import CASES, case, machine, set_threads  # noqa: E402

set_threads()


@pytest.mark.parametrize("name", CASES)
def test_speed(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    fn = case(name)  # built and called once
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    benchmark.group = name.split("_")[0]
    benchmark.extra_info.update(machine())
    if one > 0.5:  # selection for 50 states x 256 candidates: seconds per call
        benchmark.pedantic(fn, rounds=3, iterations=1)
    else:
        benchmark.pedantic(fn, rounds=15 if name.startswith(("act_", "sample")) else 10,
                           iterations=max(1, min(50, int(0.2 / max(one, 1e-6)))), warmup_rounds=1)
    benchmark.extra_info["loadavg_end"] = machine()["loadavg"]
