"""The VP schedule and one reverse step of each sampler, against values computed by hand."""
import math

import pytest
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


# ---- samplers at inference: DDIM and DPM-Solver++ on a sub-grid of the training steps --------------------------
class MixtureOracle(torch.nn.Module):
    """The exact epsilon of the noised marginal of a 1-D Gaussian mixture: what a perfectly trained denoiser
    predicts, so a sampler's own error is all that is left."""

    def __init__(self, abar: torch.Tensor, mus: list[float], sds: list[float], ws: list[float]) -> None:
        super().__init__()
        self.abar, self.mus, self.sds, self.ws = abar, torch.tensor(mus), torch.tensor(sds), torch.tensor(ws)

    def forward(self, x, t, obs, **_):  # type: ignore[no-untyped-def]
        a = self.abar[t].unsqueeze(-1)
        mean, var = a.sqrt() * self.mus, a * self.sds ** 2 + (1 - a)
        logp = self.ws.log() - 0.5 * (2 * math.pi * var).log() - 0.5 * (x - mean) ** 2 / var
        score = (torch.softmax(logp, -1) * (mean - x) / var).sum(-1, keepdim=True)
        return -(1 - a).sqrt() * score


def _mixture_diffusion(T: int = 100, sampler: str = "posterior") -> GaussianDiffusion:
    d = GaussianDiffusion(torch.nn.Identity(), 1, T=T, schedule="linear_scaled", sampler=sampler, max_action=10.0)
    d.model = MixtureOracle(d.alphas_cumprod, [-2.0, 1.5], [0.3, 0.5], [0.3, 0.7])
    return d


def test_ddim_with_eta_one_on_every_step_is_the_posterior_sampler() -> None:
    d, obs = _mixture_diffusion(T=25), torch.zeros(512, 1)
    ddpm = d.sample(obs, torch.Generator().manual_seed(3))
    ddim = d.sample(obs, torch.Generator().manual_seed(3), sampler="ddim", steps=25, eta=1.0)
    assert torch.allclose(ddim, ddpm, atol=1e-5)  # the same noise, step for step
    other = d.sample(obs, torch.Generator().manual_seed(3), sampler="ddim", steps=25, eta=0.0)
    assert (other - ddpm).abs().max() > 0.1  # the control: eta 0 is another chain


def test_ddpm_and_ddim_eta_one_reach_the_mixture_moments() -> None:
    """Ancestral DDPM and DDIM(eta=1) on all T steps both sample the data distribution (within Monte Carlo error)."""
    d, obs = _mixture_diffusion(T=100), torch.zeros(40_000, 1)
    true_mean, true_var = 0.3 * -2.0 + 0.7 * 1.5, 0.3 * (0.09 + 4.0) + 0.7 * (0.25 + 2.25) - 0.45 ** 2
    for x in (d.sample(obs, torch.Generator().manual_seed(0)),
              d.sample(obs, torch.Generator().manual_seed(1), sampler="ddim", steps=100, eta=1.0)):
        assert float(x.mean()) == pytest.approx(true_mean, abs=0.05)
        assert float(x.var()) == pytest.approx(true_var, rel=0.05)
        assert float((x < 0).float().mean()) == pytest.approx(0.3, abs=0.01)


def test_ddim_with_eta_zero_is_deterministic_given_the_start_noise() -> None:
    d, obs = _mixture_diffusion(T=50), torch.zeros(64, 1)
    g = torch.Generator().manual_seed(5)
    x = d.sample(obs, g, sampler="ddim", steps=10, eta=0.0)
    after = g.get_state()
    g2 = torch.Generator().manual_seed(5)
    torch.randn((64, 1), generator=g2)  # exactly one draw: x_T
    assert torch.equal(after, g2.get_state())
    assert torch.equal(x, d.sample(obs, torch.Generator().manual_seed(5), sampler="ddim", steps=10, eta=0.0))
    noisy = torch.Generator().manual_seed(5)
    d.sample(obs, noisy, sampler="ddim", steps=10, eta=0.5)
    assert not torch.equal(noisy.get_state(), after)  # eta > 0 draws step noise


def test_dpm_solver_converges_to_the_mixture_as_steps_grow() -> None:
    d, obs = _mixture_diffusion(T=100), torch.zeros(40_000, 1)
    true_var = 0.3 * (0.09 + 4.0) + 0.7 * (0.25 + 2.25) - 0.45 ** 2
    errs = []
    for steps in (5, 10, 20):
        x = d.sample(obs, torch.Generator().manual_seed(0), sampler="dpm_solver++", steps=steps)
        errs.append(abs(float(x.var()) - true_var) / true_var)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, errs
    assert float((x < 0).float().mean()) == pytest.approx(0.3, abs=0.01)  # both modes, in their weights


def test_step_grid_is_an_even_subsequence_of_the_training_steps() -> None:
    from modzoo.blocks.diffusion import step_grid

    assert step_grid(100, 5) == [99, 74, 50, 25, 0]
    assert step_grid(5, 5) == [4, 3, 2, 1, 0] and step_grid(5, 1) == [4]
    with pytest.raises(ValueError, match="sample_steps must be in 1..T=5"):
        step_grid(5, 6)


def test_a_policy_acts_with_the_inference_sampler_on_fewer_steps() -> None:
    """``policy.act_sampler`` / ``sample_steps`` change only acting: the chain calls the denoiser once per grid
    point, and a bad combination is refused with the settings."""
    import modzoo
    from modzoo.errors import ConfigError

    policy = modzoo.make_policy("edp", 11, 3, hidden=16, act_sampler="dpm_solver++", sample_steps=10, candidates=1)
    calls = []
    chain = policy.ema_diffusion if policy.cfg["act_model"] == "ema" else policy.diffusion
    real, real_step = chain.model.forward, chain.model.chain_step  # the trained chain steps through chain_step
    chain.model.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    chain.model.chain_step = lambda *a, **k: calls.append(1) or real_step(*a, **k)
    a = policy.act(torch.zeros(4, 11))
    assert a.shape == (4, 3) and len(calls) == 10 and policy.cfg["T"] == 100
    calls.clear()
    policy.cfg["act_sampler"], policy.cfg["sample_steps"] = "trained", 0
    policy.act(torch.zeros(4, 11))
    assert len(calls) == 100  # the trained chain: all T steps
    with pytest.raises(ConfigError, match="sample_steps=200 is more than the policy's T=100"):
        modzoo.run_config("dql", "edp", "bullet-hopper-medium-v0", ["policy.sample_steps=200",
                                                                    "policy.act_sampler=ddim"])
    with pytest.raises(ConfigError, match="needs a sampler that skips steps"):
        modzoo.run_config("dql", "edp", "bullet-hopper-medium-v0", ["policy.sample_steps=10"])


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver++"])
@pytest.mark.parametrize("name", ["bc", "cfg", "dql", "edp", "idql", "sfbc"])
def test_every_policy_half_acts_with_the_fast_samplers(name: str, sampler: str) -> None:
    """The samplers live in GaussianDiffusion, so every DDPMPolicy gets them, guided chains (cfg) included."""
    import modzoo

    guidance = modzoo.make_guidance("idql", 11, 3, hidden=[16, 16])
    T = modzoo.make_policy(name, 11, 3, hidden=16).cfg["T"]
    policy = modzoo.make_policy(name, 11, 3, hidden=16, act_sampler=sampler, sample_steps=max(1, T // 2))
    a = policy.act(torch.randn(4, 11, generator=torch.Generator().manual_seed(0)), guidance)
    assert a.shape == (4, 3) and torch.isfinite(a).all() and a.abs().max() <= 1.0
