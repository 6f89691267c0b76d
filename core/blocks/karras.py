"""EDM diffusion (Karras, Aittala, Aila, Laine 2022), as DTQL trains its behaviour model and uses it only as a loss
(its trust-region term is this loss on the one-step policy's actions), so nothing here samples.

x = a + sigma eps (variance exploding), and the raw output F is preconditioned to unit variance at every level:

    c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),   c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = ln(sigma) / 4,            D(x, sigma, s) = c_skip x + c_out F(c_in x, c_noise, s)

(sd: ``sigma_data``). The loss weights D's squared error by 1 / c_out^2 (unclipped: F's MSE against (a - c_skip x)
/ c_out). Training sigmas are log-logistic (location ln sd, scale 0.5 in DTQL) truncated to [sigma_min, sigma_max].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..contract import rng


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the EDM preconditioning, each the shape of ``sigma``."""
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt()


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The noise level as the denoiser sees it: ln(sigma) / 4."""
    return sigma.log() / 4


class KarrasDiffusion(nn.Module):
    """D(x, sigma, s) around the raw network F = ``denoiser(x, c_noise, obs)``, clamped to ``clip`` (None: not)."""

    def __init__(self, denoiser: nn.Module, act_dim: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, sigma_scale: float = 0.5, clip: float | None = 1.0) -> None:
        super().__init__()
        if not 0 < sigma_min < sigma_max or sigma_data <= 0 or sigma_scale <= 0:
            raise ValueError(f"EDM noise levels need 0 < sigma_min < sigma_max and sigma_data, sigma_scale > 0; got "
                             f"sigma_min={sigma_min}, sigma_max={sigma_max}, sigma_data={sigma_data}, "
                             f"sigma_scale={sigma_scale}")
        self.model, self.act_dim = denoiser, int(act_dim)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.sigma_loc, self.sigma_scale = math.log(self.sigma_data), float(sigma_scale)
        self.clip = None if clip is None else float(clip)

    def draw_sigma(self, batch: int, generator: rng.Gen = None, device: torch.device | None = None
                   ) -> torch.Tensor:
        """(batch,) float32 sigma = exp(loc + scale logit(u)), u ~ U(F(sigma_min), F(sigma_max)), F the logistic CDF
        of ln sigma; u is float32 (:func:`modzoo.contract.rng.rand`, so stacked seeds draw it too), the inversion
        float64 (F(sigma_max) = 1 - 4e-5: float32 would round the largest draws)."""
        loc, scale = self.sigma_loc, self.sigma_scale
        lo = 1 / (1 + math.exp(-(math.log(self.sigma_min) - loc) / scale))
        hi = 1 / (1 + math.exp(-(math.log(self.sigma_max) - loc) / scale))
        u = rng.rand((batch,), generator, device).double() * (hi - lo) + lo
        return (torch.logit(u) * scale + loc).exp().clamp(self.sigma_min, self.sigma_max).float()

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """D(x, sigma, s): the clean action estimated from x at noise level ``sigma`` (B,), clamped to ``clip``."""
        c_skip, c_out, c_in = (c[:, None] for c in edm_scalings(sigma, self.sigma_data))
        d = c_skip * x + c_out * self.model(c_in * x, c_noise(sigma), obs)
        return d if self.clip is None else d.clamp(-self.clip, self.clip)

    def loss(self, x0: torch.Tensor, obs: torch.Tensor, generator: rng.Gen = None, reduce: bool = True
             ) -> torch.Tensor:
        """E[ || (D(x0 + sigma eps, sigma, s) - x0) / c_out ||^2 ], sigma then eps drawn here: a scalar, or per
        sample (B,) with ``reduce=False``. Differentiable w.r.t. ``x0`` (DTQL's trust-region term needs it)."""
        sigma = self.draw_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device)
        c_out = edm_scalings(sigma, self.sigma_data)[1][:, None]
        per = (((self.denoise(x0 + sigma[:, None] * noise, sigma, obs) - x0) / c_out) ** 2).mean(-1)
        return per.mean() if reduce else per
