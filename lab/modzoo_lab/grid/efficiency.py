"""Sample efficiency from a run's learning curve: how soon it gets near its final score, and its mean score over
training.

The GFDT paper claims guidance-first training is more sample efficient than joint training. A final score cannot
say so; the curves the grids record (an evaluation every ``eval_every`` policy steps, ``curve.csv``) can:

- **steps to 90%**: the first evaluated step at which the run scores at least 90% of its own final score. It is
  read off the evaluation grid, so its resolution is ``eval_every`` (a run that gets there between two
  evaluations is counted at the later one). A run whose final score is below ``MIN_FINAL`` normalized points has
  no such target: it ended near a random policy's score (0), where 90% of the final score is reached by noise
  (a hopper that falls at once scores about 0.1 at every evaluation, "at 90% from the first") and where 90% of a
  negative score lies above it: n/a.
- **AUC**: the area under the curve by the trapezoid rule, from the first evaluation to the last, divided by the
  steps between them: the curve's mean score over training, in normalized points, comparable between runs of
  the same evaluation grid. It rewards getting high early and staying there, which steps to 90% does not see.

Both use each run's own final score and curve; the arms' comparison is of their per-seed values, with their
between-seed spread (:func:`modzoo_lab.grid.aggregate.between_seeds`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

FRACTION = 0.9
MIN_FINAL = 5.0  # normalized points: a final score below it is a run that did not learn, with no "steps to 90%"


def _points(curve: Sequence[tuple[int, float]], final: float | None = None,
            final_step: int | None = None) -> list[tuple[int, float]]:
    """The curve sorted by step, with the final evaluation added at ``final_step`` where the curve lacks that step
    (the grids' curves end with it: their last point is the final evaluation)."""
    pts = sorted((int(s), float(v)) for s, v in curve)
    if final is not None and final_step is not None and final_step not in {s for s, _ in pts}:
        pts = sorted(pts + [(int(final_step), float(final))])
    return pts


def steps_to_fraction(curve: Sequence[tuple[int, float]], final: float, fraction: float = FRACTION,
                      final_step: int | None = None) -> float:
    """The first step of ``curve`` whose score is at least ``fraction`` of ``final`` (nan when ``final`` is below
    ``MIN_FINAL``, or no point reaches it)."""
    if not final >= MIN_FINAL:
        return float("nan")
    target = fraction * final
    return next((float(s) for s, v in _points(curve, final, final_step) if v >= target), float("nan"))


def normalized_auc(curve: Sequence[tuple[int, float]], final: float | None = None,
                   final_step: int | None = None) -> float:
    """The trapezoid-rule area under ``curve`` from its first step to its last, divided by that span: the mean
    score over training (nan with fewer than two points)."""
    pts = _points(curve, final, final_step)
    if len(pts) < 2:
        return float("nan")
    s = np.array([p[0] for p in pts], dtype=float)
    v = np.array([p[1] for p in pts], dtype=float)
    area = float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)))
    return area / float(s[-1] - s[0])
