"""Sample efficiency (steps to 90% of the final score, AUC over training), the between-seed spread beside the pooled
one, the swaps' IQR cut and the cross-machine noise floor, each against values worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from modzoo_lab.grid.aggregate import between_seeds, mean_interval
from modzoo_lab.grid.efficiency import normalized_auc, steps_to_fraction
from modzoo_lab.grid.report import RunSummary, _efficiency, _iqr_cuts, _mixed_arm_labels, noise_floor


def test_steps_to_90_percent_is_the_first_evaluation_at_or_above_the_target():
    # final 100: target 90, first reached at 30
    assert steps_to_fraction([(10, 0.0), (20, 50.0), (30, 100.0)], 100.0) == 30.0
    # the first crossing counts, whatever the curve does after it; the curve's order does not matter
    assert steps_to_fraction([(30, 100.0), (10, 95.0), (20, 80.0)], 100.0) == 10.0
    assert steps_to_fraction([(10, 89.9), (20, 90.0)], 100.0) == 20.0  # at the target counts, just below does not
    # a final evaluation the curve lacks is its last point
    assert steps_to_fraction([(10, 50.0)], 100.0, final_step=20) == 20.0
    # no positive final score, no target: 90% of -10 is -9, above the score itself
    assert math.isnan(steps_to_fraction([(10, -20.0), (20, -10.0)], -10.0))
    assert math.isnan(steps_to_fraction([(10, 0.0)], 0.0))
    # a run that never learned (the literal recipe's hopper: about 0.1 throughout) is not "at 90% from the start"
    assert math.isnan(steps_to_fraction([(5000, 2.2), (10000, 1.3), (50000, 0.06)], 0.06))
    assert steps_to_fraction([(10, 4.0), (20, 5.0)], 5.0) == 20.0  # from MIN_FINAL on, the target counts


def test_auc_is_the_trapezoid_area_over_the_evaluated_span():
    # (0 + 50) / 2 * 10 + (50 + 100) / 2 * 10 = 1000 over 20 steps
    assert normalized_auc([(10, 0.0), (20, 50.0), (30, 100.0)]) == pytest.approx(50.0)
    assert normalized_auc([(10, 7.0), (50, 7.0)]) == pytest.approx(7.0)  # a flat curve's mean is its level
    # uneven spacing weighs each segment by its steps: (0 + 10) / 2 * 10 + (10 + 10) / 2 * 30 = 350 over 40
    assert normalized_auc([(0, 0.0), (10, 10.0), (40, 10.0)]) == pytest.approx(8.75)
    assert normalized_auc([(10, 50.0)], 100.0, final_step=20) == pytest.approx(75.0)
    assert math.isnan(normalized_auc([(10, 1.0)]))


def test_between_seed_spread_of_per_seed_means():
    b = between_seeds([1.0, 2.0, 3.0, 10.0])
    # numpy's linear interpolation: 75th at 3 + 0.25 * 7 = 4.75, 25th at 1 + 0.75 * 1 = 1.75
    assert (b["n"], b["mean"], b["iqr"], b["min"], b["max"]) == (4, 4.0, 3.0, 1.0, 10.0)
    assert 1.0 <= b["lo"] < 4.0 < b["hi"] <= 10.0
    # two seeds 0 and 10: a resample's mean is 0 (p 1/4), 5 (1/2) or 10 (1/4), so the 2.5th and 97.5th
    # percentiles are the two ends
    assert mean_interval([0.0, 10.0]) == (5.0, 0.0, 10.0)
    assert mean_interval([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)
    assert mean_interval([1.0, 2.0, 9.0]) == mean_interval([1.0, 2.0, 9.0])  # fixed seed: the same report twice
    one = between_seeds([3.0])
    assert one["mean"] == 3.0 and all(math.isnan(one[k]) for k in ("iqr", "min", "max", "lo", "hi"))
    with pytest.raises(ValueError):
        mean_interval([])


def _run(arm: str, seed: int, curve: list[tuple[int, float]], episodes: list[float] | None = None,
         swaps: dict | None = None) -> RunSummary:
    final = curve[-1][1]
    return RunSummary("t", arm, seed, {"normalized_score": final, "eval": {"normalized": episodes or [final]}},
                      curve, swaps or {})


def _cells(text: str, start: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in row.strip("|").split("|")]


def test_the_efficiency_table_per_seed_mean_and_gfdt_minus_joint(tmp_path):
    gf = [_run("gf", 0, [(10, 90.0), (20, 100.0)]), _run("gf", 1, [(10, 50.0), (20, 100.0)])]
    joint = [_run("j", 0, [(10, 0.0), (20, 100.0)]), _run("j", 1, [(10, 100.0), (20, 100.0)])]
    exp = OmegaConf.create({"gfdt_pairs": {"gf": "j"}, "budget": {"eval_every": 10}})
    text = "\n".join(_efficiency(exp, {"t": {"gf": gf, "j": joint}}, "CMD", tmp_path, "img"))
    c = _cells(text, "| t | gf |")
    # steps: seed 0 reaches 90 at 10, seed 1 at 20; AUC: (90 + 100) / 2 = 95 and (50 + 100) / 2 = 75
    assert c[2:6] == ["0, 1", "10.0, 20.0", "15", "[10, 20]"]
    assert c[6:11] == ["95.0, 75.0", "85.0", "10.0", "[75.0, 95.0]", "75.0 to 95.0"]
    c = _cells(text, "| t | j |")
    assert c[3:5] == ["20.0, 10.0", "15"] and c[6:8] == ["50.0, 100.0", "75.0"]
    # GFDT - joint by seed: steps -10 and +10 (sooner on one seed, later on the other); AUC +45 and -25
    d = _cells(text, "| t | gf - j |")
    assert d[2:7] == ["2", "0", "1 / 1", "45.0, -25.0", "10.0"] and d[8] == "1"
    assert (tmp_path / "sample_efficiency.png").is_file()
    # no pair, or no curves: no section
    assert _efficiency(OmegaConf.create({"gfdt_pairs": {}, "budget": {}}), {"t": {"gf": gf}}, "C", tmp_path,
                       "i") == []


def test_the_swaps_iqr_cut_pooled_and_between_seeds():
    own_eps = [[0.0, 100.0], [50.0, 60.0]]  # pooled 0, 50, 60, 100: IQR 70 - 37.5 = 32.5
    swap_eps = [[40.0, 50.0], [50.0, 60.0]]  # pooled 40, 50, 50, 60: IQR 52.5 - 47.5 = 5
    runs = [RunSummary("t", "p", s, {"normalized_score": float(np.mean(own_eps[s])),
                                     "eval": {"normalized": own_eps[s]}}, [],
                       {"other_algorithm": {"normalized": swap_eps[s]}}) for s in (0, 1)]
    text = "\n".join(_iqr_cuts({"p": runs}, "CMD"))
    c = _cells(text, "| p | other_algorithm |")
    # per-seed means: own 50 and 55 (IQR 2.5), swap 45 and 55 (IQR 5): the pooled IQR falls by 85%, the seeds'
    # spread doubles
    assert c[2:7] == ["2", "32.5 -> 5.0", "-85%", "2.5 -> 5.0", "+100%"]
    assert c[7:9] == ["[50.0, 55.0] -> [45.0, 55.0]", "50.0 to 55.0 -> 45.0 to 55.0"]
    assert _iqr_cuts({"p": runs[:1]}, "CMD") == []  # one seed has no between-seed spread to compare


def _summary(d: Path, score: float, fingerprint: str = "f") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps({"normalized_score": score, "dataset": {"fingerprint": fingerprint}}))


def test_the_noise_floor_reads_each_rebuild_against_its_first_record(tmp_path):
    run = tmp_path / "task" / "arm" / "seed2"
    _summary(run, 95.8)
    _summary(run / "before-rebuild", 84.7)
    (run / "rebuild.json").write_text(json.dumps({"reproduced": False, "before": {"normalized_score": 1.0}}))
    same = tmp_path / "task" / "other" / "seed0"
    _summary(same, 58.0)
    (same / "rebuild.json").write_text(json.dumps({"reproduced": True, "before": {"normalized_score": 58.0}}))
    text = "\n".join(noise_floor(tmp_path))
    # the first record is before-rebuild/'s (84.7), not the copy in rebuild.json
    assert "task/arm/seed2: 84.7 -> 95.8 (+11.1)" in text and "up to 11.1 points" in text
    assert "1 of 2 rebuilds reproduced" in text and "same data file" in text
    _summary(run / "before-rebuild", 84.7, fingerprint="other file")
    assert "same data file" not in "\n".join(noise_floor(tmp_path))
    assert noise_floor(tmp_path / "none") == []


def test_a_mixed_arm_is_labelled_modzoos_claim_and_points_to_the_other_algorithm_swap():
    exp = OmegaConf.create({"arms": {
        "idql-gf": {"guidance": "idql", "policy": "idql", "schedule": "guidance-first"},
        "dql-joint": {"guidance": "dql", "policy": "dql", "schedule": "joint"},
        "dql-gf-iql": {"guidance": "idql", "policy": "dql", "guidance_from": "idql-gf"}},
        "swaps": {"other_algorithm": {"dql-joint": "idql-gf", "dql-gf-iql": "dql-joint"}}})
    (line,) = _mixed_arm_labels(exp)
    assert "`dql-gf-iql` is a frozen IQL critic (`idql-gf`'s" in line and "guiding Diffusion-QL's training" in line
    assert "modzoo's modular claim" in line and "only to rank candidates at inference" in line
    # the analogue of the authors' protocol: a policy trained by its own algorithm, ranked by another's guidance
    assert "(`dql-joint` ranked by `idql-gf`)" in line and "`dql-gf-iql` ranked by" not in line
