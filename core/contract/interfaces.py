"""The two halves every algorithm is made of, and the contract a plugin's classes must keep.

Contract (checked by :mod:`modzoo.testing`):

- Batches are dicts of float32 tensors on the module's device: ``observations (B, obs_dim)``,
  ``actions (B, act_dim)`` in [-1, 1], ``rewards (B,)``, ``next_observations (B, obs_dim)``, ``terminals (B,)``
  (1.0 where the episode truly ended), and ``next_actions (B, act_dim)`` (the dataset's next action; after a
  terminal a placeholder that (1 - terminal) masks out) for SARSA-style critics.
- ``update`` returns a flat ``dict[str, torch.Tensor | float]`` of scalar metrics. Values may stay tensors so that
  no host sync happens inside a step; the trainer converts them when it logs.
- ``state_dict()``/``load_state_dict()`` hold everything needed to resume (nets, targets, optimizers, step count,
  statistics such as a reward scale), made only of tensors and plain Python values so checkpoints load with
  ``torch.load(weights_only=True)``.
- Construction takes ``(obs_dim, act_dim, cfg)`` where ``cfg`` is the plugin's resolved config (a plain dict).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from .normalization import fit_obs_norm
from .rng import SeededDropout

Batch = dict[str, torch.Tensor]
Metrics = dict[str, Any]


class Half(nn.Module):
    """What guidance and policy share: dims, config, a step counter and a device."""

    #: the plugin name the class is registered under (set by the registry); stored in checkpoints.
    algorithm: ClassVar[str] = ""

    #: True when ``update`` is written as stages (:mod:`modzoo.contract.stages`) whose losses draw every random number
    #: through :mod:`modzoo.contract.rng`: then several seeds can train as one stacked ensemble
    #: (:mod:`modzoo.run.stacked`).
    stackable: ClassVar[bool] = False

    #: a base class's machinery defaults: the path of a YAML with a ``guidance:`` or ``policy:`` section that the
    #: halves built on it start from (:meth:`modzoo.contract.registry.HalfSpec.default_config`), so a plugin's own
    #: YAML holds only its method's keys and the keys whose value its method changes.
    config_defaults: ClassVar[Path | None] = None

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.cfg = int(obs_dim), int(act_dim), dict(cfg)
        self.register_buffer("_steps", torch.zeros((), dtype=torch.long))
        self.generator: Any = None

    def require(self, *keys: str) -> None:
        """Fail at construction, naming the first key of ``keys`` that the config lacks, for keys the half reads
        only later (when acting, or at a given step): a YAML without them then stops the run before any work,
        not in its final evaluation."""
        for key in keys:
            if key not in self.cfg:
                raise KeyError(key)

    def gen(self) -> torch.Generator:
        """This half's own noise stream (seeded by ``cfg['seed']``), created lazily on its device; it also drives
        dropout masks (:class:`~modzoo.contract.rng.SeededDropout`)."""
        if self.generator is None or self.generator.device != self.device:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(self.cfg.get("seed", 0)))
            self.use_generator(g)
        return self.generator

    def use_generator(self, generator: Any) -> None:
        """Make ``generator`` (a ``torch.Generator``, or the stacked trainer's ``StackedGenerator``) the source of
        every random draw of this half, dropout included."""
        self.generator = generator
        for m in self.modules():
            if isinstance(m, SeededDropout):
                m.generator = generator

    @property
    def steps(self) -> int:
        """Parameter updates done so far (read as a Python int: a host sync, so not inside a step). A stacked
        ensemble's counter has a seed axis; every seed has done the same number of steps."""
        return int(self._steps.reshape(-1)[0])

    @property
    def device(self) -> torch.device:
        return self._steps.device

    def fit_data(self, dataset: Any) -> None:
        """Everything a half learns from the dataset before its first step: the observation statistics its
        networks normalize with (when its config says ``obs_norm: gaussian``), then the plugin's :meth:`prepare`.
        The trainer calls this; plugins override :meth:`prepare`, not this."""
        fit_obs_norm(self, dataset.observations)
        self.prepare(dataset)

    def prepare(self, dataset: Any) -> None:
        """Called once with the whole :class:`~modzoo.bullet.data.Dataset` before training: compute dataset statistics
        (e.g. IQL's reward scale) here and keep them in buffers so they are saved with the module."""

    def extra_state(self) -> dict[str, Any]:
        """Optimizer and other non-module state to checkpoint (tensors and plain values only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""


class GuidanceModule(Half, ABC):
    """A value estimator learned from offline batches: the half that says how good an action is.

    What a policy may rely on (B states, E critic members; every value float32 on the guidance's device):

    - ``q_ensemble(obs, act)`` -> (E, B): the *online* members, the critics being trained, differentiable w.r.t.
      ``act``. A policy's training loss reads these (Diffusion-QL, EDP, DTQL, FQL), as their authors' actors do.
    - ``target_q_ensemble(obs, act)`` -> (E, B): the *target* members (the online ones for a guidance without a
      target network), differentiable w.r.t. ``act``; SRPO's actor reads these, as its authors' code does.
    - ``q(obs, act)`` -> (B,): the ranking value, the minimum over members of the target network where there is
      one (what IDQL's ``eval_actions`` and Diffusion-QL's ``sample_action`` rank with). Every selection rule and
      candidate ranking reads ``q``.
    - ``v(obs)`` -> (B,): V(s), only with ``"v"`` in :attr:`provides` (the expectile rule, cfg's advantage).

    A guidance with one network answers all of them from it. Which one each first-party policy reads, with the
    authors' file and line, is in docs/algorithms.md ("Which critic each policy reads"); the kit checks every
    declared capability's shape and finiteness.
    """

    #: what this guidance can answer: {"q"} or {"q", "v"}. Policies declare which of these they need.
    provides: ClassVar[frozenset[str]] = frozenset({"q"})

    @property
    def requires_policy(self) -> bool:
        """True when the TD target samples the policy being trained (Diffusion-QL's critic): such a guidance can
        only train jointly, never first."""
        return False

    @abstractmethod
    def update(self, batch: Batch, policy: "DiffusionPolicy | None" = None) -> Metrics:
        """One gradient step on the critic(s); ``policy`` is given in joint training only."""

    @abstractmethod
    def q_ensemble(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Every online critic member's Q(s, a): (E, B), the ensemble on axis 0. Differentiable w.r.t. ``act``."""

    def target_q_ensemble(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Every *target* critic member's Q(s, a): (E, B), differentiable w.r.t. ``act`` (SRPO's ``q0_target``). A
        guidance without a target network has none: its online members are its target, the default here."""
        return self.q_ensemble(obs, act)

    def q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The value that ranks candidates, (B,): the minimum over members (a critic with a target ranks by it)."""
        return self.q_ensemble(obs, act).min(0).values

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        """State value V(s): (B,). Only for guidances that provide "v"."""
        raise NotImplementedError(f"guidance {self.algorithm!r} has no V(s); it provides {sorted(self.provides)}")

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def freeze(self) -> "GuidanceModule":
        """Stop training: no parameter gradients, no optimizer state, eval mode. Gradients still flow to the
        *action* input, which is all a policy's Q term needs."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.drop_optimizers()
        self.eval()
        return self

    def drop_optimizers(self) -> None:
        """Release optimizer state (a frozen guidance carries none)."""


class DiffusionPolicy(Half, ABC):
    """A denoising model over actions conditioned on the state.

    ``needs`` lists the guidance capabilities the policy uses in training or in selection; the registry refuses a
    pairing whose guidance lacks one.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    #: Needs that a setting adds: ``{key: {value: capabilities}}`` (an expectile selection needs V). Declared here,
    #: collected along the class's bases by :meth:`needs_for`, checked with the pairing before any data loads, and
    #: listed by ``modzoo list``; a run never falls back silently to a rule its guidance can drive.
    config_needs: ClassVar[dict[str, dict[Any, frozenset[str]]]] = {}
    #: True when ``update`` uses the guidance (Diffusion-QL's Q term); False when only ``act`` does (IDQL).
    uses_guidance_in_training: ClassVar[bool] = False
    #: True when ``act`` runs a reverse chain whose ``act_sampler``, ``sample_steps`` and ``ddim_eta`` apply
    #: (``DDPMPolicy``); ``modzoo eval`` refuses those flags on any other policy instead of ignoring them.
    acts_by_chain: ClassVar[bool] = False

    @classmethod
    def needs_by_setting(cls) -> dict[str, dict[Any, frozenset[str]]]:
        """:attr:`config_needs` of the class and its bases, the nearest class's entry for a key winning."""
        out: dict[str, dict[Any, frozenset[str]]] = {}
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("config_needs") or {})
        return out

    @classmethod
    def needs_for(cls, cfg: Mapping[str, Any]) -> dict[str, str]:
        """What a guidance must provide for this policy under ``cfg``: each capability with the reason, either
        ``"policy"`` (:attr:`needs`) or the setting that adds it (``"policy.selection=expectile"``)."""
        out = {cap: "policy" for cap in cls.needs}
        for key, table in cls.needs_by_setting().items():
            for cap in table.get(cfg.get(key), frozenset()):
                out.setdefault(cap, f"policy.{key}={cfg.get(key)}")
        return out

    @abstractmethod
    def update(self, batch: Batch, guidance: GuidanceModule | None = None) -> Metrics:
        """One gradient step on the denoiser."""

    @abstractmethod
    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        """n candidate actions per state from the (EMA) model: (B, n, act_dim), in [-1, 1]."""

    @abstractmethod
    def act(self, obs: torch.Tensor, guidance: GuidanceModule | None = None, n: int | None = None) -> torch.Tensor:
        """The action to execute for each state: (B, act_dim), selected among candidates with ``guidance``."""

    def target_actions(self, next_obs: torch.Tensor) -> torch.Tensor:
        """Actions for a policy-dependent critic's TD target (Diffusion-QL: one EMA-policy sample)."""
        return self.sample(next_obs, 1)[:, 0]

    def predict(self, obs: Any, guidance: GuidanceModule | None = None) -> np.ndarray:
        """The action for an observation as an env gives it, as SB3's ``predict`` does: ``obs`` a numpy array (or
        list) of shape (obs_dim,) for one state or (B, obs_dim) for a batch; returns float32 numpy actions of shape
        (act_dim,) or (B, act_dim). :meth:`act` is the same on tensors already on the policy's device.

        Acting draws candidates from the policy's own noise stream; for evaluation numbers use
        :func:`modzoo.evaluate`, which seeds it apart from training."""
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(f"policy {self.algorithm!r} takes observations of shape ({self.obs_dim},) or "
                             f"(batch, {self.obs_dim}), got {x.shape}")
        with torch.inference_mode():
            act = self.act(torch.as_tensor(x.reshape(-1, self.obs_dim), device=self.device), guidance)
        out = act.cpu().numpy().astype(np.float32)
        return out[0] if x.ndim == 1 else out
