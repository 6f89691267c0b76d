"""QGPO (modzoo.plugins.qgpo): the CEP loss and its minimizer by hand, the energy-guided eps against a known
gradient, the guided sampler on a closed-form behaviour, both training stages, the conformance suite and small
CLI runs."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

import modzoo
from conftest import gaussian_eps, random_batch
from modzoo.blocks.sde import VPSDE, VPSDEDiffusion
from modzoo.cli import main
from modzoo.plugins.qgpo import (
    EnergyNet,
    QGPOGuidance,
    QGPOPolicy,
    cep_loss,
    energy_grad,
    energy_guide,
    guided_eps,
    softmax_value,
)

OBS, ACT = 4, 2
TASK = "bullet-hopper-medium-v0"
TINY = {"hidden": 16, "energy_hidden": [16, 16], "batch_size": 32, "energy_batch_size": 8, "support_actions": 4,
        "support_steps": 3}


def batch(b: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(b, seed, OBS, ACT)


class SumQ(modzoo.GuidanceModule):
    """Q(s, a) = sum(a): a frozen critic with known values, counting its calls."""

    def __init__(self) -> None:
        super().__init__(OBS, ACT, {})
        self.calls = 0

    def update(self, batch, policy=None):  # type: ignore[no-untyped-def]
        return {}

    def q_ensemble(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return act.sum(-1).expand(2, -1)

    @property
    def frozen(self) -> bool:
        return True


class ExactGaussian(nn.Module):
    """The exact eps of a behaviour N(mean, std^2 I), whatever the state."""

    def __init__(self, sde: VPSDE, mean: float, std: float) -> None:
        super().__init__()
        self.sde, self.mean, self.std = sde, mean, std

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return gaussian_eps(x, t, self.sde, torch.full_like(x, self.mean), self.std)


class LinearEnergy(nn.Module):
    """f(x, t, s) = w . x + t sum(s): grad_x f = w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return x @ self.w + t * obs.sum(-1)


class QuadraticEnergy(nn.Module):
    """f(x) = -k |x - c|^2 / 2: its gradient k (c - x) points at c."""

    def __init__(self, c: torch.Tensor, k: float) -> None:
        super().__init__()
        self.register_buffer("c", c.clone())
        self.k = k

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.k * ((x - self.c) ** 2).sum(-1)


def policy(**over) -> QGPOPolicy:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return modzoo.make_policy("qgpo", OBS, ACT, **{**TINY, **over})


# ---- (a), (b) the CEP loss ---------------------------------------------------------------------------------------
def test_cep_loss_by_hand():
    """Two states, K = 2. State 1: labels softmax(3 * [0, ln 2 / 3]) = [1/3, 2/3] against softmax([0, ln 3]) =
    [1/4, 3/4]; state 2: equal Q and equal f, so -(1/2 ln 1/2) * 2 = ln 2. The loss is the mean over states."""
    f = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    q = torch.tensor([[0.0, math.log(2.0) / 3.0], [5.0, 5.0]])
    first = -(1 / 3 * math.log(1 / 4) + 2 / 3 * math.log(3 / 4))
    assert cep_loss(f, q, 3.0).item() == pytest.approx((first + math.log(2.0)) / 2, rel=1e-6)
    # labels carry no gradient; f does
    q.requires_grad_(True)
    f.requires_grad_(True)
    cep_loss(f, q, 3.0).backward()
    assert q.grad is None and f.grad is not None


