"""Small training parts the papers share: target networks, EMA, optimizers with their schedules, seeding."""
from __future__ import annotations

import copy
import math
import random
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (modules also keep their own generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with no parameter gradients: a target network or an EMA model."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, for every parameter (one fused foreach op, no host sync)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class EMA:
    """EMA of a model, updated every ``every`` steps from step ``start``: Diffusion-QL's 0.995 every 5 from 1000
    (before, the EMA model keeps its initial weights, as ``step_ema`` returns early), IDQL's 0.999 every step."""

    def __init__(self, decay: float, every: int = 1, start: int = 0) -> None:
        self.decay, self.every, self.start = decay, every, start

    @torch.no_grad()
    def step(self, ema_model: nn.Module, model: nn.Module, step: int) -> None:
        """Call after the optimizer step numbered ``step`` (0-based)."""
        if step % self.every or step < self.start:
            return
        polyak_update(ema_model, model, 1 - self.decay)


def make_optimizer(params: Iterable[torch.Tensor], name: str = "adam", lr: float = 3e-4,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or AdamW by config name, fused where torch has the kernel: one kernel for the many small tensors
    (docs/performance.md, "Each change kept"), equal to the loop up to rounding (tests/test_speed_paths.py)."""
    params = list(params)
    if name not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {name!r}; known: adam, adamw")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused kernel for this device
            pass
    return cls(params, lr=lr, weight_decay=weight_decay)


DEFAULT_DECAY_STEPS = 2_000_000  # Diffusion-QL's 2000 epochs x 1000 steps; train() sets the run's real length


def make_scheduler(opt: torch.optim.Optimizer, schedule: str | None, total_steps: int | None
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cosine``: lr (1 + cos(pi min(k, K) / K)) / 2, 0 from K = ``total_steps`` on (unlike CosineAnnealingLR)."""
    if schedule in (None, "none", "constant"):
        return None
    if schedule == "cosine":
        k_max = max(1, int(total_steps or DEFAULT_DECAY_STEPS))
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, k_max) / k_max)))
    raise ValueError(f"unknown lr schedule {schedule!r}; known: cosine, none")


def optim_state(opt: torch.optim.Optimizer | None, sched: Any = None) -> dict[str, Any]:
    """Optimizer (and scheduler) state for a checkpoint."""
    if opt is None:
        return {}
    return {"opt": opt.state_dict()} if sched is None else {"opt": opt.state_dict(), "sched": sched.state_dict()}


def load_optim_state(state: dict[str, Any], opt: torch.optim.Optimizer | None, sched: Any = None) -> None:
    if opt is not None and "opt" in state:
        opt.load_state_dict(state["opt"])
    if sched is not None and "sched" in state:
        sched.load_state_dict(state["sched"])
