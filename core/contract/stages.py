"""A half's update written as stages: one loss, one optimizer step, then what follows (a target or EMA update).

IQL's critic update is two stages (V by expectile regression, then Q towards the *new* V); Diffusion-QL's critic
and every diffusion actor are one. Writing an update as stages rather than as one imperative method lets the same
definition run two ways, with the same maths:

- one seed (:func:`run_stages`): loss, ``backward``, grad-norm clip, optimizer and LR-schedule step, ``after``;
- several seeds stacked (:mod:`modzoo.run.stacked`): the loss under ``torch.func.vmap(grad(...))`` over the seed axis,
  then the same optimizer, schedule and ``after`` on parameters that carry the seed axis (Adam, Polyak averaging
  and EMA are elementwise, so one step on stacked tensors is every seed's own step); only the grad-norm clip needs
  a per-seed norm, which :func:`clip_per_seed` computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

#: ``loss(batch, other_half) -> (loss, metrics)``; must draw randomness through :mod:`modzoo.contract.rng`.
LossFn = Callable[[dict[str, torch.Tensor], Any], tuple[torch.Tensor, dict[str, Any]]]


def clip_grad(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor | None:
    """Clip the global gradient norm when ``max_norm`` > 0; returns the pre-clip norm (a tensor: no sync)."""
    if max_norm and max_norm > 0:
        return nn.utils.clip_grad_norm_(list(params), max_norm)
    return None


@dataclass
class Stage:
    """One optimizer step of a half."""

    name: str
    module: nn.Module                     # whose parameters this stage steps
    loss: LossFn
    opt: torch.optim.Optimizer
    sched: Any = None                     # an LR scheduler stepped after the optimizer, or None
    grad_norm: float = 0.0                # clip the stage's global gradient norm to this (0: no clipping)
    after: Callable[[], None] | None = None  # e.g. the Polyak target update; runs after the step
    #: runs once the gradients are in, before the optimizer step: a target averaged from the pre-update
    #: parameters (FQL's ``target_update`` reads ``self.network``, not the new one)
    before: Callable[[], None] | None = None

    def params(self) -> list[torch.Tensor]:
        return [p for p in self.module.parameters() if p.requires_grad]


def finish_step(stage: Stage) -> None:
    """Everything after the gradients are in place: ``before``, optimizer, LR schedule, ``after``."""
    if stage.before is not None:
        stage.before()
    stage.opt.step()
    if stage.sched is not None:
        stage.sched.step()
    if stage.after is not None:
        stage.after()


def run_stages(stages: list[Stage], batch: dict[str, torch.Tensor], other: Any) -> dict[str, Any]:
    """One seed: each stage's loss, backward, clip and step in order (a later stage sees the earlier ones' new
    parameters)."""
    metrics: dict[str, Any] = {}
    for stage in stages:
        loss, m = stage.loss(batch, other)
        params = stage.params()
        stage.opt.zero_grad(set_to_none=True)
        # Gradients only for the parameters this stage steps: a Diffusion-QL actor's Q term backpropagates through
        # the critic, whose weight gradients would be computed only to be discarded.
        loss.backward(inputs=params)
        clip_grad(params, stage.grad_norm)
        finish_step(stage)
        metrics.update(m)
    return metrics


@torch.no_grad()
def clip_per_seed(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for each seed of stacked gradients (seed axis first), in place; returns the (K,) norms.

    Same rule as torch's: coef = min(1, max_norm / (norm + 1e-6)), norm over all of one seed's gradients.
    """
    k = grads[0].shape[0]
    norms = torch.stack([g.reshape(k, -1).square().sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(k, *([1] * (g.dim() - 1))))
    return norms
