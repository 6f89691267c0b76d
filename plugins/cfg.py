"""Classifier-free reward guidance: a diffusion policy conditioned on a value label from a (frozen) guidance.

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) with the label a value of the dataset action,
as CFGRL frames policy improvement (Frans, Park, Abbeel, Levine 2025, arXiv:2505.23458: sampling with weight w
draws from pi(a|s) p(o|s,a)^w, an improvement over pi for w > 0 that grows with w) and as Decision Diffuser
conditions on returns (Ajay et al. 2023, arXiv:2211.15657).

Label of a dataset pair (s, a), from the guidance G (no gradient; with a frozen G it is fixed before training):
    u = G.q(s, a) - G.v(s)   (``signal: advantage``)   or   u = G.q(s, a)   (``signal: q``)
    ``label: normalized``:  c = (u - m) / sd, with m, sd running estimates over training batches
    ``label: optimality``:  c = 1[u > 0] for the advantage (CFGRL's o), 1[(u - m) / sd > 0] for Q
Training (condition dropout): keep ~ Bernoulli(1 - p_uncond); a dropped row sees the learned null token;
    eps_theta <- argmin E[ || eps - eps_theta(a_t, t, s, keep ? c : null) ||^2 ]
Sampling at the target label c* (``label: optimality``: 1; ``normalized``: the running ``target_quantile``
of c), with guidance weight w:
    eps = eps_theta(a_t, t, s, null) + w (eps_theta(a_t, t, s, c*) - eps_theta(a_t, t, s, null))
w = 1 samples the conditional policy, w = 0 plain BC, w > 1 pushes further toward high-value actions.

Schedules: the paper's setting is a frozen guidance (``guidance-first`` or ``pretrained``): labels are then a
fixed function of the data. ``joint`` is allowed, but the labels come from a critic that is still moving (a
warning says so once).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modzoo import Batch, DDPMPolicy, GuidanceModule, HalfSpec, Metrics, hookimpl
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("cfg.yaml")
SIGNALS = ("auto", "advantage", "q")
LABELS = ("normalized", "optimality")


def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Ho & Salimans' guided prediction eps_uncond + w (eps_cond - eps_uncond)."""
    return eps_uncond + w * (eps_cond - eps_uncond)


