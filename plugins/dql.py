"""Diffusion-QL: Diffusion Policies as an Expressive Policy Class for Offline RL (Wang, Hunt, Zhou, 2023).

Guidance (twin Q, Polyak target 0.005, gamma 0.99):
    Q_i <- argmin E[ (Q_i(s, a) - (r + gamma (1 - d) min_j Qtarg_j(s', a')))^2 ],  a' ~ pi_EMA(. | s')
    (``max_q_backup``: a' = the best of 10 EMA samples, per critic.) Because a' comes from the policy being
    trained, this critic can only train jointly. Two policy-independent variants serve guidance-first runs:
    ``target_actions: dataset`` (SARSA on the data's own next actions, i.e. fitted-Q evaluation of the
    behaviour policy) and ``target_actions: untrained`` (the GFDT authors' literal pretraining recipe: a' from a
    never-trained actor and a frozen target network; offered only to reproduce their numbers).
Policy:
    L(theta) = L_bc(theta) - eta * Q_i(s, a0_theta) / mean|Q_j(s, a0_theta)|,  (i, j) a random order of (1, 2),
    where a0_theta is the policy's own denoised action, differentiated through the whole reverse chain.
Action selection: 50 candidates from the live actor, one sampled from softmax(min_i Qtarg_i).
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
    TwinCriticGuidance,
    hookimpl,
    obs_norm_enabled,
)
from modzoo.blocks.diffusion import GaussianDiffusion
from modzoo.blocks.nets import MLPDenoiser
from modzoo.blocks.utils import frozen_copy
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("dql.yaml")
TARGET_ACTIONS = ("policy", "dataset", "untrained")


def normalized_q_loss(qs: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Diffusion-QL's Q term: -Q_i.mean() / |Q_j|.mean().detach() for ``order`` = (i, j) of an ensemble (E, B).

    Dividing by the other critic's mean magnitude makes eta scale-free across tasks and reward scales.
    """
    qa = qs.index_select(0, order[:1])
    qb = qs.index_select(0, order[1:2])
    return -qa.mean() / qb.abs().mean().detach()


class DQLGuidance(TwinCriticGuidance):
    """Diffusion-QL twin Q; TD targets from the EMA policy (joint only) or, by config, SARSA.

    Diffusion-QL's twin-Q critic (3x256 Mish)."""

    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        self.mode = cfg["target_actions"]
        if self.mode not in TARGET_ACTIONS:
            raise ValueError(f"dql guidance: unknown target_actions {self.mode!r}; known: {list(TARGET_ACTIONS)}")
        self.untrained_actor: GaussianDiffusion | None = None
        if self.mode == "untrained":
            # The authors' pretraining script samples a' from an actor that is built and never trained.
            torch.manual_seed(cfg.get("seed", 0))
            denoiser = MLPDenoiser(obs_dim, act_dim, obs_norm=obs_norm_enabled(cfg))
            self.untrained_actor = frozen_copy(GaussianDiffusion(denoiser, act_dim, T=5))

    @property
    def requires_policy(self) -> bool:
        return self.mode == "policy"

    def _next_actions(self, batch: Batch, policy: DiffusionPolicy | None) -> torch.Tensor:
        nxt = batch["next_observations"]
        if self.mode == "dataset":
            return batch["next_actions"]
        if self.mode == "untrained":
            return self.untrained_actor.sample(nxt, generator=self.gen())
        if policy is None:
            raise RuntimeError("dql guidance with target_actions=policy needs the policy (joint training only)")
        return policy.target_actions(nxt)

    def td_target(self, batch: Batch, policy: DiffusionPolicy | None = None) -> torch.Tensor:
        nxt = batch["next_observations"]
        if self.cfg["max_q_backup"] and self.mode == "policy":
            k = 10  # best of 10 EMA samples per critic, then the min over critics
            rep = nxt.repeat_interleave(k, 0)
            qn = self.critic_target(rep, policy.target_actions(rep)).view(-1, nxt.shape[0], k)
            next_q = qn.max(-1).values.min(0).values
        else:
            next_q = self.target_q(nxt, self._next_actions(batch, policy))
        return self.rewards(batch) + self.gamma * (1 - batch["terminals"]) * next_q


class DQLPolicy(DDPMPolicy):
    """Diffusion actor (3x256 Mish MLP, T=5) with the normalized Q term through the chain.

    Diffusion-QL's actor: BC loss plus eta times the normalized Q of its own denoised action."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True
    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        obs = batch["observations"]
        bc = self.bc_loss(batch)
        eta = float(self.cfg["eta"])
        out: Metrics = {"bc_loss": bc.detach()}
        loss = bc
        if guidance is not None and eta > 0:
            new_act = self.diffusion.sample(obs, generator=self.gen())  # live actor, grad through the chain
            if getattr(guidance, "q_members", None) is not None and guidance.num_q >= 2:
                # Only critic i is differentiated and critic j only normalizes (detached), so evaluate just
                # those two, and j without a graph: the same loss without the backward through j.
                order = rng.randperm(guidance.num_q, self.gen(), obs.device)
                qa = guidance.q_members(obs, new_act, order[:1])
                with torch.no_grad():
                    qb = guidance.q_members(obs, new_act, order[1:2])
                q_loss = -qa.mean() / qb.abs().mean()
            else:
                qs = guidance.q_ensemble(obs, new_act)
                order = rng.randperm(qs.shape[0], self.gen(), obs.device)
                if qs.shape[0] == 1:
                    order = torch.zeros(2, dtype=torch.long, device=obs.device)
                q_loss = normalized_q_loss(qs, order)
            loss = bc + eta * q_loss
            out["q_loss"] = q_loss.detach()
        out["actor_loss"] = loss.detach()
        return loss, out


@hookimpl
def modzoo_guidances() -> list[HalfSpec]:
    return [HalfSpec("dql", DQLGuidance, CONFIG, paper="Wang, Hunt, Zhou 2023, arXiv:2208.06193")]


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("dql", DQLPolicy, CONFIG, paper="Wang, Hunt, Zhou 2023, arXiv:2208.06193")]
