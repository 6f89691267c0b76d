"""A tiny grid end to end: runs, swaps, summaries and the report, checked against the run dirs independently."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from modzoo.errors import ConfigError
from modzoo_lab.grid.plan import load_experiment, plan
from modzoo_lab.grid.runner import run_experiment

TASK = "bullet-hopper-medium-v0"


@pytest.fixture
def tiny_experiment(tmp_path, small_dataset_path):
    exp = {
        "name": "tiny", "out": str(tmp_path / "runs"), "summaries": str(tmp_path / "summaries"),
        "report": str(tmp_path / "docs" / "results.md"), "findings": str(tmp_path / "findings.md"),
        "backend": "local", "workers": 1, "isolate_runs": False, "tasks": [TASK], "seeds": [0, 1],
        "budget": {"guidance_steps": 4, "policy_steps": 4, "eval_every": 2, "eval_episodes": 2, "threads": 1,
                   "device": "cpu", "dataset": str(small_dataset_path), "log_every": 2},
        "arms": {
            "idql-joint": {"guidance": "idql", "policy": "idql", "schedule": "joint",
                           "overrides": ["guidance.hidden=[16,16]", "policy.hidden=16", "policy.batch_size=32",
                                         "guidance.batch_size=32", "policy.candidates=4"]},
            "idql-gf": {"guidance": "idql", "policy": "idql", "schedule": "guidance-first",
                        "overrides": ["guidance.hidden=[16,16]", "policy.hidden=16", "policy.batch_size=32",
                                      "guidance.batch_size=32", "policy.candidates=4"]},
            "dql-gf-iql": {"guidance": "idql", "policy": "dql", "guidance_from": "idql-gf",
                           "overrides": ["guidance.hidden=[16,16]", "policy.hidden=16", "policy.batch_size=32",
                                         "policy.candidates=4"]},
        },
        "swaps": {"other_seed": ["idql-joint"], "other_algorithm": {"dql-gf-iql": "idql-joint"}},
        "gfdt_pairs": {"idql-gf": "idql-joint"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(exp))
    (tmp_path / "findings.md").write_text("Finding one: a sentence written after reading the numbers.")
    return path


def test_tiny_grid_end_to_end(tiny_experiment, tmp_path):
    exp = load_experiment(str(tiny_experiment))
    specs = plan(exp)
    assert len(specs) == 6
    # the dependent arm comes after the arm whose guidance it reuses
    assert [s.arm for s in specs].index("dql-gf-iql") > [s.arm for s in specs].index("idql-gf")
    summary = run_experiment(str(tiny_experiment), log=lambda m: None)
    assert summary["failed"] == 0, summary
    runs = tmp_path / "runs" / TASK
    # the reused guidance really is idql-gf's, unchanged
    r = json.loads((runs / "dql-gf-iql" / "seed0" / "result.json").read_text())
    assert r["schedule"] == "pretrained" and r["guidance_steps"] == 4
    # swaps were evaluated and recorded
    sw = json.loads((runs / "idql-joint" / "seed0" / "swaps.json").read_text())
    assert sw["other_seed"]["guidance_run"].endswith("idql-joint/seed1")
    assert sw["other_seed"]["wall_s"] > 0 and sw["other_seed"]["cpu_s"] > 0  # what each swap cost is recorded
    assert "other_algorithm" in json.loads((runs / "dql-gf-iql" / "seed1" / "swaps.json").read_text())

    # the report's numbers, recomputed independently from the run dirs
    text = (tmp_path / "docs" / "results.md").read_text()
    for arm in ("idql-joint", "idql-gf", "dql-gf-iql"):
        scores = [json.loads((runs / arm / f"seed{s}" / "result.json").read_text())["normalized_score"]
                  for s in (0, 1)]
        episodes = np.concatenate([json.loads((runs / arm / f"seed{s}" / "result.json").read_text())
                                   ["eval"]["normalized"] for s in (0, 1)])
        q75, q25 = np.percentile(scores, [75, 25])
        e75, e25 = np.percentile(episodes, [75, 25])
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} |") and "| 2 |" in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[5]) == pytest.approx(np.mean(scores), abs=0.051)
        assert float(cells[6]) == pytest.approx(np.std(scores), abs=0.051)  # population std, as the text says
        assert float(cells[7]) == pytest.approx(np.median(scores), abs=0.051)
        assert float(cells[8]) == pytest.approx(q75 - q25, abs=0.051)
        # between seeds: the per-seed means' min-max and, with two seeds, a bootstrap interval that is the same
        lo, hi = f"{min(scores):.1f}", f"{max(scores):.1f}"
        assert cells[9] == f"[{lo}, {hi}]" and cells[10] == f"{lo} to {hi}"
        assert int(cells[11]) == 4
        assert float(cells[12]) == pytest.approx(episodes.mean(), abs=0.051)
        assert float(cells[15]) == pytest.approx(e75 - e25, abs=0.051)
        lengths = np.concatenate([json.loads((runs / arm / f"seed{s}" / "result.json").read_text())
                                  ["eval"]["lengths"] for s in (0, 1)])
        assert cells[16] == f"{int((lengths < 1000).sum())}/4"  # episodes the env ended before its time limit
    # the swap table: the swap's per-seed means beside the own guidance on the same seeds
    sws = [json.loads((runs / "idql-joint" / f"seed{s}" / "swaps.json").read_text())["other_seed"] for s in (0, 1)]
    own = [json.loads((runs / "idql-joint" / f"seed{s}" / "result.json").read_text())["normalized_score"]
           for s in (0, 1)]
    row = next(line for line in text.splitlines() if line.startswith("| idql-joint | other_seed"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2"
    assert float(cells[3]) == pytest.approx(np.mean([np.mean(x["normalized"]) for x in sws]), abs=0.051)
    assert cells[8] == f"{sum(n < 1000 for x in sws for n in x['lengths'])}/{sum(len(x['lengths']) for x in sws)}"
    assert float(cells[9]) == pytest.approx(np.mean(own), abs=0.051)
    assert "Finding one" in text
    # GFDT/joint time: each arm's mean over runs of its training phases' wall time (updates only), recomputed
    def train_s(arm):
        return np.mean([sum(ph["wall_s"] for ph in json.loads((runs / arm / f"seed{s}" / "result.json").read_text())
                            ["phases"] if ph["phase"] != "eval") for s in (0, 1)])
    m = re.search(r"\| idql-gf \| idql-joint \| 2 / 2 \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|",
                  text)
    assert m and float(m.group(1)) == pytest.approx(train_s("idql-gf") / train_s("idql-joint"), abs=0.006)
    # with two runs an arm's median is its mean: the two ratios agree here (they part only with an outlier)
    assert float(m.group(2)) == pytest.approx(float(m.group(1)), abs=0.011)

    def train_cpu(arm):
        return np.mean([sum(ph["cpu_s"] for ph in json.loads((runs / arm / f"seed{s}" / "result.json").read_text())
                            ["phases"] if ph["phase"] != "eval") for s in (0, 1)])
    assert float(m.group(3)) == pytest.approx(train_cpu("idql-gf") / train_cpu("idql-joint"), abs=0.006)
    # the phase table: how many runs each mean is over, and the interim evaluations kept apart
    gf_policy = [json.loads((runs / "idql-gf" / f"seed{s}" / "result.json").read_text())["phases"][1]
                 for s in (0, 1)]
    assert all(ph["phase"] == "policy" and ph["evals"] == 1 for ph in gf_policy)  # eval_every 2 of 4 steps
    row = next(line for line in text.splitlines() if line.startswith("| idql-gf | policy |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2" and cells[6] == "1"
    assert float(cells[7]) == pytest.approx(np.mean([ph["eval_wall_s"] for ph in gf_policy]), abs=0.051)
    assert all(ph["cpu_s"] > 0 for ph in gf_policy)
    assert float(cells[8]) == pytest.approx(np.mean([ph["cpu_s"] for ph in gf_policy]), abs=0.051)
    imgs = list((tmp_path / "docs" / "results" / "tiny").glob("*.png"))
    assert {p.name for p in imgs} == {f"curves_{TASK}.png", f"box_{TASK}.png", "sample_efficiency.png"}
    # summaries hold only small files, never checkpoints
    assert not list((tmp_path / "summaries").rglob("*.pt"))
    assert (tmp_path / "summaries" / TASK / "idql-gf" / "seed1" / "curve.csv").exists()


def test_runs_without_interim_evaluations_get_a_boxplot_and_no_empty_curve_plot(tmp_path):
    from modzoo_lab.grid.report import RunSummary, _plots
    runs = [RunSummary("t", "a", s, {"normalized_score": float(s), "eval": {"normalized": [1.0]}}) for s in (0, 1)]
    assert _plots("t", {"a": runs}, tmp_path) == ["box_t.png"]
    assert [p.name for p in tmp_path.glob("*.png")] == ["box_t.png"]


def test_fell_counts_the_episodes_that_ended_before_the_time_limit():
    from modzoo_lab.grid.report import fell, time_limit
    evals = [{"normalized": [90.0, 5.0], "lengths": [1000, 57]}, {"normalized": [88.0], "lengths": [999]}]
    assert fell(evals, 1000) == "2/3"  # 999 steps is one short of the limit: terminated, not truncated
    assert fell(evals, None) == "n/a"  # no known limit: no count rather than a wrong one
    assert fell([{"normalized": [90.0, 5.0]}], 1000) == "n/a"  # a summary without lengths
    assert fell([{"normalized": [90.0, 5.0], "lengths": [1000]}], 1000) == "n/a"  # lengths that do not match
    assert time_limit("bullet-walker2d-medium-v0") == 1000 and time_limit("no-such-task") is None


def test_rerun_skips_finished_runs(tiny_experiment, tmp_path):
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    res = tmp_path / "runs" / TASK / "idql-joint" / "seed0" / "result.json"
    before = res.stat().st_mtime_ns
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    statuses = [r["status"] for r in again["results"]]
    assert statuses and set(statuses) == {"skipped"}
    assert res.stat().st_mtime_ns == before


def test_a_run_made_under_another_config_is_reported_stale_not_mixed_in(tiny_experiment, tmp_path):
    """A changed default (here: an arm's override) must not let the finished runs made before it count as runs of
    the new config, nor let a rerun resume them with the old one."""
    first = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    assert any(":" in r["key"] for r in first["results"])  # swap jobs ran (keyed "policy_run:label")
    res = tmp_path / "runs" / TASK / "idql-joint" / "seed0" / "result.json"
    before = res.read_bytes()
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["arms"]["idql-joint"]["overrides"] = [o.replace("policy.candidates=4", "policy.candidates=6")
                                              for o in exp["arms"]["idql-joint"]["overrides"]]
    tiny_experiment.write_text(yaml.safe_dump(exp))
    lines: list[str] = []
    again = run_experiment(str(tiny_experiment), log=lines.append, report=False)
    by_key = {r["key"]: r for r in again["results"] if "drift" in r or r["status"] == "skipped"}
    for seed in (0, 1):
        r = by_key[f"{TASK}/idql-joint/seed{seed}"]
        assert r["status"] == "stale" and r["drift"] == ["policy.candidates: 4 -> 6"]
    assert {r["status"] for k, r in by_key.items() if "/idql-joint/" not in k} == {"skipped"}
    assert again["stale"] == 2 and res.read_bytes() == before
    # every swap of the tiny grid pairs with idql-joint (as the policy or as the guidance): none may run now
    assert not [r for r in again["results"] if ":" in r["key"]]
    msg = [m for m in lines if m.startswith(f"STALE {TASK}/idql-joint/seed0")]
    assert msg and "policy.candidates: 4 -> 6" in msg[0] and "delete" in msg[0]


def test_a_run_reusing_a_stale_runs_guidance_is_stale_too(tiny_experiment, tmp_path):
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["arms"]["idql-gf"]["overrides"] = [*exp["arms"]["idql-gf"]["overrides"], "guidance.expectile=0.8"]
    tiny_experiment.write_text(yaml.safe_dump(exp))
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    status = {r["key"]: r for r in again["results"]}
    src, dep = status[f"{TASK}/idql-gf/seed0"], status[f"{TASK}/dql-gf-iql/seed0"]
    assert src["status"] == "stale" and src["drift"] == ["guidance.expectile: 0.7 -> 0.8"]
    assert dep["status"] == "stale" and dep["drift"] == [f"its guidance comes from {src['out']}, which is stale"]
    assert status[f"{TASK}/idql-joint/seed0"]["status"] == "skipped"


def test_unknown_experiment_lists_known():
    with pytest.raises(ConfigError, match="gfdt-cpu"):
        load_experiment("nope")


def test_shipped_experiments_plan():
    for name, n in (("gfdt-cpu", 4 * 8 * 5), ("gfdt-paper", 12 * 8 * 5)):
        exp = load_experiment(name)
        assert len(plan(exp)) == n
    assert load_experiment("gfdt-paper").budget.policy_steps == 200000
    # issue #38's hopper pilot: 6 alphas x 1 seed, then 3 arms x 3 seeds, FQL's two arms under one alpha
    assert len(plan(load_experiment("flow-alpha"))) == 6
    pilot = plan(load_experiment("flow-pilot"))
    assert len(pilot) == 9
    fql = {tuple(s.overrides) for s in pilot if s.policy == "fql"}
    assert len(fql) == 1 and "policy.normalize_q_loss=true" in next(iter(fql))


def test_every_shipped_experiments_swaps_pass_their_checks():
    """A shipped grid whose swaps name a missing arm, or a temperature swap of a non-softmax policy, would stop
    at its start: caught here instead."""
    from pathlib import Path

    from modzoo_lab.grid.plan import swap_jobs
    jobs = {p.stem: swap_jobs(load_experiment(p.stem)) for p in sorted(Path("lab/experiments").glob("*.yaml"))}
    # per task and seed: other seed, other algorithm and selection=none for 4 arms, 2 temperatures for 2 arms
    assert len(jobs["gfdt-50k"]) == 3 * 3 * (4 + 4 + 4 + 2 * 2)
    assert sum(j["label"].startswith("temperature*") for j in jobs["gfdt-50k"]) == 3 * 2 * 2 * 3


def test_a_run_dir_is_trained_by_one_process_at_a_time(tmp_path):
    import os
    from dataclasses import asdict

    from modzoo_lab.grid.plan import RunSpec
    from modzoo_lab.grid.runner import execute_run
    out = tmp_path / "r"
    out.mkdir()
    (out / "LOCK").write_text(str(os.getpid()))  # a live process holds it
    spec = RunSpec(task=TASK, arm="a", seed=0, out=str(out), guidance="idql", policy="idql", schedule="joint")
    assert execute_run(asdict(spec))["status"] == "busy"
    assert not (out / "config.yaml").exists()
    (out / "LOCK").write_text("999999999")  # a dead process's lock is stale and taken over
    from modzoo.errors import DatasetError
    with pytest.raises(DatasetError):  # ... so the run starts, then fails on its missing dataset
        execute_run(asdict(spec) | {"run": {"dataset": str(tmp_path / "missing.hdf5")}})
    assert not (out / "LOCK").exists() and (out / "FAILED").exists()


def test_swaps_only_trains_nothing(tiny_experiment, tmp_path):
    out = run_experiment(str(tiny_experiment), log=lambda m: None, train=False)
    assert out["results"] == [] and not (tmp_path / "runs").exists()
    assert (tmp_path / "docs" / "results.md").exists()


def test_a_cached_swap_counts_only_for_the_same_pair_of_checkpoints(tiny_experiment, tmp_path):
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    path = tmp_path / "runs" / TASK / "idql-joint" / "seed0" / "swaps.json"
    sw = json.loads(path.read_text())
    assert (sw["other_seed"]["guidance_run"].endswith("idql-joint/seed1")
            and len(sw["other_seed"]["checkpoints_ns"]) == 2)
    sw["other_seed"]["guidance_run"] = sw["other_seed"]["guidance_run"].replace("seed1", "seed7")  # an old pairing
    sw["other_seed"]["mean"] = 12345.0
    path.write_text(json.dumps(sw))
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    redone = [r for r in again["results"] if r["key"].endswith("idql-joint/seed0:other_seed")]
    assert [r["status"] for r in redone] == ["ok"]
    sw = json.loads(path.read_text())
    assert sw["other_seed"]["guidance_run"].endswith("idql-joint/seed1") and sw["other_seed"]["mean"] != 12345.0
    # the other cached swaps still count
    assert {r["status"] for r in again["results"] if ":" in r["key"] and r not in redone} == {"skipped"}


def test_ray_without_gpus_per_run_says_runs_will_train_on_cpu(tiny_experiment, monkeypatch):
    import modzoo_lab.grid.runner as runner
    monkeypatch.setattr(runner, "run_jobs", lambda *a, **k: [])  # only the planning is under test
    lines: list[str] = []
    run_experiment(str(tiny_experiment), ["budget.device=auto"], backend="ray", log=lines.append, report=False)
    assert any("gpus_per_run is 0" in m for m in lines)
    lines.clear()
    run_experiment(str(tiny_experiment), ["budget.device=cpu"], backend="ray", log=lines.append, report=False)
    assert not any("gpus_per_run" in m for m in lines)


def test_the_report_leaves_out_summaries_made_under_another_config(tiny_experiment, tmp_path):
    from modzoo_lab.grid.report import write_report
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    summary_cfg = tmp_path / "summaries" / TASK / "idql-joint" / "seed0" / "config.yaml"
    assert summary_cfg.exists()  # the summary carries the config that made it
    cfg = yaml.safe_load(summary_cfg.read_text())
    cfg["policy"]["candidates"] = 6  # as if made before a default changed
    summary_cfg.write_text(yaml.safe_dump(cfg))
    text = write_report(load_experiment(str(tiny_experiment))).read_text()
    assert "**Left out of every number below**: 1 run summaries" in text
    assert f"- {TASK}/idql-joint/seed0: policy.candidates: 6 -> 4" in text
    row = next(line for line in text.splitlines() if line.startswith("| idql-joint |") and "| joint |" in line
               and line.count("|") > 14)
    assert [c.strip() for c in row.strip("|").split("|")][4] == "1"  # one seed left in the cell


def test_a_finished_run_made_from_other_data_is_stale(tiny_experiment, tmp_path):
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    res = tmp_path / "runs" / TASK / "idql-gf" / "seed1" / "result.json"
    r = json.loads(res.read_text())
    fp = r["dataset"]["fingerprint"]
    r["dataset"]["fingerprint"] = "deadbeef"  # as if the dataset was re-collected since
    res.write_text(json.dumps(r))
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    status = {x["key"]: x for x in again["results"]}
    assert status[f"{TASK}/idql-gf/seed1"]["drift"] == [f"dataset: fingerprint deadbeef -> {fp}"]
    assert status[f"{TASK}/dql-gf-iql/seed1"]["status"] == "stale"  # it reuses that run's guidance
    assert status[f"{TASK}/idql-gf/seed0"]["status"] == "skipped"


def test_an_interrupted_run_made_from_other_data_is_stale_before_any_run_starts(tiny_experiment, tmp_path):
    """Resuming it would refuse inside a worker (and fail the runs reusing its guidance); the grid says so up
    front instead, and leaves its run dir as it is."""
    import torch

    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    d = tmp_path / "runs" / TASK / "idql-gf" / "seed1"
    fp = json.loads((d / "result.json").read_text())["dataset"]["fingerprint"]
    (d / "result.json").unlink()  # as if stopped mid-phase, on a dataset since re-collected
    torch.save({"guidance": {"dataset": {"fingerprint": "deadbeef"}}, "phase": "policy", "step": 2},
               d / "train_state.pt")
    before = _tree(d)
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    status = {x["key"]: x for x in again["results"]}
    assert status[f"{TASK}/idql-gf/seed1"]["status"] == "stale"
    assert status[f"{TASK}/idql-gf/seed1"]["drift"] == [f"dataset: fingerprint deadbeef -> {fp} (an interrupted run)"]
    assert status[f"{TASK}/dql-gf-iql/seed1"]["status"] == "stale"  # it reuses that run's guidance
    assert _tree(d) == before


def _tree(root):
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_a_fresh_clone_keeps_the_runs_its_committed_summaries_hold_and_retrains_none(tiny_experiment, tmp_path):
    """A clone on a new machine has the committed summaries and no run dirs: retraining them would spend the grid's
    hours again and overwrite what the report already holds."""
    import shutil

    from modzoo_lab.grid.status import grid_status

    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    shutil.rmtree(tmp_path / "runs")  # the machine that trained them is gone; the summaries were committed
    before = _tree(tmp_path / "summaries")
    lines: list[str] = []
    again = run_experiment(str(tiny_experiment), log=lines.append, report=False)
    assert [r["status"] for r in again["results"]] == ["summary only"] * 6  # no run trained, no swap ran
    assert not (tmp_path / "runs").exists() and _tree(tmp_path / "summaries") == before
    assert any(m.startswith("6 runs finished elsewhere") for m in lines)
    rows, swaps = grid_status(load_experiment(str(tiny_experiment)))
    assert {r["state"] for r in rows} == {"finished"} and all("summary only" in r["detail"] for r in rows)
    assert (swaps["swaps_done"], swaps["swaps_unpaired"]) == (swaps["swaps"], 0)  # read from the summaries


def test_a_summary_only_run_is_retrained_when_a_run_to_train_needs_its_guidance(tiny_experiment, tmp_path):
    import shutil

    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "summaries" / TASK / "dql-gf-iql" / "seed0")  # this run is still to train here
    lines: list[str] = []
    again = run_experiment(str(tiny_experiment), log=lines.append, report=False)
    status = {r["key"]: r["status"] for r in again["results"] if ":" not in r["key"]}
    # its guidance comes from idql-gf seed 0, whose guidance.pt only a run dir holds: that run trains again
    assert status[f"{TASK}/dql-gf-iql/seed0"] == "ok" and status[f"{TASK}/idql-gf/seed0"] == "ok"
    assert {status[f"{TASK}/{a}/seed{s}"] for a, s in [("idql-joint", 0), ("idql-joint", 1), ("idql-gf", 1),
                                                        ("dql-gf-iql", 1)]} == {"summary only"}
    # the swap of dql-gf-iql seed 0 (other_algorithm: ranked by idql-joint seed 0) needs a summary-only run
    assert not [r for r in again["results"] if ":" in r["key"]]
    assert any("cannot run here" in m for m in lines)


def test_a_summary_made_under_another_config_or_data_is_not_kept(tiny_experiment, tmp_path):
    import shutil

    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    shutil.rmtree(tmp_path / "runs")
    res = tmp_path / "summaries" / TASK / "idql-joint" / "seed1" / "result.json"
    r = json.loads(res.read_text())
    r["dataset"]["fingerprint"] = "deadbeef"  # made from data since re-collected
    res.write_text(json.dumps(r))
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["arms"]["idql-gf"]["overrides"] = [*exp["arms"]["idql-gf"]["overrides"], "guidance.expectile=0.8"]
    tiny_experiment.write_text(yaml.safe_dump(exp))
    again = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    status = {r["key"]: r["status"] for r in again["results"] if ":" not in r["key"]}
    assert status[f"{TASK}/idql-joint/seed1"] == "ok" and status[f"{TASK}/idql-joint/seed0"] == "summary only"
    for s in (0, 1):  # idql-gf's config changed; dql-gf-iql reused its guidance, so it retrains too
        assert status[f"{TASK}/idql-gf/seed{s}"] == "ok" and status[f"{TASK}/dql-gf-iql/seed{s}"] == "ok"


def _lose_a_run_dir_and_the_swap_that_needed_it(tiny_experiment, tmp_path):
    """The grid finished; on a new machine idql-joint seed 0's run dir is gone (its summary is committed), and seed
    1's other-seed swap, which needs seed 0's guidance, was never recorded. Returns seed 0's summary folder."""
    import shutil

    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    shutil.rmtree(tmp_path / "runs" / TASK / "idql-joint" / "seed0")
    for root in ("runs", "summaries"):
        path = tmp_path / root / TASK / "idql-joint" / "seed1" / "swaps.json"
        sw = json.loads(path.read_text())
        del sw["other_seed"]
        path.write_text(json.dumps(sw))
    return tmp_path / "summaries" / TASK / "idql-joint" / "seed0"


def test_rebuild_retrains_a_run_a_lost_swap_needs_and_keeps_the_swaps_it_reproduces(tiny_experiment, tmp_path):
    from modzoo_lab.grid.status import grid_status, seconds_left

    summary = _lose_a_run_dir_and_the_swap_that_needed_it(tiny_experiment, tmp_path)
    before = {name: json.loads((summary / name).read_text()) for name in ("result.json", "swaps.json")}
    other_alg = json.loads((tmp_path / "runs" / TASK / "dql-gf-iql" / "seed0" / "swaps.json").read_text())
    exp = load_experiment(str(tiny_experiment))
    rows, swaps = grid_status(exp)
    assert swaps["swaps_unpaired"] == 1
    rows, swaps = grid_status(exp, rebuild=True)  # --status --rebuild: what such a grid run would do
    assert swaps["swaps_unpaired"] == 0 and swaps["swaps_done"] == swaps["swaps"] - 1  # its recorded ones count
    row = next(r for r in rows if r["key"] == f"{TASK}/idql-joint/seed0")
    assert row["state"] == "not started"
    committed = (summary / "result.json").read_bytes()
    slow = json.loads(committed)
    slow["phases"][0]["cpu_s"] = 1e6  # as if it had cost that where it first trained
    (summary / "result.json").write_text(json.dumps(slow))
    assert seconds_left(*grid_status(exp, rebuild=True))["cpu"] >= 1e6  # priced at its own record
    (summary / "result.json").write_bytes(committed)

    lines: list[str] = []
    plain = run_experiment(str(tiny_experiment), log=lines.append, report=False)
    assert not [r for r in plain["results"] if r["status"] == "ok"]  # without --rebuild nothing trains
    assert any("--rebuild trains again the runs they need" in m for m in lines)

    lines.clear()
    out = run_experiment(str(tiny_experiment), log=lines.append, report=False, rebuild=True)
    status = {r["key"]: r["status"] for r in out["results"]}
    assert status[f"{TASK}/idql-joint/seed0"] == "ok"
    assert {v for k, v in status.items() if ":" not in k and "idql-joint/seed0" not in k} == {"skipped"}
    assert status[next(k for k in status if k.endswith("idql-joint/seed1:other_seed"))] == "ok"  # the lost swap
    rec = json.loads((summary / "rebuild.json").read_text())
    assert rec["reproduced"] and rec["differences"] == [] and rec["swaps_carried"] == ["other_seed"]
    assert any(m.startswith(f"REBUILT {TASK}/idql-joint/seed0: reproduces") for m in lines)
    result = json.loads((summary / "result.json").read_text())
    assert result["eval"]["returns"] == before["result.json"]["eval"]["returns"]
    # its own swap against seed 1 was evaluated on the same policy where it first trained: carried, not redone
    carried = json.loads((summary / "swaps.json").read_text())["other_seed"]
    assert carried.pop("before_rebuild") is True and carried == before["swaps.json"]["other_seed"]
    assert status[next(k for k in status if k.endswith("idql-joint/seed0:other_seed"))] == "skipped"
    # a swap ranked by the rebuilt guidance is evaluated again (its checkpoint is new) and scores the same
    again = json.loads((tmp_path / "runs" / TASK / "dql-gf-iql" / "seed0" / "swaps.json").read_text())
    assert again["other_algorithm"]["returns"] == other_alg["other_algorithm"]["returns"]
    assert again["other_algorithm"]["checkpoints_ns"] != other_alg["other_algorithm"]["checkpoints_ns"]
    # and a later rerun has nothing left to do
    last = run_experiment(str(tiny_experiment), log=lambda m: None, report=False, rebuild=True)
    assert {r["status"] for r in last["results"]} == {"skipped"}
    from modzoo_lab.grid.report import write_report
    text = write_report(exp).read_text()  # the report says which runs trained twice and how they compared
    assert "**Trained twice**: 1 run was trained again" in text
    from modzoo_lab.grid.report import report_text  # what the committed-report check compares against: all of it
    out = Path(str(exp.report))
    assert report_text(exp, tmp_path / "plots", os.path.relpath(out.parent / "results" / str(exp.name),
                                                               out.parent)) + "\n" == text
    assert (f"after its first summary had been committed; its time rows are the second training's. Reproduced "
            f"the first record (curve and final returns equal, float for float): 1 ({TASK}/idql-joint/seed0). "
            f"Did not: 0.") in text


def test_a_rebuild_that_does_not_reproduce_keeps_the_committed_record_beside_it(tiny_experiment, tmp_path):
    summary = _lose_a_run_dir_and_the_swap_that_needed_it(tiny_experiment, tmp_path)
    r = json.loads((summary / "result.json").read_text())
    r["eval"]["returns"][0] += 1.0  # as if the machine that trained it had computed otherwise
    (summary / "result.json").write_text(json.dumps(r))
    committed = {name: (summary / name).read_bytes() for name in ("result.json", "swaps.json", "curve.csv")}
    lines: list[str] = []
    out = run_experiment(str(tiny_experiment), log=lines.append, report=False, rebuild=True)
    rec = json.loads((summary / "rebuild.json").read_text())
    assert not rec["reproduced"] and rec["swaps_carried"] == []
    assert rec["differences"] == [f"final evaluation: 1 of {len(r['eval']['returns'])} returns differ (normalized "
                                  f"{r['normalized_score']:.1f} -> {r['normalized_score']:.1f})"]
    assert any(m.startswith(f"REBUILT {TASK}/idql-joint/seed0: DIFFERS") for m in lines)
    # nothing committed is lost; the summary now describes the run whose checkpoints are here
    assert {name: (summary / "before-rebuild" / name).read_bytes() for name in committed} == committed
    assert json.loads((summary / "result.json").read_text())["eval"]["returns"][0] == r["eval"]["returns"][0] - 1.0
    # the committed swaps were of the other policy: evaluated again, none carried
    status = {x["key"]: x["status"] for x in out["results"]}
    assert status[next(k for k in status if k.endswith("idql-joint/seed0:other_seed"))] == "ok"
    assert not any(v.get("before_rebuild") for v in json.loads((summary / "swaps.json").read_text()).values())
    from modzoo_lab.grid.report import write_report
    text = write_report(load_experiment(str(tiny_experiment))).read_text()
    assert ("Reproduced the first record (curve and final returns equal, float for float): 0. Did not: 1 (its "
            "summary now holds the second training):") in text
    assert f"- {TASK}/idql-joint/seed0: final evaluation: 1 of" in text


def test_a_rebuild_sets_the_committed_summary_aside_once(tiny_experiment, tmp_path):
    """An interrupted rebuild resumes against the record set aside before its first step, not the summary as a
    later write left it."""
    from modzoo_lab.grid.summary import set_aside

    summary = _lose_a_run_dir_and_the_swap_that_needed_it(tiny_experiment, tmp_path)
    specs = {s.key: s for s in plan(load_experiment(str(tiny_experiment)))}
    s0 = specs[f"{TASK}/idql-joint/seed0"]
    first = (summary / "result.json").read_bytes()
    assert set_aside(s0)
    (summary / "result.json").write_text("{}")
    assert set_aside(s0)
    assert (tmp_path / "runs" / TASK / "idql-joint" / "seed0" / "before-rebuild" / "result.json").read_bytes() == first
    assert not set_aside(specs[f"{TASK}/idql-joint/seed1"])  # trained here: its run dir is its record


def test_rebuild_only_retrains_just_the_runs_it_names(tiny_experiment, tmp_path):
    """Both idql-joint run dirs lost: --rebuild would retrain both; --rebuild-only seed0 retrains seed 0 alone (a
    machine that lives one session), and a pattern that matches no run to rebuild is refused before any trains."""
    import shutil

    from modzoo_lab.grid.status import grid_status

    _lose_a_run_dir_and_the_swap_that_needed_it(tiny_experiment, tmp_path)
    shutil.rmtree(tmp_path / "runs" / TASK / "idql-joint" / "seed1")
    for root in ("runs", "summaries"):
        path = tmp_path / root / TASK / "idql-joint" / "seed0" / "swaps.json"
        if path.exists():
            sw = json.loads(path.read_text())
            sw.pop("other_seed", None)
            path.write_text(json.dumps(sw))
    exp = load_experiment(str(tiny_experiment))
    s0, s1 = f"{TASK}/idql-joint/seed0", f"{TASK}/idql-joint/seed1"
    states = lambda **k: {r["key"]: r["state"] for r in grid_status(exp, **k)[0]}  # noqa: E731
    assert states(rebuild=True)[s0] == states(rebuild=True)[s1] == "not started"
    only = states(rebuild_only=[f"{TASK}/idql-joint/seed0"])
    assert only[s0] == "not started" and only[s1] == "finished"
    with pytest.raises(ConfigError, match=rf"--rebuild-only \*/dql-\*/\*: no run to rebuild matches it; those a "
                                          rf"swap still needs: {s0}, {s1}$"):
        run_experiment(str(tiny_experiment), log=lambda m: None, report=False, rebuild_only=["*/dql-*/*"])
    assert not (tmp_path / "runs" / TASK / "idql-joint" / "seed0").exists()  # refused before anything started
    # interrupted after its first step: its run dir now exists, so it resumes as a run to train, and the same
    # --rebuild-only that started it must still be accepted
    from modzoo_lab.grid.summary import set_aside
    spec = next(s for s in plan(exp) if s.key == s0)
    assert set_aside(spec)
    shutil.copyfile(tmp_path / "summaries" / TASK / "idql-joint" / "seed0" / "config.yaml",
                    Path(spec.out) / "config.yaml")
    out = run_experiment(str(tiny_experiment), log=lambda m: None, report=False, rebuild_only=["*/idql-joint/seed0"])
    status = {r["key"]: r["status"] for r in out["results"]}
    assert status[s0] == "ok" and status[s1] == "summary only"
    assert not any(k.endswith(":other_seed") and v == "ok" for k, v in status.items())  # they pair seed 1


def test_the_cli_passes_rebuild_to_the_grid_and_to_status(monkeypatch, capsys):
    """Through modzoo's own CLI: the lab's commands arrive by the ``modzoo.commands`` entry point and import the
    grid when they run, so the grid's functions are replaced where they live."""
    import importlib

    import modzoo_lab.grid.runner
    import modzoo_lab.grid.status
    cli = importlib.import_module("modzoo.cli.main")  # the package exports the function main under that name
    seen = {}
    monkeypatch.setattr(modzoo_lab.grid.runner, "run_experiment", lambda *a, **k: seen.update(k) or
                        {"experiment": "x", "runs": 0, "failed": 0, "seconds": 0.0})
    assert cli.main(["experiment", "gfdt-50k", "--rebuild"]) == 0 and seen["rebuild"] is True
    assert cli.main(["experiment", "gfdt-50k", "--rebuild-only", "a/*", "--rebuild-only", "b"]) == 0
    assert seen["rebuild_only"] == ["a/*", "b"]
    monkeypatch.setattr(modzoo_lab.grid.status, "grid_status", lambda exp, rebuild=False, rebuild_only=(): seen.update(
        status=rebuild, status_only=rebuild_only) or ([], {"swaps": 0, "swaps_done": 0, "jobs": []}))
    assert cli.main(["experiment", "gfdt-50k", "--status", "--rebuild"]) == 0 and seen["status"] is True
    assert cli.main(["experiment", "gfdt-50k", "--status", "--rebuild-only", "x"]) == 0
    assert seen["status_only"] == ["x"]


def test_a_swap_starts_as_soon_as_its_two_runs_have_finished(tiny_experiment, tmp_path):
    """Not after the whole grid: an interrupted grid must already hold the swaps of the runs it finished."""
    out = run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    keys = [r["key"] for r in out["results"]]
    seed0_mix_swap = next(i for i, k in enumerate(keys) if k.endswith("dql-gf-iql/seed0:other_algorithm"))
    first_seed1_run = next(i for i, k in enumerate(keys) if k.endswith("/seed1") and ":" not in k)
    assert seed0_mix_swap < first_seed1_run, keys
    # the other-seed swaps of idql-joint need seed 1's idql-joint: they come right after it, before its idql-gf
    seed1_idql = keys.index(f"{TASK}/idql-joint/seed1")
    assert ({k.rsplit("/", 1)[-1] for k in keys[seed1_idql + 1:seed1_idql + 3]}
            == {"seed0:other_seed", "seed1:other_seed"}), keys


def test_the_scheduler_starts_a_job_only_once_what_it_needs_has_finished():
    from modzoo_lab.grid.runner import _drain, _Serial
    finished: list[str] = []

    def work(job):
        finished.append(job["name"])
        if job["name"] == "broken":
            raise RuntimeError("boom")
        return {"key": job["name"], "status": "ok"}

    jobs = [(work, {"name": "needs-a", "after": "a"}), (work, {"name": "a"}), (work, {"name": "b"}),
            (work, {"name": "needs-broken", "after": "broken"}), (work, {"name": "broken"})]
    results, waiting = _drain(_Serial(), jobs, lambda job: job[1].get("after", "") in ("", *finished)
                              and job[1].get("after") != "broken")
    assert finished == ["a", "needs-a", "b", "broken"]  # listed first, but started once "a" had finished
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "failed"]
    assert [j["name"] for _, j in waiting] == ["needs-broken"]  # never ready: left to the caller


