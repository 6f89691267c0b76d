"""The GPU check (lab/benchmarks/gpu_check.py) run end to end in its CPU mode, so it cannot rot between the rare
times a GPU is lent: every section must produce its figures, the agreement check must find two identical CPU runs
identical, and the grid's constants must still be lab/experiments/gfdt-paper.yaml's."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "lab" / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--device cpu --quick`` run as a user types it (a subprocess: the CLI, the exit code and the files are
    what is tested), with a budget large enough that a loaded machine skips nothing."""
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--budget", "600",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    res["_markdown"] = out.with_suffix(".md").read_text()
    res["_stdout"] = proc.stdout
    return res


def test_environment_names_what_was_measured(report: dict[str, Any]) -> None:
    env = report["environment"]
    assert report["schema"] == gpu_check.SCHEMA and report["mode"] == "quick"
    for key in ("device", "device_name", "torch", "cuda", "modzoo", "cpu_cores", "tf32_matmul", "time_utc"):
        assert key in env, key
    assert env["device"] == "cpu" and env["torch"] and env["device_name"]
    assert report["skipped"] == [] and 0 < report["wall_s"] < report["budget_s"]


def test_training_rows_cover_every_arm_and_seed_count(report: dict[str, Any]) -> None:
    rows = {(r["arm"], r["seeds"]): r for r in report["train"]}
    assert set(rows) == {(arm, k) for arm in gpu_check.ARMS for k in (1, 2)}
    for (arm, k), r in rows.items():
        assert "skipped" not in r and "error" not in r, r
        assert r["stack"] == ("vmap" if k > 1 else "none (one seed)")
        assert r["steps_per_s_per_seed"] > 0 and r["timed_steps"] >= 3
        # total is K seeds advancing one step per stacked step, and ms per step is its inverse
        assert r["seed_steps_per_s"] == pytest.approx(k * r["steps_per_s_per_seed"])
        assert r["ms_per_step"] == pytest.approx(1e3 / r["steps_per_s_per_seed"])
        assert r["peak_gpu_mib"] is None  # no GPU memory on a CPU run, rather than a made-up 0
    assert report["peak_gpu_mib"] is None


def test_agreement_finds_two_identical_runs_identical(report: dict[str, Any]) -> None:
    """On CPU both runs are CPU: with host-drawn random numbers they must match exactly, which checks the
    comparison itself (a patch that leaked a device stream, or a comparison that read the wrong files, fails)."""
    assert {r["arm"] for r in report["agreement"]} == set(gpu_check.ARMS)
    for r in report["agreement"]:
        assert r["ok"] and all(r["checks"].values()) and r["devices"] == ["cpu", "cpu"] and r["steps"] == 10
        assert r["losses"]["values"] >= 10 * 2 and r["losses"]["worst"]["rel"] == 0
        assert r["params"]["tensors"] > 10 and r["params"]["worst_rel_l2"] == 0
        assert r["checkpoint_to_cpu"] == {"ok": True, "bit_exact": True, "acts_on_cpu": True}
        # the yardstick really perturbed the run (else its bound would be 0), by a rounding-sized amount
        yard = r["yardstick"]
        assert 0 < yard["losses"]["worst"]["rel"] < 1e-2 and 0 < yard["params"]["worst_rel_l2"] < 1e-1
        assert r["bounds"]["loss_rel"] == pytest.approx(gpu_check.MARGIN * yard["losses"]["worst"]["rel"])


def test_agreement_tells_different_runs_apart(tmp_path: Path) -> None:
    """The comparison is not blind: two seeds of one arm differ far beyond the stated tolerances."""
    import torch

    import modzoo
    from modzoo.bullet.data import load_dataset
    from modzoo.testing import synthetic_dataset

    data = synthetic_dataset(tmp_path / "d.hdf5", transitions=1000)
    ds = load_dataset(str(data), task=gpu_check.TASK)
    s = gpu_check.Setup(torch.device("cpu"), data, True, 0.1, 1)
    for seed in (0, 1):
        cfg = gpu_check.arm_config(s, "dql", seed, "cpu", policy_steps=5, log_every=1, out=str(tmp_path / f"s{seed}"))
        with gpu_check.host_random_numbers():
            modzoo.train(cfg, ds, progress=False)
    with gpu_check.host_random_numbers(), gpu_check.perturbed_initial_weights(gpu_check.PERTURB):
        cfg = gpu_check.arm_config(s, "dql", 0, "cpu", policy_steps=5, log_every=1, out=str(tmp_path / "yard"))
        modzoo.train(cfg, ds, progress=False)
    seeds = gpu_check.loss_agreement(tmp_path / "s0", tmp_path / "s1")
    yard = gpu_check.loss_agreement(tmp_path / "s0", tmp_path / "yard")
    # another seed already differs at the first step, beyond the first-step bound; a rounding-sized change does not
    assert seeds["first_step_rel"] > 100 * gpu_check.FIRST_STEP_RTOL
    assert 0 < yard["first_step_rel"] < gpu_check.FIRST_STEP_RTOL
    assert seeds["worst"]["rel"] > 1000 * yard["worst"]["rel"]
    params = gpu_check.param_agreement(tmp_path / "s0", tmp_path / "s1")
    yard_params = gpu_check.param_agreement(tmp_path / "s0", tmp_path / "yard")
    assert params["worst_rel_l2"] > gpu_check.MARGIN * yard_params["worst_rel_l2"] > 0


