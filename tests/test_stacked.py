"""Seeds trained together (``modzoo.run.stacked``) against the same seeds run alone."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import modzoo
import modzoo.plugins.idql
from modzoo.contract.rng import StackedGenerator
from modzoo.contract.stages import clip_per_seed
from modzoo.errors import ConfigError
from modzoo.run.stacked import train_seeds
from modzoo.testing import checkpoint_tensors

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
        "run.log_every=1"]
SEEDS = [3, 5, 7]

# (guidance, policy, schedule, overrides): every stage kind and every source of randomness the stackable halves
# have: IQL's two stages, DQL's TD target from the EMA actor and from an untrained actor, the Q term through the
# chain with a random critic order, a per-seed grad-norm clip that binds, IDQL's dropout, EMA and LR schedules.
ARMS = {
    "dql-joint": ("dql", "dql", "joint", ["policy.grad_norm=0.05"]),
    "idql-gf": ("idql", "idql", "guidance-first", []),
    "iql-guides-dql": ("idql", "dql", "guidance-first", []),
    "dql-literal": ("dql", "dql", "guidance-first", ["guidance.target_actions=untrained",
                                                     "guidance.update_target=false"]),
    "dql-max-q-delay": ("dql", "dql", "joint", ["guidance.max_q_backup=true", "run.guidance_delay=3"]),
}


def _cfg(arm: str, data: Path, seed: int, out: Path, **run: Any) -> Any:
    g, p, schedule, extra = ARMS[arm]
    return modzoo.run_config(g, p, TASK, TINY + extra, policy_steps=8, guidance_steps=6, eval_episodes=0,
                             device="cpu", dataset=str(data), out=str(out), seed=seed, schedule=schedule, **run)


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for name in ("guidance.pt", "policy.pt"):
        ta = checkpoint_tensors(torch.load(a / name, weights_only=True))
        tb = checkpoint_tensors(torch.load(b / name, weights_only=True))
        assert ta.keys() == tb.keys() and len(ta) > 10
        worst = max(worst, max(float((ta[k] - tb[k]).abs().max()) for k in ta))
    return worst


def _train_both(arm: str, data: Path, tmp: Path, mode: str) -> None:
    train_seeds([_cfg(arm, data, s, tmp / f"together{s}") for s in SEEDS], mode=mode, progress=False)
    for s in SEEDS:
        modzoo.train(_cfg(arm, data, s, tmp / f"alone{s}"), progress=False)


@pytest.mark.parametrize("arm", list(ARMS))
def test_vmap_stacked_seeds_train_as_they_would_alone(arm: str, small_dataset_path: Path, tmp_path: Path) -> None:
    _train_both(arm, small_dataset_path, tmp_path, "vmap")
    for s in SEEDS:
        together, alone = _metrics(tmp_path / f"together{s}"), _metrics(tmp_path / f"alone{s}")
        assert [(m["phase"], m["step"]) for m in together] == [(m["phase"], m["step"]) for m in alone]
        for mt, ma in zip(together, alone):
            for key in ma:
                if key not in ("phase", "step"):
                    assert mt[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), (s, mt["step"], key)
        # parameters, targets, EMA copies and optimizer moments, all to float rounding
        assert _max_diff(tmp_path / f"together{s}", tmp_path / f"alone{s}") < 1e-4
        result = json.loads((tmp_path / f"together{s}" / "result.json").read_text())
        assert result["seed"] == s and result["phases"][-1]["stack"] == "vmap"
    # control: the seeds themselves train differently, far beyond that tolerance
    assert _max_diff(tmp_path / f"alone{SEEDS[0]}", tmp_path / f"alone{SEEDS[1]}") > 1e-2


def test_lockstep_seeds_are_bit_identical_to_alone(small_dataset_path: Path, tmp_path: Path) -> None:
    _train_both("dql-joint", small_dataset_path, tmp_path, "lockstep")
    for s in SEEDS:
        assert _metrics(tmp_path / f"together{s}") == _metrics(tmp_path / f"alone{s}")
        assert _max_diff(tmp_path / f"together{s}", tmp_path / f"alone{s}") == 0.0


def test_seeds_at_different_points_are_not_forced_together(small_dataset_path: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def cfgs() -> list[Any]:
        return [_cfg("idql-gf", small_dataset_path, s, tmp_path / f"r{s}", save_every=3) for s in (0, 1)]
    # seed 0 is interrupted after its 4th guidance step: its resume state is at guidance step 3
    real_update, calls = modzoo.plugins.idql.IQLGuidance.update, []

    def interrupted(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_update(self, *a, **k)
    monkeypatch.setattr(modzoo.plugins.idql.IQLGuidance, "update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        modzoo.train(cfgs()[0], progress=False)
    monkeypatch.setattr(modzoo.plugins.idql.IQLGuidance, "update", real_update)
    assert (tmp_path / "r0" / "train_state.pt").exists()
    with pytest.raises(ConfigError, match="different points"):
        train_seeds(cfgs(), mode="vmap", progress=False, resume=True)
    # auto mode resumes them one after another instead, and both finish
    lines: list[str] = []
    train_seeds(cfgs(), mode="auto", progress=False, resume=True, log=lines.append)
    assert "one after another" in lines[0]
    for s in (0, 1):
        assert json.loads((tmp_path / f"r{s}" / "result.json").read_text())["guidance_steps"] == 6


def test_vmap_refuses_halves_that_cannot_stack(small_dataset_path: Path, tmp_path: Path) -> None:
    cfgs = [modzoo.run_config("idql", "edp", TASK, TINY, policy_steps=2, eval_episodes=0, device="cpu",
                              dataset=str(small_dataset_path), out=str(tmp_path / f"e{s}"), seed=s) for s in (0, 1)]
    with pytest.raises(ConfigError, match="stackable"):
        train_seeds(cfgs, mode="vmap", progress=False)
    assert not any((tmp_path / f"e{s}").exists() for s in (0, 1))  # refused before any run dir was made


def test_clip_per_seed_is_torch_clip_for_each_seed() -> None:
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 3, 5, generator=g) * torch.tensor([0.01, 1.0, 10.0, 100.0]).view(4, 1, 1),
             torch.randn(4, 7, generator=g)]
    expected = []
    for k in range(4):
        ps = [torch.nn.Parameter(torch.zeros_like(x[k])) for x in grads]
        for p, x in zip(ps, grads):
            p.grad = x[k].clone()
        norm = torch.nn.utils.clip_grad_norm_(ps, 2.0)
        expected.append((norm, [p.grad for p in ps]))
    norms = clip_per_seed(grads, 2.0)
    for k, (norm, gs) in enumerate(expected):
        torch.testing.assert_close(norms[k], norm)
        for x, e in zip(grads, gs):
            torch.testing.assert_close(x[k], e)


def test_a_stacked_generator_refuses_to_draw_outside_the_trainer() -> None:
    sg = StackedGenerator([torch.Generator().manual_seed(0)])
    with pytest.raises(RuntimeError, match="vmapped step"):
        modzoo.contract.rng.randn((2,), sg)


def test_an_interrupted_stacked_group_resumes_stacked_and_ends_as_if_never_stopped(
        small_dataset_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modzoo.run.stacked import StackedStepper

    def cfgs(tag: str) -> list[Any]:
        return [_cfg("dql-joint", small_dataset_path, s, tmp_path / f"{tag}{s}", save_every=3) for s in SEEDS]
    real, calls = StackedStepper.step, []

    def interrupted(self, kind, batches):  # type: ignore[no-untyped-def]
        calls.append(kind)
        if calls.count("policy") == 5:  # after 4 steps: the resume state of every seed is at step 3
            raise KeyboardInterrupt
        return real(self, kind, batches)
    monkeypatch.setattr(StackedStepper, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_seeds(cfgs("r"), mode="vmap", progress=False)
    monkeypatch.setattr(StackedStepper, "step", real)
    assert all((tmp_path / f"r{s}" / "train_state.pt").exists() for s in SEEDS)
    train_seeds(cfgs("r"), mode="vmap", progress=False, resume=True)
    for s in SEEDS:
        modzoo.train(_cfg("dql-joint", small_dataset_path, s, tmp_path / f"alone{s}"), progress=False)
        resumed, alone = _metrics(tmp_path / f"r{s}"), _metrics(tmp_path / f"alone{s}")
        assert [m["step"] for m in resumed] == [m["step"] for m in alone]  # no step logged twice
        for mr, ma in zip(resumed, alone):
            for key in ma:
                if key not in ("phase", "step"):
                    assert mr[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), (s, mr["step"], key)
        assert _max_diff(tmp_path / f"r{s}", tmp_path / f"alone{s}") < 1e-4