def test_the_report_puts_every_tasks_scores_side_by_side(tmp_path):
    from omegaconf import OmegaConf

    from modzoo_lab.grid.report import RunSummary, render
    exp = OmegaConf.create({"name": "two", "summaries": "s", "budget": {"guidance_steps": 1, "policy_steps": 1},
                            "tasks": ["bullet-hopper-medium-v0", "bullet-walker2d-medium-v0"], "seeds": [0, 1],
                            "arms": {"a": {}, "b": {}}})

    def run(task, arm, seed, score):
        return RunSummary(task, arm, seed, {"normalized_score": score, "eval": {"normalized": [score]}})
    runs = [run("bullet-hopper-medium-v0", "a", 0, 10.0), run("bullet-hopper-medium-v0", "a", 1, 20.0),
            run("bullet-walker2d-medium-v0", "a", 0, 30.0), run("bullet-hopper-medium-v0", "b", 0, 5.0)]
    text = render(exp, runs, tmp_path / "img", "img")
    lines = text.splitlines()
    head = lines.index("| arm | hopper-medium | walker2d-medium |")
    assert lines[head + 2] == "| a | 15.0 ± 5.0 (2) | 30.0 ± n/a (1) |"
    assert lines[head + 3] == "| b | 5.0 ± n/a (1) |  |"  # no run of b on walker2d: an empty cell, not a zero
    assert text.index("## All tasks") < text.index("## bullet-hopper-medium-v0")