def test_cep_minimizer_is_beta_q_up_to_a_per_state_constant():
    """With free logits f, gradient descent on the CEP loss drives softmax(f) to softmax(beta Q), i.e.
    f = beta Q + c(s): the energy whose gradient is the exact guidance (the logits of the smallest labels converge
    last, hence the looser bound on them)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 5, generator=g)
    beta = 2.0
    f = torch.zeros(3, 5, requires_grad=True)
    opt = torch.optim.SGD([f], lr=8.0)
    for _ in range(3000):
        opt.zero_grad()
        cep_loss(f, q, beta).backward()
        opt.step()
    target = torch.softmax(beta * q, 1)
    torch.testing.assert_close(torch.softmax(f.detach(), 1), target, atol=1e-4, rtol=0)
    diff = f.detach() - beta * q
    torch.testing.assert_close(diff - diff.mean(1, keepdim=True), torch.zeros(3, 5), atol=1e-2, rtol=0)


# ---- (c), (d) the guided eps and the guided sampler -------------------------------------------------------------
def test_guided_eps_is_eps_minus_scale_sigma_grad_f_for_a_linear_energy():
    sde = VPSDE()
    model = ExactGaussian(sde, 0.1, 0.4)
    w = torch.tensor([0.7, -1.3])
    guide = energy_guide(model, sde, LinearEnergy(w), 2.5)
    g = torch.Generator().manual_seed(1)
    x, t, obs = torch.randn(6, ACT, generator=g), torch.rand(6, generator=g) * 0.9 + 0.05, torch.randn(6, OBS)
    sigma = sde.alpha_sigma(t)[1]
    expect = model(x, t, obs) - 2.5 * sigma[:, None] * w
    for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):  # acting runs under inference_mode
        with mode():
            torch.testing.assert_close(guide(x, t, obs), expect)
    torch.testing.assert_close(guided_eps(torch.zeros(1, 2), torch.tensor([0.5]), torch.ones(1, 2), 4.0),
                               torch.full((1, 2), -2.0))


def test_energy_grad_of_the_energy_net_matches_autograd():
    torch.manual_seed(0)
    net = EnergyNet(OBS, ACT, [16, 16])
    x, t, obs = torch.randn(5, ACT, requires_grad=True), torch.rand(5), torch.randn(5, OBS)
    (want,) = torch.autograd.grad(net(x, t, obs).sum(), x)
    with torch.inference_mode():
        got = energy_grad(net, x.detach(), t, obs)
    torch.testing.assert_close(got, want)
    assert not any(p.grad is not None for p in net.parameters())  # no parameter gradient left behind


def _sample(guide, seed: int = 0, n: int = 4000) -> torch.Tensor:  # type: ignore[no-untyped-def]
    sde = VPSDE()
    diff = VPSDEDiffusion(ExactGaussian(sde, 0.0, 0.3), ACT, steps=15, max_action=10.0)
    with torch.no_grad():
        return diff.sample(torch.zeros(n, OBS), generator=torch.Generator().manual_seed(seed), guide=guide)


def test_guided_sampler_moves_the_mean_along_the_energy_gradient_and_scale_zero_is_the_behaviour():
    """Behaviour N(0, 0.3^2); a quadratic energy pulling towards c = (0.5, -0.5). Guided samples move towards c,
    further with a larger scale; the guide at scale 0 reproduces the unguided sampler exactly."""
    sde, c = VPSDE(), torch.tensor([0.5, -0.5])
    model = ExactGaussian(sde, 0.0, 0.3)
    energy = QuadraticEnergy(c, 1.0)  # mild enough for 15 solver calls (k s = 4 makes the guided ODE stiff)
    plain = _sample(None)
    assert torch.equal(_sample(energy_guide(model, sde, energy, 0.0)), plain)
    means = [_sample(energy_guide(model, sde, energy, s)).mean(0) for s in (0.5, 1.0)]
    assert plain.mean(0).abs().max() < 0.02
    for m in means:
        assert m[0] > 0.05 and m[1] < -0.05
    assert means[1][0] > means[0][0] and means[1][1] < means[0][1]


def test_policy_acts_with_one_guided_sample_per_state_and_scale_zero_skips_the_energy():
    p = policy(guidance_scale=2.0)
    obs = batch(3)["observations"]
    assert p.sampling_guide(p.diffusion, obs) is not None
    p.use_generator(torch.Generator().manual_seed(5))
    with torch.inference_mode():
        a = p.act(obs, SumQ())
    p.use_generator(torch.Generator().manual_seed(5))
    guide = energy_guide(p.diffusion.model, p.diffusion.sde, p.energy, 2.0)
    with torch.no_grad():
        direct = p.diffusion.sample(obs, generator=p.gen(), guide=guide)
    assert a.shape == (3, ACT) and torch.equal(a, direct)
    assert policy(guidance_scale=0.0).sampling_guide(p.diffusion, obs) is None


# ---- the two stages ----------------------------------------------------------------------------------------------
def test_behaviour_stage_then_energy_stage_with_the_behaviour_model_frozen():
    p, g, b = policy(behaviour_steps=2), SumQ(), batch()
    first = [p.update(b, g) for _ in range(2)]
    assert all("bc_loss" in m and "cep_loss" not in m for m in first) and g.calls == 0  # pure BC
    behaviour = {k: v.clone() for k, v in p.diffusion.state_dict().items()}
    energy = {k: v.clone() for k, v in p.energy.state_dict().items()}
    calls = g.calls
    m = p.update(b, g)
    assert "cep_loss" in m and math.isfinite(float(m["cep_loss"])) and g.calls > calls
    assert all(torch.equal(v, p.diffusion.state_dict()[k]) for k, v in behaviour.items())
    assert not all(torch.equal(v, p.energy.state_dict()[k]) for k, v in energy.items())
    assert all(math.isfinite(float(m[k])) for k in ("q_support", "q_support_std", "q_data", "label_max"))
    assert p.steps == 3 and p.energy_opt.state  # the energy optimizer has stepped


def test_energy_stage_labels_come_from_the_guidance_on_the_support_actions(monkeypatch):
    """The CEP stage gets f for K support actions of each of the first energy_batch_size states, one t per
    state, and labels from Q of exactly those actions."""
    p, seen = policy(behaviour_steps=0, support_actions=3, energy_batch_size=5), {}

    def spy(f, q, beta):  # type: ignore[no-untyped-def]
        seen.update(f=f, q=q, beta=beta)
        return cep_loss(f, q, beta)

    monkeypatch.setattr("modzoo.plugins.qgpo.cep_loss", spy)
    p.update(batch(), SumQ())
    assert seen["f"].shape == seen["q"].shape == (5, 3) and seen["beta"] == 3.0
    assert seen["q"].abs().max() <= ACT  # sum of actions in [-1, 1]


def test_a_fraction_of_the_phase_is_resolved_against_the_lr_horizon_outside_a_run():
    assert policy(behaviour_steps=0.375, lr_decay_steps=16).behaviour_steps == 6
    assert policy(behaviour_steps=7).behaviour_steps == 7


def test_the_energy_optimizer_is_checkpointed(tmp_path):
    p, g, b = policy(behaviour_steps=1), SumQ(), batch()
    for _ in range(3):
        p.update(b, g)
    path = tmp_path / "policy.pt"
    modzoo.save_half(p, path, {"name": TASK})
    q = modzoo.load_checkpoint(path, "cpu", kind="policy")
    s1, s2 = p.energy_opt.state_dict()["state"], q.energy_opt.state_dict()["state"]
    assert s1 and s1.keys() == s2.keys()
    for k in s1:
        assert all(torch.equal(s1[k][n], s2[k][n]) for n in ("exp_avg", "exp_avg_sq"))


def test_obs_norm_reaches_the_energy_net():
    """With obs_norm gaussian every net reading a state z-scores it, the energy model's included."""
    from types import SimpleNamespace
    p = policy(obs_norm="gaussian")
    obs = torch.randn(200, OBS, generator=torch.Generator().manual_seed(2)) * 3 + 1
    p.fit_data(SimpleNamespace(observations=obs.numpy()))
    torch.testing.assert_close(p.energy.obs_norm.mean, obs.mean(0))
    assert p.diffusion.model.obs_norm is not None and torch.equal(p.diffusion.model.obs_norm.mean,
                                                                  p.energy.obs_norm.mean)


