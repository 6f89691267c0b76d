"""The same grid runs on two collections of the same datasets, side by side.

gfdt-50k's halfcheetah and walker2d runs were trained twice: on the datasets first collected, and again on a
second collection of them (the same behaviour policies and seeds, collected bit for bit the same on any CPU from
then on). Both sets of summaries are kept (``lab/experiments/results/gfdt-50k-first-data`` and
``lab/experiments/results/gfdt-50k``). One seed of one run cannot separate the data's part from the training's own
noise, so this lines up every run present in both, per seed, and puts the difference beside the spread over
seeds on one collection: a difference between collections that is small next to that spread says the findings
do not hang on which collection was drawn.

    python lab/benchmarks/compare_collections.py FIRST_DIR SECOND_DIR [--swap selection=none]

Per run: the final score (ranked by the run's own guidance), the ``--swap`` evaluation of the same policy (by
default unranked: one sample, no critic), the falls of the final evaluation, and the curve. Per task and arm:
the mean difference over the seeds both hold, and the standard deviation over seeds on each collection.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from modzoo_lab.grid.report import RunSummary, fell, load_summaries, time_limit


def _key(r: RunSummary) -> tuple[str, str, int]:
    return r.task, r.arm, r.seed


def _num(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.1f}"


def _swap(r: RunSummary, label: str) -> float | None:
    sw = r.swaps.get(label)
    return float(np.mean(sw["normalized"])) if sw and sw.get("normalized") else None


def compare(first: list[RunSummary], second: list[RunSummary], swap: str = "selection=none") -> str:
    """Markdown: one row per run both collections hold, then one per task and arm."""
    a = {_key(r): r for r in first}
    b = {_key(r): r for r in second}
    both = sorted(a.keys() & b.keys())
    lines = [f"| task | arm | seed | first | second | second - first | {swap} first | {swap} second | "
             "fell first | fell second | curve first | curve second |", "|" + "---|" * 12]
    for k in both:
        x, y = a[k], b[k]
        limit = time_limit(k[0])
        lines.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {_num(x.final_score)} | {_num(y.final_score)} | "
            f"{_num(y.final_score - x.final_score)} | {_num(_swap(x, swap))} | {_num(_swap(y, swap))} | "
            f"{fell([x.result.get('eval', {})], limit)} | {fell([y.result.get('eval', {})], limit)} | "
            f"{' / '.join(_num(s) for _, s in x.curve)} | {' / '.join(_num(s) for _, s in y.curve)} |")
    lines += ["", "| task | arm | seeds in both | mean difference | std over seeds, first | std over seeds, "
              "second |", "|" + "---|" * 6]
    for task, arm in sorted({k[:2] for k in both}):
        seeds = [k for k in both if k[:2] == (task, arm)]
        d = [b[k].final_score - a[k].final_score for k in seeds]
        sd_a = _std([r.final_score for k, r in a.items() if k[:2] == (task, arm)])
        sd_b = _std([r.final_score for k, r in b.items() if k[:2] == (task, arm)])
        lines.append(f"| {task} | {arm} | {len(seeds)} | {_num(float(np.mean(d)))} | {_num(sd_a)} | "
                     f"{_num(sd_b)} |")
    tasks = {k[0] for k in a} & {k[0] for k in b}  # a task trained once (hopper) is no one-sided run
    only = sorted(k for k in a.keys() ^ b.keys() if k[0] in tasks)
    if only:
        lines += ["", f"{len(only)} runs are in one collection only: "
                  + ", ".join(f"{t}/{arm}/seed{s} ({'first' if (t, arm, s) in a else 'second'})"
                              for t, arm, s in only) + "."]
    return "\n".join(lines)


def _std(x: list[float]) -> float | None:
    """Sample standard deviation over seeds; none from a single seed."""
    return float(np.std(x, ddof=1)) if len(x) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path, help="summaries of the runs on the first collection")
    ap.add_argument("second", type=Path, help="summaries of the same runs on the second collection")
    ap.add_argument("--swap", default="selection=none", help="the swap evaluation shown beside the final score")
    args = ap.parse_args()
    for d in (args.first, args.second):
        if not d.is_dir():
            raise SystemExit(f"error: {d} is not a directory of run summaries (<task>/<arm>/seed<k>/result.json)")
    print(compare(load_summaries(args.first), load_summaries(args.second), args.swap))


if __name__ == "__main__":
    main()
