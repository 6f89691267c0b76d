"""Observation normalization (``obs_norm: gaussian``) and presets (``--preset gfdt-authors``)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import modzoo
from modzoo.bullet.data import load_dataset
from modzoo.contract.normalization import ObsNorm, fit_obs_norm, gaussian_stats
from modzoo.errors import ConfigError
from modzoo.run.checkpoint import load_checkpoint
from modzoo.run.config import PRESET_DIR, load_preset
from modzoo.run.evaluation import load_policy_and_guidance

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
        "run.log_every=5"]
NORM = ["guidance.obs_norm=gaussian", "policy.obs_norm=gaussian"]


def cfg(g, p, data, out=None, overrides=(), **run):
    run = {"policy_steps": 12, "guidance_steps": 10, "eval_episodes": 1, "device": "cpu", "dataset": str(data),
           "out": str(out) if out else None, **run}
    return modzoo.run_config(g, p, TASK, [*TINY, *overrides], **run)


def obs_stats(half: torch.nn.Module) -> dict[str, list[float]] | None:
    """The statistics a half normalizes with (None when it reads raw observations)."""
    layers = [m for m in half.modules() if isinstance(m, ObsNorm)]
    return {"mean": layers[0].mean.tolist(), "std": layers[0].std.tolist()} if layers else None


def test_gaussian_stats_are_cleandiffusers_and_keep_constant_dims_finite() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (1000, 4)).astype(np.float32)
    x[:, 2] = 5.0  # a dimension that never moves
    mean, std = gaussian_stats(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(std[[0, 1, 3]], x.astype(np.float64).std(0)[[0, 1, 3]], rtol=1e-6)  # ddof 0
    assert std[2] == 1.0


def test_stats_are_saved_restored_and_applied_in_training_and_evaluation(small_dataset_path, tmp_path) -> None:
    d = tmp_path / "run"
    res = modzoo.train(cfg("dql", "dql", small_dataset_path, d, NORM), progress=False)
    data = load_dataset(str(small_dataset_path), task=TASK)
    mean, std = gaussian_stats(data.observations)
    for half in (res.guidance, res.policy):
        st = obs_stats(half)
        np.testing.assert_allclose(st["mean"], mean, rtol=1e-6)
        np.testing.assert_allclose(st["std"], std, rtol=1e-6)
    # every copy inside a half (target critic, EMA actor) carries the same statistics
    assert torch.equal(res.guidance.critic_target.obs_norm.mean, res.guidance.critic.obs_norm.mean)
    assert torch.equal(res.policy.ema_diffusion.model.obs_norm.std, res.policy.diffusion.model.obs_norm.std)
    # what the critic computes on a raw observation is its body applied to the z-scored one
    obs = torch.as_tensor(data.observations[:8])
    act = torch.as_tensor(data.actions[:8])
    z = (obs - torch.as_tensor(mean)) / torch.as_tensor(std)
    body = res.guidance.critic.body(torch.cat([z, act], -1)).squeeze(-1)
    torch.testing.assert_close(res.guidance.critic(obs, act), body)
    # reloaded from the run dir (what `modzoo eval` does), the halves give the numbers training ended with
    policy, guidance = load_policy_and_guidance(d / "policy.pt")
    torch.testing.assert_close(guidance.q(obs, act), res.guidance.q(obs, act))
    np.testing.assert_allclose(obs_stats(policy)["mean"], mean, rtol=1e-6)
    a1 = modzoo.evaluate(res.policy, res.guidance, TASK, episodes=1, seed=0)
    a2 = modzoo.evaluate(policy, guidance, TASK, episodes=1, seed=0)
    assert a1.returns == a2.returns


def test_without_obs_norm_the_nets_and_checkpoints_are_unchanged(small_dataset_path) -> None:
    res = modzoo.train(cfg("idql", "idql", small_dataset_path, eval_episodes=0), progress=False)
    assert obs_stats(res.guidance) is None and obs_stats(res.policy) is None
    assert not any("obs_norm" in k for k in res.guidance.state_dict())  # old checkpoints still load


def test_halves_normalized_differently_pair_each_with_its_own_statistics(small_dataset_path, tmp_path) -> None:
    """A guidance trained on z-scored inputs ranks a raw-input policy's candidates (and the reverse) with the
    same values it gives on its own: each half normalizes the raw observation itself."""
    g_dir, p_dir = tmp_path / "g", tmp_path / "p"
    modzoo.train(cfg("idql", "idql", small_dataset_path, g_dir, ["guidance.obs_norm=gaussian"], eval_episodes=0),
                 progress=False)
    modzoo.train(cfg("idql", "idql", small_dataset_path, p_dir, eval_episodes=0), progress=False)
    policy, guidance = load_policy_and_guidance(p_dir / "policy.pt", g_dir / "guidance.pt")
    assert obs_stats(guidance) is not None and obs_stats(policy) is None
    alone = load_checkpoint(g_dir / "guidance.pt", kind="guidance")
    data = load_dataset(str(small_dataset_path), task=TASK)
    obs, act = torch.as_tensor(data.observations[:16]), torch.as_tensor(data.actions[:16])
    torch.testing.assert_close(guidance.q(obs, act), alone.q(obs, act))
    assert modzoo.evaluate(policy, guidance, TASK, episodes=1, seed=0).returns
    # and a normalized policy trains against a frozen raw-input guidance (schedule pretrained)
    res = modzoo.train(cfg("idql", "dql", small_dataset_path, tmp_path / "mix", ["policy.obs_norm=gaussian"],
                           schedule="pretrained", guidance_ckpt=str(p_dir / "guidance.pt"), eval_episodes=0),
                       progress=False)
    assert obs_stats(res.policy) is not None and obs_stats(res.guidance) is None


def test_a_half_without_obs_norm_layers_is_refused_not_trained_on_raw_inputs() -> None:
    class Plain(torch.nn.Module):
        algorithm = "plain"
        cfg = {"obs_norm": "gaussian"}

    with pytest.raises(ConfigError, match="does not support obs_norm=gaussian"):
        fit_obs_norm(Plain(), np.zeros((4, 3), np.float32))


def test_an_unknown_obs_norm_is_an_error_before_training(small_dataset_path, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown obs_norm 'zscore'"):
        modzoo.train(cfg("idql", "idql", small_dataset_path, tmp_path / "r", ["policy.obs_norm=zscore"]),
                     progress=False)
    assert not (tmp_path / "r").exists()


# ---- acting temperature, critic cadence ---------------------------------------------------------------------
def test_act_temperature_scales_only_the_chain_start_and_only_when_acting(monkeypatch) -> None:
    p = modzoo.make_policy("dql", 3, 2, hidden=16, act_temperature=0.5, act_model="ema")
    seen: list[float] = []
    orig = p.ema_diffusion.sample

    def spy(*a, init_scale: float = 1.0, **k):
        seen.append(init_scale)
        return orig(*a, init_scale=init_scale, **k)

    monkeypatch.setattr(p.ema_diffusion, "sample", spy)
    obs = torch.zeros(4, 3)
    p.act(obs)
    p.target_actions(obs)
    assert seen == [0.5, 1.0]
    # x_T = init_scale * z: with the same generator state, scale 0 starts every chain at the origin
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    d = p.diffusion.eval()
    a0 = d.sample(obs, generator=g1, init_scale=0.0)
    a1 = d.sample(obs, generator=g2, init_scale=1.0)
    assert not torch.allclose(a0, a1)


def test_target_every_and_update_every_follow_cleandiffusers_step_counts(small_dataset_path) -> None:
    from modzoo.run.buffer import ReplayBuffer

    data = load_dataset(str(small_dataset_path), task=TASK)
    buf = ReplayBuffer(data, seed=0)
    g = modzoo.make_guidance("dql", data.obs_dim, data.act_dim, hidden=[16, 16], target_every=5, polyak=0.995,
                             target_actions="dataset")
    changed = []
    for _ in range(11):
        before = next(g.critic_target.parameters()).clone()
        g.update(buf.sample(32))
        changed.append(not torch.equal(before, next(g.critic_target.parameters())))
    assert changed == [i % 5 == 0 for i in range(11)]  # n_gradient_step % 5 == 0, counted from 0

    q = modzoo.make_guidance("idql", data.obs_dim, data.act_dim, hidden=[16, 16], update_every=2,
                             lr_schedule="cosine", lr_decay_steps=8)
    moved, logs = [], []
    for _ in range(6):
        w = next(q.critic.parameters()).clone()
        logs.append(q.update(buf.sample(32)))
        moved.append(not torch.equal(w, next(q.critic.parameters())))
    assert moved == [True, False] * 3 and q.steps == 6
    assert all("critic_loss" in m and "value_loss" in m for m in logs)  # skipped calls still report
    # the LR schedule moves with real updates only: 3 of 8 steps of the cosine
    assert q.q_opt.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.5 * (1 + np.cos(np.pi * 3 / 8)))


# ---- presets --------------------------------------------------------------------------------------------------
def test_gfdt_authors_preset_merges_between_defaults_and_user_overrides() -> None:
    hc = modzoo.run_config("dql", "dql", "bullet-halfcheetah-medium-v0", preset="gfdt-authors")
    assert hc.run.preset == "gfdt-authors"
    assert hc.policy.temperature == 50.0 and hc.policy.act_temperature == 0.5 and hc.policy.act_model == "ema"
    assert hc.guidance.obs_norm == "gaussian" and hc.policy.obs_norm == "gaussian"
    assert hc.guidance.grad_norm == 0.0  # over dql.yaml's per-task 9.0
    assert hc.guidance.polyak == 0.995 and hc.guidance.target_every == 5
    walker = modzoo.run_config("dql", "dql", "bullet-walker2d-medium-v0", preset="gfdt-authors")
    assert walker.policy.temperature == 300.0 and walker.policy.grad_norm == 0.0
    user = modzoo.run_config("dql", "dql", "bullet-hopper-medium-v0", ["policy.temperature=7.0"],
                             preset="gfdt-authors")
    assert user.policy.temperature == 7.0
    idql = modzoo.run_config("idql", "idql", TASK, preset="gfdt-authors")
    assert idql.policy.candidates == 256 and idql.policy.temperature == 0.5 and idql.guidance.update_every == 2
    plain = modzoo.run_config("dql", "dql", "bullet-halfcheetah-medium-v0")
    assert plain.policy.temperature == 1.0 and plain.guidance.obs_norm == "none" and plain.run.preset is None
    # a half the preset does not name keeps its defaults
    cfg_half = modzoo.run_config("idql", "cfg", TASK, preset="gfdt-authors")
    assert cfg_half.policy.obs_norm == "none" and cfg_half.guidance.obs_norm == "gaussian"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("half", ["dql", "idql"])
def test_gfdt_authors_v2_adds_the_actors_weight_decay_and_v1_is_unchanged(half) -> None:
    """The authors' pipelines build each actor's optimizer as CleanDiffuser's ``torch.optim.AdamW(params,
    lr=...)``, so torch's default weight decay 0.01 applies: v2 has it. v1 (the preset every committed gfdt-50k run
    recorded) keeps Diffusion-QL's Adam and IDQL's AdamW without decay, and the two differ in nothing else."""
    from omegaconf import OmegaConf

    from modzoo.run.halves import build_half
    for schedule in ("joint", "guidance-first"):
        v1 = modzoo.run_config(half, half, TASK, preset="gfdt-authors", schedule=schedule)
        v2 = modzoo.run_config(half, half, TASK, preset="gfdt-authors-v2", schedule=schedule)
        assert v2.run.preset == "gfdt-authors-v2" and v1.run.preset == "gfdt-authors"
        assert (v2.policy.optimizer, v2.policy.weight_decay) == ("adamw", 0.01)
        assert (v1.policy.optimizer, v1.policy.weight_decay) == ("adam" if half == "dql" else "adamw", 0.0)
        a, b = _flat(OmegaConf.to_container(v1)), _flat(OmegaConf.to_container(v2))
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed == {"run.preset", "policy.weight_decay"} | ({"policy.optimizer"} if half == "dql" else set())
    # the built actor's optimizer is torch's AdamW with that decay on every parameter group
    policy = build_half("policy", {"name": half, **OmegaConf.to_container(v2.policy)}, 15, 3)
    assert type(policy.opt) is torch.optim.AdamW
    assert {g["weight_decay"] for g in policy.opt.param_groups} == {0.01}
    # the user's key=value still wins over the preset
    user = modzoo.run_config(half, half, TASK, ["policy.weight_decay=0.0"], preset="gfdt-authors-v2")
    assert user.policy.weight_decay == 0.0


def test_the_two_gfdt_presets_differ_only_in_the_actors_optimizer() -> None:
    v1, v2 = load_preset("gfdt-authors"), load_preset("gfdt-authors-v2")
    assert (v1["name"], v2["name"]) == ("gfdt-authors", "gfdt-authors-v2")
    assert v1["guidance"] == v2["guidance"]
    for half in ("dql", "idql"):
        assert not {"optimizer", "weight_decay"} & set(v1["policy"][half])
        assert v2["policy"][half] == {**v1["policy"][half], "optimizer": "adamw", "weight_decay": 0.01}


def test_every_preset_value_cites_its_source() -> None:
    for path in PRESET_DIR.glob("*.yaml"):
        data = load_preset(path.stem)
        lines = path.read_text().splitlines()
        for kind in ("guidance", "policy"):
            for name, values in (data.get(kind) or {}).items():
                for key in values:
                    if key == "task_overrides":
                        continue
                    hits = [ln for ln in lines if re.match(rf"\s+{re.escape(key)}:", ln)]
                    assert hits and all("#" in ln for ln in hits), f"{path.name}: {kind}.{name}.{key} has no citation"


def test_bad_presets_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown preset 'gfdt'; known: dtql-authors, gfdt-authors, gfdt-authors-v2"):
        modzoo.run_config("dql", "dql", TASK, preset="gfdt")
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\npolicy:\n  dql: {temprature: 3.0}\n")
    with pytest.raises(ConfigError, match=r"sets policy 'dql' keys \['temprature'\]"):
        modzoo.run_config("dql", "dql", TASK, preset=str(bad))


def test_an_experiment_arm_names_its_preset(tmp_path) -> None:
    from omegaconf import OmegaConf

    from modzoo_lab.grid.plan import plan
    exp = OmegaConf.create({"out": str(tmp_path), "summaries": str(tmp_path / "s"), "tasks": [TASK], "seeds": [0],
                            "budget": {"policy_steps": 10},
                            "arms": {"a": {"guidance": "dql", "policy": "dql", "preset": "gfdt-authors"},
                                     "b": {"guidance": "dql", "policy": "dql"}}})
    a, b = plan(exp)
    assert a.run["preset"] == "gfdt-authors" and "preset" not in b.run
    c = modzoo.run_config(a.guidance, a.policy, a.task, a.overrides, schedule=a.schedule, **a.run)
    assert c.policy.obs_norm == "gaussian"
