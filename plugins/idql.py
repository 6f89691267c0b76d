"""IDQL: Implicit Q-Learning as an Actor-Critic Method with Diffusion Policies (Hansen-Estruch et al., 2023).

Guidance (IQL critic, trained on dataset actions only, so it never needs the policy):
    V  <- argmin E[ L2_tau( min_i Qtarg_i(s, a) - V(s) ) ],   L2_tau(u) = |tau - 1(u < 0)| u^2
    Q_i <- argmin E[ (Q_i(s, a) - (r + gamma (1 - d) V(s')))^2 ],   Qtarg <- Polyak(Q, 0.005)
Policy (diffusion behaviour cloning, no Q term):
    eps_theta <- argmin E[ || eps - eps_theta(sqrt(abar_t) a + sqrt(1 - abar_t) eps, t, s) ||^2 ]
Action selection: N candidates from the EMA actor, resampled with w_i = |tau - 1(Q_i - V < 0)|.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modzoo import (
    Batch,
    DDPMPolicy,
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
from modzoo.blocks.nets import ValueNet, init_
from modzoo.blocks.utils import load_optim_state, make_optimizer, make_scheduler, optim_state

CONFIG = Path(__file__).with_name("idql.yaml")


class IQLGuidance(TwinCriticGuidance):
    """IQL critic: twin Q + V by expectile regression (policy-independent).

    IQL's twin Q + V critic: the policy-independent guidance."""

    provides = frozenset({"q", "v"})
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.value = ValueNet(obs_dim, list(cfg["hidden"]), act=cfg["activation"],
                              layer_norm=cfg["layer_norm"], obs_norm=obs_norm_enabled(cfg))
        init_(self.value, cfg["init"])
        self.v_opt: torch.optim.Optimizer | None = make_optimizer(self.value.parameters(), "adam",
                                                                  cfg["value_lr"])
        # V follows the critic's lr_schedule (IDQL: constant; the GFDT authors' pipeline: cosine for both)
        self.v_sched = make_scheduler(self.v_opt, cfg["lr_schedule"], cfg["lr_decay_steps"])
        self.tau = cfg["expectile"]

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs)

    def value_loss(self, batch: Batch, policy: DiffusionPolicy | None = None) -> tuple[torch.Tensor, Metrics]:
        """Expectile regression of V(s) towards the target critics' minimum."""
        with torch.no_grad():
            q_t = self.target_q(batch["observations"], batch["actions"])
        v = self.value(batch["observations"])
        v_loss = expectile_loss(q_t - v, self.tau).mean()
        return v_loss, {"value_loss": v_loss.detach(), "v": v.detach().mean()}

    def td_target(self, batch: Batch, policy: DiffusionPolicy | None = None) -> torch.Tensor:
        """r + gamma (1 - d) V(s'), with V as just updated by the value stage."""
        return self.rewards(batch) + self.gamma * (1 - batch["terminals"]) * self.value(batch["next_observations"])

    def stages(self) -> list[Stage]:
        assert self.v_opt is not None, "update on a frozen guidance"
        if not self.updates_now():
            return []
        return [Stage("v", self.value, self.value_loss, self.v_opt, self.v_sched), self.critic_stage()]

    def drop_optimizers(self) -> None:
        super().drop_optimizers()
        self.v_opt, self.v_sched = None, None

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "v": optim_state(self.v_opt, self.v_sched)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        load_optim_state(state.get("v", {}), self.v_opt, self.v_sched)


class IDQLPolicy(DDPMPolicy):
    """Diffusion BC actor (LN-ResNet, T=5); the argmax of Q over its candidates (selection=expectile: resampled).

    IDQL's actor: pure diffusion BC on an LN-ResNet; the guidance is used only to select actions."""

    needs = frozenset({"q"})  # selection=expectile also needs V (DDPMPolicy.config_needs)

    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}


@hookimpl
def modzoo_guidances() -> list[HalfSpec]:
    return [HalfSpec("idql", IQLGuidance, CONFIG, paper="Hansen-Estruch et al. 2023, arXiv:2304.10573")]


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("idql", IDQLPolicy, CONFIG, paper="Hansen-Estruch et al. 2023, arXiv:2304.10573")]