def test_the_report_aggregates_arms_over_the_tasks_every_arm_ran(tmp_path):
    from omegaconf import OmegaConf

    from modzoo_lab.grid.aggregate import iqm_interval
    from modzoo_lab.grid.report import RunSummary, render
    tasks = ["bullet-hopper-medium-v0", "bullet-walker2d-medium-v0", "bullet-halfcheetah-medium-v0"]
    exp = OmegaConf.create({"name": "three", "summaries": "s", "budget": {"guidance_steps": 1, "policy_steps": 1},
                            "tasks": tasks, "seeds": [0, 1], "arms": {"gf": {}, "joint": {}},
                            "gfdt_pairs": {"gf": "joint"}})

    def run(task, arm, seed, score):
        return RunSummary(task, arm, seed, {"normalized_score": score, "eval": {"normalized": [score]}})
    scores = {("gf", tasks[0]): [10.0, 30.0], ("gf", tasks[1]): [50.0, 70.0],
              ("joint", tasks[0]): [20.0, 40.0], ("joint", tasks[1]): [60.0, 80.0], ("gf", tasks[2]): [99.0, 99.0]}
    runs = [run(t, a, i, x) for (a, t), xs in scores.items() for i, x in enumerate(xs)]
    lines = render(exp, runs, tmp_path / "img", "img").splitlines()
    assert "pooled over hopper-medium, walker2d-medium (the tasks" in lines[lines.index("## Across tasks") + 2]
    head = lines.index("| arm | tasks | runs | mean | IQM | IQM 95% interval |")
    _, lo, hi = iqm_interval({tasks[0]: [10.0, 30.0], tasks[1]: [50.0, 70.0]})  # halfcheetah: joint never ran it
    assert lines[head + 2] == f"| gf | 2 | 4 | 40.0 | 40.0 | {lo:.1f} to {hi:.1f} |"
    pair = lines.index("| GFDT arm | joint arm | P(GFDT > joint) | 95% interval | IQM difference | 95% interval |")
    assert lines[pair + 2].startswith("| gf | joint | 0.25 | ")  # one of the four pairs won on each task
    assert lines[pair + 2].split(" | ")[4] == "-10.0"  # IQM 40 against 50 over the two shared tasks
    assert not any(line.startswith("The arms hold different numbers of runs") for line in lines)
    runs = [r for r in runs if not (r.arm == "joint" and r.task == tasks[1] and r.seed == 1)]
    lines = render(exp, runs, tmp_path / "img", "img").splitlines()
    head = lines.index("| arm | tasks | runs | mean | IQM | IQM 95% interval |")
    assert lines[head + 3] == "| joint | 2 | 3 | 40.0 | 40.0 | n/a (one run on a task) |"
    # joint's pool is now one walker2d run short, so its IQM leans toward hopper: the report says so
    assert lines[head + 5].startswith("The arms hold different numbers of runs per task (gf: hopper-medium 2, "
                                      "walker2d-medium 2; joint: hopper-medium 2, walker2d-medium 1).")


