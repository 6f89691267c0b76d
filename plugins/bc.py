"""Diffusion behaviour cloning: the no-guidance baseline (Diffusion-QL's ``bc_diffusion`` agent).

Wang, Hunt, Zhou 2023 ("Diffusion Policies as an Expressive Policy Class for Offline RL", arXiv:2208.06193)
report it as "Diffusion-BC" to separate what the diffusion model alone gets from what the Q term adds.

Policy (no guidance, ever):
    eps_theta <- argmin E[ || eps - eps_theta(sqrt(abar_t) a + sqrt(1 - abar_t) eps, t, s) ||^2 ]
Action: one sample of the live actor (``Diffusion_BC.sample_action``); no candidates, no ranking.

It needs nothing from a guidance, so it pairs with every one; in a run the guidance still trains (and is saved
for reuse), but it never touches this policy unless ``candidates`` > 1 is set, which ranks candidates with it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from modzoo import Batch, DDPMPolicy, GuidanceModule, HalfSpec, Metrics, hookimpl

CONFIG = Path(__file__).with_name("bc.yaml")


class DiffusionBCPolicy(DDPMPolicy):
    """Diffusion behaviour cloning baseline (3x256 Mish MLP, T=5), one sample, no guidance.

    The diffusion BC loss and nothing else."""

    needs = frozenset()

    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("bc", DiffusionBCPolicy, CONFIG, paper="Wang, Hunt, Zhou 2023, arXiv:2208.06193 (Diffusion-BC)")]
