"""DTQL: Diffusion Trusted Q-Learning (Chen, Wang, Zhou 2024, arXiv:2405.19690).

Two policies are trained on the same batch, one after the other:

    BC diffusion (EDM, Karras et al. 2022; modzoo.blocks.karras):
        theta <- argmin E[ (1 / c_out^2) || D_theta(a + sigma eps, sigma, s) - a ||^2 ],
        sigma ~ log-logistic(ln 0.5, 0.5) truncated to [0.002, 80],  D clamped to [-1, 1]
    one-step policy pi_phi(s) = tanh(N(mu_phi(s), std_phi(s))), log std clamped to [-5, 2]:
        phi <- argmin  alpha L_TR(phi) - E[ min_i Q_i(s, a_pi) ]  (- gamma E[ log pi_phi(a | s) ], 0 on locomotion),
        L_TR(phi) = E[ (1 / c_out^2) || D_theta(a_pi + sigma eps, sigma, s) - a_pi ||^2 ],  a_pi ~ pi_phi(s)

The trust-region loss L_TR is the BC loss evaluated at the policy's own action: it is small only where the
behaviour diffusion model denoises well, i.e. inside the data's support. Its gradient reaches a_pi through the
diffusion model, which the actor's step does not move. The first ``pretrain_steps`` updates train only the BC
diffusion (the authors pretrain it, with the critic, for 50k steps).

Q_i are the guidance's online critics (``q_ensemble``); selection ranks with its target (``q``), as the authors do.
Action selection: 1024 actions of the one-step policy per state, one drawn from softmax(Q). Acting costs one
actor pass and one Q pass over the candidates; no diffusion chain is ever sampled.
Guidance: any Q. DTQL's own critic is IQL's (expectile V, twin Q, never queries the policy): ``idql``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modzoo import (
    Batch,
    DiffusionPolicy,
    GuidanceModule,
    HalfSpec,
    Metrics,
    ObsNorm,
    Stage,
    hookimpl,
    obs_norm_enabled,
    run_stages,
)
from modzoo.blocks.karras import KarrasDiffusion
from modzoo.blocks.nets import SinusoidalPosEmb, activation, mlp
from modzoo.blocks.selection import select_with_guidance
from modzoo.blocks.utils import load_optim_state, make_optimizer, make_scheduler, optim_state
from modzoo.contract import rng

CONFIG = Path(__file__).with_name("dtql.yaml")


class ScoreMLP(nn.Module):
    """DTQL's behaviour denoiser F(x, c_noise, s): [x, s, emb(c_noise)] -> Linear -> depth x (Linear, Mish) ->
    Linear. The first layer has no activation after it (the authors' ``MLPNetwork``); the time embedding is
    sinusoidal(t_dim) -> Linear(t_dim, 2 t_dim) -> Mish -> Linear(2 t_dim, t_dim), of the real c_noise."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 3, t_dim: int = 16,
                 act: str = "mish", obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim) if obs_norm else None
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(t_dim), nn.Linear(t_dim, t_dim * 2), activation(act),
                                      nn.Linear(t_dim * 2, t_dim))
        layers: list[nn.Module] = [nn.Linear(act_dim + obs_dim + t_dim, hidden)]
        for _ in range(depth):
            layers += [nn.Linear(hidden, hidden), activation(act)]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, act_dim))

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.net(torch.cat([x, obs, self.time_mlp(noise_level)], dim=-1))


class TanhGaussianActor(nn.Module):
    """The one-step policy (the authors' ``DiagGaussianActorTanhAction``): s -> depth x (Linear, ReLU) ->
    (mu, log std), a = tanh(mu + std eps). Orthogonal weights and zero biases, as there."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 3,
                 log_std_bounds: tuple[float, float] = (-5.0, 2.0), obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = ObsNorm(obs_dim) if obs_norm else None
        self.net = mlp(obs_dim, [hidden] * depth, 2 * act_dim, act="relu")
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.orthogonal_(m.weight)
                    m.bias.zero_()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, std) of the pre-tanh Gaussian."""
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        mu, log_std = self.net(obs).chunk(2, dim=-1)
        return mu, log_std.clamp(*self.log_std_bounds).exp()

    def rsample(self, obs: torch.Tensor, generator: rng.Gen = None) -> torch.Tensor:
        """a = tanh(mu + std eps): reparameterized, so Q and the trust-region loss differentiate through it."""
        mu, std = self(obs)
        return torch.tanh(mu + std * rng.randn(mu.shape, generator, mu.device))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """log N(atanh(a / 1.001); mu, std) summed over action dims, (B,): the authors' ``log_prob`` (no tanh
        Jacobian; 1.001 keeps atanh finite at the action bounds)."""
        mu, std = self(obs)
        return torch.distributions.Normal(mu, std).log_prob(torch.atanh(act / 1.001)).sum(-1)