def test_a_one_task_report_gives_the_gfdt_pairs_probability_of_improvement_without_a_pooled_table(tmp_path):
    from omegaconf import OmegaConf

    from modzoo_lab.grid.report import RunSummary, render
    task = "bullet-hopper-medium-v0"
    exp = OmegaConf.create({"name": "one", "summaries": "s", "budget": {"guidance_steps": 1, "policy_steps": 1},
                            "tasks": [task], "seeds": [0, 1, 2], "arms": {"gf": {}, "joint": {}},
                            "gfdt_pairs": {"gf": "joint"}})
    runs = [RunSummary(task, a, i, {"normalized_score": x, "eval": {"normalized": [x]}})
            for a, xs in (("gf", [10.0, 30.0, 50.0]), ("joint", [20.0, 40.0, 60.0])) for i, x in enumerate(xs)]
    lines = render(exp, runs, tmp_path / "img", "img").splitlines()
    assert "## Across tasks" not in lines and "## GFDT against joint" in lines
    pair = lines.index("| GFDT arm | joint arm | P(GFDT > joint) | 95% interval | IQM difference | 95% interval |")
    assert lines[pair + 2].startswith("| gf | joint | 0.33 | ")  # 3 of the 9 pairs won (10<20<30<40<50<60)
    assert lines[pair + 2].split(" | ")[4] == "-10.0"
    exp.gfdt_pairs = {}
    assert "## GFDT against joint" not in render(exp, runs, tmp_path / "img", "img")


