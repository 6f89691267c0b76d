"""Flow BC: behaviour cloning with a flow-matching policy, the no-guidance baseline of the flow plugins.

Lipman et al. 2023 (flow matching, arXiv:2210.02747) with the linear path; the network, path, time sampling and
sampler are FQL's (Park, Li, Levine 2025, arXiv:2502.02538; seohongpark/fql), whose agents/fql.py and
agents/ifql.py train exactly this loss as their BC flow.

Policy (no guidance, ever):
    v_theta <- argmin mean_{batch, dims} (v_theta(s, (1 - t) x0 + t a, t) - (a - x0))^2,  x0 ~ N(0, I), t ~ U[0, 1)
Action: x = z ~ N(0, I); x <- x + v_theta(s, x, i/K) / K for i = 0..K-1; clip(x, -1, 1). One sample, no ranking.

What FQL adds to this (distillation and a Q term) and what IFQL adds (32 candidates ranked by Q) are measured
against it, as Diffusion-BC (``bc``) is for the diffusion policies.
"""
from __future__ import annotations

from pathlib import Path

import torch

from modzoo import Batch, GuidanceModule, HalfSpec, Metrics, hookimpl
from modzoo.blocks.flow import FlowPolicy

CONFIG = Path(__file__).with_name("fbc.yaml")


class FlowBCPolicy(FlowPolicy):
    """Flow-matching behaviour cloning (4x512 GELU MLP, 10 Euler steps), one sample, no guidance.

    The flow-matching loss and nothing else."""

    needs = frozenset()
    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("fbc", FlowBCPolicy, CONFIG, paper="flow matching (Lipman et al. 2023) as FQL trains it")]
