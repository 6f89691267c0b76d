"""SRPO: Score Regularized Policy Optimization through Diffusion Behavior (Chen, Lu, Wang, Su, Zhu; ICLR 2024).

Behaviour model first (continuous-time VP SDE, eps-prediction, the first ``behaviour_steps`` of the phase):
    eps_psi <- argmin E_{t ~ U(1e-3, 1), z} [ || eps_psi(alpha_t a + sigma_t z, t, s) - z ||^2 ]
Then a deterministic one-step actor a = pi_theta(s), with eps_psi and the critic frozen:
    L(theta) = E_{s, t ~ U(0.02, 0.98), z} [ w(t) eps_psi(alpha_t a + sigma_t z, t, s) . a  -  beta grad_a Q(s, a) . a ]
    w(t) = sigma_t^2,   Q = the mean of the twin *target* critics (``target_q_ensemble``),   a = pi_theta(s)
Both inner terms are surrogates: their gradients in a are w(t) eps_psi (the behaviour score, which pulls the actor
towards the data's modes, since grad_a KL(pi || mu) is a weighted integral of -score over t) and beta grad_a Q.
No chain is run when acting: the action is pi_theta(s), the cheapest selection in the zoo.
Guidance: any Q (the policy-independent IQL critic ``idql``, SRPO's own, is the guidance-first default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modzoo import Batch, GuidanceModule, HalfSpec, Metrics, Stage, hookimpl, obs_norm_enabled
from modzoo.blocks.nets import DeterministicActor, init_
from modzoo.blocks.policy import BehaviourFirstPolicy
from modzoo.blocks.sde import VPSDEDiffusion
from modzoo.blocks.utils import DEFAULT_DECAY_STEPS, load_optim_state, make_optimizer, make_scheduler, optim_state
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("srpo.yaml")


def score_regularizer(diffusion: VPSDEDiffusion, obs: torch.Tensor, act: torch.Tensor, t_lo: float, t_hi: float,
                      generator: rng.Gen = None) -> torch.Tensor:
    """w(t) eps_psi(alpha_t a + sigma_t z, t, s) with w = sigma_t^2 and t ~ U(t_lo, t_hi), detached: (B, A), the
    gradient in ``act`` of SRPO's behaviour term (``update_SRPO_policy`` with ``WT=VDS``)."""
    b = act.shape[0]
    t = t_lo + (t_hi - t_lo) * rng.rand((b,), generator, act.device)
    z = rng.randn(act.shape, generator, act.device)
    with torch.no_grad():
        eps = diffusion.model(diffusion.perturb(act.detach(), t, z), t, obs)
        return diffusion.sde.alpha_sigma(t)[1][:, None] ** 2 * eps


def srpo_loss(act: torch.Tensor, reg: torch.Tensor, dq: torch.Tensor, beta: float) -> torch.Tensor:
    """mean_b [ reg_b . a_b - beta dq_b . a_b ]: ``reg`` and ``dq`` are constants, so grad_a = reg - beta dq."""
    return ((reg * act).sum(-1) - beta * (dq * act).sum(-1)).mean()


class SRPOPolicy(BehaviourFirstPolicy):
    """Deterministic actor regularized by a frozen behaviour diffusion's score; acts in one forward pass.

    The diffusion (``self.diffusion``) is the behaviour model; ``self.actor`` is what acts."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True
    acts_by_chain = False  # the behaviour diffusion is only a regularizer; its sampler settings never act
    # every draw (t, z, the behaviour stage's noise) goes through modzoo.contract.rng, and grad_a Q is a
    # torch.func.grad, so the stacked trainer's vmap(grad(...)) runs both stages
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        if not isinstance(self.diffusion, VPSDEDiffusion):
            raise ValueError("srpo's behaviour model is the continuous-time VP SDE: set policy.noise_schedule=vp_sde")
        self.actor = init_(DeterministicActor(obs_dim, act_dim, list(cfg["actor_hidden"]),
                                              act=cfg["actor_activation"], obs_norm=obs_norm_enabled(cfg)),
                           cfg["init"])
        horizon = int(cfg["lr_decay_steps"] or DEFAULT_DECAY_STEPS) - self.behaviour_steps
        self.actor_opt = make_optimizer(self.actor.parameters(), "adam", cfg["actor_lr"])
        self.actor_sched = make_scheduler(self.actor_opt, cfg["actor_lr_schedule"], max(1, horizon))
        self.require("beta", "reg_t_min", "reg_t_max", "actor_batch_size")

    def actor_loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        obs = batch["observations"][: int(self.cfg["actor_batch_size"])]
        act = self.actor(obs)
        was = self.diffusion.training
        self.diffusion.eval()  # no dropout in the score the actor is regularized by
        reg = score_regularizer(self.diffusion, obs, act, float(self.cfg["reg_t_min"]),
                                float(self.cfg["reg_t_max"]), self.gen())
        self.diffusion.train(was)
        beta = float(self.cfg["beta"])
        if guidance is None or beta == 0:
            dq, q = torch.zeros_like(act), torch.zeros(())
        else:
            # grad_a of the *target* critics' mean, as SRPO.py:46-51 (q0_target.both); torch.func.grad rather than
            # autograd.grad: it also runs inside the stacked trainer's vmap(grad(...))
            dq, q = torch.func.grad_and_value(lambda a: guidance.target_q_ensemble(obs, a).mean(0).sum())(act.detach())
            q = q / obs.shape[0]
        loss = srpo_loss(act, reg, dq.detach(), beta)
        return loss, {"actor_loss": loss.detach(), "q": q.detach()}

    def second_stage(self) -> Stage:
        return Stage("actor", self.actor, self.actor_loss, self.actor_opt, self.actor_sched,
                     float(self.cfg["grad_norm"] or 0.0))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int = 1, **_: Any) -> torch.Tensor:
        """The actor's action, n times (a deterministic policy has one candidate per state). The chain's
        arguments (``model``, ``sampler`` ...) do not apply, so DDPMPolicy's ``target_actions`` and ``candidates``
        get the actor's action through here."""
        return self.actor(obs).unsqueeze(1).expand(-1, n, -1).contiguous()

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, guidance: GuidanceModule | None = None, n: int | None = None) -> torch.Tensor:
        return self.actor(obs)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "actor": optim_state(self.actor_opt, self.actor_sched)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        load_optim_state(state.get("actor", {}), self.actor_opt, self.actor_sched)


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("srpo", SRPOPolicy, CONFIG, paper="Chen et al. 2024 (SRPO), arXiv:2310.07297")]