def test_the_report_states_what_the_finished_runs_cost():
    from modzoo_lab.grid.report import RunSummary, _grid_cost
    phases = [{"phase": "joint", "wall_s": 3000.0, "eval_wall_s": 600.0}, {"phase": "eval", "wall_s": 0.0}]
    runs = [RunSummary("t", "a", 0, {"phases": phases, "finished": "2026-11-27T12:00:00"}),
            RunSummary("t", "a", 1, {"phases": [{"phase": "eval", "wall_s": 1800.0}],
                                     "finished": "2026-11-27T14:00:00"})]
    line = _grid_cost(runs)
    assert "the 2 finished runs took 1.5 h of process time" in line  # 3600 s + 1800 s
    assert "between 2026-11-27 11:00 and 2026-11-27 14:00" in line  # the first run started 3600 s before its end


def test_a_selection_swap_evaluates_the_runs_own_guidance_with_another_rule(tiny_experiment, tmp_path):
    import torch

    from modzoo.errors import ConfigError
    from modzoo.run.evaluation import evaluate, load_policy_and_guidance
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["swaps"] = {"selection": {"idql-joint": ["softmax", "none"]}}
    tiny_experiment.write_text(yaml.safe_dump(exp))
    out = run_experiment(str(tiny_experiment), log=lambda m: None, report=True)
    assert out["failed"] == 0, out
    run = tmp_path / "runs" / TASK / "idql-joint" / "seed1"
    sw = json.loads((run / "swaps.json").read_text())["selection=softmax"]
    assert sw["guidance_run"] == str(run)
    policy, guidance = load_policy_and_guidance(run / "policy.pt", run / "guidance.pt", "cpu")
    assert policy.cfg["selection"] == "argmax"  # the arm's own rule (IDQL's default) ...
    torch.set_num_threads(1)
    policy.cfg["selection"] = "softmax"  # ... and the swap's, recomputed here: the same episodes
    assert list(evaluate(policy, guidance, TASK, episodes=2, seed=1).returns) == sw["returns"]
    own = json.loads((run / "result.json").read_text())["eval"]["returns"]
    assert own != sw["returns"]
    # "none": one sample of the policy, no guidance ranking it
    bare = json.loads((run / "swaps.json").read_text())["selection=none"]
    assert bare["guidance"] == "none"
    assert list(evaluate(policy, None, TASK, episodes=2, seed=1, candidates=1).returns) == bare["returns"]
    assert "| idql-joint | selection=softmax (idql) | 2 |" in (tmp_path / "docs" / "results.md").read_text()
    exp["swaps"] = {"selection": {"idql-joint": "best"}}
    tiny_experiment.write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match="unknown rule 'best'; known: argmax, softmax, expectile, none"):
        run_experiment(str(tiny_experiment), log=lambda m: None, report=False)


def test_a_temperature_swap_scales_the_runs_own_softmax_temperature(tiny_experiment, tmp_path):
    import torch

    from modzoo.run.evaluation import evaluate, load_policy_and_guidance
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["swaps"] = {"temperature": {"dql-gf-iql": [1000]}}
    tiny_experiment.write_text(yaml.safe_dump(exp))
    out = run_experiment(str(tiny_experiment), log=lambda m: None, report=True)
    assert out["failed"] == 0, out
    run = tmp_path / "runs" / TASK / "dql-gf-iql" / "seed0"
    sw = json.loads((run / "swaps.json").read_text())["temperature*1000"]
    policy, guidance = load_policy_and_guidance(run / "policy.pt", run / "guidance.pt", "cpu")
    assert policy.cfg["selection"] == "softmax" and sw["temperature"] == 1000 * policy.cfg["temperature"]
    torch.set_num_threads(1)
    policy.cfg["temperature"] = sw["temperature"]  # recomputed here: the same episodes and draws
    assert list(evaluate(policy, guidance, TASK, episodes=2, seed=0).returns) == sw["returns"]
    assert json.loads((run / "result.json").read_text())["eval"]["returns"] != sw["returns"]  # the scale acted
    assert "| dql-gf-iql | temperature*1000 (idql) | 2 |" in (tmp_path / "docs" / "results.md").read_text()


@pytest.mark.parametrize("swaps, message", [
    ({"temperature": {"dql-gf-iql": [0]}}, "swaps.temperature.dql-gf-iql: 0 is not a positive number"),
    ({"temperature": {"dql-gf-iql": "low"}}, "swaps.temperature.dql-gf-iql: 'low' is not a positive number"),
    ({"temperature": {"idql-joint": 0.1}}, "swaps.temperature.idql-joint: its policy selects by 'argmax'"),
    ({"selection": {"dql-joint": ["none"]}}, "swaps.selection: 'dql-joint' is not an arm of this experiment"),
    ({"other_algorithm": {"dql-gf-iql": "dql-joint"}}, "swaps.other_algorithm: 'dql-joint' is not an arm"),
])
def test_a_bad_swap_is_refused_before_anything_trains(tiny_experiment, tmp_path, swaps, message):
    from modzoo.errors import ConfigError
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["swaps"] = swaps
    tiny_experiment.write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    assert not (tmp_path / "runs").exists()


def test_the_reference_check_pairs_the_authors_code_with_the_same_seed_and_step(tmp_path):
    from omegaconf import OmegaConf

    from modzoo_lab.grid.report import RunSummary, _reference_check
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "h.json").write_text(json.dumps({"task": "t", "seed": 1, "episodes": 7, "curve": [
        {"step": 10, "normalized_mean": 52.9, "normalized_std": 0.3, "mean_length": 1000.0},
        {"step": 20, "normalized_mean": 8.9, "normalized_std": 3.6, "mean_length": 105.8}]}))
    (ref / "other.json").write_text(json.dumps({"task": "not-this-grids", "seed": 1, "curve": [
        {"step": 10, "normalized_mean": 1.0, "normalized_std": 0.0, "mean_length": 1.0}]}))
    exp = OmegaConf.create({"budget": {"policy_steps": 20, "eval_every": 10}, "tasks": ["t"],
                            "reference": {"dir": str(ref), "arm": "dql-joint"},
                            "arms": {"dql-joint": {"preset": "gfdt-authors"}}})
    runs = [RunSummary("t", "dql-joint", 0, {}, [(10, 99.0), (20, 99.0)]),  # another seed: not this row's
            RunSummary("t", "dql-joint", 1, {}, [(10, 50.0), (20, 106.2)]),
            RunSummary("t", "dql-bc", 1, {}, [(10, 1.0), (20, 1.0)])]  # another arm
    lines = _reference_check(exp, runs)
    assert "| t | 1 | 10 | 52.9 ± 0.3 | 1000 | 50.0 |" in lines
    assert "| t | 1 | 20 | 8.9 ± 3.6 | 106 | 106.2 |" in lines
    assert not any("not-this-grids" in line for line in lines)  # another experiment's task: not a row here
    text = " ".join(lines)  # what the two columns ran: the arm's preset, the reference's episode count
    assert "run of the same seed under preset gfdt-authors (" in text
    assert "over 7 episodes per evaluation;" in text and "--episodes 7 " in text
    assert _reference_check(OmegaConf.create({"budget": {}}), runs) == []  # no reference configured: no section
    # a JSON from before the script recorded its episode count: the count is said to be unknown, never "n/a"
    d = json.loads((ref / "h.json").read_text())
    del d["episodes"]
    (ref / "h.json").write_text(json.dumps(d))
    text = " ".join(_reference_check(exp, runs))
    assert "(the JSONs do not record how many)" in text and "--episodes" not in text and "n/a episodes" not in text
    (ref / "g.json").write_text(json.dumps({**d, "seed": 2, "episodes": 10}))
    assert "over 10 episodes per evaluation where the JSON records it;" in " ".join(_reference_check(exp, runs))


