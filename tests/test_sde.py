"""The continuous-time VP SDE block (modzoo.blocks.sde) against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_eps
from modzoo.blocks.sde import SDE_SAMPLERS, VPSDE, VPSDEDiffusion


def test_marginals_match_the_linear_beta_formula_by_hand():
    sde = VPSDE(0.1, 20.0)
    t = torch.tensor([0.5], dtype=torch.float64)
    log_a = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1  # -1.26875
    a, s = sde.alpha_sigma(t)
    assert a.item() == pytest.approx(math.exp(log_a), rel=1e-12)
    assert s.item() == pytest.approx(math.sqrt(1 - math.exp(2 * log_a)), rel=1e-12)
    assert sde.lam(t).item() == pytest.approx(log_a - 0.5 * math.log(1 - math.exp(2 * log_a)), rel=1e-12)


class _ExactGaussian(torch.nn.Module):
    """The exact eps of a behaviour N(mean, std^2 I), counting its calls."""

    def __init__(self, sde: VPSDE, mean: float, std: float) -> None:
        super().__init__()
        self.sde, self.mean, self.std, self.calls = sde, mean, std, 0

    def forward(self, x, t, obs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return gaussian_eps(x, t, self.sde, torch.full_like(x, self.mean), self.std)


def _exact_flow(x1: torch.Tensor, sde: VPSDE, mean: float, std: float, t_min: float = 1e-3) -> torch.Tensor:
    """The probability-flow ODE's exact map from t = 1 to t_min for a N(mean, std^2) behaviour: the marginal
    N(alpha mean, r^2) with r^2 = alpha^2 std^2 + sigma^2 is carried by x -> alpha mean + r z."""
    (a1, s1), (a0, s0) = sde.alpha_sigma(torch.tensor(1.0)), sde.alpha_sigma(torch.tensor(t_min))
    r1, r0 = (a1 ** 2 * std ** 2 + s1 ** 2).sqrt(), (a0 ** 2 * std ** 2 + s0 ** 2).sqrt()
    return a0 * mean + r0 * (x1 - a1 * mean) / r1


def _solver_error(sampler: str, steps: int) -> float:
    sde = VPSDE()
    net = _ExactGaussian(sde, 0.3, 0.2)
    diff = VPSDEDiffusion(net, act_dim=2, steps=steps, sampler=sampler, max_action=100.0)
    x = diff.sample(torch.zeros(2000, 3), generator=torch.Generator().manual_seed(0))
    assert net.calls == steps  # steps is the number of model calls, for 2S too
    x1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))  # the sampler's own x_1
    return (x - _exact_flow(x1, sde, 0.3, 0.2)).abs().max().item()


@pytest.mark.parametrize("sampler,order", [("dpm_solver++_2s", 2), ("dpm_solver++", 2), ("ddim", 1)])
def test_each_solver_converges_to_the_exact_flow_at_its_order(sampler, order):
    """Given the exact eps of N(0.3, 0.2^2), each solver's endpoint approaches the exact ODE solution of the same
    x_1, and halving the step shrinks the error by about 2^order."""
    coarse, fine = _solver_error(sampler, 80), _solver_error(sampler, 160)
    ratio = coarse / fine
    assert fine < (0.02 if order == 2 else 0.04)
    assert (ratio > 2.6) if order == 2 else (1.6 < ratio < 2.4), ratio


def test_solvers_sample_the_behaviour_moments():
    sde = VPSDE()
    diff = VPSDEDiffusion(_ExactGaussian(sde, 0.3, 0.2), act_dim=2, steps=200)
    x = diff.sample(torch.zeros(20000, 3), generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(0.3, abs=0.01)
    assert x.std().item() == pytest.approx(0.2, abs=0.01)


def test_a_wrong_sampler_is_refused_by_name():
    diff = VPSDEDiffusion(_ExactGaussian(VPSDE(), 0.0, 1.0), act_dim=1)
    with pytest.raises(ValueError, match="dpm_solver"):
        diff.sample(torch.zeros(2, 1), sampler="eps_clip")
    with pytest.raises(ValueError, match="unknown sampler"):
        VPSDEDiffusion(_ExactGaussian(VPSDE(), 0.0, 1.0), act_dim=1, sampler="posterior")


def test_training_terms_draw_t_in_range_and_perturb_by_the_marginal():
    sde = VPSDE()
    diff = VPSDEDiffusion(_ExactGaussian(sde, 0.0, 1.0), act_dim=2)
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(1))
    terms = diff.training_terms(x0, torch.zeros(4096, 1), generator=torch.Generator().manual_seed(2))
    assert terms["t"].min() >= 1e-3 and terms["t"].max() <= 1.0
    a, s = sde.alpha_sigma(terms["t"])
    assert torch.allclose(terms["x_t"], a[:, None] * x0 + s[:, None] * terms["noise"])
    # with a standard-normal behaviour, the exact eps of the marginal N(0, I) is sigma_t x_t
    assert torch.allclose(terms["eps"], s[:, None] * terms["x_t"], atol=1e-6)
    assert set(SDE_SAMPLERS) == {"dpm_solver++_2s", "dpm_solver++", "ddim"}
