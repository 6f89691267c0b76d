"""``modzoo.testing``: the conformance suite a plugin's halves must pass.

A plugin author calls ``check_plugin("myalgo", workdir=tmp_path)`` in a test (every half the entry point
``myalgo`` contributes), or runs ``pytest --modzoo-plugin=myalgo`` without writing one (one test item per check,
through the ``pytest11`` plugin :mod:`modzoo.testing.pytest_plugin`). Each check of :data:`GUIDANCE_CHECKS` and
:data:`POLICY_CHECKS` is a ``check_<name>`` function below; CONTRIBUTING.md ("Check the contract") tables what
each asserts. They run on tiny networks (:func:`tiny_overrides`) and a synthetic dataset with the dims of
``bullet-hopper-medium-v0`` (:func:`synthetic_dataset`). A policy under test gets a guidance that answers only
what its ``needs`` declare (and ``q``): a call to anything else fails the check, naming it, so ``needs`` cannot
understate what the policy uses (``modzoo list`` would offer it with a guidance that lacks it).
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ..bullet.data import load_dataset, write_d4rl_file
from ..bullet.envs import env_dims
from ..contract.hookspecs import hookimpl
from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import HalfSpec, load_registry, register_plugin, unregister_plugin
from ..errors import ConfigError
from ..run.buffer import ReplayBuffer
from ..run.checkpoint import REQUIRED, load_checkpoint, read_payload, save_half
from ..run.evaluation import evaluate_policy
from ..run.stacked import stackable, train_seeds
from ..run.training import run_config, train

__all__ = ["check_plugin", "check_guidance", "check_policy", "synthetic_dataset", "tiny_overrides", "Report",
           "ConformanceError", "GUIDANCE_CHECKS", "POLICY_CHECKS", "plugin_halves", "cases", "run_case", "TASK",
           "checkpoint_tensors"]

TASK = "bullet-hopper-medium-v0"
SCHEDULE_STEPS = 3
#: updates of the ``trains`` check: long enough for a loss that drifts to infinity on a tiny dataset to get there
TRAIN_STEPS = 200
GUIDANCE_CHECKS = ("construct", "shapes", "update", "determinism", "checkpoint", "learns", "trains", "schedules",
                   "stacked")
POLICY_CHECKS = ("construct", "shapes", "update", "determinism", "checkpoint", "learns", "trains", "schedules",
                 "pairs", "env", "stacked")
#: what every guidance answers (``construct`` checks it), so a policy may use it without declaring it in ``needs``
GUARANTEED = frozenset({"q"})
#: what :func:`tiny_overrides` shrinks widths, batch sizes and per-state sample counts to
TINY_WIDTH, TINY_BATCH, TINY_CANDIDATES = 32, 64, 4


class ConformanceError(AssertionError):
    """A half broke the plugin contract; the message names the check and what was wrong."""


class _Skip(Exception):
    """A check that does not apply to this half (what it does not claim); its message says why."""


def synthetic_dataset(path: str | Path, transitions: int = 2000, seed: int = 0, task: str = TASK,
                      episode_len: int = 50) -> Path:
    """Write a small, learnable D4RL-format file for ``task``'s dims (no simulator needed): actions a fixed smooth
    function of the state plus noise (behaviour cloning has something to fit), rewards favouring actions near it,
    episodes of consecutive rows ending in a timeout (next-state and next-action chains as in a real file)."""
    obs_dim, act_dim = env_dims(task)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, act_dim)) / math.sqrt(obs_dim)
    episodes = []
    for _ in range(max(1, transitions // episode_len)):
        s = rng.normal(size=(episode_len + 1, obs_dim)).cumsum(0) * 0.1
        mean = np.tanh(s[:-1] @ w)
        a = np.clip(mean + 0.2 * rng.normal(size=mean.shape), -1, 1)
        episodes.append((s[:-1], s[1:], a, 1.0 - ((a - mean) ** 2).sum(1)))
    obs, nxt, acts, rews = (np.concatenate(cols) for cols in zip(*episodes))
    n = len(obs)
    return write_d4rl_file(path, obs, acts, rews, np.zeros(n, bool), np.arange(n) % episode_len == episode_len - 1,
                           attrs={"task": task, "generator": "modzoo.testing.synthetic_dataset", "seed": seed},
                           next_observations=nxt)


def checkpoint_tensors(payload: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every floating tensor of a checkpoint payload (parameters, buffers, optimizer moments), by its path in the
    payload: for comparing two runs' checkpoints number by number (an exact resume, a device round trip)."""
    out: dict[str, torch.Tensor] = {}
    items = (payload.items() if isinstance(payload, dict)
             else enumerate(payload) if isinstance(payload, (list, tuple)) else [])
    for k, v in items:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[f"{prefix}{k}"] = v
        elif isinstance(v, (dict, list, tuple)):
            out.update(checkpoint_tensors(v, f"{prefix}{k}."))
    return out