def test_beside_puts_another_grids_scores_next_to_this_ones_and_flags_a_rebuilt_dataset(tmp_path):
    from modzoo_lab.grid.plan import load_experiment
    from modzoo_lab.grid.report import _beside, _beside_grid, load_summaries

    a, b = "bullet-hopper-medium-v0", "bullet-walker2d-medium-v0"  # real tasks and preset: the grid is checked

    def grid(name: str, steps: int, scores: dict[tuple[str, str, int], tuple[float, str]], **extra):
        root = tmp_path / name
        for (task, arm, seed), (score, fp) in scores.items():
            d = root / "summaries" / task / arm / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"normalized_score": score, "dataset": {"fingerprint": fp}}))
        cfg = {"name": name, "out": str(root / "runs"), "summaries": str(root / "summaries"), "report": "r.md",
               "tasks": [a, b], "seeds": [0, 1], "budget": {"policy_steps": steps},
               "arms": {"x": {"guidance": "idql", "policy": "idql", "preset": "gfdt-authors"},
                        "only-here": {"guidance": "idql", "policy": "idql"}}, **extra}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    old = grid("old", 5, {(a, "x", 0): (10.0, "f1"), (a, "x", 1): (20.0, "f1"), (b, "x", 0): (1.0, "old-b")})
    new = grid("new", 50, {(a, "x", 0): (30.0, "f1"), (b, "x", 0): (2.0, "new-b"),
                           (a, "only-here", 0): (5.0, "f1")}, beside={"experiment": str(old)})
    exp = load_experiment(str(new))
    lines = _beside(exp, load_summaries(exp.summaries), _beside_grid(exp))
    assert f"| {a} | x | 30.0 ± n/a (1) | 15.0 ± 5.0 (2) | yes |" in lines
    assert f"| {b} | x | 2.0 ± n/a (1) | 1.0 ± n/a (1) | no |" in lines  # its dataset was rebuilt in between
    assert not any("only-here" in line for line in lines)  # an arm the other grid did not run has no row
    assert "this grid at 50 policy steps, `old` at 5" in " ".join(lines)
    assert _beside_grid(load_experiment(str(old))) is None  # no `beside`: nothing to read, no section
    assert _beside(load_experiment(str(old)), [], None) == []


