"""The VP schedule and one reverse step of each sampler, against values computed by hand."""
import math

import torch

from modzoo.blocks.diffusion import GaussianDiffusion, vp_beta_schedule
from modzoo.blocks.nets import Denoiser


def test_vp_schedule_matches_closed_form():
    T = 5
    betas = vp_beta_schedule(T)
    for i in range(T):
        t = i + 1
        expected = 1 - math.exp(-0.1 / T - 0.5 * (10.0 - 0.1) * (2 * t - 1) / T**2)
        assert abs(float(betas[i]) - expected) < 1e-6
    # a few absolute anchors: beta_1 = 1 - exp(-0.02 - 0.198) etc.
    assert abs(float(betas[0]) - (1 - math.exp(-0.218))) < 1e-6
    assert abs(float(betas[4]) - (1 - math.exp(-0.02 - 4.95 * 9 / 25))) < 1e-6


class ConstEps(Denoiser):
    """A denoiser that predicts a fixed eps, so a reverse step is pure arithmetic."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps = eps

    def forward(self, x, t, obs):
        return self.eps.expand_as(x)


def _consts(T=5):
    betas = vp_beta_schedule(T).double()
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    return betas, alphas, abar


def test_posterior_step_by_hand():
    eps = torch.tensor([[0.3, -0.2]])
    d = GaussianDiffusion(ConstEps(eps), act_dim=2, T=5, sampler="posterior")
    x = torch.tensor([[0.5, -1.5]])
    z = torch.tensor([[0.1, 0.2]])
    t = 3
    betas, alphas, abar = _consts()
    x0 = (x.double() / abar[t].sqrt() - (1 / abar[t] - 1).sqrt() * eps.double()).clamp(-1, 1)
    abar_prev = abar[t - 1]
    mean = betas[t] * abar_prev.sqrt() / (1 - abar[t]) * x0 + (1 - abar_prev) * alphas[t].sqrt() / (1 - abar[t]) * x
    var = betas[t] * (1 - abar_prev) / (1 - abar[t])
    expected = mean + var.sqrt() * z
    got = d.p_step(x, t, obs=torch.zeros(1, 3), noise=z)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # at t = 0 no noise is added and the result is the posterior mean (= clipped x0 there)
    got0 = d.p_step(x, 0, obs=torch.zeros(1, 3), noise=z)
    x00 = (x.double() / abar[0].sqrt() - (1 / abar[0] - 1).sqrt() * eps.double()).clamp(-1, 1)
    torch.testing.assert_close(got0.double(), x00, rtol=1e-5, atol=1e-6)


def test_eps_clip_step_by_hand():
    eps = torch.tensor([[0.3, -0.2]])
    d = GaussianDiffusion(ConstEps(eps), act_dim=2, T=5, sampler="eps_clip")
    x = torch.tensor([[0.5, -0.4]])
    z = torch.tensor([[0.1, 0.2]])
    t = 2
    betas, alphas, abar = _consts()
    expected = (x.double() - betas[t] / (1 - abar[t]).sqrt() * eps.double()) / alphas[t].sqrt() + betas[t].sqrt() * z
    got = d.p_step(x, t, obs=torch.zeros(1, 3), noise=z)
    torch.testing.assert_close(got.double(), expected.clamp(-1, 1), rtol=1e-5, atol=1e-6)
    # clipping happens at every step
    big = d.p_step(torch.tensor([[5.0, -5.0]]), t, obs=torch.zeros(1, 3), noise=z)
    assert big.abs().max() <= 1.0


def test_loss_is_zero_for_an_oracle_denoiser():
    """With the noise known, the epsilon-MSE vanishes: the loss really measures eps-prediction error."""
    g = torch.Generator().manual_seed(0)

    class Oracle(Denoiser):
        def forward(self, x, t, obs):  # recover eps from x_t given the true x0 stored in obs
            x0 = obs
            return (x - d.sqrt_abar[t, None] * x0) / d.sqrt_one_minus_abar[t, None]

    d = GaussianDiffusion(Oracle(), act_dim=3, T=5)
    x0 = torch.rand(64, 3) * 2 - 1
    assert float(d.loss(x0, x0, generator=g)) < 1e-10
    d2 = GaussianDiffusion(ConstEps(torch.zeros(1, 3)), act_dim=3, T=5)
    x0 = torch.rand(8192, 3) * 2 - 1
    assert abs(float(d2.loss(x0, x0, generator=g)) - 1.0) < 0.05  # predicting 0: loss = E[eps^2] = 1


def test_sample_is_differentiable_and_bounded():
    from modzoo.blocks.nets import MLPDenoiser
    torch.manual_seed(0)
    d = GaussianDiffusion(MLPDenoiser(4, 2, hidden=16), act_dim=2, T=5)
    obs = torch.randn(8, 4)
    a = d.sample(obs)
    assert a.shape == (8, 2) and a.abs().max() <= 1
    a.sum().backward()  # Diffusion-QL's Q term needs this gradient through the chain
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.parameters())
