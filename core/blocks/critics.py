"""``TwinCritic``: an ensemble Q with its Polyak target and optimizer, the part both papers' critics share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..contract.interfaces import GuidanceModule
from ..contract.normalization import obs_norm_enabled
from ..contract.stages import Stage, run_stages
from .nets import EnsembleQ, init_
from .utils import frozen_copy, load_optim_state, make_optimizer, make_scheduler, optim_state, polyak_update


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric L2: tau * u^2 for u > 0, (1 - tau) * u^2 otherwise (IQL eq. 1): the V loss of every IQL-style
    guidance (IDQL's, IFQL's; at u = 0 the weight does not matter, so ``>`` and ``>=`` give the same loss)."""
    return torch.where(diff > 0, tau, 1 - tau) * diff**2


class TwinCriticGuidance(GuidanceModule):
    """Guidance built on E critics Q_i(s, a) (default 2) with a Polyak-averaged target copy.

    Subclasses implement :meth:`td_target`; the update is one stage, sum_i MSE(Q_i, target) then the Polyak
    update; an update with more stages (IQL's V step) extends ``stages``.
    """

    config_defaults = Path(__file__).with_name("critics.yaml")

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.critic = init_(EnsembleQ(obs_dim, act_dim, list(cfg["hidden"]), cfg["num_q"], act=cfg["activation"],
                                      layer_norm=cfg["layer_norm"], obs_norm=obs_norm_enabled(cfg)), cfg["init"])
        self.critic_target = frozen_copy(self.critic)
        self.q_opt: torch.optim.Optimizer | None = make_optimizer(self.critic.parameters(), cfg["optimizer"], cfg["lr"])
        self.q_sched = make_scheduler(self.q_opt, cfg["lr_schedule"], cfg["lr_decay_steps"])
        self.gamma, self.polyak = cfg["gamma"], cfg["polyak"]
        self.register_buffer("reward_scale", torch.ones(()))
        self.require("reward_norm", "grad_norm", "target_every", "update_every", "update_target")

    def prepare(self, dataset: Any) -> None:
        """``reward_norm: iql`` scales rewards by 1000 / (max - min episode return), IQL's locomotion rule."""
        if self.cfg["reward_norm"] == "iql":
            rets = dataset.episode_returns()
            spread = float(rets.max() - rets.min()) if len(rets) > 1 else 0.0
            self.reward_scale.fill_(1000.0 / spread if spread > 0 else 1.0)

    def rewards(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["rewards"] * self.reward_scale

    def q_ensemble(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, act)

    @property
    def num_q(self) -> int:
        """Members in the critic ensemble."""
        return self.critic.body.ensemble

    def q_members(self, obs: torch.Tensor, act: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``q_ensemble(obs, act)[idx]`` computing only those members (``idx``: 1-D index tensor): (len(idx), B)."""
        return self.critic.members(obs, act, idx)

    def target_q_ensemble(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Every member of the Polyak target ensemble: (E, B), differentiable w.r.t. ``act``."""
        return self.critic_target(obs, act)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.target_q(obs, act)

    def target_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """min over the target ensemble: (B,)."""
        return self.critic_target(obs, act).min(0).values

    def td_target(self, batch: dict[str, torch.Tensor], policy: Any = None) -> torch.Tensor:
        """The regression target of every critic member, (B,); computed without gradients."""
        raise NotImplementedError(f"guidance {self.algorithm!r} must implement td_target() (or extend stages())")

    def q_loss(self, batch: dict[str, torch.Tensor], policy: Any = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sum_i MSE(Q_i(s, a), target), the critics' loss."""
        with torch.no_grad():
            target = self.td_target(batch, policy)
        qs = self.critic(batch["observations"], batch["actions"])
        loss = F.mse_loss(qs, target.expand_as(qs), reduction="none").mean(1).sum()
        return loss, {"critic_loss": loss.detach(), "q": qs.detach().mean()}

    def update_target(self) -> None:
        """Polyak-average the target critics (unless ``update_target`` is off: the GFDT authors' literal recipe),
        on every ``target_every``-th update (counted from 0, as CleanDiffuser's DQL pipeline does)."""
        every = int(self.cfg["target_every"] or 1)
        if self.cfg["update_target"] and (every == 1 or self.steps % every == 0):
            polyak_update(self.critic_target, self.critic, self.polyak)

    def updates_now(self) -> bool:
        """False on calls ``update_every`` > 1 skips (CleanDiffuser's IDQL trains its critic every second step)."""
        every = int(self.cfg["update_every"] or 1)
        return every == 1 or self.steps % every == 0

    def critic_stage(self) -> Stage:
        assert self.q_opt is not None, "update on a frozen guidance"
        return Stage("q", self.critic, self.q_loss, self.q_opt, self.q_sched,
                     float(self.cfg["grad_norm"] or 0.0), self.update_target)

    def stages(self) -> list[Stage]:
        return [self.critic_stage()] if self.updates_now() else []

    def update(self, batch: dict[str, torch.Tensor], policy: Any = None) -> dict[str, Any]:
        metrics = run_stages(self.stages(), batch, policy)
        self._steps += 1
        # a skipped call (update_every) reports the last real update's metrics, so logs stay complete
        if metrics:
            self._last_metrics = metrics
        return metrics or dict(getattr(self, "_last_metrics", {}))

    def drop_optimizers(self) -> None:
        self.q_opt, self.q_sched = None, None

    def extra_state(self) -> dict[str, Any]:
        return {"q": optim_state(self.q_opt, self.q_sched)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        load_optim_state(state.get("q", {}), self.q_opt, self.q_sched)