class CFGPolicy(DDPMPolicy):
    """Classifier-free reward guidance: value-conditioned DDPM, condition dropout, weight w.

    A DDPM actor with one extra input, the value label, dropped to a null token with probability p_uncond."""

    needs = frozenset({"q"})  # "v" is used when the guidance has it (signal: auto)
    config_needs = {"signal": {"advantage": frozenset({"v"})}}
    uses_guidance_in_training = True
    # not stackable: the loss moves the running label statistics in place (observe), a write a vmapped step
    # over seeds cannot make
    stackable = False

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, {**cfg, "cond_dim": 1})
        if self.cfg["signal"] not in SIGNALS:
            raise ValueError(f"cfg policy: unknown signal {self.cfg['signal']!r}; known: {list(SIGNALS)}")
        if self.cfg["label"] not in LABELS:
            raise ValueError(f"cfg policy: unknown label {self.cfg['label']!r}; known: {list(LABELS)}")
        if not 0.0 <= float(self.cfg["p_uncond"]) < 1.0:
            raise ValueError("cfg policy: p_uncond must be in [0, 1)")
        # running label statistics: saved with the policy, so a loaded policy samples at the same c*
        self.register_buffer("label_mean", torch.zeros(()))
        self.register_buffer("label_var", torch.ones(()))
        self.register_buffer("label_target", torch.zeros(()))
        self.register_buffer("label_seen", torch.zeros((), dtype=torch.bool))
        self._warned_moving = False

    # ---- labels ----------------------------------------------------------------------------------------------
    def signal_kind(self, guidance: GuidanceModule) -> str:
        kind = self.cfg["signal"]
        if kind == "auto":
            return "advantage" if "v" in guidance.provides else "q"
        if kind == "advantage" and "v" not in guidance.provides:
            raise ValueError(f"cfg policy: signal=advantage needs a guidance with V(s); {guidance.algorithm!r} "
                             f"provides {sorted(guidance.provides)} (use signal=q or auto)")
        return kind

    def value_signal(self, guidance: GuidanceModule, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """u(s, a): the guidance's advantage Q - V, or Q (B,)."""
        q = guidance.q(obs, act)
        return q - guidance.v(obs) if self.signal_kind(guidance) == "advantage" else q

    @torch.no_grad()
    def observe(self, u: torch.Tensor) -> None:
        """Update the running mean/variance of u and the running target quantile of the normalized label.

        The first batch sets them; later batches move them by ``stats_momentum`` (an EMA), which follows a
        critic that still trains (joint) and settles on a frozen one."""
        m = float(self.cfg["stats_momentum"])
        rate = torch.where(self.label_seen, m, 1.0)  # 1 on the first batch; a tensor, so no host sync
        self.label_mean.lerp_(u.mean(), rate)
        self.label_var.lerp_(u.var(unbiased=False), rate)
        z = (u - self.label_mean) / self.label_var.clamp_min(1e-12).sqrt()
        self.label_target.lerp_(torch.quantile(z, float(self.cfg["target_quantile"])), rate)
        self.label_seen.fill_(True)

    def label(self, u: torch.Tensor, kind: str) -> torch.Tensor:
        """The condition c of each pair: (B, 1)."""
        z = (u - self.label_mean) / self.label_var.clamp_min(1e-12).sqrt()
        if self.cfg["label"] == "optimality":
            return ((u if kind == "advantage" else z) > 0).float().unsqueeze(-1)
        return z.unsqueeze(-1)

    def target_tensor(self) -> torch.Tensor:
        """c* as a 0-d tensor on the policy's device: the label sampling conditions on."""
        if self.cfg["label"] == "optimality":
            return torch.ones((), device=self.label_target.device)
        return self.label_target

    def target_label(self) -> float:
        """c* as a number (a host sync: for inspection, not inside sampling)."""
        return float(self.target_tensor())

    # ---- training --------------------------------------------------------------------------------------------
    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        if guidance is None:
            raise RuntimeError("cfg policy labels its training actions with a guidance's values; pass one")
        if not guidance.frozen and not self._warned_moving:
            warnings.warn("cfg policy: the guidance is still training (joint schedule), so condition labels come "
                          "from a moving critic; the method's setting is a frozen guidance "
                          "(--schedule guidance-first or pretrained)", stacklevel=2)
            self._warned_moving = True
        obs, act = batch["observations"], batch["actions"]
        kind = self.signal_kind(guidance)
        with torch.no_grad():
            u = self.value_signal(guidance, obs, act)
            self.observe(u)
            c = self.label(u, kind)
        keep = rng.rand((obs.shape[0],), self.gen(), obs.device) >= float(self.cfg["p_uncond"])
        terms = self.diffusion.training_terms(act, obs, generator=self.gen(), cond=c, keep=keep)
        loss = F.mse_loss(terms["eps"], terms["noise"])
        return loss, {"diffusion_loss": loss.detach(), "signal_mean": self.label_mean.detach().clone(),
                      "target_label": self.label_target.detach().clone(), "kept": keep.float().mean()}

    # ---- sampling --------------------------------------------------------------------------------------------
    def sampling_guide(self, diffusion, obs: torch.Tensor):
        """eps = eps_uncond + w (eps_cond - eps_uncond) at c*, both predictions in one batched forward."""
        w = float(self.cfg["guidance_weight"])
        b = obs.shape[0]
        cond = self.target_tensor().to(obs.device).reshape(1, 1).expand(2 * b, 1)
        keep = torch.cat([torch.ones(b, dtype=torch.bool, device=obs.device),
                          torch.zeros(b, dtype=torch.bool, device=obs.device)])
        obs2 = torch.cat([obs, obs])

        def guide(x: torch.Tensor, t: torch.Tensor, _obs: torch.Tensor) -> torch.Tensor:
            eps = diffusion.model(torch.cat([x, x]), torch.cat([t, t]), obs2, cond=cond, keep=keep)
            return cfg_combine(eps[:b], eps[b:], w)

        return guide


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("cfg", CFGPolicy, CONFIG,
                     paper="Ho & Salimans 2022, arXiv:2207.12598; Frans et al. 2025 (CFGRL), arXiv:2505.23458")]
