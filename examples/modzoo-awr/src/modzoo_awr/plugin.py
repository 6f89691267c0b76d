"""awr: advantage-weighted diffusion behaviour cloning, an example modzoo plugin written outside modzoo.

Advantage-weighted regression (Peng et al. 2019, arXiv:1910.00177) as IQL extracts its policy (Kostrikov,
Nair, Levine 2022, arXiv:2110.06169), with the diffusion model's epsilon loss in place of the log-likelihood
(a weighted ELBO):

    w(s, a) = min( exp( beta (Q(s, a) - V(s)) ), w_max )            Q, V from the guidance, no gradient
    eps_theta <- argmin E[ w(s, a) || eps - eps_theta(sqrt(abar_t) a + sqrt(1 - abar_t) eps, t, s) ||^2 ]

Dataset actions with a higher advantage count more, so the model's samples shift toward them; the action is one
sample of the EMA model. It needs V(s) as well as Q, so it pairs only with guidances that provide both (IQL's);
modzoo refuses other pairings with a message saying what is missing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from modzoo import Batch, DDPMPolicy, GuidanceModule, HalfSpec, Metrics, hookimpl

CONFIG = Path(__file__).with_name("awr.yaml")


def awr_weights(q: torch.Tensor, v: torch.Tensor, beta: float, w_max: float) -> torch.Tensor:
    """exp(beta (Q - V)) clipped at w_max: IQL's ``exp_a = jnp.minimum(jnp.exp(adv * temperature), 100.0)``."""
    return torch.exp(beta * (q - v)).clamp(max=w_max)


class AWRPolicy(DDPMPolicy):
    """Advantage-weighted diffusion BC: exp(beta A)-weighted epsilon loss (example plugin).

    Diffusion BC whose per-sample loss is weighted by the exponentiated advantage of the dataset action."""

    needs = frozenset({"q", "v"})
    uses_guidance_in_training = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        if guidance is None:
            raise RuntimeError("awr weights its loss with a guidance's advantage; pass one")
        obs, act = batch["observations"], batch["actions"]
        with torch.no_grad():
            w = awr_weights(guidance.q(obs, act), guidance.v(obs), float(self.cfg["beta"]),
                            float(self.cfg["max_weight"]))
        per_sample = self.diffusion.loss(act, obs, generator=self.gen(), reduce=False)  # (B,)
        loss = (w * per_sample).mean()
        return loss, {"awr_loss": loss.detach(), "bc_loss": per_sample.mean().detach(), "weight_mean": w.mean()}


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("awr", AWRPolicy, CONFIG,
                     paper="Peng et al. 2019, arXiv:1910.00177; Kostrikov et al. 2022 (IQL), arXiv:2110.06169")]