def test_beside_at_steps_puts_every_arm_of_both_grids_at_the_steps_both_evaluated(tmp_path):
    from modzoo_lab.grid.plan import load_experiment
    from modzoo_lab.grid.report import _beside, _beside_grid, load_summaries

    task = "bullet-hopper-medium-v0"

    def grid(name: str, steps: int, every: int, arms: dict, curves: dict[tuple[str, int], dict[int, float]],
             **extra):
        root = tmp_path / name
        for (arm, seed), curve in curves.items():
            d = root / "summaries" / task / arm / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"normalized_score": curve[max(curve)]}))
            (d / "curve.csv").write_text("step,normalized_mean\n" + "".join(f"{s},{v}\n" for s, v in curve.items()))
        cfg = {"name": name, "out": str(root / "runs"), "summaries": str(root / "summaries"), "report": "r.md",
               "tasks": [task], "seeds": [0, 1], "arms": arms, **extra,
               "budget": {"policy_steps": steps, "eval_every": every, "eval_episodes": 10, "final_eval_episodes": 20}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    old = grid("old", 40, 10, {"dql-joint": {"guidance": "dql", "policy": "dql",
                                             "run": {"eval_episodes": 3, "final_eval_episodes": 50}}},
               {("dql-joint", 0): {10: 10.0, 20: 30.0, 30: 0.0, 40: 0.0},
                ("dql-joint", 1): {10: 20.0, 20: 50.0, 30: 0.0, 40: 0.0}})
    new = grid("new", 20, 5, {"fql": {"guidance": "idql", "policy": "idql"}},
               {("fql", 0): {5: 1.0, 10: 2.0, 15: 3.0, 20: 4.0}},
               beside={"experiment": str(old), "at_steps": True})
    exp = load_experiment(str(new))
    lines = _beside(exp, load_summaries(exp.summaries), _beside_grid(exp))
    assert lines[0].startswith("## Beside experiment `old`")  # no arm in common: the section still has its heading
    assert "| grid | arm | 10 steps | 20 steps |" in lines  # 5 and 15 (only here), 30 and 40 (only there): left out
    assert "| new | fql | 2.0 ± n/a (1; 10) | 4.0 ± n/a (1; 20) |" in lines  # 20 is this grid's final evaluation
    assert "| old | dql-joint | 15.0 ± 5.0 (2; 3) | 40.0 ± 10.0 (2; 3) |" in lines  # the arm's own interim count
    exp.beside.at_steps = False
    # no arm in common and no steps asked for: nothing
    assert _beside(exp, load_summaries(exp.summaries), _beside_grid(exp)) == []


def test_a_gfdt_arm_pairs_with_the_joint_arm_of_the_grid_beside_it_at_the_steps_both_evaluated(tmp_path):
    """``gfdt_pairs: {gf: old/dql-joint}``: a grid that adds one GFDT arm is scored against the joint arm another
    grid already ran (same task and seeds), and a curve evaluated every 5 steps is read at the other's every 10."""
    from modzoo_lab.grid.plan import load_experiment
    from modzoo_lab.grid.report import _aggregate, _beside_grid, _efficiency, _with_beside_arms, load_summaries, render

    task = "bullet-hopper-medium-v0"

    def grid(name: str, every: int, arm: str, curves: dict[int, dict[int, float]], phases: dict[str, float],
             **extra):
        root = tmp_path / name
        for seed, curve in curves.items():
            d = root / "summaries" / task / arm / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"normalized_score": curve[max(curve)], "phases": [
                {"phase": ph, "wall_s": cpu, "cpu_s": cpu, "rss_peak_mb": 100.0, "steps": 20}
                for ph, cpu in phases.items()]}))
            (d / "curve.csv").write_text("step,normalized_mean\n" + "".join(f"{s},{v}\n" for s, v in curve.items()))
        cfg = {"name": name, "out": str(root / "runs"), "summaries": str(root / "summaries"), "report": "r.md",
               "tasks": [task], "seeds": [0, 1], "arms": {arm: {"guidance": "dql", "policy": "dql"}}, **extra,
               "budget": {"policy_steps": 20, "eval_every": every, "eval_episodes": 10}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        return tmp_path / f"{name}.yaml"

    grid("old", 10, "dql-joint", {0: {10: 50.0, 20: 100.0}, 1: {10: 100.0, 20: 100.0}}, {"joint": 60.0})
    # seed 0 dips to 0 at steps 5 and 15, which the old grid never evaluated: read at 10 and 20 it is flat at 100
    new = grid("new", 5, "gf", {0: {5: 0.0, 10: 100.0, 15: 0.0, 20: 100.0}, 1: {5: 0.0, 10: 0.0, 15: 0.0, 20: 100.0}},
               {"guidance": 10.0, "policy": 20.0}, beside={"experiment": str(tmp_path / "old.yaml")},
               gfdt_pairs={"gf": "old/dql-joint"})
    exp = load_experiment(str(new))
    groups = _with_beside_arms(exp, {task: {"gf": load_summaries(exp.summaries)}}, _beside_grid(exp))
    assert sorted(groups[task]) == ["gf", "old/dql-joint"]
    text = "\n".join(_efficiency(exp, groups, "CMD", tmp_path, "img"))
    gf = next(line for line in text.splitlines() if line.startswith(f"| {task} | gf |"))
    assert "| 10.0, 20.0 | 15 |" in gf and "| 100.0, 50.0 | 75.0 |" in gf
    diff = next(line for line in text.splitlines() if line.startswith(f"| {task} | gf - old/dql-joint |"))
    assert "| 2 | 0 | 1 / 1 | 25.0, -50.0 |" in diff  # seed 0 there 10 steps sooner (10 vs 20), seed 1 10 later
    assert "`old/dql-joint`" in text  # the table says where the joint arm comes from
    pairs = "\n".join(_aggregate(exp, groups, "CMD"))
    assert "| gf | old/dql-joint | 0.50 |" in pairs  # final scores 100 and 100 on both sides: a tie
    # the report's cost table: the GFDT arm's guidance and policy (30 s of CPU) against the other grid's joint (60 s)
    report = render(exp, load_summaries(exp.summaries), tmp_path / "img", "img")
    assert "| gf | old/dql-joint | 2 / 2 | 0.50 | 0.50 | 0.50 | 1.00 |" in report
    # the other grid's arm has no row of its own in the task tables (its scores and costs are that grid's report's)
    assert not any(line.startswith("| old/dql-joint |") for line in report.splitlines())


def test_a_resumed_phases_peak_rss_is_left_out_of_the_memory_mean():
    from modzoo_lab.grid.report import RunSummary, arm_stats

    def run(seed, rss, **extra):
        ph = {"phase": "policy", "wall_s": 10.0, "rss_peak_mb": rss, "steps": 5, **extra}
        return RunSummary("t", "a", seed, {"normalized_score": 1.0, "eval": {"normalized": [1.0]}, "phases": [ph]})
    # the resumed run's process started after the interim evaluation: 470 MB is not that phase's peak
    st = arm_stats([run(0, 780.0), run(1, 770.0), run(2, 470.0, resumed_at=4000)])
    assert st["phases"]["policy"]["rss_peak_mb"] == 775.0
    assert st["phases"]["policy"]["wall_s"] == 10.0 and st["phases"]["policy"]["runs"] == 3  # time still counts
    only = arm_stats([run(0, 470.0, resumed_at=4000)])
    assert only["phases"]["policy"]["rss_peak_mb"] != only["phases"]["policy"]["rss_peak_mb"]  # nan: n/a


def test_a_resumed_phase_that_evaluated_after_the_restart_keeps_its_peak_rss():
    from modzoo_lab.grid.report import RunSummary, arm_stats

    def run(resumed_at, evals, curve_steps, rss=900.0):
        ph = {"phase": "policy", "wall_s": 10.0, "rss_peak_mb": rss, "steps": 50, "evals": evals,
              "resumed_at": resumed_at}
        return RunSummary("t", "a", 0, {"normalized_score": 1.0, "eval": {"normalized": [1.0]}, "phases": [ph]},
                          [(s, 1.0) for s in curve_steps])

    def peak(r):
        return arm_stats([r])["phases"]["policy"]["rss_peak_mb"]
    assert peak(run(5, 4, [10, 20, 30, 40, 50])) == 900.0  # evaluated at 10-40 after the restart at 5
    assert peak(run(40, 4, [10, 20, 30, 40, 50])) != peak(run(40, 4, [10, 20, 30, 40, 50]))  # trained 40-50 only
    assert peak(run(20, 0, [])) == 900.0  # a phase without interim evaluations: every process does the same


def test_one_slowed_run_moves_the_mean_time_ratio_not_the_median():
    from omegaconf import OmegaConf

    from modzoo_lab.grid.report import RunSummary, _gfdt_ratios, arm_stats

    def run(arm, seed, **walls):
        phases = [{"phase": k, "wall_s": v, "rss_peak_mb": 800.0, "steps": 5} for k, v in walls.items()]
        phases.append({"phase": "eval", "wall_s": 99.0, "rss_peak_mb": 800.0, "steps": 10})
        return RunSummary("t", arm, seed, {"normalized_score": 1.0, "eval": {"normalized": [1.0]},
                                           "phases": phases})
    joint = [run("j", s, joint=100.0) for s in range(4)]
    gf = [run("g", s, guidance=10.0, policy=60.0) for s in range(3)] + [run("g", 3, guidance=20.0, policy=120.0)]
    reuse = [run("r", s, policy=50.0) for s in range(4)]
    exp = OmegaConf.create({"gfdt_pairs": {"g": "j", "r": "j"},
                            "arms": {"g": {}, "j": {}, "r": {"guidance_from": "g"}}})
    stats = {a: arm_stats(rs) for a, rs in (("j", joint), ("g", gf), ("r", reuse))}
    (_, _, n, t_mean, t_median, cpu, mem), (_, _, _, r_mean, r_median, _, _) = _gfdt_ratios(exp, stats)
    assert n == "4 / 4" and mem == 1.0
    assert cpu != cpu  # these summaries carry no CPU time: n/a, not a ratio of zeros
    assert t_mean == pytest.approx((3 * 70 + 140) / 4 / 100) and t_median == pytest.approx(0.70)
    # a reused guidance's training counts against the arm that reuses it: its median guidance phase here
    assert r_mean == pytest.approx((50 + 12.5) / 100) and r_median == pytest.approx((50 + 10) / 100)


def test_a_cpu_mean_needs_every_runs_cpu_time():
    from modzoo_lab.grid.report import RunSummary, arm_stats

    def run(seed, **cpu):
        ph = {"phase": "policy", "wall_s": 10.0, "rss_peak_mb": 800.0, "steps": 5, **cpu}
        return RunSummary("t", "a", seed, {"normalized_score": 1.0, "eval": {"normalized": [1.0]}, "phases": [ph]})
    assert arm_stats([run(0, cpu_s=8.0), run(1, cpu_s=6.0)])["phases"]["policy"]["cpu_s"] == 7.0
    mixed = arm_stats([run(0, cpu_s=8.0), run(1)])["phases"]["policy"]  # one summary predates CPU time
    assert mixed["cpu_s"] != mixed["cpu_s"] and mixed["wall_s"] == 10.0


def test_final_and_swap_evaluations_take_their_own_episode_counts(tiny_experiment, tmp_path):
    """A grid can evaluate cheaply along the curve and with many episodes at the end and in its swaps, per arm."""
    import modzoo
    from modzoo_lab.grid.plan import swap_jobs
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["budget"]["final_eval_episodes"] = 3
    exp["arms"]["idql-gf"]["run"] = {"eval_episodes": 1, "final_eval_episodes": 1}
    exp["swaps"]["episodes"] = {"dql-gf-iql": 1, "default": 2}
    exp["seeds"] = [0]
    exp["swaps"]["other_seed"] = []
    tiny_experiment.write_text(yaml.safe_dump(exp))
    loaded = load_experiment(str(tiny_experiment))
    assert {j["episodes"] for j in swap_jobs(loaded)} == {1}
    loaded.swaps.episodes = 4
    assert {j["episodes"] for j in swap_jobs(loaded)} == {4}
    del exp["swaps"]["episodes"]
    tiny_experiment.write_text(yaml.safe_dump(exp))
    assert {j["episodes"] for j in swap_jobs(load_experiment(str(tiny_experiment)))} == {3}  # the final size
    exp["swaps"]["episodes"] = {"dql-gf-iql": 1, "default": 2}
    tiny_experiment.write_text(yaml.safe_dump(exp))
    summary = run_experiment(str(tiny_experiment), log=lambda m: None)
    assert summary["failed"] == 0, summary
    runs = tmp_path / "runs" / TASK
    joint = json.loads((runs / "idql-joint" / "seed0" / "result.json").read_text())
    gf = json.loads((runs / "idql-gf" / "seed0" / "result.json").read_text())
    assert joint["eval"]["episodes"] == 3 and gf["eval"]["episodes"] == 1
    interim = [json.loads(x) for x in (runs / "idql-joint" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert any(x.get("phase") == "eval" and x["step"] == 2 for x in interim)
    sw = json.loads((runs / "dql-gf-iql" / "seed0" / "swaps.json").read_text())
    assert sw["other_algorithm"]["episodes"] == 1
    # a cached swap of another size is not reused: asking for 2 episodes evaluates it again
    from modzoo_lab.grid.runner import swap_cached
    job = next(j for j in swap_jobs(load_experiment(str(tiny_experiment))) if j["label"] == "other_algorithm")
    assert swap_cached(job)
    assert not swap_cached({**job, "episodes": 2})
    cfg = modzoo.run_config("idql", "idql", TASK, final_eval_episodes=7)
    assert cfg.run.final_eval_episodes == 7 and cfg.run.eval_episodes == 10


def test_the_50k_grid_runs_every_arm_under_the_authors_preset():
    import modzoo
    exp = load_experiment("gfdt-50k")
    specs = plan(exp)
    assert len(specs) == len(exp.tasks) * 4 * 3
    for s in specs:
        c = modzoo.run_config(s.guidance, s.policy, s.task, s.overrides, schedule=s.schedule, seed=s.seed, **s.run)
        assert c.run.preset == "gfdt-authors" and c.policy.obs_norm == "gaussian" and c.guidance.obs_norm == "gaussian"
        assert c.policy.act_temperature == 0.5 and c.run.policy_steps == 50000


def test_the_preset_v2_grid_compares_with_the_50k_grids_hopper_cells():
    """gfdt-50k-preset-v2 (issue #41 item 3) measures the corrected preset: 6 runs, idql-gf and dql-joint on hopper,
    each arm as gfdt-50k's of the same name but for the preset, with that grid's budget (interim evaluations more
    often) and swaps, so its cells compare with gfdt-50k's hopper cells; its summaries are its own, never mixed
    with v1's."""
    import modzoo
    v2, v1 = load_experiment("gfdt-50k-preset-v2"), load_experiment("gfdt-50k")
    specs = plan(v2)
    assert sorted(s.key for s in specs) == sorted(f"{TASK}/{arm}/seed{seed}" for arm in ("idql-gf", "dql-joint")
                                                  for seed in (0, 1, 2))
    assert v2.workers == 1 and v2.summaries != v1.summaries and v2.out != v1.out
    # the budget is v1's but for interim evaluations twice as often (issue #41 item 5), at every step v1 evaluated
    assert {**v2.budget, "eval_every": v1.budget.eval_every} == v1.budget
    assert v1.budget.eval_every % v2.budget.eval_every == 0
    old = {s.key: s for s in plan(v1)}
    for s in specs:
        o = old[s.key]
        assert (s.guidance, s.policy, s.schedule, s.overrides) == (o.guidance, o.policy, o.schedule, o.overrides)
        assert {**o.run, "preset": "gfdt-authors-v2", "eval_every": v2.budget.eval_every} == s.run
        assert o.run["preset"] == "gfdt-authors"
        c = modzoo.run_config(s.guidance, s.policy, s.task, s.overrides, schedule=s.schedule, seed=s.seed, **s.run)
        assert c.run.preset == "gfdt-authors-v2" and c.run.policy_steps == 50000
        assert (c.policy.optimizer, c.policy.weight_decay) == ("adamw", 0.01)
    for kind, arms in v2.swaps.items():
        if kind == "episodes":
            assert all(v1.swaps.episodes[k] == n for k, n in arms.items())
            continue
        for arm in arms:
            assert arm in v1.swaps[kind]
            if kind != "other_seed":
                assert arms[arm] == v1.swaps[kind][arm]


def test_a_key_added_with_the_old_behaviour_as_default_leaves_old_runs_valid(tmp_path):
    """A run saved before ``obs_norm`` (and the other keys of _ADDED_KEYS) existed still matches a config that holds
    the value reproducing the old code; a config asking for anything else is drift."""
    from omegaconf import OmegaConf

    import modzoo
    from modzoo_lab.grid.plan import RunSpec, config_drift
    spec = RunSpec(task=TASK, arm="a", seed=0, out=str(tmp_path / "run"), guidance="dql", policy="dql",
                   schedule="joint", run={"policy_steps": 10})
    now = OmegaConf.to_container(modzoo.run_config("dql", "dql", TASK, schedule="joint", seed=0, out=spec.out,
                                                   policy_steps=10))
    for section, key in (("policy", "obs_norm"), ("guidance", "obs_norm"), ("policy", "act_temperature"),
                         ("guidance", "target_every"), ("policy", "init")):
        del now[section][key]
    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(now))
    assert config_drift(spec, saved) == []
    spec.overrides = ["policy.obs_norm=gaussian"]
    assert config_drift(spec, saved) == ["policy.obs_norm: None -> 'gaussian'"]


def test_status_tells_each_runs_state_without_touching_the_run_dirs(tiny_experiment, tmp_path, capsys):
    import os
    import shutil

    from modzoo.cli import main
    from modzoo_lab.grid.status import grid_status

    exp = load_experiment(str(tiny_experiment))
    rows, swaps = grid_status(exp)
    assert {r["state"] for r in rows} == {"not started"}
    assert (swaps["swaps"], swaps["swaps_done"]) == (4, 0) and {rec for _, rec in swaps["jobs"]} == {None}
    run_experiment(str(tiny_experiment), log=lambda m: None, report=False)
    runs = tmp_path / "runs" / TASK
    # one run left as a kill would leave it, one held by a live process, one failed; the rest finished
    (runs / "idql-joint" / "seed1" / "result.json").unlink()
    (runs / "idql-gf" / "seed1" / "result.json").unlink()
    (runs / "idql-gf" / "seed1" / "LOCK").write_text(str(os.getpid()))
    shutil.rmtree(runs / "dql-gf-iql" / "seed1")
    (runs / "dql-gf-iql" / "seed1").mkdir()
    (runs / "dql-gf-iql" / "seed1" / "FAILED").write_text("RuntimeError: out of memory\n")
    before = sorted(p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file())
    states = {r["key"]: (r["state"], r["detail"]) for r in grid_status(exp)[0]}
    def evaluated(arm: str) -> str:  # how the run did at its last interim evaluation, as its metrics.jsonl says
        recs = [json.loads(x) for x in (runs / arm / "seed1" / "metrics.jsonl").read_text().splitlines()]
        ev = [r for r in recs if r["phase"] == "eval"][-1]
        return f"evaluated {ev['normalized_mean']:.1f} at step {ev['step']}"
    assert states[f"{TASK}/idql-joint/seed1"] == ("interrupted",
                                                  f"policy step 4, {evaluated('idql-joint')}; resumes there")
    assert states[f"{TASK}/idql-gf/seed1"] == ("running", f"policy step 4, {evaluated('idql-gf')} (pid {os.getpid()})")
    assert states[f"{TASK}/dql-gf-iql/seed1"] == ("failed", "RuntimeError: out of memory")
    assert states[f"{TASK}/idql-joint/seed0"][0] == "finished"
    assert states[f"{TASK}/idql-joint/seed0"][1].startswith("normalized ")
    assert sorted(p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file()) == before  # read only
    stale = load_experiment(str(tiny_experiment), ['arms.idql-gf.overrides=["guidance.hidden=[8,8]"]'])
    assert {r["state"] for r in grid_status(stale)[0] if "/idql-gf/" in r["key"]} == {"stale"}
    assert main(["experiment", str(tiny_experiment), "--status"]) == 0
    counts = [line for line in capsys.readouterr().out.splitlines() if line.startswith("experiment tiny: ")]
    assert counts[0].startswith("experiment tiny: 6 runs: 3 finished, 1 running, 1 interrupted, 1 failed; swaps ")


def test_the_time_left_prices_each_unfinished_run_and_swap_at_its_arms_finished_runs(tiny_experiment, tmp_path,
                                                                                      capsys):
    from modzoo.cli import main
    from modzoo_lab.grid.plan import swap_episodes
    from modzoo_lab.grid.status import grid_status, seconds_left

    exp = load_experiment(str(tiny_experiment))
    assert seconds_left(*grid_status(exp)) is None  # nothing finished: nothing to price with
    runs = tmp_path / "runs" / TASK

    def finished(arm: str, seed: int, train: float, interim: float, final: float, episodes: int) -> None:
        """A summary whose CPU times are half its wall times (a core shared by two jobs)."""
        d = runs / arm / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"phases": [
            {"phase": "policy", "wall_s": train, "eval_wall_s": interim, "cpu_s": train / 2,
             "eval_cpu_s": interim / 2},
            {"phase": "eval", "wall_s": final, "cpu_s": final / 2, "episodes": episodes}]}))

    def at(arm: str, seed: int, phase: str, step: int) -> None:
        d = runs / arm / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(json.dumps({"phase": phase, "step": step}) + "\n"
                                         + json.dumps({"phase": "eval", "step": step}) + "\n")

    finished("idql-joint", 0, 100.0, 20.0, 30.0, 10)  # 150 s; 3 s per final episode
    finished("idql-gf", 0, 250.0, 0.0, 50.0, 5)  # 300 s; 10 s per final episode
    at("idql-joint", 1, "policy", 2)  # half of its 4 policy steps: 75 s left
    at("idql-gf", 1, "guidance", 2)  # 2 of its 4 + 4 steps: 225 s left
    # dql-gf-iql has no finished run of its own: each of its two is priced at the mean of all finished (225 s),
    # and so are its two other-algorithm swaps (6.5 s per episode); idql-joint's two other-seed swaps at its 3 s
    runs_left = 75 + 225 + 2 * 225
    e = swap_episodes(exp, "idql-joint")
    rows, swaps = grid_status(exp)
    assert [r["state"] for r in rows].count("finished") == 2
    wall = runs_left + 2 * 3 * e + 2 * 6.5 * e
    assert seconds_left(rows, swaps) == pytest.approx({"wall": wall, "cpu": wall / 2})
    # one swap done, which timed itself at 4 s per episode (2 of CPU): the other swap of its kind is priced so
    (runs / "idql-joint" / "seed0" / "swaps.json").write_text(json.dumps(
        {"other_seed": {"wall_s": 8.0, "cpu_s": 4.0, "episodes": 2}}))
    (runs / "dql-gf-iql" / "seed1").mkdir(parents=True)
    (runs / "dql-gf-iql" / "seed1" / "FAILED").write_text("RuntimeError\n")  # a failed run is not redone
    wall = runs_left - 225 + 4 * e + 2 * 6.5 * e
    assert seconds_left(*grid_status(exp)) == pytest.approx({"wall": wall, "cpu": wall / 2})
    assert main(["experiment", str(tiny_experiment), "--status", "--workers", "2"]) == 0
    hours = capsys.readouterr().out.strip().splitlines()[-1].split("about ")[-1]
    assert hours == f"{wall / 2 / 3600 / 2:.1f}-{wall / 3600 / 2:.1f} h on 2 workers"