def test_refuses_a_discrete_chain():
    with pytest.raises(modzoo.ConfigError, match="vp_sde"):
        policy(noise_schedule="vp", sampler="eps_clip", T=5)


# ---- (d') QGPO's own critic: in-support softmax Q-learning -------------------------------------------------------
def guidance(**over) -> QGPOGuidance:  # type: ignore[no-untyped-def]
    cfg = {**modzoo.load_registry().guidance("qgpo").default_config(), "hidden": [16, 16], "batch_size": 32,
           "support_actions": 3, **over}
    cfg.pop("task_overrides")
    torch.manual_seed(0)
    return QGPOGuidance(OBS, ACT, cfg)


def test_softmax_value_by_hand():
    q = torch.tensor([[1.0, 2.0, 4.0], [0.0, 0.0, 3.0]])
    e = [math.exp(1), math.exp(2), math.exp(4)]
    row0 = (e[0] * 1 + e[1] * 2 + e[2] * 4) / sum(e)
    row1 = 3 * math.exp(3) / (2 + math.exp(3))
    assert softmax_value(q, 1.0).tolist() == pytest.approx([row0, row1], rel=1e-6)
    assert torch.allclose(softmax_value(q, 0.0), q.mean(1))  # q_alpha 0: the support's mean
    assert torch.allclose(softmax_value(q, 100.0), q.max(1).values, atol=1e-4)  # large q_alpha: its maximum


