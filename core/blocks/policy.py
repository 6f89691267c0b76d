"""``DDPMPolicy``: the machinery every diffusion policy shares (denoiser, diffusion, EMA copy, optimizer and LR
schedule, ``sample``/``act`` choosing among candidates with any guidance), so plugins only write their loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..contract.interfaces import Batch, DiffusionPolicy, GuidanceModule, Metrics
from ..contract.normalization import obs_norm_enabled
from ..contract.stages import Stage, run_stages
from .diffusion import GaussianDiffusion
from .nets import LNResNetDenoiser, MLPDenoiser, init_
from .sde import VPSDEDiffusion
from .selection import RULE_NEEDS, select_with_guidance
from .utils import DEFAULT_DECAY_STEPS, EMA, frozen_copy, load_optim_state, make_optimizer, make_scheduler, optim_state


def build_denoiser(obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> torch.nn.Module:
    """``cfg['denoiser']`` (``mlp``: Diffusion-QL's; ``ln_resnet``: IDQL's), with a CFG condition if ``cond_dim``."""
    common = {"hidden": cfg["hidden"], "t_dim": cfg["t_dim"], "act": cfg["activation"],
              "cond_dim": int(cfg["cond_dim"]), "cond_emb": int(cfg["cond_emb"]), "obs_norm": obs_norm_enabled(cfg)}
    if cfg["denoiser"] == "mlp":
        return MLPDenoiser(obs_dim, act_dim, depth=cfg["depth"], **common)
    if cfg["denoiser"] == "ln_resnet":
        return LNResNetDenoiser(obs_dim, act_dim, blocks=cfg["blocks"], dropout=cfg["dropout"],
                                cond_hidden=cfg["cond_hidden"], time_embed=cfg["time_embed"], **common)
    raise ValueError(f"unknown denoiser {cfg['denoiser']!r}; known: mlp, ln_resnet")


def behaviour_split(fraction: float, policy_steps: int) -> int:
    """A two-stage policy's behaviour-model steps for ``behaviour_steps`` given as a fraction of the policy phase,
    leaving the second stage at least one step of two or more (the trainer records the count in the config)."""
    return max(0, min(round(fraction * policy_steps), policy_steps - 1))


class CandidatePolicy(DiffusionPolicy):
    """What :class:`DDPMPolicy` and :class:`~modzoo.blocks.flow.FlowPolicy` share: the update (``stages``, then
    the step count), acting by ``selection`` among ``candidates``, and the checkpointed ``opt`` and ``sched``."""

    config_needs = {"selection": RULE_NEEDS}  # ranking candidates by expectile weights reads V
    opt: torch.optim.Optimizer
    sched: Any

    def update(self, batch: Batch, guidance: GuidanceModule | None = None) -> Metrics:
        self.train()
        metrics = run_stages(self.stages(), batch, guidance)
        self.count_step()
        return metrics

    def count_step(self) -> None:
        """One update done: the step counter, and its host-side copy for the EMA schedule."""
        step = self._host_steps()
        self._steps += 1
        self._host_count = (step + 1, self._steps, self._steps._version)

    def _host_steps(self) -> int:
        """``steps`` for the EMA schedule without a host sync per step: read again only when the buffer's identity
        or version counter shows it was replaced or written (a loaded state dict, a device move, ``fill_``)."""
        count = getattr(self, "_host_count", None)
        if count is None or count[1] is not self._steps or count[2] != self._steps._version:
            return self.steps
        return count[0]

    def candidates(self, obs: torch.Tensor, n: int) -> torch.Tensor:
        """The n actions per state that acting chooses among: (B, n, act_dim)."""
        return self.sample(obs, n)

    @torch.inference_mode()  # actions for an environment never enter a graph: no autograd bookkeeping at all
    def act(self, obs: torch.Tensor, guidance: GuidanceModule | None = None, n: int | None = None) -> torch.Tensor:
        """One of ``candidates`` samples per state chosen by ``selection`` (no guidance or n = 1: the first)."""
        n = int(n or self.cfg["candidates"])
        cands = self.candidates(obs, n)
        if guidance is None or n == 1:
            return cands[:, 0]
        return select_with_guidance(cands, obs, guidance, self.cfg["selection"], temperature=self.cfg["temperature"],
                                    tau=self.cfg["tau"], generator=self.gen())

    def extra_state(self) -> dict[str, Any]:
        return optim_state(self.opt, self.sched)

    def load_extra_state(self, state: dict[str, Any]) -> None:
        load_optim_state(state, self.opt, self.sched)


class DDPMPolicy(CandidatePolicy):
    """A DDPM actor with EMA, an optimizer and candidate selection; subclasses implement :meth:`loss`, the
    algorithm's actor loss, and get the update (optimizer step, grad-norm clip, LR schedule, EMA) from here."""

    config_defaults = Path(__file__).with_name("policy.yaml")
    acts_by_chain = True  # a subclass acting another way (SRPO's actor) says False

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        denoiser = init_(build_denoiser(obs_dim, act_dim, cfg), cfg["init"])
        if cfg["noise_schedule"] == "vp_sde":
            self.diffusion = VPSDEDiffusion(denoiser, act_dim, steps=cfg["T"], sampler=cfg["sampler"])
        else:
            self.diffusion = GaussianDiffusion(denoiser, act_dim, T=cfg["T"], schedule=cfg["noise_schedule"],
                                               sampler=cfg["sampler"])
        self.ema_diffusion = frozen_copy(self.diffusion)
        self.ema = EMA(cfg["ema_decay"], cfg["ema_every"], cfg["ema_start"])
        self.opt = make_optimizer(self.diffusion.parameters(), cfg["optimizer"], cfg["lr"], cfg["weight_decay"])
        self.sched = make_scheduler(self.opt, cfg["lr_schedule"], cfg["lr_decay_steps"])
        self.require("loss_reduce", "grad_norm", "act_model", "act_temperature", "act_sampler", "sample_steps",
                     "ddim_eta")
        if type(self).act is CandidatePolicy.act:  # the keys of the candidate selection below (SfBC has its own)
            self.require("candidates", "selection", "temperature", "tau")

    def bc_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The eps-MSE BC loss, reduced over action dims by ``loss_reduce`` (IDQL sums, Diffusion-QL averages)."""
        per = self.diffusion.loss(batch["actions"], batch["observations"], generator=self.gen(), reduce=False)
        if self.cfg["loss_reduce"] == "sum":
            per = per * self.act_dim
        return per.mean()

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        """The actor's training loss (a scalar: reduce a per-sample loss such as ``diffusion.loss(...,
        reduce=False)``, shape (B,), with your own weights first) and its metrics. Draw every random number from
        ``self.gen()`` through :mod:`modzoo.contract.rng`: then seeds can also train stacked (``stackable``)."""
        raise NotImplementedError(f"policy {self.algorithm!r} must implement loss()")

    def stages(self) -> list[Stage]:
        """One stage: the denoiser's optimizer step (clipped to ``grad_norm``), then the EMA update."""
        return [Stage("actor", self.diffusion, self.loss, self.opt, self.sched,
                      float(self.cfg["grad_norm"] or 0.0), self._ema_step)]

    def _ema_step(self) -> None:
        self.ema.step(self.ema_diffusion, self.diffusion, self._host_steps())

    def sampling_guide(self, diffusion: GaussianDiffusion, obs: torch.Tensor):
        """Override to steer sampling: a ``guide(x_t, t, obs) -> eps`` for :meth:`GaussianDiffusion.sample`, or None;
        ``diffusion`` is the model sampled (EMA or live), ``obs`` the repeated states (CFG mixes two predictions)."""
        return None

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int = 1, model: str | None = None, init_scale: float = 1.0,
               sampler: str | None = None, steps: int | None = None, eta: float = 0.0) -> torch.Tensor:
        """Candidates from the model named by ``model`` or ``cfg['act_model']``: ``ema`` (IDQL acts with its
        EMA score model) or ``live`` (Diffusion-QL's ``sample_action`` uses the live actor). ``init_scale``,
        ``sampler``, ``steps``, ``eta``: see :meth:`GaussianDiffusion.sample`."""
        rep = obs.repeat_interleave(n, dim=0)
        diffusion = self.ema_diffusion if (model or self.cfg["act_model"]) == "ema" else self.diffusion
        was_training = diffusion.training
        diffusion.eval()  # no dropout while sampling
        out = diffusion.sample(rep, generator=self.gen(), guide=self.sampling_guide(diffusion, rep),
                               init_scale=init_scale, sampler=sampler, steps=steps, eta=eta)
        diffusion.train(was_training)
        return out.reshape(obs.shape[0], n, self.act_dim)

    def candidates(self, obs: torch.Tensor, n: int) -> torch.Tensor:
        """The n actions per state that acting chooses among: (B, n, act_dim). Only acting starts the chain at
        ``act_temperature``; the samples inside losses and TD targets keep N(0, I), as in the GFDT authors'
        pipelines (temperature 1.0 there, the config's temperature at inference)."""
        sampler, steps = self.cfg["act_sampler"], int(self.cfg["sample_steps"])
        # the sampler's arguments only when asked for, so a subclass's ``sample`` with the older signature still acts
        fast = {} if sampler == "trained" and not steps else {
            "sampler": None if sampler == "trained" else sampler, "steps": steps or None,
            "eta": float(self.cfg["ddim_eta"])}
        return self.sample(obs, n, init_scale=float(self.cfg["act_temperature"]), **fast)

    def target_actions(self, next_obs: torch.Tensor) -> torch.Tensor:
        """Diffusion-QL's TD-target action: one sample of the EMA actor."""
        return self.sample(next_obs, 1, model="ema")[:, 0]


class BehaviourFirstPolicy(DDPMPolicy):
    """Two stages: :class:`DDPMPolicy`'s own update (a behaviour model; it never asks the guidance) for
    ``behaviour_steps``, then, on that model frozen, :meth:`second_stage` (SRPO's actor, QGPO's energy model)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__(obs_dim, act_dim, cfg)
        b = cfg["behaviour_steps"]
        if isinstance(b, float):  # a fraction no trainer resolved (a half built outside a run): of the LR horizon
            b = behaviour_split(b, int(cfg["lr_decay_steps"] or DEFAULT_DECAY_STEPS))
        self.behaviour_steps = int(b)

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        """The behaviour model's eps-MSE."""
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}

    def second_stage(self) -> Stage:
        """The stage that trains on the frozen behaviour model."""
        raise NotImplementedError(f"policy {self.algorithm!r} must implement second_stage()")

    def stages(self) -> list[Stage]:
        if self._host_steps() < self.behaviour_steps:
            return super().stages()
        return [self.second_stage()]
