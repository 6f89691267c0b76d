"""DTQL (plugins/dtql.py) and the EDM block it trains with (modzoo.blocks.karras): the preconditioning and the
loss by hand, the log-logistic noise levels, the trust-region step leaving the diffusion model alone, candidate
selection, the conformance suite, and runs through the CLI."""
import math
import warnings

import pytest
import torch
from torch import nn

import modzoo
from conftest import random_batch
from modzoo.blocks.karras import KarrasDiffusion, c_noise, edm_scalings
from modzoo.bullet.data import load_dataset
from modzoo.cli import main
from modzoo.contract.stages import run_stages
from modzoo.plugins.dtql import DTQLPolicy
from modzoo.run.config import half_config, to_dict

OBS, ACT = 4, 2
TASK = "bullet-hopper-medium-v0"


def batch(b=8, seed=0):
    return random_batch(b, seed, OBS, ACT)


def policy(**over):
    cfg = {**half_config(modzoo.load_registry().policy("dtql").default_config(), TASK),
           "hidden": 16, "candidates": 8, **over}
    return DTQLPolicy(OBS, ACT, cfg)


class FakeGuidance(modzoo.GuidanceModule):
    """Twin Q(s, a) = scale * sum(a) and scale * sum(a) + 1: the ensemble minimum is scale * sum(a)."""

    def __init__(self, scale=1.0):
        super().__init__(OBS, ACT, {})
        self.scale, self.seen = scale, []

    def update(self, batch, policy=None):
        return {}

    def q_ensemble(self, obs, act):
        self.seen.append(act.detach().clone())
        q = self.scale * act.sum(-1)
        return torch.stack([q + 1, q])


# ---- the EDM block ----------------------------------------------------------------------------------------------
def test_edm_scalings_by_hand():
    c_skip, c_out, c_in = edm_scalings(torch.tensor([0.5, 2.0]), 0.5)
    # sigma 0.5 = sigma_data: c_skip 1/2, c_out 0.25 / sqrt(0.5), c_in 1 / sqrt(0.5)
    assert torch.allclose(c_skip, torch.tensor([0.5, 0.25 / 4.25]))
    assert torch.allclose(c_out, torch.tensor([0.25 / math.sqrt(0.5), 1.0 / math.sqrt(4.25)]))
    assert torch.allclose(c_in, torch.tensor([1 / math.sqrt(0.5), 1 / math.sqrt(4.25)]))
    assert torch.allclose(c_noise(torch.tensor([0.5, 2.0])), torch.tensor([math.log(0.5) / 4, math.log(2.0) / 4]))


class ConstantDenoiser(nn.Module):
    """F = 3 everywhere (large enough that D leaves [-1, 1]); keeps what it was called with."""

    def forward(self, x, noise_level, obs):
        self.inputs = (x.detach().clone(), noise_level.detach().clone())
        return torch.full_like(x, 3.0)


class FixedSigma(KarrasDiffusion):
    def draw_sigma(self, batch, generator=None, device=None):
        return torch.tensor([0.5, 2.0])


def test_edm_loss_by_hand():
    x0 = torch.tensor([[0.5, -0.25], [0.9, 0.1]])
    diff = FixedSigma(ConstantDenoiser(), ACT)
    per = diff.loss(x0, torch.zeros(2, OBS), generator=torch.Generator().manual_seed(3), reduce=False)
    eps = torch.randn(2, ACT, generator=torch.Generator().manual_seed(3)).tolist()  # drawn after sigma
    expected, clamped = [], 0
    for i, sigma in enumerate([0.5, 2.0]):
        total = sigma ** 2 + 0.25
        c_skip, c_out, c_in = 0.25 / total, sigma * 0.5 / math.sqrt(total), 1 / math.sqrt(total)
        terms = []
        for j in range(ACT):
            x = x0[i, j].item() + sigma * eps[i][j]
            assert diff.model.inputs[0][i, j].item() == pytest.approx(c_in * x, rel=1e-5)
            d = c_skip * x + c_out * 3.0
            clamped += abs(d) > 1
            terms.append(((min(max(d, -1.0), 1.0) - x0[i, j].item()) / c_out) ** 2)
        expected.append(sum(terms) / ACT)
    assert torch.allclose(diff.model.inputs[1], torch.tensor([math.log(0.5) / 4, math.log(2.0) / 4]))
    assert torch.allclose(per, torch.tensor(expected), rtol=1e-5)
    mean = diff.loss(x0, torch.zeros(2, OBS), generator=torch.Generator().manual_seed(3))
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert clamped > 0, "the toy batch should exercise the clamp of D to [-1, 1]"


def test_log_logistic_sigma_median_and_range():
    g = torch.Generator().manual_seed(0)
    diff = KarrasDiffusion(nn.Identity(), 1, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, sigma_scale=0.5)
    s = diff.draw_sigma(200_000, g)
    assert s.dtype == torch.float32
    assert s.min() >= 0.002 and s.max() <= 80.0
    assert s.median().item() == pytest.approx(0.5, abs=0.01)  # exp(loc)
    # P(sigma < 1) against the truncated CDF, F(x) = sigmoid((ln x - loc) / scale)
    cdf = lambda x: 1 / (1 + math.exp(-(math.log(x) - math.log(0.5)) / 0.5))  # noqa: E731
    want = (cdf(1.0) - cdf(0.002)) / (cdf(80.0) - cdf(0.002))
    assert (s < 1.0).float().mean().item() == pytest.approx(want, abs=0.005)


