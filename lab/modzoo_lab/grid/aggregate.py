"""Scores aggregated across tasks, with their uncertainty (Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice", the method of their ``rliable`` library).

A grid of 3 seeds per task cannot rank two arms by per-task means: their spread across seeds is as large as the
gaps. Pooling the runs of every task gives more runs per arm, and estimates that do not hide how few they are:
- the **interquartile mean** (IQM) of all runs' normalized scores: the mean of the middle 50%, robust to one
  collapsed seed where the mean is not, and less coarse than the median;
- the **probability of improvement** P(X > Y): the chance that a run of arm X beats a run of arm Y on the same task
  (ties count half), averaged over tasks, which compares arms without assuming one scale across tasks;
- the **IQM difference** IQM(X) - IQM(Y): how much X wins by, which the probability of improvement does not say
  (a win by a hair counts as much as one by fifty points).

Each comes with a 95% percentile interval from a *stratified* bootstrap: the runs of each task are resampled with
replacement, within that task, so every resample keeps every task's weight. The resamples draw from a fixed seed,
so a regenerated report prints the same intervals.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

REPS = 10_000
SEED = 0
Scores = Mapping[str, Sequence[float]]  # task -> the normalized scores of an arm's runs on it (one per seed)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean of the middle half along ``axis``: ``scipy.stats.trim_mean(x, 0.25)``, which cuts
    ``int(0.25 n)`` values off each end (so with fewer than 4 values it is the plain mean)."""
    a = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = a.shape[axis]
    cut = int(0.25 * n)
    return np.take(a, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _resample(x: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    """``reps`` bootstrap resamples of one task's runs: shape (reps, n)."""
    return x[rng.integers(0, x.size, size=(reps, x.size))]


def _check(scores: Scores) -> dict[str, np.ndarray]:
    out = {t: np.asarray(v, dtype=float) for t, v in scores.items()}
    empty = [t for t, v in out.items() if v.size == 0]
    if not out or empty:
        raise ValueError(f"every task needs at least one run to aggregate over (none on: {', '.join(empty) or 'any'})")
    return out


def _interval(point: float, boot: np.ndarray) -> tuple[float, float, float]:
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def _stratified(scores: Scores, stat: Callable[..., np.ndarray], reps: int, seed: int
                ) -> tuple[float, float, float]:
    by_task = _check(scores)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([by_task[t] for t in sorted(by_task)])
    boot = np.concatenate([_resample(by_task[t], rng, reps) for t in sorted(by_task)], axis=1)
    return _interval(float(stat(pooled)), stat(boot, axis=1))


def iqm_interval(scores: Scores, reps: int = REPS, seed: int = SEED) -> tuple[float, float, float]:
    """(IQM of all runs of all tasks, 2.5th and 97.5th percentiles of its stratified bootstrap)."""
    return _stratified(scores, iqm, reps, seed)


def _p_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(a run of x beats a run of y), ties half: the Mann-Whitney U statistic over n m, along the last axis."""
    d = x[..., :, None] - y[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def probability_of_improvement(x: Scores, y: Scores, reps: int = REPS, seed: int = SEED
                               ) -> tuple[float, float, float]:
    """(P(X > Y) averaged over the tasks both arms ran, and its stratified-bootstrap interval: each arm's runs
    resampled within each task, independently)."""
    bx, by = _check(x), _check(y)
    tasks = sorted(set(bx) & set(by))
    if not tasks:
        raise ValueError("the two arms share no task to compare on")
    rng = np.random.default_rng(seed)
    point = np.mean([_p_greater(bx[t], by[t]) for t in tasks])
    boot = np.mean([_p_greater(_resample(bx[t], rng, reps), _resample(by[t], rng, reps)) for t in tasks], axis=0)
    return _interval(float(point), boot)


def iqm_difference(x: Scores, y: Scores, reps: int = REPS, seed: int = SEED) -> tuple[float, float, float]:
    """(IQM of X's runs minus IQM of Y's, over the tasks both arms ran, and its stratified-bootstrap interval:
    each arm's runs resampled within each task, independently, as for the probability of improvement)."""
    bx, by = _check(x), _check(y)
    tasks = sorted(set(bx) & set(by))
    if not tasks:
        raise ValueError("the two arms share no task to compare on")
    rng = np.random.default_rng(seed)
    point = iqm(np.concatenate([bx[t] for t in tasks])) - iqm(np.concatenate([by[t] for t in tasks]))
    boot_x = np.concatenate([_resample(bx[t], rng, reps) for t in tasks], axis=1)
    boot_y = np.concatenate([_resample(by[t], rng, reps) for t in tasks], axis=1)
    return _interval(float(point), iqm(boot_x, axis=1) - iqm(boot_y, axis=1))


def mean_interval(x: Sequence[float], reps: int = REPS, seed: int = SEED) -> tuple[float, float, float]:
    """(mean of ``x``, 2.5th and 97.5th percentiles of its bootstrap): the interval of one arm's mean over its
    seeds, one value per seed.

    Why a separate interval from the pooled spreads: an IQR over every episode of every seed mostly measures how
    often episodes fall, not how far two trainings of the same arm land apart; this resamples the per-seed means
    themselves. With three seeds there are only 10 distinct resamples, so the interval is coarse (it never
    leaves [min, max]); it is printed beside the min-max it cannot exceed, not as a test."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        raise ValueError("a mean over seeds needs at least one seed")
    rng = np.random.default_rng(seed)
    return _interval(float(a.mean()), _resample(a, rng, reps).mean(axis=1))


def between_seeds(x: Sequence[float], reps: int = REPS, seed: int = SEED) -> dict[str, float]:
    """The between-seed spread of per-seed means: n, mean, IQR (numpy's linear interpolation), min, max and the
    bootstrap interval of the mean (:func:`mean_interval`); nan for every spread where one seed has none."""
    a = np.asarray(x, dtype=float)
    nan = float("nan")
    if a.size == 0:
        return {"n": 0, "mean": nan, "iqr": nan, "min": nan, "max": nan, "lo": nan, "hi": nan}
    if a.size == 1:
        return {"n": 1, "mean": float(a[0]), "iqr": nan, "min": nan, "max": nan, "lo": nan, "hi": nan}
    q75, q25 = np.percentile(a, [75, 25])
    mean, lo, hi = mean_interval(a, reps, seed)
    return {"n": int(a.size), "mean": mean, "iqr": float(q75 - q25), "min": float(a.min()), "max": float(a.max()),
            "lo": lo, "hi": hi}
