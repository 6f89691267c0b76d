"""Continuous-time diffusion over actions: the VP SDE of Song et al. (2021), as SfBC, QGPO and SRPO train it.

x_t = alpha_t x_0 + sigma_t eps for t in (0, 1], log alpha_t = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0,
sigma_t = sqrt(1 - alpha_t^2), beta_0 = 0.1, beta_1 = 20 (their ``marginal_prob_std``); t is real, so the denoiser
needs a real-input time embedding (the LN-ResNet's ``time_embed: gaussian``). Training draws t ~ U(t_min, 1).
Sampling solves the probability-flow ODE in data prediction on a grid uniform in t from 1 to t_min (DPM-Solver's
``time_uniform``; Lu et al. 2022, arXiv:2211.01095) with :data:`SDE_SAMPLERS`: ``"dpm_solver++_2s"`` (singlestep,
as QGPO's ``dpm_solver_pytorch``), ``"dpm_solver++"`` (2M) or ``"ddim"``. It has ``GaussianDiffusion``'s interface,
so ``DDPMPolicy`` serves either, with ``T`` the default number of solver steps.
"""
from __future__ import annotations

from typing import Any

import torch

from ..contract import rng
from .diffusion import ActionDiffusion
from .nets import Denoiser

SDE_SAMPLERS = ("dpm_solver++_2s", "dpm_solver++", "ddim")