def tiny_overrides(defaults: dict[str, Any]) -> dict[str, Any]:
    """Overrides that shrink a half's defaults for fast checks: network widths (``hidden``, ``*_hidden``), batch
    sizes, per-state sample counts (``candidates``, ``support_actions``, ``select_per_state``), the solver steps
    of auxiliary samples (``support_steps``), and a two-stage policy's first stage (``behaviour_steps``: its
    second stage runs from the second update on). Only keys the half already has are touched, each keeping its
    type (a list of widths stays a list)."""
    caps = {"batch_size": TINY_BATCH, "candidates": TINY_CANDIDATES, "support_actions": TINY_CANDIDATES,
            "select_per_state": 2, "support_steps": 5}
    out: dict[str, Any] = {}
    for key, val in defaults.items():
        if key == "hidden" or key.endswith("_hidden"):
            out[key] = [TINY_WIDTH] * len(val) if isinstance(val, (list, tuple)) else TINY_WIDTH
        elif key in caps and isinstance(val, int):
            out[key] = min(val, caps[key])
        elif key == "behaviour_steps":
            out[key] = 1
    return out


class _FixedPolicy(DiffusionPolicy):
    """A deterministic stand-in policy for a guidance whose TD target samples the policy: a = tanh(W s)."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__(obs_dim, act_dim, {})
        w = torch.randn(obs_dim, act_dim, generator=torch.Generator().manual_seed(1)) / math.sqrt(obs_dim)
        self.register_buffer("w", w)

    def update(self, batch, guidance=None):  # pragma: no cover - never trained
        return {}

    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        return torch.tanh(obs @ self.w).unsqueeze(1).expand(-1, n, -1)

    def act(self, obs, guidance=None, n=None):
        return self.sample(obs, 1)[:, 0]


class _Spy(GuidanceModule):
    """The guidance a policy under test gets: a real one that answers only the capabilities the policy declares
    in ``needs`` and those every guidance has (:data:`GUARANTEED`), ``provides`` saying exactly those, and counts
    the calls (for ``uses_guidance_in_training``)."""

    def __init__(self, inner: GuidanceModule, allowed: frozenset[str]) -> None:
        super().__init__(inner.obs_dim, inner.act_dim, {})
        self.inner, self.calls, self.allowed = inner, 0, frozenset(allowed)
        self.provides = self.allowed & frozenset(inner.provides)  # type: ignore[misc]
        self.algorithm = inner.algorithm  # type: ignore[misc]

    def _ask(self, capability: str, call: str, *args: torch.Tensor) -> torch.Tensor:
        if capability not in self.allowed:
            raise ConformanceError(
                f"the policy called guidance.{call}(), but its needs {sorted(self.allowed)} do not declare "
                f"{capability!r}: add {capability!r} to needs (it then pairs only with guidances that provide it) "
                f"or stop calling {call}()")
        self.calls += 1
        return getattr(self.inner, call)(*args)

    def update(self, batch, policy=None):  # pragma: no cover
        raise ConformanceError("a policy must not update its guidance")

    def q_ensemble(self, obs, act):
        return self._ask("q", "q_ensemble", obs, act)

    def target_q_ensemble(self, obs, act):
        return self._ask("q", "target_q_ensemble", obs, act)

    def q(self, obs, act):
        return self._ask("q", "q", obs, act)

    def v(self, obs):
        return self._ask("v", "v", obs)


@dataclass
class Report:
    """What ran for one half: passed checks, skipped ones (with why)."""

    kind: str
    name: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.detach()) if v.numel() == 1 else None
    return float(v) if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) else None


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _state_diff(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return [f"keys differ: {sorted(set(sa) ^ set(sb))[:5]}"]
    return [k for k in sa if not _equal(sa[k], sb[k])]


def _metrics_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class _Harness:
    """One half (and its partners) built with tiny settings, on the synthetic dataset: what every check below
    needs. A fresh harness per check, so no check sees what another left behind."""

    def __init__(self, kind: str, name: str, overrides: dict[str, Any] | None, workdir: Path,
                 dataset: Path, device: str, seed: int, learn_steps: int) -> None:
        self.kind, self.name, self.workdir, self.device, self.seed = kind, name, workdir, torch.device(device), seed
        self.learn_steps, self.data_path = learn_steps, Path(dataset)
        self.reg = load_registry()
        self.spec = self.reg.half(kind, name)
        self.defaults = self.defaults_of(kind, name)
        self.overrides = {**tiny_overrides(self.defaults), **(overrides or {})}
        self.dataset = load_dataset(str(self.data_path), task=TASK)
        self.obs_dim, self.act_dim = self.dataset.obs_dim, self.dataset.act_dim
        self.buffer = ReplayBuffer(self.dataset, self.device, seed=seed)
        self.meta = {"name": TASK, "fingerprint": self.dataset.fingerprint, "path": str(self.data_path)}

    def defaults_of(self, kind: str, name: str) -> dict[str, Any]:
        return {k: v for k, v in self.reg.half(kind, name).default_config().items() if k != "task_overrides"}

    def overrides_of(self, kind: str, name: str) -> dict[str, Any]:
        """The half under test: the tiny settings and the caller's overrides; a partner: the tiny settings."""
        if (kind, name) == (self.kind, self.name):
            return self.overrides
        return tiny_overrides(self.defaults_of(kind, name))

    def cfg_of(self, kind: str, name: str) -> dict[str, Any]:
        cfg = {**self.defaults_of(kind, name), **self.overrides_of(kind, name)}
        if "seed" in cfg:
            cfg["seed"] = self.seed
        return cfg

    def build(self, kind: str | None = None, name: str | None = None, **extra: Any) -> Any:
        """A fitted half; ``extra`` overrides keys of its config that it has."""
        kind, name = kind or self.kind, name or self.name
        torch.manual_seed(self.seed)
        cfg = self.cfg_of(kind, name)
        cfg.update({k: v for k, v in extra.items() if k in cfg})
        module = self.reg.half(kind, name).cls(self.obs_dim, self.act_dim, cfg).to(self.device)
        module.fit_data(self.dataset)
        return module

    def batch(self) -> dict[str, torch.Tensor]:
        return self.buffer.sample(TINY_BATCH)

    def probe(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.buffer.sample(n)
        return b["observations"], b["actions"]

    def fixed_batches(self, n: int) -> list[dict[str, torch.Tensor]]:
        buf = ReplayBuffer(self.dataset, self.device, seed=self.seed + 1)
        return [buf.sample(TINY_BATCH) for _ in range(n)]

    def partner_guidances(self) -> tuple[str | None, str | None]:
        """(guidance for joint, policy-independent guidance for guidance-first/pretrained) for this policy."""
        compat = self.reg.compatible(self.name)
        own = [g for g in compat if self.reg.guidances[g].plugin == self.spec.plugin]
        prefer = own + [g for g in ("idql",) if g in compat] + compat
        indep = next((g for g in dict.fromkeys(prefer) if not self.build("guidance", g).requires_policy), None)
        return (prefer[0] if prefer else None), indep

    def partner_policy(self) -> str | None:
        """A registered policy this guidance can drive (its own plugin's first, then the BC baseline)."""
        ok = [p for p, s in sorted(self.reg.policies.items()) if s.capabilities <= self.spec.capabilities]
        own = [p for p in ok if self.reg.policies[p].plugin == self.spec.plugin]
        return next(iter(own + [p for p in ("bc", "idql") if p in ok] + ok), None)

    def frozen_partner(self) -> _Spy | None:
        """A trained-a-little, frozen guidance for policy checks, answering only what the policy needs (None if
        nothing is compatible)."""
        joint, indep = self.partner_guidances()
        if (indep or joint) is None:
            return None
        g = self.build("guidance", indep or joint)
        pol = _FixedPolicy(self.obs_dim, self.act_dim).to(self.device)
        for b in self.fixed_batches(3):
            g.update(b, pol)
        return _Spy(g.freeze(), self.spec.capabilities | GUARANTEED).to(self.device)  # frozen, device: inner's

    def partner_for_update(self) -> Any:
        if self.kind == "guidance":
            return _FixedPolicy(self.obs_dim, self.act_dim).to(self.device)
        return self.frozen_partner()

    def update(self, module: Any, batch: dict[str, torch.Tensor], partner: Any) -> dict[str, Any]:
        if self.kind == "guidance":
            return module.update(batch, partner if module.requires_policy else None)
        return module.update(batch, partner)

    def run_cfg(self, guidance: str, policy: str | None, schedule: str, out: Path, **run: Any) -> Any:
        """A short :func:`modzoo.train` config, each half with :meth:`overrides_of` (as ``section.key=value``)."""
        over = [f"{section}.{k}={_yaml(v)}" for section, name in (("guidance", guidance), ("policy", policy))
                if name is not None for k, v in self.overrides_of(section, name).items()]
        return run_config(guidance, policy, TASK, over, dataset=str(self.data_path), schedule=schedule,
                          guidance_steps=SCHEDULE_STEPS, policy_steps=SCHEDULE_STEPS, eval_episodes=0,
                          final_eval=False, device=str(self.device), out=str(out), log_every=1,
                          **{"seed": self.seed, **run})

    def run(self, guidance: str, policy: str | None, schedule: str, out: Path, expect: tuple[str, ...] = (),
            **run: Any) -> Any:
        """:func:`modzoo.train` of :meth:`run_cfg`, failing unless the run dir has the files ``expect`` names."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = train(self.run_cfg(guidance, policy, schedule, out, **run), self.dataset, progress=False)
        missing = [f for f in expect if not (out / f).exists()]
        if missing:
            raise ConformanceError(f"{schedule}: run dir lacks {missing}")
        return res

    def reload(self, m: Any, path: Path, after: str = "") -> Any:
        """``load_checkpoint`` of what ``m`` saved to ``path``, failing unless it restores ``m`` exactly (``after``
        says when, in the message)."""
        loaded = load_checkpoint(path, self.device, kind=self.kind)
        if type(loaded) is not type(m):
            raise ConformanceError(f"loaded a {type(loaded).__name__}, saved a {type(m).__name__}")
        if loaded.cfg != m.cfg or loaded.steps != m.steps:
            raise ConformanceError(f"config or step count not restored{after}")
        diff = _state_diff(loaded, m)
        if diff:
            raise ConformanceError(f"tensors differ after the round trip{after}: {diff[:4]}")
        if not _equal(loaded.extra_state(), m.extra_state()):
            raise ConformanceError(f"extra_state() (optimizer state) differs after the round trip{after}: implement "
                                   f"extra_state/load_extra_state")
        return loaded


def _yaml(v: Any) -> str:
    """A value as omegaconf's dotlist parser reads it back (lists, null, booleans, numbers, strings)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ---- the checks: one function each, run on a fresh harness ----------------------------------------------------
def check_construct(h: _Harness) -> None:
    base = GuidanceModule if h.kind == "guidance" else DiffusionPolicy
    if not issubclass(h.spec.cls, base):
        raise ConformanceError(f"{h.spec.cls!r} does not subclass modzoo.{base.__name__}")
    if "batch_size" not in h.defaults:
        raise ConformanceError(f"its YAML '{h.kind}:' section has no batch_size (the trainer reads it)")
    m = h.build()
    if (m.obs_dim, m.act_dim) != (h.obs_dim, h.act_dim):
        raise ConformanceError("obs_dim/act_dim not stored as given")
    if m.steps != 0:
        raise ConformanceError(f"a new module must report steps == 0, got {m.steps}")
    if h.kind == "guidance" and "q" not in m.provides:
        raise ConformanceError(f"provides {sorted(m.provides)}: every guidance provides 'q'")
    if h.kind == "policy" and h.partner_guidances()[0] is None:
        raise ConformanceError(f"needs {sorted(m.needs)}, which no registered guidance provides")


def check_shapes(h: _Harness) -> None:
    m = h.build()
    (obs, act), b = h.probe(5), 5

    def expect(x: torch.Tensor, shape: tuple[int, ...], what: str, actions: bool = False) -> None:
        if not isinstance(x, torch.Tensor):
            raise ConformanceError(f"{what} returned {type(x).__name__}, not a tensor")
        if tuple(x.shape) != shape:
            raise ConformanceError(f"{what} has shape {tuple(x.shape)}, expected {shape}")
        if x.dtype != torch.float32:
            raise ConformanceError(f"{what} has dtype {x.dtype}, expected torch.float32")
        if x.device != m.device:
            raise ConformanceError(f"{what} is on {x.device}, the module on {m.device}")
        if not torch.isfinite(x).all():
            raise ConformanceError(f"{what} is not finite")
        if actions and x.abs().max() > 1 + 1e-6:
            raise ConformanceError(f"{what} returned actions outside [-1, 1]")

    if h.kind == "guidance":
        qe = m.q_ensemble(obs, act)
        if qe.dim() != 2 or qe.shape[1] != b:
            raise ConformanceError(f"q_ensemble has shape {tuple(qe.shape)}, expected (E, {b})")
        expect(qe, (qe.shape[0], b), "q_ensemble")
        expect(m.target_q_ensemble(obs, act), tuple(qe.shape), "target_q_ensemble")
        expect(m.q(obs, act), (b,), "q")
        if "v" in m.provides:
            expect(m.v(obs), (b,), "v")
        for frozen in (False, True):
            if frozen:
                m.freeze()
                if not m.frozen or any(p.requires_grad for p in m.parameters()):
                    raise ConformanceError("after freeze() parameters still require grad")
            a = act.clone().requires_grad_(True)
            m.q(obs, a).sum().backward()
            if a.grad is None or not torch.isfinite(a.grad).all() or not a.grad.abs().sum() > 0:
                raise ConformanceError(f"q is not differentiable w.r.t. the action"
                                       f"{' after freeze()' if frozen else ''} (a policy's Q term needs it)")
        return
    g = h.frozen_partner()
    expect(m.sample(obs, 3), (b, 3, h.act_dim), "sample(obs, 3)", actions=True)
    expect(m.act(obs, g), (b, h.act_dim), "act(obs, guidance)", actions=True)
    expect(m.act(obs, g, n=2), (b, h.act_dim), "act(obs, guidance, n=2)")
    expect(m.target_actions(obs), (b, h.act_dim), "target_actions")


def check_update(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    _check_metrics(h.update(m, h.batch(), partner))
    if m.steps != 1:
        raise ConformanceError(f"steps is {m.steps} after one update (increment h._steps once per update)")
    h.update(m, h.batch(), partner)  # a two-stage policy (behaviour_steps 1 here) is in its second stage now
    if m.steps != 2:
        raise ConformanceError(f"steps is {m.steps} after two updates")
    if h.kind == "policy":
        declared, calls = type(m).uses_guidance_in_training, partner.calls if partner is not None else 0
        if declared != (calls > 0):
            raise ConformanceError(f"declares uses_guidance_in_training = {declared} but update queried the guidance "
                                   f"{calls} time(s)")


def _check_metrics(metrics: Any, where: str = "") -> None:
    if not isinstance(metrics, dict) or not metrics:
        raise ConformanceError(f"update must return a non-empty dict of metrics{where}, got {type(metrics).__name__}")
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise ConformanceError(f"metric key {k!r} is not a string")
        x = _scalar(v)
        if x is None:
            raise ConformanceError(f"metric {k!r} is not a scalar (a 0-d/1-element tensor or a number)")
        if not math.isfinite(x):
            raise ConformanceError(f"metric {k!r} is not finite ({x}){where}")


def check_determinism(h: _Harness) -> None:
    batches, runs = h.fixed_batches(3), []
    obs, act = batches[0]["observations"], batches[0]["actions"]
    for _ in range(2):
        m, partner = h.build(), h.partner_for_update()
        metrics = [{k: _scalar(v) for k, v in h.update(m, b, partner).items()} for b in batches]
        with torch.no_grad():
            runs.append((m, metrics, m.q(obs, act) if h.kind == "guidance" else m.sample(obs[:4], 2)))
    (a, ma, oa), (b, mb, ob) = runs
    diff = _state_diff(a, b)
    if diff:
        raise ConformanceError(f"two runs under the same seed end with different tensors: {diff[:4]} (draw noise "
                               f"from a generator seeded by cfg['seed'], not global state)")
    if ma != mb:
        raise ConformanceError(f"same seed, different metrics: {ma} vs {mb}")
    if not torch.equal(oa, ob):
        raise ConformanceError("same seed, different outputs")


def check_checkpoint(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    for b in h.fixed_batches(2):
        h.update(m, b, partner)
    path = h.workdir / f"{h.kind}-{h.name}.pt"
    save_half(m, path, h.meta)
    try:
        payload = read_payload(path)  # torch.load(weights_only=True): no pickled objects allowed
    except Exception as e:
        raise ConformanceError(f"checkpoint does not load with weights_only=True ({e}); keep state and "
                               f"extra_state() to tensors and plain values") from None
    missing = [key for key in REQUIRED if key not in payload]
    if missing:
        raise ConformanceError(f"checkpoint lacks {missing[0]!r}")
    want = {"kind": h.kind, "algorithm": h.name, "obs_dim": h.obs_dim, "act_dim": h.act_dim, "steps": 2}
    got = {k: payload.get(k) for k in want}
    if got != want:
        raise ConformanceError(f"metadata {got}, expected {want}")
    loaded = h.reload(m, path)
    obs, act = h.probe(6)
    if h.kind == "policy":
        s = loaded.sample(obs, 2)
        if s.shape != (6, 2, h.act_dim) or not torch.isfinite(s).all():
            raise ConformanceError("the loaded policy does not sample")
        return
    if not torch.equal(loaded.q(obs, act), m.q(obs, act)):
        raise ConformanceError("the loaded guidance gives different Q values")
    m.freeze()
    save_half(m, path, h.meta)
    if not load_checkpoint(path, h.device).frozen:
        raise ConformanceError("a frozen guidance loads unfrozen")


def check_learns(h: _Harness) -> None:
    # a two-stage policy learns its first stage here, the one with a loss to lower on a fixed batch
    m, partner = h.build(behaviour_steps=h.learn_steps), h.partner_for_update()
    batch, history = h.fixed_batches(1)[0], []
    for _ in range(h.learn_steps):
        history.append(h.update(m, batch, partner))
        _check_metrics(history[-1])
    key = next((k for k in history[0] if "loss" in k), None)
    if key is None:
        raise ConformanceError(f"update returns no metric named '*loss*' (keys: {sorted(history[0])})")
    losses = [_scalar(metrics[key]) for metrics in history]
    w = max(1, h.learn_steps // 5)
    first, last = float(np.mean(losses[:w])), float(np.mean(losses[-w:]))
    if not last < first:
        raise ConformanceError(f"{h.learn_steps} updates on one fixed batch did not lower {key!r}: mean "
                               f"of the first {w} {first:.4g}, of the last {w} {last:.4g}")


def check_trains(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    for step in range(1, TRAIN_STEPS + 1):
        _check_metrics(h.update(m, h.batch(), partner), f" at update {step} of {TRAIN_STEPS}")
    if m.steps != TRAIN_STEPS:
        raise ConformanceError(f"steps is {m.steps} after {TRAIN_STEPS} updates")
    if h.kind == "guidance":  # every declared capability still answers finite values after training
        obs, act = h.probe(8)
        answers = {"q_ensemble": m.q_ensemble(obs, act), "target_q_ensemble": m.target_q_ensemble(obs, act),
                   "q": m.q(obs, act), **({"v": m.v(obs)} if "v" in m.provides else {})}
        bad = [k for k, x in answers.items() if not torch.isfinite(x).all()]
        if bad:
            raise ConformanceError(f"after {TRAIN_STEPS} updates {bad} answer non-finite values")
    save_half(m, h.workdir / "trained.pt", h.meta)
    h.reload(m, h.workdir / "trained.pt", f" (after {TRAIN_STEPS} updates)")


def check_pairs(h: _Harness) -> None:
    needs = type(h.build()).needs_for(h.cfg_of("policy", h.name))
    fits = [g for g, s in sorted(h.reg.guidances.items()) if set(needs) <= s.capabilities]
    if not fits:
        raise ConformanceError(f"no registered guidance provides {sorted(needs)}")
    for g in fits:
        try:
            h.run(g, h.name, "joint", h.workdir / f"joint-{g}")
        except Exception as e:
            raise ConformanceError(f"joint with guidance {g!r} raised {type(e).__name__}: {e}") from None
        for line in _metrics_log(h.workdir / f"joint-{g}"):
            bad = [k for k, v in line.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise ConformanceError(f"joint with guidance {g!r}: {bad} not finite in {line}")


def check_stacked(h: _Harness) -> None:
    if not h.spec.cls.stackable:
        raise _Skip(f"{h.spec.cls.__name__} does not declare stackable = True, so it never trains as "
                    f"stacked seeds (--stack vmap); nothing to check")
    why = stackable(h.spec.cls, None) if h.kind == "guidance" else stackable(None, h.spec.cls)
    if why:
        raise ConformanceError(why)
    if h.kind == "policy":
        policy = h.name
        guidance = partner = next((g for g in h.reg.compatible(h.name) if h.reg.guidances[g].cls.stackable), None)
    else:
        guidance = h.name
        policy = partner = next((p for p, sp in sorted(h.reg.policies.items())
                                 if sp.capabilities <= h.spec.capabilities and sp.cls.stackable), None)
    if partner is None:
        raise ConformanceError("stackable = True, but no registered stackable half pairs with it")
    seeds = (h.seed, h.seed + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_seeds([h.run_cfg(guidance, policy, "joint", h.workdir / f"together{s}", seed=s) for s in seeds],
                    h.dataset, mode="vmap", progress=False)
    for s in seeds:
        h.run(guidance, policy, "joint", h.workdir / f"alone{s}", seed=s)
        for a, b in zip(_metrics_log(h.workdir / f"together{s}"), _metrics_log(h.workdir / f"alone{s}")):
            for key, vb in b.items():
                va = a.get(key)
                if key not in ("phase", "step") and not math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-5):
                    raise ConformanceError(f"seed {s} step {b['step']}: {key} is {va} stacked but {vb} alone; "
                                           f"draw every random number through modzoo.contract.rng with the half's "
                                           f"gen(), and write the update as stages()")


def check_schedules(h: _Harness) -> None:
    if h.kind == "policy":
        joint, guidance = h.partner_guidances()  # guidance: a policy-independent one, for the other schedules
        policy, trained = h.name, "policy"
    else:
        joint = guidance = h.name
        policy, trained = h.partner_policy(), "guidance"
        if policy is None:
            raise ConformanceError("no registered policy pairs with this guidance")
    res = h.run(joint, policy, "joint", h.workdir / "joint", ("config.yaml", "guidance.pt", "policy.pt", "result.json"))
    if getattr(res, trained).steps != SCHEDULE_STEPS:
        raise ConformanceError(f"joint: {trained} did {getattr(res, trained).steps} steps, expected {SCHEDULE_STEPS}")
    if guidance is None:
        raise ConformanceError(f"no policy-independent guidance provides {sorted(h.spec.capabilities)}: "
                               f"guidance-first and pretrained cannot run")
    gpt = h.workdir / "gf" / "guidance.pt"
    if h.kind == "guidance" and h.build().requires_policy:
        try:
            h.run(guidance, policy, "guidance-first", h.workdir / "gf")
        except ConfigError:
            gpt = h.workdir / "joint" / "guidance.pt"
        else:
            raise ConformanceError("requires_policy is True, yet guidance-first trained it without a policy")
    else:  # a guidance under test trains alone; a policy, after its frozen partner
        res = h.run(guidance, policy if h.kind == "policy" else None, "guidance-first", h.workdir / "gf",
                    ("guidance.pt", "result.json"))
        if not res.guidance.frozen or res.guidance.steps != SCHEDULE_STEPS or (
                res.policy is not None and res.policy.steps != SCHEDULE_STEPS):
            raise ConformanceError("guidance-first: the guidance must train first (alone) and end frozen")
    saved = load_checkpoint(gpt, h.device)
    res = h.run(guidance, policy, "pretrained", h.workdir / "pre", guidance_ckpt=str(gpt))
    obs, act = h.probe(8)
    if not torch.equal(res.guidance.q(obs, act), saved.q(obs, act)):
        raise ConformanceError("pretrained: the loaded guidance changed while the policy trained")
    if res.policy.steps != SCHEDULE_STEPS:
        raise ConformanceError("pretrained: the policy did not train")


def check_env(h: _Harness) -> None:
    m, g = h.build(), h.frozen_partner()

    def act_fn(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return m.act(torch.as_tensor(obs, dtype=torch.float32, device=h.device), g).cpu().numpy()

    if not np.isfinite(evaluate_policy(act_fn, TASK, episodes=1, seed=h.seed, max_steps=5).returns).all():
        raise ConformanceError("non-finite return")


#: each check's function, ``check_<name>`` above (POLICY_CHECKS names every check)
CHECKS: dict[str, Callable[[_Harness], None]] = {name: globals()[f"check_{name}"] for name in POLICY_CHECKS}


# ---- public API ------------------------------------------------------------------------------------------------
def _register(cls: type, kind: str, config: dict[str, Any] | None, stack: contextlib.ExitStack) -> str:
    """Register a bare class as a plugin until ``stack`` closes (checkpoints are rebuilt through the registry);
    its half name."""
    name = cls.__dict__.get("algorithm") or cls.__name__.lower()
    if config is None:
        raise ConfigError(f"checking a bare class {cls.__name__} needs its config: pass config={{...}}")
    hook = "modzoo_guidances" if kind == "guidance" else "modzoo_policies"
    spec = HalfSpec(name, cls, {kind: dict(config)}, kind, f"{cls.__name__} (under test)")
    register_plugin(SimpleNamespace(**{hook: hookimpl(lambda: [spec])}), name=f"modzoo.testing:{name}")
    stack.callback(unregister_plugin, f"modzoo.testing:{name}")
    return name


def _check(kind: str, name_or_cls: str | type, *, config: dict[str, Any] | None = None,
           overrides: dict[str, Any] | None = None, checks: tuple[str, ...] | list[str] | None = None,
           workdir: str | Path | None = None, dataset: str | Path | None = None, device: str = "cpu",
           seed: int = 0, learn_steps: int = 60) -> Report:
    allowed = GUIDANCE_CHECKS if kind == "guidance" else POLICY_CHECKS
    todo = tuple(checks or allowed)
    unknown = set(todo) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {kind} checks {sorted(unknown)}; known: {', '.join(allowed)}")
    with contextlib.ExitStack() as stack:
        name = _register(name_or_cls, kind, config, stack) if isinstance(name_or_cls, type) else name_or_cls
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"modzoo-check-{name}-"))
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)  # tiny nets are slower with several threads (spin-waiting), markedly on busy CPUs
        report, failures, root = Report(kind, name), [], Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        data = Path(dataset) if dataset else root / f"{TASK}-synthetic.hdf5"
        if not data.exists():
            synthetic_dataset(data, seed=seed)
        for check in todo:
            sub = root / f"{kind}-{name}-{check}"
            sub.mkdir(parents=True, exist_ok=True)
            try:
                CHECKS[check](_Harness(kind, name, overrides, sub, data, device, seed, learn_steps))
            except _Skip as e:
                report.skipped[check] = str(e)
            except ConformanceError as e:  # raised by the check, or by the _Spy a policy called
                failures.append(f"[{check}] {kind} {name!r}: {e}")
            except Exception as e:  # a crash inside a check is a failure of that check, with its cause
                failures.append(f"[{check}] {kind} {name!r} raised {type(e).__name__}: {e}")
            else:
                report.passed.append(check)
        if failures:
            raise ConformanceError(f"{len(failures)} of {len(todo)} checks failed:\n" + "\n".join(failures))
        return report


def check_guidance(name_or_cls: str | type, **kwargs: Any) -> Report:
    """Run the guidance checks on a registered guidance (by name) or a bare class (with ``config={...}``).

    Keyword arguments: ``overrides`` (config values replacing the tiny defaults, e.g. ``{"hidden": [16, 16]}``),
    ``checks`` (a subset of :data:`GUIDANCE_CHECKS`), ``workdir`` (where run dirs and checkpoints go; a temp dir
    by default), ``dataset`` (a D4RL-format file for ``bullet-hopper-medium-v0``'s dims; synthetic by default),
    ``device``, ``seed``, ``learn_steps``. Raises :class:`ConformanceError` listing every failed check.
    """
    return _check("guidance", name_or_cls, **kwargs)


def check_policy(name_or_cls: str | type, **kwargs: Any) -> Report:
    """Run the policy checks (:data:`POLICY_CHECKS`); same arguments as :func:`check_guidance`. Partner
    guidances are registered ones that provide what the policy needs (a policy-independent one for the
    guidance-first and pretrained schedules)."""
    return _check("policy", name_or_cls, **kwargs)


def plugin_halves(plugin: str) -> list[tuple[str, str]]:
    """(kind, half name) of every half the plugin (entry-point name) contributes; a half name works too."""
    reg = load_registry()
    kinds = {"guidance": reg.guidances, "policy": reg.policies}
    halves = [(kind, n) for kind, specs in kinds.items() for n, s in sorted(specs.items()) if s.plugin == plugin]
    halves = halves or [(kind, plugin) for kind, specs in kinds.items() if plugin in specs]
    if not halves:
        broken = {b.name: b.error for b in reg.broken}
        if plugin in broken:
            raise ConformanceError(f"plugin {plugin!r} failed to load: {broken[plugin]}")
        known = sorted({s.plugin for s in [*reg.guidances.values(), *reg.policies.values()]})
        raise ConformanceError(f"no plugin or half named {plugin!r} is registered; known plugins: "
                               f"{', '.join(known)} (is its package installed, with a [project.entry-points.modzoo] "
                               f"entry?)")
    return halves


def check_plugin(plugin: str, **kwargs: Any) -> dict[str, Report]:
    """Run every check on every half of ``plugin``; returns ``{"guidance:NAME": Report, "policy:NAME": ...}``.

    Raises :class:`ConformanceError` listing the failures of all halves."""
    reports, failures, base = {}, [], kwargs.pop("workdir", None)
    for kind, name in plugin_halves(plugin):
        try:
            reports[f"{kind}:{name}"] = _check(kind, name, workdir=Path(base) / f"{kind}-{name}" if base else None,
                                               **kwargs)
        except ConformanceError as e:
            failures.append(str(e))
    if failures:
        raise ConformanceError("\n".join(failures))
    return reports


def cases(plugin: str) -> list[tuple[str, str, str]]:
    """(kind, half, check) triples for ``plugin``: one pytest item each under ``--modzoo-plugin``."""
    return [(kind, name, check) for kind, name in plugin_halves(plugin)
            for check in (GUIDANCE_CHECKS if kind == "guidance" else POLICY_CHECKS)]


def run_case(kind: str, name: str, check: str, workdir: str | Path, **kwargs: Any) -> Report:
    """One check of one half (what each ``--modzoo-plugin`` pytest item runs)."""
    return _check(kind, name, checks=[check], workdir=workdir, **kwargs)