class _Support:
    """A stand-in policy whose K samples at state i are distinct, known actions (row i, sample j)."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        self.asked.append(n)
        j = torch.arange(n, dtype=torch.float32)[None, :, None]
        return torch.tanh(obs[:, None, :1] * (j + 1) * 0.7 + torch.arange(ACT)[None, None, :] * 0.3 - j * 0.2)


def test_td_target_is_the_softmax_weighted_target_q_of_the_next_states_support_state_by_state():
    """r + gamma (1 - d) sum_j softmax_j(q_alpha Qtarg(s', a'_j)) Qtarg(s', a'_j), Qtarg the target twin's minimum,
    computed here one state and one support action at a time (model.py:155-161)."""
    g = guidance(reward_norm="none", q_alpha=2.0)
    with torch.no_grad():  # make the target differ from the online critic, so reading the wrong one fails
        for p in g.critic_target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    b = batch(6)
    b["terminals"] = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    pol = _Support()
    got = g.td_target(b, pol)
    assert pol.asked == [3]
    support = pol.sample(b["next_observations"], 3)
    for i in range(6):
        s1 = b["next_observations"][i:i + 1]
        q = torch.stack([g.critic_target(s1, support[i, j:j + 1]).min(0).values[0] for j in range(3)])
        v = (torch.softmax(2.0 * q, 0) * q).sum()
        want = b["rewards"][i] + 0.99 * (1 - b["terminals"][i]) * v
        assert got[i].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)


def test_the_support_of_a_qgpo_policy_is_its_unguided_behaviour_sampler(monkeypatch):
    """With QGPO's policy, a' are the behaviour model's samples at guidance scale 0 (the authors' fake_a_), not the
    energy-guided actions its ``sample`` would give."""
    g, p = guidance(), policy(**TINY)
    seen = []

    def support(obs: torch.Tensor, k: int) -> torch.Tensor:
        seen.append((obs.shape[0], k))
        return torch.zeros(obs.shape[0], k, ACT)

    monkeypatch.setattr(p, "support_actions", support)
    monkeypatch.setattr(p, "sample", lambda *a, **k: pytest.fail("the guided sampler was used"))
    g.td_target(batch(5), p)
    assert seen == [(5, 3)]


def test_qgpo_guidance_trains_jointly_only():
    g = guidance()
    assert g.requires_policy
    with pytest.raises(RuntimeError, match="joint"):
        g.td_target(batch(4), None)


def test_qgpo_guidance_defaults_are_the_authors():
    cfg = modzoo.load_registry().guidance("qgpo").default_config()
    assert (cfg["hidden"], cfg["activation"], cfg["num_q"], cfg["layer_norm"]) == ([256, 256, 256], "relu", 2, False)
    assert (cfg["gamma"], cfg["polyak"], cfg["lr"], cfg["batch_size"]) == (0.99, 0.005, 3.0e-4, 256)
    assert (cfg["support_actions"], cfg["q_alpha"], cfg["reward_norm"]) == (16, 1.0, "iql")


# ---- (e) the CLI (the conformance kit: tests/test_conformance.py, for every first-party plugin) ---------------
TINY_RUN = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
            "policy.energy_hidden=[32,32]", "policy.energy_batch_size=16", "policy.support_actions=4",
            "policy.support_steps=5", "policy.T=5", "run.log_every=1"]


@pytest.mark.parametrize("schedule", ["joint", "guidance-first"])
def test_cli_run_trains_both_stages_and_evaluates(capsys, small_dataset_path, tmp_path, schedule):
    out = tmp_path / "r"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["run", "--guidance", "idql", "--policy", "qgpo", "--env", TASK, "--dataset",
                   str(small_dataset_path), "--schedule", schedule, "--guidance-steps", "3", "--policy-steps", "4",
                   "--eval-episodes", "1", "--device", "cpu", "--out", str(out), "--no-progress", *TINY_RUN])
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert (out / "policy.pt").exists() and (out / "result.json").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stages = [("policy/cep_loss" in r, r["step"]) for r in rows
              if r["phase"] == "policy" and ("policy/bc_loss" in r or "policy/cep_loss" in r)]
    # 0.375 of 4 policy steps: 2 behaviour steps (1.5 rounded half to even), then 2 energy steps
    assert stages == [(False, 1), (False, 2), (True, 3), (True, 4)], rows
    assert "behaviour_steps: 2" in (out / "config.yaml").read_text()