def test_a_two_stage_split_given_as_a_fraction_is_compared_as_the_steps_it_ran(tiny_experiment, tmp_path):
    """SRPO's ``behaviour_steps: 0.6667`` is saved as the step count the trainer made of it: a finished run is not
    stale for that, while another fraction (another split of the same phase) makes it stale."""
    from modzoo_lab.grid.plan import config_drift
    exp = yaml.safe_load(tiny_experiment.read_text())
    exp["arms"] = {"idql-gf": exp["arms"]["idql-gf"],
                   "srpo-gf-iql": {"guidance": "idql", "policy": "srpo", "guidance_from": "idql-gf",
                                   "overrides": ["guidance.hidden=[16,16]", "policy.hidden=16",
                                                 "policy.batch_size=32", "policy.actor_batch_size=8"]}}
    exp["swaps"], exp["gfdt_pairs"], exp["seeds"] = {}, {}, [0]
    tiny_experiment.write_text(yaml.safe_dump(exp))
    assert run_experiment(str(tiny_experiment), log=lambda m: None, report=False)["failed"] == 0
    spec = next(s for s in plan(load_experiment(str(tiny_experiment))) if s.arm == "srpo-gf-iql")
    saved = yaml.safe_load((tmp_path / "runs" / TASK / "srpo-gf-iql" / "seed0" / "config.yaml").read_text())
    assert saved["policy"]["behaviour_steps"] == 3  # round(0.6667 * 4)
    assert config_drift(spec) == []
    spec.overrides.append("policy.behaviour_steps=0.25")
    assert config_drift(spec) == ["policy.behaviour_steps: 3 -> 1"]


def test_the_report_says_when_a_cells_runs_trained_on_different_files_of_one_dataset():
    """A re-collected dataset can be another file with the same config (another CPU, another collector): the
    config check keeps both kinds of run, so the report has to name the split."""
    from modzoo_lab.grid.report import RunSummary, _data_line

    def run(arm, seed, fp):
        return RunSummary("t", arm, seed, {"normalized_score": 1.0, "dataset": {"fingerprint": fp}})
    same = _data_line({"a": [run("a", 1, "f1"), run("a", 0, "f1")], "b": [run("b", 0, "f1")]})
    assert same == ["", "Data: every run above trained on the same file (dataset fingerprint `f1`)."]
    mixed = " ".join(_data_line({"a": [run("a", 0, "f1"), run("a", 1, "f2")], "b": [run("b", 0, "f1")]}))
    assert "2 different files" in mixed and "`f1`: a seed 0, b seed 0; `f2`: a seed 1" in mixed
    assert _data_line({"a": [RunSummary("t", "a", 0, {"normalized_score": 1.0})]}) == []  # nothing recorded


def test_a_damaged_summary_is_named_in_one_line(tmp_path):
    from modzoo.errors import ModzooError
    from modzoo_lab.grid.report import load_summaries
    d = tmp_path / TASK / "idql-joint" / "seed0"
    d.mkdir(parents=True)
    (d / "result.json").write_text('{"normalized_score": 5.0, "eval": {"normalized": [5.0')  # a copy cut short
    with pytest.raises(ModzooError, match=r"result\.json: not valid JSON .* restore it from git"):
        load_summaries(tmp_path)
    (d / "result.json").write_text('{"normalized_score": 5.0, "eval": {"normalized": [5.0]}}')
    (d / "swaps.json").write_text('{"other_seed": 1}')
    with pytest.raises(ModzooError, match=r"swaps\.json: swap 'other_seed' is not an evaluation record"):
        load_summaries(tmp_path)
    (d / "swaps.json").write_text('[]')
    with pytest.raises(ModzooError, match=r"swaps\.json: a run summary is a JSON object, this holds a list"):
        load_summaries(tmp_path)
    (d / "swaps.json").write_text('{"other_seed": {"normalized": [4.0]}}')
    assert [r.swaps for r in load_summaries(tmp_path)] == [{"other_seed": {"normalized": [4.0]}}]