def test_bad_noise_levels_are_refused_at_construction():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        policy(sigma_min=80.0, sigma_max=0.002)


# ---- the policy -------------------------------------------------------------------------------------------------
def test_networks_are_the_authors_shapes():
    p = policy(hidden=256)
    linears = [m for m in p.diffusion.model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (ACT + OBS + 16, 256), (256, 256), (256, 256), (256, 256), (256, ACT)]
    assert isinstance(p.diffusion.model.net[1], nn.Linear)  # no activation after the input layer
    actor = [m for m in p.actor.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in actor] == [(OBS, 256), (256, 256), (256, 256), (256, 2 * ACT)]
    w = actor[1].weight
    assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-4) and all((m.bias == 0).all() for m in actor)


def test_trust_region_step_moves_the_actor_not_the_diffusion_model():
    p, b = policy(), batch()
    bc, actor = p.stages()
    loss, _ = actor.loss(b, None)  # no guidance: the gradient can only come from the trust-region term
    loss.backward(inputs=list(p.actor.parameters()))
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p.actor.parameters())
    p.actor.zero_grad(set_to_none=True)

    # one update = the BC step, then the actor step: its diffusion parameters are those of the BC step alone
    twin = policy()
    twin.load_state_dict(p.state_dict())
    for half in (p, twin):
        half.gen().manual_seed(5)
    actor_before = [q.detach().clone() for q in p.actor.parameters()]
    p.update(b, FakeGuidance())
    twin.train()
    run_stages(twin.stages()[:1], b, None)
    for mine, alone in zip(p.diffusion.parameters(), twin.diffusion.parameters()):
        assert torch.equal(mine, alone) and torch.equal(mine.grad, alone.grad)  # the actor step wrote no grads
    assert any(not torch.equal(a, q) for a, q in zip(actor_before, p.actor.parameters()))


def test_pretraining_steps_update_only_the_diffusion_model():
    p, g = policy(pretrain_steps=2), FakeGuidance()
    actor_before = [q.detach().clone() for q in p.actor.parameters()]
    for _ in range(2):
        assert set(p.update(batch(), g)) == {"bc_loss"}
    assert not g.seen and all(torch.equal(a, q) for a, q in zip(actor_before, p.actor.parameters()))
    assert {"bc_loss", "tr_loss", "q_loss", "actor_loss"} <= set(p.update(batch(), g))
    assert g.seen


def test_act_picks_the_highest_q_candidate():
    p, g = policy(), FakeGuidance(scale=1e6)
    obs = batch(3)["observations"]
    a = p.act(obs, g, n=64)
    cands = g.seen[-1].reshape(3, 64, ACT)
    best = cands[torch.arange(3), cands.sum(-1).argmax(1)]
    assert torch.equal(a, best)
    s = p.sample(obs, 5)
    assert s.shape == (3, 5, ACT) and s.abs().max() <= 1 and not torch.equal(s[:, 0], s[:, 1])
    assert p.act(obs, None).shape == (3, ACT)


# ---- the CLI (the conformance kit: tests/test_conformance.py, for every first-party plugin) ---------------------
@pytest.mark.parametrize("schedule", ["joint", "guidance-first"])
def test_dtql_trains_and_evaluates_through_the_cli(capsys, small_dataset_path, tmp_path, schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["run", "--guidance", "idql", "--policy", "dtql", "--env", TASK, "--dataset",
                   str(small_dataset_path), "--schedule", schedule, "--guidance-steps", "3", "--policy-steps", "4",
                   "--eval-episodes", "1", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-progress",
                   "guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
                   "policy.candidates=8", "policy.pretrain_steps=2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "normalized score:" in out
    assert (tmp_path / "r" / "policy.pt").exists() and (tmp_path / "r" / "result.json").exists()


def test_the_dtql_authors_preset_gives_the_idql_guidance_dtqls_raw_rewards_and_critic(small_dataset_path):
    """DTQL trains its critic on raw rewards (main.py:170, reward_tune='no'); idql scales them IQL's way unless
    the preset says otherwise, and the preset touches the guidance only."""
    plain = modzoo.run_config("idql", "dtql", TASK)
    cfg = modzoo.run_config("idql", "dtql", TASK, preset="dtql-authors")
    assert plain.guidance.reward_norm == "iql" and cfg.guidance.reward_norm == "none"
    assert (list(cfg.guidance.hidden), cfg.guidance.activation, cfg.guidance.layer_norm, cfg.guidance.init) == (
        [256, 256, 256], "mish", True, "torch")
    assert to_dict(cfg)["policy"] == to_dict(plain)["policy"]
    data = load_dataset(str(small_dataset_path), task=TASK)
    for run, scale in ((plain, None), (cfg, 1.0)):
        g = modzoo.load_registry().guidance("idql").cls(OBS, ACT, {**to_dict(run)["guidance"], "hidden": [8]})
        g.prepare(data)
        if scale is None:
            assert float(g.reward_scale) != 1.0  # the IQL rule moved it
        else:
            assert float(g.reward_scale) == scale
