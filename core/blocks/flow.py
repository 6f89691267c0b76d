"""Flow matching for policies as in FQL (seohongpark/fql, agents/fql.py): the linear path from noise to a data
action, the Euler sampler, the velocity MLP, and ``FlowPolicy``, the base plugins write ``loss`` for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..contract import rng
from ..contract.interfaces import Batch, GuidanceModule, Metrics
from ..contract.normalization import ObsNorm, obs_norm_enabled
from ..contract.stages import Stage
from .nets import init_, mlp
from .policy import CandidatePolicy
from .utils import EMA, frozen_copy, make_optimizer, make_scheduler

#: v(obs (B, S), x (B, A), t (B, 1)) -> (B, A)
Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flow_path(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear path's point x_t = (1 - t) x0 + t x1 and its velocity x1 - x0 (fql.py:52-56)."""
    return (1 - t) * x0 + t * x1, x1 - x0


def flow_matching_loss(velocity: Velocity, obs: torch.Tensor, actions: torch.Tensor,
                       generator: rng.Gen = None) -> torch.Tensor:
    """mean over batch and action dims of (v(s, x_t, t) - (x1 - x0))^2, x0 ~ N(0, I), one t ~ U[0, 1) per sample
    (fql.py:52-59). The mean over action dims fixes the scale that FQL's alpha is tuned against."""
    b, a = actions.shape
    x0 = rng.randn((b, a), generator, actions.device)
    t = rng.rand((b, 1), generator, actions.device)
    x_t, target = flow_path(x0, actions, t)
    return (velocity(obs, x_t, t) - target).square().mean()


def euler(velocity: Velocity, obs: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """x <- x + v(s, x, i/K) / K for i = 0..K-1 from x = noise, then one clip to [-1, 1] (fql.py:155-171).
    Clipping inside the loop would be another sampler: a path that leaves the box and comes back ends elsewhere."""
    x = noise
    for i in range(steps):
        x = x + velocity(obs, x, torch.full_like(x[:, :1], i / steps)) / steps
    return x.clamp(-1.0, 1.0)


class FlowMLP(nn.Module):
    """FQL's ``ActorVectorField`` (utils/networks.py:197-232): MLP([s, x, t]) with the raw scalar t, or MLP([s, z])
    (the one-step policy); GELU (tanh), flax init (``init_``), LayerNorm after the act if ``layer_norm: post``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], act: str = "gelu_tanh",
                 layer_norm: bool | str = False, time: bool = True, obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim) if obs_norm else None
        self.time = time
        self.net = init_(mlp(obs_dim + act_dim + int(time), list(hidden), act_dim, act=act, layer_norm=layer_norm),
                         "flax")

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.net(torch.cat([obs, x, t] if self.time else [obs, x], dim=-1))


def flow_net(obs_dim: int, act_dim: int, cfg: dict[str, Any], time: bool = True) -> FlowMLP:
    """A :class:`FlowMLP` from a policy's ``depth``, ``hidden``, ``activation``, ``layer_norm``, ``obs_norm``."""
    return FlowMLP(obs_dim, act_dim, [int(cfg["hidden"])] * int(cfg["depth"]), act=cfg["activation"],
                   layer_norm=cfg["layer_norm"], time=time, obs_norm=obs_norm_enabled(cfg))


def polyak_from(stage: Stage, when: str) -> Stage:
    """Run ``stage``'s target update (``after``) from the pre-update critic (``pre_update``: FQL's ``target_update``,
    fql.py:113-120,130-131) or the post-update one (``post_update``: ``TwinCriticGuidance``'s, most ports')."""
    if when == "pre_update":
        stage.before, stage.after = stage.after, None
    elif when != "post_update":
        raise ValueError(f"unknown polyak_from {when!r}; known: pre_update, post_update")
    return stage


class FlowPolicy(CandidatePolicy):
    """A flow-matching actor (velocity MLP, optional EMA copy, one Adam over every trained net). Subclasses write
    :meth:`loss`; :meth:`extra_nets` adds nets the optimizer trains too (FQL's one-step policy)."""

    config_defaults = Path(__file__).with_name("flow.yaml")

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.flow = flow_net(obs_dim, act_dim, cfg)
        for name, net in self.extra_nets().items():
            setattr(self, name, net)
        trained = [p for p in self.parameters() if p.requires_grad]
        # ema_decay 0: no EMA model (FQL, IFQL act with the live nets); made after ``trained``, so never trained
        self.ema_flow = frozen_copy(self.flow) if cfg["ema_decay"] else None
        self.ema = EMA(cfg["ema_decay"], cfg["ema_every"], cfg["ema_start"])
        self.opt = make_optimizer(trained, cfg["optimizer"], cfg["lr"])
        self.sched = make_scheduler(self.opt, cfg["lr_schedule"], cfg["lr_decay_steps"])
        self.require("flow_steps", "grad_norm", "candidates", "selection", "temperature", "tau")

    def extra_nets(self) -> dict[str, nn.Module]:
        """Nets besides the flow, built before the optimizer so that it trains them too."""
        return {}

    def bc_loss(self, batch: Batch) -> torch.Tensor:
        """The flow-matching loss of the live flow on the batch's actions."""
        return flow_matching_loss(self.flow, batch["observations"], batch["actions"], self.gen())

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError(f"policy {self.algorithm!r} must implement loss()")

    def stages(self) -> list[Stage]:
        """One stage over every trained net (they share no parameters, so one Adam is one Adam per net)."""
        return [Stage("actor", self, self.loss, self.opt, self.sched, float(self.cfg["grad_norm"] or 0.0),
                      self._ema_step if self.ema_flow is not None else None)]

    def _ema_step(self) -> None:
        self.ema.step(self.ema_flow, self.flow, self._host_steps())

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        """n Euler samples (``flow_steps``) per state, through the EMA flow if any: (B, n, act_dim)."""
        rep = obs.repeat_interleave(n, dim=0)
        noise = rng.randn((rep.shape[0], self.act_dim), self.gen(), obs.device)
        flow = self.ema_flow if self.ema_flow is not None else self.flow
        return euler(flow, rep, noise, int(self.cfg["flow_steps"])).reshape(obs.shape[0], n, self.act_dim)
