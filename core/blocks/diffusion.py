"""DDPM over actions, conditioned on the state: noise schedules, the training loss and the reverse sampler.

IDQL and Diffusion-QL both predict eps with T=5 on the VP schedule; their samplers differ, so both are kept:
``"posterior"`` (Diffusion-QL: x0 from eps clipped to [-1, 1], then the DDPM posterior mean and clipped-log
variance) and ``"eps_clip"`` (IDQL: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta_t)
z, clipped to [-1, 1] at every step). At inference a policy may sample on a subsequence of the T steps with
``"ddim"`` (Song, Meng, Ermon 2021; eta = 1 on all T steps is the posterior sampler, eta = 0 is deterministic) or
``"dpm_solver++"`` (Lu et al. 2022, arXiv:2211.01095: 2M in data prediction on the log-SNR, first order on its
first step), both with x0 clipped to the action range and ending at the x0 predicted at the last grid point.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..contract import rng
from .nets import Denoiser

SAMPLERS = ("posterior", "eps_clip")
FAST_SAMPLERS = ("ddim", "dpm_solver++")


def step_grid(T: int, steps: int) -> list[int]:
    """``steps`` training-step indices from T-1 down to 0, evenly spaced (the chain's grid at inference)."""
    if not 1 <= steps <= T:
        raise ValueError(f"sample_steps must be in 1..T={T}, got {steps}")
    if steps == 1:
        return [T - 1]
    return sorted({round(i * (T - 1) / (steps - 1)) for i in range(steps)}, reverse=True)


def vp_beta_schedule(T: int, b_min: float = 0.1, b_max: float = 10.0) -> torch.Tensor:
    """Song et al.'s VP schedule as IDQL/Diffusion-QL discretize it: beta_t = 1 - exp(-b_min / T - (b_max - b_min)
    (2t - 1) / (2 T^2)), t = 1..T."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    alpha = torch.exp(-b_min / T - 0.5 * (b_max - b_min) * (2 * t - 1) / T**2)
    return (1 - alpha).float()


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Ho et al.'s linear schedule (offered by Diffusion-QL; not the papers' default)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64).float()


def cosine_beta_schedule(T: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (offered by IDQL; not the papers' default)."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((steps / T) + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    return torch.clamp(1 - abar[1:] / abar[:-1], 0, 0.999).float()


def linear_scaled_beta_schedule(T: int) -> torch.Tensor:
    """EDP's (guided-diffusion's ``get_named_beta_schedule('linear')``): 1e-4 .. 0.02 times 1000/T, abar_T ~ 0."""
    scale = 1000.0 / T
    if scale * 2e-2 >= 1:
        raise ValueError(f"schedule linear_scaled needs T > 20 (its last beta is 20/T), got T={T}; use vp for "
                         f"short chains")
    return torch.linspace(scale * 1e-4, scale * 2e-2, T, dtype=torch.float64).float()


SCHEDULES = {"vp": vp_beta_schedule, "linear": linear_beta_schedule, "cosine": cosine_beta_schedule,
             "linear_scaled": linear_scaled_beta_schedule}


class ActionDiffusion(nn.Module):
    """The DDPM's and the VP SDE's shared part: an eps-predicting denoiser of (x_t, t, s) trained by Ho et al.'s
    simple loss. Subclasses say how t is drawn (``draw_t``) and how x0 is noised (``q_sample``)."""

    model: Denoiser

    def training_terms(self, x0: torch.Tensor, obs: torch.Tensor, generator: rng.Gen = None,
                       **model_kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One noising draw and the denoiser's prediction (``t``, ``noise``, ``x_t``, ``eps``): for losses beyond
        the eps MSE (EDP's one-step action; classifier-free guidance passes ``cond``/``keep`` in ``model_kwargs``)."""
        t = self.draw_t(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device)
        x_t = self.q_sample(x0, t, noise)
        return {"t": t, "noise": noise, "x_t": x_t, "eps": self.model(x_t, t, obs, **model_kwargs)}

    def loss(self, x0: torch.Tensor, obs: torch.Tensor, generator: rng.Gen = None,
             reduce: bool = True) -> torch.Tensor:
        """The papers' BC loss, the eps MSE on one draw: a scalar, or per sample (mean over action dims)."""
        terms = self.training_terms(x0, obs, generator)
        err = (terms["eps"] - terms["noise"]) ** 2
        return err.mean() if reduce else err.mean(-1)


