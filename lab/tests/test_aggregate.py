"""The across-task aggregates of the experiment report: IQM and probability of improvement with stratified
bootstrap intervals."""
from __future__ import annotations

import numpy as np
import pytest

from modzoo_lab.grid.aggregate import iqm, iqm_difference, iqm_interval, probability_of_improvement


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([7.0, 1.0, 100.0, 3.0, 5.0, 2.0, 6.0, 4.0]) == pytest.approx(4.5)  # 3, 4, 5, 6: 1, 2, 7, 100 cut
    assert iqm([1.0, 2.0, 30.0]) == pytest.approx(11.0)  # int(0.75) = 0 cut from each end: the mean
    x = np.random.default_rng(1).normal(size=(4, 13))
    scipy_stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose(iqm(x, axis=1), scipy_stats.trim_mean(x, 0.25, axis=1))


def test_the_bootstrap_resamples_within_each_task():
    # IQM of [0, 0, 100, 100] is 50; a resample that kept each task's two runs always gives 50, one that pooled the
    # tasks first would often draw three of one kind and move it
    point, lo, hi = iqm_interval({"a": [100.0, 100.0], "b": [0.0, 0.0]})
    assert (point, lo, hi) == (50.0, 50.0, 50.0)
    point, lo, hi = iqm_interval({"a": [10.0, 60.0, 20.0, 90.0], "b": [30.0, 50.0, 40.0]})
    assert lo < point < hi and lo >= 10.0 and hi <= 90.0
    assert iqm_interval({"a": [10.0, 60.0, 20.0], "b": [30.0, 50.0]}) == iqm_interval(
        {"b": [30.0, 50.0], "a": [10.0, 60.0, 20.0]})  # fixed seed, tasks in a fixed order: the same report twice


def test_probability_of_improvement_counts_wins_per_task_ties_half():
    assert probability_of_improvement({"a": [2.0, 3.0]}, {"a": [0.0, 1.0]}) == (1.0, 1.0, 1.0)
    assert probability_of_improvement({"a": [1.0, 1.0]}, {"a": [1.0, 1.0]})[0] == 0.5
    # 3 of 4 pairs won on a; every pair lost on b: (0.75 + 0) / 2, and only the shared tasks count
    p, lo, hi = probability_of_improvement({"a": [1.0, 3.0], "b": [0.0], "c": [9.0]}, {"a": [0.0, 2.0], "b": [5.0]})
    assert p == pytest.approx(0.375) and 0.0 <= lo <= p <= hi <= 0.5
    assert probability_of_improvement({"a": [0.0, 1.0]}, {"a": [2.0, 3.0]})[0] == 0.0


def test_the_iqm_difference_says_how_much_an_arm_wins_by_where_the_probability_cannot():
    y = {"a": [10.0, 10.0, 10.0], "b": [50.0, 50.0]}
    by_a_hair = {t: [v + 0.1 for v in vs] for t, vs in y.items()}
    by_far = {t: [v + 50.0 for v in vs] for t, vs in y.items()}
    # every pair won either way: the same probability of improvement, differences 0.1 and 50 apart
    assert probability_of_improvement(by_a_hair, y) == probability_of_improvement(by_far, y) == (1.0, 1.0, 1.0)
    assert iqm_difference(by_far, y) == pytest.approx((50.0, 50.0, 50.0))
    assert iqm_difference(by_a_hair, y) == pytest.approx((0.1, 0.1, 0.1))
    # each arm is resampled on its own: a shifted copy of a spread arm is not a fixed difference
    spread = {"a": [10.0, 20.0, 30.0], "b": [50.0, 60.0]}
    d, lo, hi = iqm_difference({t: [v + 50.0 for v in vs] for t, vs in spread.items()}, spread)
    assert d == pytest.approx(50.0) and lo < 50.0 < hi
    # over the shared tasks only, the pooled IQM of each side: x [5, 7] against y [1, 3] on task a
    d, lo, hi = iqm_difference({"a": [5.0, 7.0], "c": [100.0]}, {"a": [1.0, 3.0], "b": [-100.0]})
    assert d == pytest.approx(4.0) and 2.0 <= lo <= d <= hi <= 6.0
    assert iqm_difference(y, by_far)[0] == pytest.approx(-50.0)


def test_aggregates_refuse_a_task_without_runs():
    with pytest.raises(ValueError, match="at least one run"):
        iqm_interval({"a": [1.0], "b": []})
    with pytest.raises(ValueError, match="share no task"):
        probability_of_improvement({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(ValueError, match="share no task"):
        iqm_difference({"a": [1.0]}, {"b": [1.0]})
