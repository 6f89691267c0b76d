"""IFQL: IDQL with a flow policy (Park, Li, Levine 2025, arXiv:2502.02538, its IDQL baseline; code
seohongpark/fql, agents/ifql.py). IDQL: Hansen-Estruch et al. 2023, arXiv:2304.10573.

Guidance (V and 2 critics, 4x512 GELU with LayerNorm; one loss, one Adam, every term from this step's parameters):
    L_V = mean w(u) u^2,  u = min_k Qtarg_k(s, a) - V(s),  w = 0.9 if u >= 0 else 0.1     the TARGET critics
    y   = r + gamma (1 - d) V(s')                                                          V before this step
    L_Q = mean_batch sum_k (Q_k(s, a) - y)^2                                               heads summed
    L   = L_V + L_Q;   Qtarg <- Polyak(Q, 0.005) from the pre-update critic
Policy (flow behaviour cloning, no Q term):
    L_BC = mean_{batch, dims} (v_theta(s, (1 - t) x0 + t a, t) - (a - x0))^2,  x0 ~ N(0, I), t ~ U[0, 1)
Action selection: 32 Euler samples (10 steps, clipped) per state, the one with the largest min_k Q_k of the
ONLINE critics; every state of a batch at once (the reference handles one unbatched observation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modzoo import (
    Batch,
    DiffusionPolicy,
    GuidanceModule,
    HalfSpec,
    Metrics,
    Stage,
    TwinCriticGuidance,
    hookimpl,
    obs_norm_enabled,
)
from modzoo.blocks.critics import expectile_loss
from modzoo.blocks.flow import FlowPolicy, polyak_from
from modzoo.blocks.nets import ValueNet, init_
from modzoo.blocks.utils import make_optimizer, make_scheduler

CONFIG = Path(__file__).with_name("ifql.yaml")


class IFQLGuidance(TwinCriticGuidance):
    """IQL critic as FQL's code trains it: expectile 0.9 V on the target critics, Q on V(s'), one step for both.

    Policy-independent: it never samples the policy, so it trains first or jointly."""

    provides = frozenset({"q", "v"})
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.value = init_(ValueNet(obs_dim, list(cfg["hidden"]), act=cfg["activation"], layer_norm=cfg["layer_norm"],
                                    obs_norm=obs_norm_enabled(cfg)), cfg["init"])
        # one Adam over V and Q (ifql.py: a single optax.adam over the summed loss)
        self.q_opt = make_optimizer([*self.critic.parameters(), *self.value.parameters()], cfg["optimizer"], cfg["lr"])
        self.q_sched = make_scheduler(self.q_opt, cfg["lr_schedule"], cfg["lr_decay_steps"])
        self.require("expectile", "polyak_from")

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """min_k Q_k of the online critics: what IFQL's sample_actions ranks candidates by (ifql.py:150-151)."""
        return self.critic(obs, act).min(0).values

    def losses(self, batch: Batch, policy: DiffusionPolicy | None = None) -> tuple[torch.Tensor, Metrics]:
        """L_V + L_Q, each target from the parameters before this step (ifql.py:32-58)."""
        obs, act = batch["observations"], batch["actions"]
        with torch.no_grad():
            q_t = self.target_q(obs, act)
            y = self.rewards(batch) + self.gamma * (1 - batch["terminals"]) * self.value(batch["next_observations"])
        v = self.value(obs)
        v_loss = expectile_loss(q_t - v, float(self.cfg["expectile"])).mean()
        qs = self.critic(obs, act)
        q_loss = (qs - y).square().mean(1).sum()
        return v_loss + q_loss, {"critic_loss": q_loss.detach(), "value_loss": v_loss.detach(),
                                 "q": qs.detach().mean(), "v": v.detach().mean()}

    def critic_stage(self) -> Stage:
        assert self.q_opt is not None, "update on a frozen guidance"
        stage = Stage("critic", self, self.losses, self.q_opt, self.q_sched, float(self.cfg["grad_norm"] or 0.0),
                      self.update_target)
        return polyak_from(stage, self.cfg["polyak_from"])


class IFQLPolicy(FlowPolicy):
    """Flow BC actor (4x512 GELU MLP, 10 Euler steps); acts with the argmax of 32 samples under the guidance's Q.

    IFQL's actor: pure flow-matching BC; the guidance only ranks candidates."""

    needs = frozenset({"q"})
    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}


@hookimpl
def modzoo_guidances() -> list[HalfSpec]:
    return [HalfSpec("ifql", IFQLGuidance, CONFIG, paper="Park, Li, Levine 2025 (IFQL), arXiv:2502.02538")]


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("ifql", IFQLPolicy, CONFIG, paper="Park, Li, Levine 2025 (IFQL), arXiv:2502.02538")]