def test_host_random_numbers_restores_modzoo_streams() -> None:
    import torch

    from modzoo.contract import rng
    from modzoo.run.buffer import ReplayBuffer

    before = (rng.randn, rng.rand, rng.randint, rng.randperm, ReplayBuffer.sample)
    g = torch.Generator().manual_seed(3)
    with gpu_check.host_random_numbers():
        a = rng.randn((4,), g, "cpu")
        assert rng.randn is not before[0]
    assert (rng.randn, rng.rand, rng.randint, rng.randperm, ReplayBuffer.sample) == before
    # the stand-in is seeded like the generator asked: its first draw is that generator's first draw
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(3)))


def test_act_eval_and_compile_sections_produce_figures(report: dict[str, Any]) -> None:
    for r in report["act"]:
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["candidates"] >= 1 and r["sampler"]
    for r in report["eval"]:
        assert r["env_steps"] == r["episodes"] * r["steps_per_episode"]  # halfcheetah never ends an episode early
        assert r["env_steps_per_s"] > 0 and 0 < r["policy_share"] < 1 and r["env_setup_s"] > 0
        # the stepping rate leaves the envs' setup out, so it is the higher of the two
        assert r["stepping_env_steps_per_s"] > r["env_steps_per_s"]
    rows = report["compile"]
    measured = [r for r in rows if r["seeds"] == 1]
    assert ({(r["arm"], r["variant"].split()[0]) for r in measured}
            == {(arm, v) for arm in gpu_check.ARMS for v in ("eager", "compiled")})
    for r in measured:
        assert "error" not in r and r["steps_per_s"] > 0 and r["act_ms"] > 0, r
        if r["variant"] != "eager":
            assert any(name.endswith("model") for name in r["compiled"]) and "critic" in r["compiled"]
    assert any("unsupported" in r for r in rows)  # the stacked step is said to be uncompiled, not left out


def test_grid_cost_follows_from_the_measured_rates(report: dict[str, Any]) -> None:
    grid = report["grid"]
    one = {r["arm"]: r["seed_steps_per_s"] for r in report["train"] if r["seeds"] == 1}
    want = sum(n * gpu_check.GRID_TASKS * gpu_check.GRID_SEEDS * gpu_check.GRID_STEPS / one[arm] / 3600
               for arm, n in gpu_check.GRID_ARMS.items())
    scenarios = {s["scenario"]: s for s in grid["scenarios"]}
    assert grid["runs"] == 480
    assert scenarios["one seed per process"]["training_hours"] == pytest.approx(want)
    # --quick stacks 1 and 2 seeds only: the grid's 5 cannot be priced, and the report says so
    assert scenarios["5 seeds stacked (vmap)"]["training_hours"] is None
    assert grid["evaluation"]["hours_upper_bound"] > 0
    md = report["_markdown"]
    assert "| dql | 1 | none (one seed) |" in md and "not computed" in md and "paper grid" in md
    assert md.strip() in report["_stdout"]


def test_stacked_rate_for_the_grid_is_measured_or_interpolated() -> None:
    rows = [{"arm": "dql", "seeds": k, "ms_per_step": ms, "seed_steps_per_s": k * 1e3 / ms}
            for k, ms in ((4, 10.0), (16, 22.0))]
    rate, how = gpu_check._seed_steps_per_s(rows, "dql", 5)
    assert rate == pytest.approx(5e3 / 11.0) and "interpolated" in how
    assert gpu_check._seed_steps_per_s(rows, "dql", 4) == (400.0, "measured at K=4")
    assert gpu_check._seed_steps_per_s(rows, "dql", 64)[0] is None


def test_grid_constants_are_the_paper_experiments() -> None:
    """The costed grid is lab/experiments/gfdt-paper.yaml's: a changed experiment must change the script."""
    exp = yaml.safe_load((ROOT / "lab" / "experiments" / "gfdt-paper.yaml").read_text())
    assert len(exp["tasks"]) == gpu_check.GRID_TASKS and len(exp["seeds"]) == gpu_check.GRID_SEEDS
    b = exp["budget"]
    assert b["policy_steps"] == b["guidance_steps"] == gpu_check.GRID_STEPS
    assert b["eval_every"] == gpu_check.GRID_EVAL_EVERY and b["eval_episodes"] == gpu_check.GRID_EVAL_EPISODES
    by_actor: dict[str, int] = {}
    for arm in exp["arms"].values():
        policy = arm.get("policy", "dql")
        by_actor[policy] = by_actor.get(policy, 0) + 1
    assert by_actor == gpu_check.GRID_ARMS
    assert math.isclose(sum(by_actor.values()), 8)


def test_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "torch sees no GPU" in proc.stderr and not (tmp_path / "x.json").exists()
