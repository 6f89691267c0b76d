"""FQL: Flow Q-Learning (Park, Li, Levine 2025, arXiv:2502.02538; code seohongpark/fql, agents/fql.py).

Guidance (2 critics, 4x512 GELU with LayerNorm, Polyak target tau = 0.005 from the *pre-update* critic):
    a' = clip(mu_omega(s', z'), -1, 1),  z' ~ N(0, I)            the online one-step policy, no target actor
    y  = r + gamma (1 - d) agg_k Qtarg_k(s', a'),  agg = mean (default) or min      (``q_agg``)
    L_Q = mean_{k, batch} (Q_k(s, a) - y)^2                       mean over heads, not sum
    (``target_actions: dataset`` bootstraps from the data's a' instead: SARSA, so it can train guidance-first.)
Policy (a BC flow v_theta and a one-step policy mu_omega(s, z), one Adam over both):
    L_BC = mean_{batch, dims} (v_theta(s, (1 - t) x0 + t a, t) - (a - x0))^2,  x0 ~ N(0, I), t ~ U[0, 1)
    L_D  = mean_{batch, dims} (mu_omega(s, z) - Euler_theta(s, z))^2          the SAME z; the teacher under no_grad
    L_q  = -mean_batch mean_k Q_k(s, clip(mu_omega(s, z), -1, 1))            the critic frozen, the action not
           (x stopgrad(1 / mean|q|) with ``normalize_q_loss``)
    L    = L_BC + alpha L_D + L_q                                              alpha weights the distillation only
Acting: clip(mu_omega(s, z), -1, 1) with a fresh z ~ N(0, I) (at evaluation too): one network call, no chain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modzoo import Batch, DiffusionPolicy, GuidanceModule, HalfSpec, Metrics, Stage, TwinCriticGuidance, hookimpl
from modzoo.blocks.flow import FlowPolicy, euler, flow_net, polyak_from
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("fql.yaml")
TARGET_ACTIONS = ("policy", "dataset")
Q_AGGS = ("mean", "min")


# ---- the losses, as equations ----------------------------------------------------------------------------------
def td_target(rewards: torch.Tensor, terminals: torch.Tensor, next_qs: torch.Tensor, gamma: float,
              q_agg: str) -> torch.Tensor:
    """r + gamma (1 - d) agg_k Qtarg_k(s', a'), ``next_qs`` (E, B) (fql.py:28-34)."""
    if q_agg not in Q_AGGS:
        raise ValueError(f"unknown q_agg {q_agg!r}; known: {list(Q_AGGS)}")
    next_q = next_qs.min(0).values if q_agg == "min" else next_qs.mean(0)
    return rewards + gamma * (1 - terminals) * next_q


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean over batch and action dims of (student - teacher)^2 (fql.py:66); the teacher is a constant."""
    return (student - teacher.detach()).square().mean()


def q_term(qs: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_q, q): q = the mean of the heads ``qs`` (E, B), whatever q_agg says (fql.py:69-76); L_q = -mean q,
    divided by the detached mean |q| with ``normalize`` (makes alpha comparable across reward scales)."""
    q = qs.mean(0)
    loss = -q.mean()
    if normalize:
        loss = loss / q.abs().mean().detach()
    return loss, q


# ---- the halves --------------------------------------------------------------------------------------------------
class FQLGuidance(TwinCriticGuidance):
    """FQL's critic: 2 heads 4x512 with LayerNorm, target from the online one-step policy (joint only) or SARSA.

    TD targets from the policy's ``target_actions`` (FQL's one-step policy with fresh noise), aggregated by
    ``q_agg``; the critics' MSE averaged over heads; Polyak from the pre-update critic by default."""

    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.mode = cfg["target_actions"]
        if self.mode not in TARGET_ACTIONS:
            raise ValueError(f"fql guidance: unknown target_actions {self.mode!r}; known: {list(TARGET_ACTIONS)}")
        if cfg["q_agg"] not in Q_AGGS:
            raise ValueError(f"fql guidance: unknown q_agg {cfg['q_agg']!r}; known: {list(Q_AGGS)}")
        self.require("polyak_from")

    @property
    def requires_policy(self) -> bool:
        return self.mode == "policy"

    def td_target(self, batch: Batch, policy: DiffusionPolicy | None = None) -> torch.Tensor:
        nxt = batch["next_observations"]
        if self.mode == "dataset":
            next_act = batch["next_actions"]
        elif policy is None:
            raise RuntimeError("fql guidance with target_actions=policy needs the policy (joint training only)")
        else:
            next_act = policy.target_actions(nxt).clamp(-1.0, 1.0)  # fql.py:25-26 clips again
        return td_target(self.rewards(batch), batch["terminals"], self.critic_target(nxt, next_act), self.gamma,
                         self.cfg["q_agg"])

    def q_loss(self, batch: Batch, policy: Any = None) -> tuple[torch.Tensor, Metrics]:
        """mean_{k, batch} (Q_k - y)^2 = the base's sum over heads / E (fql.py:36-37)."""
        loss, metrics = super().q_loss(batch, policy)
        loss = loss / self.num_q
        return loss, {**metrics, "critic_loss": loss.detach()}

    def critic_stage(self) -> Stage:
        return polyak_from(super().critic_stage(), self.cfg["polyak_from"])


class FQLPolicy(FlowPolicy):
    """Flow BC distilled into a one-step policy that maximizes Q; acts with one network call.

    The BC flow, alpha x distillation into the one-step policy (same noise), and the Q term through its action."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.require("alpha", "normalize_q_loss")

    def extra_nets(self) -> dict[str, nn.Module]:
        """mu_omega(s, z): the same MLP as the flow, without t (fql.py:217-222)."""
        return {"actor": flow_net(self.obs_dim, self.act_dim, self.cfg, time=False)}

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        obs = batch["observations"]
        bc = self.bc_loss(batch)
        z = rng.randn(batch["actions"].shape, self.gen(), obs.device)
        with torch.no_grad():  # the teacher: no gradient from L_D reaches the flow
            teacher = euler(self.flow, obs, z, int(self.cfg["flow_steps"]))
        student = self.actor(obs, z)  # raw in L_D, clipped only before the critic
        distill = distillation_loss(student, teacher)
        loss = bc + float(self.cfg["alpha"]) * distill
        out: Metrics = {"bc_loss": bc.detach(), "distill_loss": distill.detach()}
        if guidance is not None:
            q_loss, q = q_term(guidance.q_ensemble(obs, student.clamp(-1.0, 1.0)),
                               bool(self.cfg["normalize_q_loss"]))
            loss = loss + q_loss
            out.update(q_loss=q_loss.detach(), q=q.detach().mean())
        out["actor_loss"] = loss.detach()
        return loss, out

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        """n one-step actions per state, clip(mu_omega(s, z), -1, 1) with fresh z (fql.py:135-153): what acting,
        candidates and the critic's TD target use; the flow only teaches."""
        rep = obs.repeat_interleave(n, dim=0)
        z = rng.randn((rep.shape[0], self.act_dim), self.gen(), obs.device)
        return self.actor(rep, z).clamp(-1.0, 1.0).reshape(obs.shape[0], n, self.act_dim)


@hookimpl
def modzoo_guidances() -> list[HalfSpec]:
    return [HalfSpec("fql", FQLGuidance, CONFIG, paper="Park, Li, Levine 2025 (FQL), arXiv:2502.02538")]


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("fql", FQLPolicy, CONFIG, paper="Park, Li, Levine 2025 (FQL), arXiv:2502.02538")]
