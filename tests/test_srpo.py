"""SRPO's score regularizer and actor loss (plugins/srpo.py) against closed forms."""
from __future__ import annotations

import pytest
import torch

import modzoo
from conftest import gaussian_eps
from modzoo.blocks.sde import VPSDE, VPSDEDiffusion
from modzoo.plugins.srpo import SRPOPolicy, score_regularizer, srpo_loss


class _GaussianBehaviour(torch.nn.Module):
    """The exact eps of a behaviour N(mean, std^2 I) whatever the state."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.sde, self.mean, self.std = VPSDE(), mean, std

    def forward(self, x, t, obs):  # type: ignore[no-untyped-def]
        return gaussian_eps(x, t, self.sde, torch.full_like(x, self.mean), self.std)


def test_the_regularizer_is_the_weighted_score_of_an_analytic_gaussian():
    """E_{t,z}[sigma_t^2 eps*(alpha_t a + sigma_t z, t)] for a N(mu, s^2) behaviour is, since eps* is linear in x,
    E_t[sigma_t^3 alpha_t (a - mu) / (alpha_t^2 s^2 + sigma_t^2)], t ~ U(0.02, 0.98): computed by quadrature."""
    mu, s, a0 = 0.2, 0.3, 0.7
    diff = VPSDEDiffusion(_GaussianBehaviour(mu, s), act_dim=1)
    act = torch.full((400_000, 1), a0)
    reg = score_regularizer(diff, torch.zeros(400_000, 2), act, 0.02, 0.98, torch.Generator().manual_seed(0))
    t = torch.linspace(0.02, 0.98, 200_001, dtype=torch.float64)
    al, sg = VPSDE().alpha_sigma(t)
    expected = (sg ** 3 * al * (a0 - mu) / (al ** 2 * s ** 2 + sg ** 2)).mean().item()
    assert reg.mean().item() == pytest.approx(expected, rel=0.01)
    assert expected > 0  # it pushes a above the behaviour's mean back down (the loss descends along +reg)


def test_the_actor_loss_gradient_is_reg_minus_beta_dq():
    act = torch.tensor([[0.1, -0.2], [0.3, 0.4]], requires_grad=True)
    reg = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    dq = torch.tensor([[0.5, 0.5], [-1.0, 2.0]])
    loss = srpo_loss(act, reg, dq, beta=0.2)
    # by hand: mean over the 2 rows of (reg . a - 0.2 dq . a)
    rows = [1.0 * 0.1 + 2.0 * -0.2 - 0.2 * (0.5 * 0.1 + 0.5 * -0.2), 3.0 * 0.3 - 1.0 * 0.4 - 0.2 * (-0.3 + 0.8)]
    assert loss.item() == pytest.approx(sum(rows) / 2)
    loss.backward()
    assert torch.allclose(act.grad, (reg - 0.2 * dq) / 2)


def _policy(**over):  # type: ignore[no-untyped-def]
    cfg = {**modzoo.load_registry().policy("srpo").default_config(), "hidden": 16, "cond_hidden": 16,
           "actor_hidden": [16, 16], "batch_size": 8, "actor_batch_size": 4, **over}
    cfg.pop("task_overrides")
    return SRPOPolicy(3, 2, cfg)


class _LinearQ(modzoo.GuidanceModule):
    """Q(s, a) = w . a, so grad_a Q = w everywhere; counts its calls."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__(3, 2, {})
        self.w = w

    def update(self, batch, policy=None):  # type: ignore[no-untyped-def]
        return {}

    def q_ensemble(self, obs, act):  # type: ignore[no-untyped-def]
        return (act @ self.w)[None].expand(2, -1)


def test_behaviour_first_then_the_actor_moves_along_the_q_gradient():
    """Stage one trains the behaviour diffusion only; stage two steps only the actor, and with beta large the
    actor's action moves along grad_a Q; the behaviour model's weights stay where stage one left them."""
    pol = _policy(behaviour_steps=2, beta=1000.0, actor_lr=1e-2, actor_lr_schedule="none")
    g = torch.Generator().manual_seed(0)
    batch = {"observations": torch.randn(8, 3, generator=g), "actions": torch.rand(8, 2, generator=g) * 2 - 1}
    q = _LinearQ(torch.tensor([1.0, -1.0]))
    actor0 = [p.clone() for p in pol.actor.parameters()]
    for _ in range(2):
        assert "bc_loss" in pol.update(batch, q)
    assert all(torch.equal(a, b) for a, b in zip(actor0, pol.actor.parameters()))
    behaviour = [p.clone() for p in pol.diffusion.parameters()]
    a_before = pol.act(batch["observations"])
    for _ in range(20):
        m = pol.update(batch, q)
    assert "actor_loss" in m and "bc_loss" not in m
    assert all(torch.equal(a, b) for a, b in zip(behaviour, pol.diffusion.parameters()))
    delta = (pol.act(batch["observations"]) - a_before).mean(0)
    assert delta[0] > 0.05 and delta[1] < -0.05


def test_acting_is_the_actor_and_candidates_are_one_action_repeated():
    pol = _policy()
    obs = torch.randn(5, 3)
    a = pol.act(obs)
    assert a.shape == (5, 2) and a.abs().max() <= 1
    s = pol.sample(obs, 3)
    assert s.shape == (5, 3, 2) and torch.equal(s[:, 0], a) and torch.equal(s[:, 2], a)
    assert torch.equal(pol.target_actions(obs), a)  # a TD target that samples this policy gets the actor's action


def test_a_discrete_schedule_is_refused_at_construction():
    with pytest.raises(ValueError, match="schedule=vp_sde"):
        _policy(noise_schedule="vp", sampler="eps_clip", time_embed="learned")
