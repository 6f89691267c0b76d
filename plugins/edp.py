"""EDP: Efficient Diffusion Policies for Offline RL (Kang, Ma, Du, Pang, Yan; NeurIPS 2023), TD3 variant.

Diffusion-QL's actor loss differentiates Q through the whole reverse chain (T denoiser calls per step, which
limits T). EDP instead reads an action off the *training* forward pass, the one-step action approximation

    a_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps,      t ~ U{0..T-1}, eps ~ N(0, I)    (the BC noising draw)
    a0_hat = clip( (a_t - sqrt(1 - abar_t) eps_theta(a_t, t, s)) / sqrt(abar_t), -1, 1 )

and puts the Q term on it:

    L(theta) = || eps - eps_theta(a_t, t, s) ||^2  -  alpha * Q_i(s, a0_hat) / mean|Q_i(s, a0_hat)|,
    i ~ U{1, 2} (one critic per step, normalized by its own magnitude: ``_train_step_td3``'s lambda).

One denoiser call per step whatever T is, so EDP trains with long chains (T = 100 in the released code).
Guidance: any Q; EDP's own TD3 critic is Diffusion-QL's (targets from the target policy), i.e. ``dql``.
Action selection: 50 candidates from the live actor, one sampled from softmax(min_i Q_i).
"""
from __future__ import annotations

from pathlib import Path

import torch

from modzoo import Batch, DDPMPolicy, GuidanceModule, HalfSpec, Metrics, hookimpl
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("edp.yaml")


def edp_q_loss(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """-lambda * mean Q with lambda = alpha / mean|Q| (no gradient through lambda): one critic's (B,) values."""
    return -(alpha / q.abs().mean().detach()) * q.mean()


class EDPPolicy(DDPMPolicy):
    """Diffusion actor (T=100) with the Q term on the one-step action approximation.

    Diffusion BC plus a Q term on the one-step action approximation (no backprop through the chain)."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        obs, act = batch["observations"], batch["actions"]
        terms = self.diffusion.training_terms(act, obs, generator=self.gen())
        bc = ((terms["eps"] - terms["noise"]) ** 2).mean()
        out: Metrics = {"bc_loss": bc.detach()}
        loss = bc
        alpha = float(self.cfg["alpha"])
        if guidance is not None and alpha > 0:
            a0_hat = self.diffusion.predict_x0(terms["x_t"], terms["t"], terms["eps"])  # action approximation
            qs = guidance.q_ensemble(obs, a0_hat)
            i = rng.randint(qs.shape[0], (1,), self.gen(), obs.device)
            q_loss = edp_q_loss(qs.index_select(0, i)[0], alpha)
            loss = bc + q_loss
            out["q_loss"] = q_loss.detach()
        out["actor_loss"] = loss.detach()
        return loss, out


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("edp", EDPPolicy, CONFIG, paper="Kang et al. 2023 (EDP), arXiv:2305.20081")]