class VPSDE:
    """The linear-beta VP SDE's marginals and log-SNR in closed form."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.b0, self.b1 = float(beta_min), float(beta_max)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) with sigma_t = sqrt(1 - alpha_t^2)."""
        log_a = self.log_alpha(t)
        return log_a.exp(), (-torch.expm1(2 * log_a)).sqrt()

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR, log(alpha_t / sigma_t)."""
        log_a = self.log_alpha(t)
        return log_a - 0.5 * torch.log(-torch.expm1(2 * log_a))


class VPSDEDiffusion(ActionDiffusion):
    """A conditional continuous-time diffusion p(a | s) around an eps-predicting denoiser of real t."""

    def __init__(self, denoiser: Denoiser, act_dim: int, steps: int = 15, sampler: str = "dpm_solver++_2s",
                 beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 max_action: float = 1.0) -> None:
        super().__init__()
        if sampler not in SDE_SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} for schedule vp_sde; known: {list(SDE_SAMPLERS)}")
        self.model, self.act_dim, self.T, self.sampler = denoiser, act_dim, int(steps), sampler
        self.sde, self.t_min, self.max_action = VPSDE(beta_min, beta_max), float(t_min), max_action

    def draw_t(self, b: int, generator: rng.Gen, device: torch.device) -> torch.Tensor:
        """t ~ U(t_min, 1) per row."""
        return self.t_min + (1.0 - self.t_min) * rng.rand((b,), generator, device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps (``t``: (B,))."""
        a, s = self.sde.alpha_sigma(t)
        return a[:, None] * x0 + s[:, None] * noise

    perturb = q_sample  # the name QGPO's and SRPO's ports call it by

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """x0 = (x_t - sigma_t eps) / alpha_t per row, clipped to the action range by default."""
        a, s = self.sde.alpha_sigma(t)
        x0 = (x_t - s[:, None] * eps) / a[:, None]
        return x0.clamp(-self.max_action, self.max_action) if clip else x0

    def _x0(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor, guide: Any) -> torch.Tensor:
        tt = t.expand(x.shape[0])
        eps = guide(x, tt, obs) if guide is not None else self.model(x, tt, obs)
        return self.predict_x0(x, tt, eps, clip=False)

    def sample(self, obs: torch.Tensor, generator: rng.Gen = None, guide: Any = None, init_scale: float = 1.0,
               sampler: str | None = None, steps: int | None = None, eta: float = 0.0) -> torch.Tensor:
        """Solve from x_1 ~ N(0, init_scale^2 I) to t_min with ``sampler`` (default: the configured one) in ``steps``
        model calls (default ``T``): (B, act_dim), clipped; ``guide`` as in ``GaussianDiffusion.sample`` (QGPO's)."""
        sampler = sampler or self.sampler
        if sampler not in SDE_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} does not solve the VP SDE; use one of {', '.join(SDE_SAMPLERS)}")
        n = int(steps or self.T)
        x = rng.randn((obs.shape[0], self.act_dim), generator, obs.device) * init_scale
        if sampler == "dpm_solver++_2s":
            x = self._singlestep(x, obs, guide, n)
        else:
            x = self._multistep(x, obs, guide, n, sampler, eta, generator)
        return x.clamp(-self.max_action, self.max_action)

    def _singlestep(self, x: torch.Tensor, obs: torch.Tensor, guide: Any, n: int) -> torch.Tensor:
        """DPM-Solver++(2S) as QGPO's ``dpm_solver_pytorch`` runs it (``method='singlestep'``, ``order=2``): n model
        calls on an n-interval grid, a second-order step spanning two intervals (its midpoint the grid point between),
        orders 2, ..., 2, 1 for odd n and 2, ..., 2, 1, 1 for even n (``get_orders_for_singlestep_solver``)."""
        k = n // 2
        orders = [2] * k + [1] if n % 2 else [2] * (k - 1) + [1, 1]
        grid, sde = torch.linspace(1.0, self.t_min, n + 1, device=x.device), self.sde
        i = 0
        for order in orders:
            s, t = grid[i], grid[i + order]
            lam_s = sde.lam(s)
            h = sde.lam(t) - lam_s
            (a_t, sig_t), sig_s = sde.alpha_sigma(t), sde.alpha_sigma(s)[1]
            x0_s = self._x0(x, s, obs, guide)
            phi_1 = torch.expm1(-h)
            if order == 1:
                x = sig_t / sig_s * x - a_t * phi_1 * x0_s
            else:
                s1 = grid[i + 1]
                r1 = (sde.lam(s1) - lam_s) / h
                a_s1, sig_s1 = sde.alpha_sigma(s1)
                x_s1 = sig_s1 / sig_s * x - a_s1 * torch.expm1(-r1 * h) * x0_s
                x0_s1 = self._x0(x_s1, s1, obs, guide)
                # ``singlestep_dpm_solver_second_update``, data prediction, solver_type 'dpmsolver'
                x = sig_t / sig_s * x - a_t * phi_1 * x0_s - 0.5 / r1 * a_t * phi_1 * (x0_s1 - x0_s)
            i += order
        return x

    def _multistep(self, x: torch.Tensor, obs: torch.Tensor, guide: Any, n: int, sampler: str, eta: float,
                   generator: rng.Gen) -> torch.Tensor:
        """DPM-Solver++(2M) or DDIM on n + 1 grid points (n model calls)."""
        grid, sde = torch.linspace(1.0, self.t_min, n + 1, device=x.device), self.sde
        prev_x0, prev_h = None, None
        for i in range(n):
            s, t = grid[i], grid[i + 1]
            x0 = self._x0(x, s, obs, guide)
            (a_s, sig_s), (a_t, sig_t) = sde.alpha_sigma(s), sde.alpha_sigma(t)
            h = sde.lam(t) - sde.lam(s)
            if sampler == "ddim":
                eps = (x - a_s * x0) / sig_s
                sigma = eta * (sig_t / sig_s) * (1 - (a_s / a_t) ** 2).clamp(min=0).sqrt()
                x = a_t * x0 + (sig_t ** 2 - sigma ** 2).clamp(min=0).sqrt() * eps
                if eta > 0:
                    x = x + sigma * rng.randn(x.shape, generator, x.device)
                continue
            d = x0 if prev_x0 is None else (1 + h / (2 * prev_h)) * x0 - h / (2 * prev_h) * prev_x0
            x = sig_t / sig_s * x - a_t * torch.expm1(-h) * d
            prev_x0, prev_h = x0, h
        return x