class GaussianDiffusion(ActionDiffusion):
    """A conditional DDPM p(a | s); ``sample`` is differentiable under grad mode (Diffusion-QL backpropagates its
    Q term through the chain). Schedule constants are buffers, so a step has no host sync."""

    def __init__(self, denoiser: Denoiser, act_dim: int, T: int = 5, schedule: str = "vp",
                 sampler: str = "posterior", max_action: float = 1.0) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {schedule!r}; known: {sorted(SCHEDULES)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known: {list(SAMPLERS)}")
        self.model, self.act_dim, self.T, self.sampler, self.max_action = denoiser, act_dim, T, sampler, max_action
        betas = SCHEDULES[schedule](T).double()
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        consts = {
            "betas": betas, "alphas": alphas, "alphas_cumprod": abar, "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1 - abar).sqrt(), "sqrt_recip_abar": (1 / abar).sqrt(),
            "sqrt_recipm1_abar": (1 / abar - 1).sqrt(), "post_coef1": betas * abar_prev.sqrt() / (1 - abar),
            "post_coef2": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
            "post_std": (0.5 * torch.log(post_var.clamp(min=1e-20))).exp(), "eps_coef": betas / (1 - abar).sqrt(),
            "sqrt_recip_alpha": (1 / alphas).sqrt(), "sqrt_beta": betas.sqrt(),
        }
        for k, v in consts.items():
            self.register_buffer(k, v.float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return self.sqrt_abar[t, None] * x0 + self.sqrt_one_minus_abar[t, None] * noise

    def draw_t(self, b: int, generator: rng.Gen, device: torch.device) -> torch.Tensor:
        """t ~ U{0..T-1} per row."""
        return rng.randint(self.T, (b,), generator, device)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor,
                   clip: bool = True) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) per row, clipped by default (EDP's action estimate)."""
        x0 = self.sqrt_recip_abar[t, None] * x_t - self.sqrt_recipm1_abar[t, None] * eps
        return x0.clamp(-self.max_action, self.max_action) if clip else x0

    def p_step(self, x: torch.Tensor, t: int, obs: torch.Tensor, noise: torch.Tensor | None,
               eps: torch.Tensor | None = None) -> torch.Tensor:
        """One reverse step x_t -> x_{t-1} (``noise`` is ignored at t = 0, as in DDPM)."""
        if eps is None:
            eps = self.model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), obs)
        if self.sampler == "posterior":
            x0 = self.predict_x0(x, t, eps)  # (1,)-shaped constants for an int t: the same elementwise ops
            mean = self.post_coef1[t] * x0 + self.post_coef2[t] * x
            return mean + self.post_std[t] * noise if (t > 0 and noise is not None) else mean
        x = self.sqrt_recip_alpha[t] * (x - self.eps_coef[t] * eps)
        if t > 0 and noise is not None:
            x = x + self.sqrt_beta[t] * noise
        return x.clamp(-self.max_action, self.max_action)

    def sample(self, obs: torch.Tensor, generator: rng.Gen = None, guide: Any = None, init_scale: float = 1.0,
               sampler: str | None = None, steps: int | None = None, eta: float = 0.0) -> torch.Tensor:
        """The reverse chain from N(0, init_scale^2 I) per row of ``obs``: (B, act_dim). ``guide(x_t, t, obs) ->
        eps`` replaces the denoiser call (classifier-free or energy guidance). ``init_scale`` < 1 starts nearer the
        mode (CleanDiffuser's ``temperature``: x_T only, not each step's noise). ``sampler``/``steps``/``eta``: a
        :data:`FAST_SAMPLERS` sampler on ``steps`` of the T steps, DDIM's eta; unset, the trained chain."""
        fast = sampler is not None and (sampler != self.sampler or (steps or self.T) != self.T)
        if fast and sampler == "posterior":
            sampler, eta = "ddim", 1.0  # the posterior step on a sub-grid is DDIM's eta = 1 step
        if fast and sampler not in FAST_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} cannot take a sub-grid of the T={self.T} training steps; use "
                             f"one of {', '.join(FAST_SAMPLERS)} (or posterior)")
        grid = step_grid(self.T, steps or self.T) if fast else None
        b = obs.shape[0]
        # a denoiser may precompute what the T steps share (MLPDenoiser.chain_context)
        ctx = self.model.chain_context(obs, self.T) if guide is None and hasattr(self.model, "chain_context") else None
        x = rng.randn((b, self.act_dim), generator, obs.device) * init_scale  # x * 1.0 is x, bit for bit
        if grid is not None:
            return self._sample_fast(x, obs, generator, guide, ctx, sampler, grid, eta)
        for t in reversed(range(self.T)):
            noise = rng.randn((b, self.act_dim), generator, obs.device) if t > 0 else None
            x = self.p_step(x, t, obs, noise, eps=self._eps(x, t, obs, guide, ctx))
        return x.clamp(-self.max_action, self.max_action)

    def _eps(self, x: torch.Tensor, t: int, obs: torch.Tensor, guide: Any, ctx: Any) -> torch.Tensor:
        if ctx is not None:
            return self.model.chain_step(x, t, ctx)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return guide(x, tt, obs) if guide is not None else self.model(x, tt, obs)

    def _sample_fast(self, x: torch.Tensor, obs: torch.Tensor, generator: rng.Gen, guide: Any, ctx: Any,
                     sampler: str, grid: list[int], eta: float) -> torch.Tensor:
        """DDIM or DPM-Solver++(2M) from x on :func:`step_grid`'s ``grid`` (see the module docstring)."""
        abar = self.alphas_cumprod
        prev_x0, prev_h = None, None
        for i, t in enumerate(grid):
            eps = self._eps(x, t, obs, guide, ctx)
            x0 = self.predict_x0(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), eps)
            if i == len(grid) - 1:
                break  # from the last grid point (t = 0 on a full grid) to the data: x0
            s = grid[i + 1]
            a_t, a_s = abar[t], abar[s]
            if sampler == "ddim":
                eps_hat = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
                x = a_s.sqrt() * x0 + (1 - a_s - sigma ** 2).clamp(min=0).sqrt() * eps_hat
                if eta > 0:
                    x = x + sigma * rng.randn(x.shape, generator, x.device)
                continue
            lam_t = 0.5 * (a_t.log() - (1 - a_t).log())
            lam_s = 0.5 * (a_s.log() - (1 - a_s).log())
            h = lam_s - lam_t
            # D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i (DPM-Solver++(2M), Lu et al. Alg. 2)
            d = x0 if prev_x0 is None else (1 + h / (2 * prev_h)) * x0 - h / (2 * prev_h) * prev_x0
            x = ((1 - a_s) / (1 - a_t)).sqrt() * x - a_s.sqrt() * torch.expm1(-h) * d
            prev_x0, prev_h = x0, h
        return x0