class DTQLPolicy(DiffusionPolicy):
    """EDM behaviour diffusion as a trust region for a one-step tanh-Gaussian actor; 1024 candidates, softmax(Q).

    The BC diffusion step, then the actor step alpha L_TR - Q on the same batch."""

    needs = frozenset({"q"})
    uses_guidance_in_training = True
    # Both stages draw every random number (sigma, eps, the actor's noise) through modzoo.contract.rng, and
    # update() is run_stages(stages()) plus the step count, which is what the stacked trainer runs.
    stackable = True

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        norm = obs_norm_enabled(cfg)
        score = ScoreMLP(obs_dim, act_dim, hidden=cfg["hidden"], depth=cfg["depth"], t_dim=cfg["t_dim"],
                         act=cfg["activation"], obs_norm=norm)
        self.diffusion = KarrasDiffusion(score, act_dim, sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"],
                                         sigma_data=cfg["sigma_data"], sigma_scale=cfg["sigma_scale"], clip=1.0)
        self.actor = TanhGaussianActor(obs_dim, act_dim, hidden=cfg["hidden"], depth=cfg["actor_depth"],
                                       log_std_bounds=(cfg["log_std_min"], cfg["log_std_max"]), obs_norm=norm)
        self.bc_opt, self.bc_sched = self._optimizer(self.diffusion)
        self.actor_opt, self.actor_sched = self._optimizer(self.actor)
        self.pretrain_steps = int(cfg["pretrain_steps"])
        self.require("alpha", "gamma", "grad_norm", "candidates", "selection", "temperature", "tau")

    def _optimizer(self, module: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        opt = make_optimizer(module.parameters(), self.cfg["optimizer"], self.cfg["lr"], self.cfg["weight_decay"])
        return opt, make_scheduler(opt, self.cfg["lr_schedule"], self.cfg["lr_decay_steps"])

    # ---- the two losses ---------------------------------------------------------------------------------------
    def bc_loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        """The EDM denoising loss on the dataset's actions."""
        loss = self.diffusion.loss(batch["actions"], batch["observations"], generator=self.gen())
        return loss, {"bc_loss": loss.detach()}

    def actor_loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        """alpha L_TR - mean Q (raw, the minimum of the guidance's *online* members, as ``self.critic.q_min`` in
        the authors' ``agents/dtql.py:144``) - gamma mean log pi(a_data | s)."""
        obs = batch["observations"]
        a_pi = self.actor.rsample(obs, self.gen())
        tr = self.diffusion.loss(a_pi, obs, generator=self.gen())  # fresh sigma and eps
        loss = float(self.cfg["alpha"]) * tr
        out: Metrics = {"tr_loss": tr.detach()}
        if guidance is not None:
            q = guidance.q_ensemble(obs, a_pi).min(0).values.mean()
            loss = loss - q
            out["q_loss"] = -q.detach()
        gamma = float(self.cfg["gamma"])
        if gamma > 0:
            log_prob = self.actor.log_prob(obs, batch["actions"]).mean()
            loss = loss - gamma * log_prob
            out["log_prob"] = log_prob.detach()
        out["actor_loss"] = loss.detach()
        return loss, out

    def stages(self) -> list[Stage]:
        """BC diffusion, then the actor (which sees the BC step's new parameters). While pretraining only the
        first, with a constant learning rate: the authors' schedulers start counting after pretraining."""
        clip = float(self.cfg["grad_norm"] or 0.0)
        # steps is read (a host sync on a GPU) only when there is a pretraining phase to end
        pretraining = self.pretrain_steps > 0 and self.steps < self.pretrain_steps
        bc = Stage("bc", self.diffusion, self.bc_loss, self.bc_opt, None if pretraining else self.bc_sched, clip)
        if pretraining:
            return [bc]
        return [bc, Stage("actor", self.actor, self.actor_loss, self.actor_opt, self.actor_sched, clip)]

    def update(self, batch: Batch, guidance: GuidanceModule | None = None) -> Metrics:
        self.train()
        metrics = run_stages(self.stages(), batch, guidance)
        self._steps += 1
        return metrics

    # ---- acting -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        """n stochastic actions of the one-step policy per state: (B, n, act_dim)."""
        rep = obs.repeat_interleave(n, dim=0)
        return self.actor.rsample(rep, self.gen()).reshape(obs.shape[0], n, self.act_dim)

    @torch.inference_mode()
    def act(self, obs: torch.Tensor, guidance: GuidanceModule | None = None, n: int | None = None) -> torch.Tensor:
        """One of ``candidates`` actor samples per state, drawn with the configured rule (DTQL: softmax of raw
        Q, temperature 1); without a guidance, the actor's own sample."""
        n = int(n or self.cfg["candidates"])
        cands = self.sample(obs, n)
        if guidance is None or n == 1:
            return cands[:, 0]
        return select_with_guidance(cands, obs, guidance, self.cfg["selection"],
                                    temperature=self.cfg["temperature"], tau=self.cfg["tau"], generator=self.gen())

    def extra_state(self) -> dict[str, Any]:
        return {"bc": optim_state(self.bc_opt, self.bc_sched), "actor": optim_state(self.actor_opt, self.actor_sched)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        load_optim_state(state.get("bc", {}), self.bc_opt, self.bc_sched)
        load_optim_state(state.get("actor", {}), self.actor_opt, self.actor_sched)


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("dtql", DTQLPolicy, CONFIG, paper="Chen, Wang, Zhou 2024 (DTQL), arXiv:2405.19690")]
