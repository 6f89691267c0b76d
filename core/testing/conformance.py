"""``modzoo.testing``: the conformance suite a plugin's halves must pass.

A plugin author calls it from their own tests::

    from modzoo.testing import check_plugin

    def test_my_plugin_keeps_the_contract(tmp_path):
        check_plugin("myalgo", workdir=tmp_path)      # every half the entry point ``myalgo`` contributes

or runs it through pytest without writing a test (modzoo installs a ``pytest11`` plugin, see
:mod:`modzoo.testing.pytest_plugin`)::

    pytest --modzoo-plugin=myalgo

What is checked (each a named check; :data:`GUIDANCE_CHECKS`, :data:`POLICY_CHECKS`):

- ``construct``: the class subclasses the right base, builds from its YAML defaults, whose section has a
  ``batch_size`` (the trainer reads it); a guidance provides ``"q"``; a policy's ``needs`` are capabilities
  some registered guidance provides.
- ``shapes``: float32 outputs of the documented shapes on the module's device, finite, actions in [-1, 1];
  ``q`` is differentiable w.r.t. the action, also after ``freeze()`` (a frozen guidance drives Q terms).
- ``update``: returns a flat dict of finite scalars and advances ``steps`` by one; a policy that says
  ``uses_guidance_in_training = False`` never queries the guidance in ``update`` (and one that says True does).
- ``determinism``: two modules built and trained under the same seed give identical parameters, metrics and
  outputs.
- ``checkpoint``: ``save_half`` -> ``load_checkpoint`` (``weights_only=True``: tensors and plain values only)
  restores the class, dims, config, step count, every tensor, the optimizer state, and (guidance) the same Q.
- ``learns``: ``learn_steps`` updates on one fixed batch lower the first ``*loss*`` metric ``update`` returns
  (every update's metrics finite).
- ``trains``: :data:`TRAIN_STEPS` updates on fresh batches of the tiny dataset, every metric of every update
  finite (a failure names the update and the metric), a guidance's every declared capability still finite, then
  ``save_half`` -> ``load_checkpoint`` restores every tensor and the optimizer state exactly.
- ``schedules``: :func:`modzoo.train` runs ``joint``, ``guidance-first`` and ``pretrained`` with a partner half
  and writes a complete run dir; a policy-dependent guidance must be *refused* by guidance-first.
- ``pairs`` (policy): a short joint run with every registered guidance that provides what the policy needs
  under its config (:meth:`~modzoo.contract.interfaces.DiffusionPolicy.needs_for`), each log line finite.
- ``env`` (policy): ``act`` drives the real Bullet env for a few steps.
- ``stacked``: only for a half that declares ``stackable = True`` (skipped otherwise, in :attr:`Report.skipped`):
  two seeds trained together with ``--stack vmap`` (:mod:`modzoo.run.stacked`) log the same losses (to float
  rounding) as each seed trained alone.

Every policy check hands the policy a guidance that answers only what its ``needs`` declare (and the ``q`` every
guidance has); a call to anything else fails the check, naming it, so ``needs`` cannot understate what the policy
uses (``modzoo list`` would offer it with a guidance that lacks it).

Checks run on tiny networks (widths 32, batches 64) and a synthetic D4RL-format dataset with the dims of
``bullet-hopper-medium-v0`` (:func:`synthetic_dataset`), so the whole suite for one plugin takes seconds.
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
from typing import Any, Callable, Iterator

import numpy as np
import torch

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

TASK = "bullet-hopper-medium-v0"
OBS_DIM, ACT_DIM = 15, 3  # bullet-hopper's dims: the synthetic dataset and the env check use this task
SCHEDULE_STEPS = 3
#: updates of the ``trains`` check: long enough for a loss that drifts to infinity on a tiny dataset to get there
TRAIN_STEPS = 200
GUIDANCE_CHECKS = ("construct", "shapes", "update", "determinism", "checkpoint", "learns", "trains", "schedules",
                   "stacked")
POLICY_CHECKS = ("construct", "shapes", "update", "determinism", "checkpoint", "learns", "trains", "schedules",
                 "pairs", "env", "stacked")

#: what every guidance answers (``construct`` checks it), so a policy may use it without declaring it in ``needs``
GUARANTEED = frozenset({"q"})

#: keys the suite shrinks when a half's defaults have them (anything else keeps its default).
TINY_WIDTH, TINY_BATCH, TINY_CANDIDATES = 32, 64, 4


class ConformanceError(AssertionError):
    """A half broke the plugin contract; the message names the check and what was wrong."""


class _Skip(Exception):
    """A check that does not apply to this half (what it does not claim); its message says why."""


# ---- inputs --------------------------------------------------------------------------------------------------
def synthetic_dataset(path: str | Path, transitions: int = 2000, seed: int = 0, task: str = TASK,
                      episode_len: int = 50) -> Path:
    """Write a small, learnable D4RL-format file for ``task``'s dims (no simulator needed).

    Actions follow a fixed smooth function of the state plus noise (so behaviour cloning has something to fit),
    rewards favour actions near it, and episodes are consecutive rows ending in a timeout, so next-state and
    next-action chains are as in a real file.
    """
    obs_dim, act_dim = env_dims(task)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(obs_dim, act_dim)) / math.sqrt(obs_dim)
    n_ep = max(1, transitions // episode_len)
    obs, nxt, acts, rews, terms, touts = [], [], [], [], [], []
    for _ in range(n_ep):
        s = rng.normal(size=(episode_len + 1, obs_dim)).cumsum(0) * 0.1
        mean = np.tanh(s[:-1] @ w)
        a = np.clip(mean + 0.2 * rng.normal(size=mean.shape), -1, 1)
        obs.append(s[:-1])
        nxt.append(s[1:])
        acts.append(a)
        rews.append(1.0 - ((a - mean) ** 2).sum(1))
        terms.append(np.zeros(episode_len, bool))
        t = np.zeros(episode_len, bool)
        t[-1] = True
        touts.append(t)
    cat = np.concatenate
    return write_d4rl_file(path, cat(obs), cat(acts), cat(rews), cat(terms), cat(touts),
                           attrs={"task": task, "generator": "modzoo.testing.synthetic_dataset", "seed": seed},
                           next_observations=cat(nxt))


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
    """Overrides that shrink a half's defaults for fast checks: widths, batch sizes, candidate counts.

    Only keys the half already has are touched, each keeping its type (a list of widths stays a list).
    """
    out: dict[str, Any] = {}
    for key, val in defaults.items():
        if key == "hidden":
            out[key] = [TINY_WIDTH] * len(val) if isinstance(val, (list, tuple)) else TINY_WIDTH
        elif key in ("cond_hidden",) and isinstance(val, int):
            out[key] = TINY_WIDTH
        elif key == "batch_size" and isinstance(val, int):
            out[key] = min(val, TINY_BATCH)
        elif key == "candidates" and isinstance(val, int):
            out[key] = min(val, TINY_CANDIDATES)
        elif key == "select_per_state" and isinstance(val, int):
            out[key] = min(val, 2)
        elif key == "behaviour_steps":  # a two-stage policy: its second stage from the second update on
            out[key] = 1
    return out


def _one_thread() -> contextlib.AbstractContextManager:
    """Tiny nets are slower with several intra-op threads (spin-waiting dominates), markedly so on busy CPUs."""
    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)
    return cm()


class _FixedPolicy(DiffusionPolicy):
    """A deterministic stand-in policy for a guidance whose TD target samples the policy: a = tanh(W s)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: dict[str, Any] | None = None) -> None:
        super().__init__(obs_dim, act_dim, cfg or {})
        g = torch.Generator().manual_seed(1)
        self.register_buffer("w", torch.randn(obs_dim, act_dim, generator=g) / math.sqrt(obs_dim))

    def update(self, batch, guidance=None):  # pragma: no cover - never trained
        return {}

    def sample(self, obs: torch.Tensor, n: int = 1) -> torch.Tensor:
        return torch.tanh(obs @ self.w).unsqueeze(1).expand(-1, n, -1)

    def act(self, obs, guidance=None, n=None):
        return self.sample(obs, 1)[:, 0]


class _Spy(GuidanceModule):
    """The guidance a policy under test gets: a real one that answers only the capabilities the policy declares
    in ``needs`` and those every guidance has (:data:`GUARANTEED`), ``provides`` saying exactly those, and counts
    the calls (for ``uses_guidance_in_training``).

    Checked against a guidance that has more (IQL's V), a policy that uses what it does not declare would pass
    here, be offered by ``modzoo list`` with a guidance that lacks it, and fail only at run time."""

    def __init__(self, inner: GuidanceModule, allowed: frozenset[str]) -> None:
        super().__init__(inner.obs_dim, inner.act_dim, {})
        self.inner, self.calls, self.allowed = inner, 0, frozenset(allowed)
        self.provides = self.allowed & frozenset(inner.provides)  # type: ignore[misc]
        self.algorithm = inner.algorithm  # type: ignore[misc]

    def _ask(self, capability: str, call: str) -> None:
        if capability not in self.allowed:
            raise ConformanceError(
                f"the policy called guidance.{call}, but its needs {sorted(self.allowed)} do not declare "
                f"{capability!r}: add {capability!r} to needs (it then pairs only with guidances that provide it) "
                f"or stop calling {call}")
        self.calls += 1

    def update(self, batch, policy=None):  # pragma: no cover
        raise ConformanceError("a policy must not update its guidance")

    def q_ensemble(self, obs, act):
        self._ask("q", "q_ensemble()")
        return self.inner.q_ensemble(obs, act)

    def target_q_ensemble(self, obs, act):
        self._ask("q", "target_q_ensemble()")
        return self.inner.target_q_ensemble(obs, act)

    def q(self, obs, act):
        self._ask("q", "q()")
        return self.inner.q(obs, act)

    def v(self, obs):
        self._ask("v", "v()")
        return self.inner.v(obs)

    @property
    def frozen(self) -> bool:
        return self.inner.frozen

    @property
    def device(self) -> torch.device:
        return self.inner.device


# ---- the suite -----------------------------------------------------------------------------------------------
@dataclass
class Report:
    """What ran for one half: passed checks, skipped ones (with why)."""

    kind: str
    name: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _fail(check: str, kind: str, name: str, msg: str) -> ConformanceError:
    return ConformanceError(f"[{check}] {kind} {name!r}: {msg}")


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.detach()) if v.numel() == 1 else None
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return float(v)
    return None


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _state_diff(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return [f"keys differ: {sorted(set(sa) ^ set(sb))[:5]}"]
    return [k for k in sa if not _equal(sa[k], sb[k])]


class _Harness:
    """One half (and its partners) built with tiny settings, on the synthetic dataset: what every check below
    needs. A fresh harness per check, so no check sees what another left behind."""

    def __init__(self, kind: str, name: str, overrides: dict[str, Any] | None, workdir: Path,
                 dataset: Path, device: str, seed: int, learn_steps: int) -> None:
        self.kind, self.name, self.workdir, self.device, self.seed = kind, name, workdir, torch.device(device), seed
        self.learn_steps = learn_steps
        self.reg = load_registry()
        self.spec = self.reg.half(kind, name)
        self.defaults = self.spec.default_config()
        self.defaults.pop("task_overrides", None)
        self.overrides = {**tiny_overrides(self.defaults), **(overrides or {})}
        self.data_path = Path(dataset)
        self.dataset = load_dataset(str(self.data_path), task=TASK)
        self.obs_dim, self.act_dim = self.dataset.obs_dim, self.dataset.act_dim
        self.buffer = ReplayBuffer(self.dataset, self.device, seed=seed)

    # ---- building ----
    def cfg_of(self, kind: str, name: str, own: bool) -> dict[str, Any]:
        spec = self.reg.half(kind, name)
        d = spec.default_config()
        d.pop("task_overrides", None)
        over = self.overrides if own else tiny_overrides(d)
        cfg = {**d, **over}
        if "seed" in cfg:
            cfg["seed"] = self.seed
        return cfg

    def build(self, kind: str | None = None, name: str | None = None, **extra: Any) -> Any:
        """A fitted half; ``extra`` overrides keys of its config that it has."""
        kind, name = kind or self.kind, name or self.name
        own = (kind, name) == (self.kind, self.name)
        spec = self.reg.half(kind, name)
        torch.manual_seed(self.seed)
        cfg = self.cfg_of(kind, name, own)
        cfg.update({k: v for k, v in extra.items() if k in cfg})
        module = spec.cls(self.obs_dim, self.act_dim, cfg).to(self.device)
        module.fit_data(self.dataset)
        return module

    def batch(self, size: int | None = None) -> dict[str, torch.Tensor]:
        return self.buffer.sample(size or TINY_BATCH)

    def fixed_batches(self, n: int, size: int = TINY_BATCH) -> list[dict[str, torch.Tensor]]:
        buf = ReplayBuffer(self.dataset, self.device, seed=self.seed + 1)
        return [buf.sample(size) for _ in range(n)]

    def policy_independent(self, name: str) -> bool:
        return not self.build("guidance", name).requires_policy

    def partner_guidances(self) -> tuple[str | None, str | None]:
        """(guidance for joint, policy-independent guidance for guidance-first/pretrained) for this policy."""
        compat = self.reg.compatible(self.name)
        if not compat:
            return None, None
        own = [g for g in compat if self.reg.guidances[g].plugin == self.spec.plugin]
        prefer = own + [g for g in ("idql",) if g in compat] + compat
        indep = next((g for g in dict.fromkeys(prefer) if self.policy_independent(g)), None)
        return prefer[0], indep

    def partner_policy(self) -> str | None:
        """A registered policy this guidance can drive (its own plugin's first, then the BC baseline)."""
        provides = self.spec.capabilities
        ok = [p for p, s in sorted(self.reg.policies.items()) if s.capabilities <= provides]
        own = [p for p in ok if self.reg.policies[p].plugin == self.spec.plugin]
        prefer = own + [p for p in ("bc", "idql") if p in ok] + ok
        return prefer[0] if prefer else None

    def frozen_partner(self) -> _Spy | None:
        """A trained-a-little, frozen guidance for policy checks, answering only what the policy needs (None if
        nothing is compatible)."""
        joint, indep = self.partner_guidances()
        name = indep or joint
        if name is None:
            return None
        g = self.build("guidance", name)
        pol = _FixedPolicy(self.obs_dim, self.act_dim).to(self.device)
        for b in self.fixed_batches(3):
            g.update(b, pol)
        return _Spy(g.freeze(), self.spec.capabilities | GUARANTEED)

    def fail(self, check: str, msg: str) -> ConformanceError:
        return _fail(check, self.kind, self.name, msg)

    def update(self, module: Any, batch: dict[str, torch.Tensor], partner: Any) -> dict[str, Any]:
        if self.kind == "guidance":
            return module.update(batch, partner if module.requires_policy else None)
        return module.update(batch, partner)

    def partner_for_update(self) -> Any:
        if self.kind == "guidance":
            return _FixedPolicy(self.obs_dim, self.act_dim).to(self.device)
        return self.frozen_partner()

    # ---- checks ----

    def _run(self, guidance: str, policy: str | None, schedule: str, out: Path, **run: Any):
        cfg = self._cfg(guidance, policy, schedule, out, **run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return train(cfg, self.dataset, progress=False)

    def _cfg(self, guidance: str, policy: str | None, schedule: str, out: Path, **run: Any) -> Any:
        over = []
        for section, name in (("guidance", guidance), ("policy", policy)):
            if name is None:
                continue
            kind_own = (section, name) == (self.kind, self.name)
            spec = self.reg.half(section, name)
            d = spec.default_config()
            d.pop("task_overrides", None)
            vals = self.overrides if kind_own else tiny_overrides(d)
            over += [f"{section}.{k}={_yaml(v)}" for k, v in vals.items()]
        run = {"seed": self.seed, **run}
        return run_config(guidance, policy, TASK, over, dataset=str(self.data_path), schedule=schedule,
                          guidance_steps=SCHEDULE_STEPS, policy_steps=SCHEDULE_STEPS, eval_episodes=0,
                          final_eval=False, device=str(self.device), out=str(out), log_every=1, **run)

    def _expect_run_dir(self, out: Path, files: tuple[str, ...], what: str) -> None:
        missing = [f for f in files if not (out / f).exists()]
        if missing:
            raise self.fail("schedules", f"{what}: run dir lacks {missing}")



# ---- the checks: one function each, run on a fresh harness ----------------------------------------------------
def check_construct(h: _Harness) -> None:
    base = GuidanceModule if h.kind == "guidance" else DiffusionPolicy
    if not issubclass(h.spec.cls, base):
        raise h.fail("construct", f"{h.spec.cls!r} does not subclass modzoo.{base.__name__}")
    if "batch_size" not in h.defaults:
        raise h.fail("construct", f"its YAML '{h.kind}:' section has no batch_size (the trainer reads it)")
    m = h.build()
    if (m.obs_dim, m.act_dim) != (h.obs_dim, h.act_dim):
        raise h.fail("construct", "obs_dim/act_dim not stored as given")
    if m.steps != 0:
        raise h.fail("construct", f"a new module must report steps == 0, got {m.steps}")
    if h.kind == "guidance":
        if "q" not in m.provides:
            raise h.fail("construct", f"provides {sorted(m.provides)}: every guidance provides 'q'")
    else:
        if h.partner_guidances()[0] is None:
            raise h.fail("construct", f"needs {sorted(m.needs)}, which no registered guidance provides")


def check_shapes(h: _Harness) -> None:
    m = h.build()
    b, obs, act = 5, h.batch(5)["observations"], h.batch(5)["actions"]
    dev = m.device

    def expect(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise h.fail("shapes", f"{what} returned {type(x).__name__}, not a tensor")
        if tuple(x.shape) != shape:
            raise h.fail("shapes", f"{what} has shape {tuple(x.shape)}, expected {shape}")
        if x.dtype != torch.float32:
            raise h.fail("shapes", f"{what} has dtype {x.dtype}, expected torch.float32")
        if x.device != dev:
            raise h.fail("shapes", f"{what} is on {x.device}, the module on {dev}")
        if not torch.isfinite(x).all():
            raise h.fail("shapes", f"{what} is not finite")

    if h.kind == "guidance":
        qe = m.q_ensemble(obs, act)
        if qe.dim() != 2 or qe.shape[1] != b:
            raise h.fail("shapes", f"q_ensemble has shape {tuple(qe.shape)}, expected (E, {b})")
        expect(qe, (qe.shape[0], b), "q_ensemble")
        expect(m.target_q_ensemble(obs, act), tuple(qe.shape), "target_q_ensemble")
        expect(m.q(obs, act), (b,), "q")
        if "v" in m.provides:
            expect(m.v(obs), (b,), "v")
        for frozen in (False, True):
            if frozen:
                m.freeze()
                if not m.frozen or any(p.requires_grad for p in m.parameters()):
                    raise h.fail("shapes", "after freeze() parameters still require grad")
            a = act.clone().requires_grad_(True)
            m.q(obs, a).sum().backward()
            if a.grad is None or not torch.isfinite(a.grad).all() or not a.grad.abs().sum() > 0:
                raise h.fail("shapes", f"q is not differentiable w.r.t. the action"
                                          f"{' after freeze()' if frozen else ''} (a policy's Q term needs it)")
        return
    g = h.frozen_partner()
    s = m.sample(obs, 3)
    expect(s, (b, 3, h.act_dim), "sample(obs, 3)")
    if s.abs().max() > 1 + 1e-6:
        raise h.fail("shapes", "sample returned actions outside [-1, 1]")
    expect(m.act(obs, g), (b, h.act_dim), "act(obs, guidance)")
    expect(m.act(obs, g, n=2), (b, h.act_dim), "act(obs, guidance, n=2)")
    expect(m.target_actions(obs), (b, h.act_dim), "target_actions")
    if m.act(obs, g).abs().max() > 1 + 1e-6:
        raise h.fail("shapes", "act returned actions outside [-1, 1]")


def check_update(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    _check_metrics(h, h.update(m, h.batch(), partner))
    if m.steps != 1:
        raise h.fail("update", f"steps is {m.steps} after one update (increment h._steps once per update)")
    h.update(m, h.batch(), partner)  # a two-stage policy (behaviour_steps 1 here) is in its second stage now
    if m.steps != 2:
        raise h.fail("update", f"steps is {m.steps} after two updates")
    if h.kind == "policy":
        declared, calls = type(m).uses_guidance_in_training, partner.calls if partner is not None else 0
        if not declared and calls:
            raise h.fail("update", f"declares uses_guidance_in_training = False but update queried the "
                                      f"guidance {calls} time(s)")
        if declared and not calls:
            raise h.fail("update", "declares uses_guidance_in_training = True but update never queried "
                                      "the guidance")


def _check_metrics(h: _Harness, metrics: Any, check: str = "update", where: str = "") -> None:
    if not isinstance(metrics, dict) or not metrics:
        raise h.fail(check, f"update must return a non-empty dict of metrics{where}, got {type(metrics).__name__}")
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise h.fail(check, f"metric key {k!r} is not a string")
        x = _scalar(v)
        if x is None:
            raise h.fail(check, f"metric {k!r} is not a scalar (a 0-d/1-element tensor or a number)")
        if not math.isfinite(x):
            raise h.fail(check, f"metric {k!r} is not finite ({x}){where}")


def check_determinism(h: _Harness) -> None:
    batches = h.fixed_batches(3)
    runs = []
    for _ in range(2):
        m, partner = h.build(), h.partner_for_update()
        metrics = [{k: _scalar(v) for k, v in h.update(m, b, partner).items()} for b in batches]
        probe = batches[0]
        with torch.no_grad():
            out = (m.q(probe["observations"], probe["actions"]) if h.kind == "guidance"
                   else m.sample(probe["observations"][:4], 2))
        runs.append((m, metrics, out))
    (a, ma, oa), (b, mb, ob) = runs
    diff = _state_diff(a, b)
    if diff:
        raise h.fail("determinism", f"two runs under the same seed end with different tensors: {diff[:4]} "
                                       f"(draw noise from a generator seeded by cfg['seed'], not global state)")
    if ma != mb:
        raise h.fail("determinism", f"same seed, different metrics: {ma} vs {mb}")
    if not torch.equal(oa, ob):
        raise h.fail("determinism", "same seed, different outputs")


def check_checkpoint(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    for b in h.fixed_batches(2):
        h.update(m, b, partner)
    meta = {"name": TASK, "fingerprint": h.dataset.fingerprint, "path": str(h.data_path)}
    path = h.workdir / f"{h.kind}-{h.name}.pt"
    save_half(m, path, meta)
    try:
        payload = read_payload(path)  # torch.load(weights_only=True): no pickled objects allowed
    except Exception as e:
        raise h.fail("checkpoint", f"checkpoint does not load with weights_only=True ({e}); keep state and "
                                      f"extra_state() to tensors and plain values") from None
    for key in REQUIRED:
        if key not in payload:
            raise h.fail("checkpoint", f"checkpoint lacks {key!r}")
    want = {"kind": h.kind, "algorithm": h.name, "obs_dim": h.obs_dim, "act_dim": h.act_dim,
            "steps": 2}
    got = {k: payload.get(k) for k in want}
    if got != want:
        raise h.fail("checkpoint", f"metadata {got}, expected {want}")
    loaded = load_checkpoint(path, h.device, kind=h.kind)
    if type(loaded) is not type(m):
        raise h.fail("checkpoint", f"loaded a {type(loaded).__name__}, saved a {type(m).__name__}")
    if loaded.cfg != m.cfg or loaded.steps != m.steps:
        raise h.fail("checkpoint", "config or step count not restored")
    diff = _state_diff(loaded, m)
    if diff:
        raise h.fail("checkpoint", f"tensors differ after the round trip: {diff[:4]}")
    if not _equal(loaded.extra_state(), m.extra_state()):
        raise h.fail("checkpoint", "extra_state() (optimizer state) differs after the round trip: implement "
                                      "extra_state/load_extra_state")
    probe = h.batch(6)
    if h.kind == "guidance":
        if not torch.equal(loaded.q(probe["observations"], probe["actions"]),
                           m.q(probe["observations"], probe["actions"])):
            raise h.fail("checkpoint", "the loaded guidance gives different Q values")
        m.freeze()
        save_half(m, path, meta)
        if not load_checkpoint(path, h.device).frozen:
            raise h.fail("checkpoint", "a frozen guidance loads unfrozen")
    else:
        s = loaded.sample(probe["observations"], 2)
        if s.shape != (6, 2, h.act_dim) or not torch.isfinite(s).all():
            raise h.fail("checkpoint", "the loaded policy does not sample")


def check_learns(h: _Harness) -> None:
    # a two-stage policy learns its first stage here, the one with a loss to lower on a fixed batch
    m, partner = h.build(behaviour_steps=h.learn_steps), h.partner_for_update()
    batch = h.fixed_batches(1)[0]
    losses: list[float] = []
    key = None
    for _ in range(h.learn_steps):
        metrics = h.update(m, batch, partner)
        _check_metrics(h, metrics, "learns")
        if key is None:
            key = next((k for k in metrics if "loss" in k), None)
            if key is None:
                raise h.fail("learns", f"update returns no metric named '*loss*' (keys: {sorted(metrics)})")
        losses.append(_scalar(metrics[key]))
    w = max(1, h.learn_steps // 5)
    first, last = float(np.mean(losses[:w])), float(np.mean(losses[-w:]))
    if not last < first:
        raise h.fail("learns", f"{h.learn_steps} updates on one fixed batch did not lower {key!r}: mean "
                                  f"of the first {w} {first:.4g}, of the last {w} {last:.4g}")


def check_trains(h: _Harness) -> None:
    m, partner = h.build(), h.partner_for_update()
    for step in range(1, TRAIN_STEPS + 1):
        _check_metrics(h, h.update(m, h.batch(), partner), "trains", f" at update {step} of {TRAIN_STEPS}")
    if h.kind == "guidance":  # every declared capability still answers finite values after training
        probe = h.batch(8)
        answers = {"q_ensemble": m.q_ensemble(probe["observations"], probe["actions"]),
                   "target_q_ensemble": m.target_q_ensemble(probe["observations"], probe["actions"]),
                   "q": m.q(probe["observations"], probe["actions"]),
                   **({"v": m.v(probe["observations"])} if "v" in m.provides else {})}
        bad = [k for k, x in answers.items() if not torch.isfinite(x).all()]
        if bad:
            raise h.fail("trains", f"after {TRAIN_STEPS} updates {bad} answer non-finite values")
    path = h.workdir / f"{h.kind}-{h.name}-trained.pt"
    save_half(m, path, {"name": TASK, "fingerprint": h.dataset.fingerprint, "path": str(h.data_path)})
    loaded = load_checkpoint(path, h.device, kind=h.kind)
    diff = _state_diff(loaded, m)
    if diff or loaded.steps != TRAIN_STEPS:
        raise h.fail("trains", f"after {TRAIN_STEPS} updates the checkpoint does not round-trip: {diff[:4]}")
    if not _equal(loaded.extra_state(), m.extra_state()):
        raise h.fail("trains", f"after {TRAIN_STEPS} updates the optimizer state does not round-trip")


def check_pairs(h: _Harness) -> None:
    needs = type(h.build()).needs_for(h.cfg_of("policy", h.name, own=True))
    fits = [g for g, s in sorted(h.reg.guidances.items()) if set(needs) <= s.capabilities]
    if not fits:
        raise h.fail("pairs", f"no registered guidance provides {sorted(needs)}")
    for g in fits:
        out = h.workdir / f"joint-{g}"
        try:
            h._run(g, h.name, "joint", out)
        except Exception as e:
            raise h.fail("pairs", f"joint with guidance {g!r} raised {type(e).__name__}: {e}") from None
        for line in (out / "metrics.jsonl").read_text().splitlines():
            bad = [k for k, v in json.loads(line).items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise h.fail("pairs", f"joint with guidance {g!r}: {bad} not finite in {line}")


def check_stacked(h: _Harness) -> None:
    if not h.spec.cls.stackable:
        raise _Skip(f"{h.spec.cls.__name__} does not declare stackable = True, so it never trains as "
                    f"stacked seeds (--stack vmap); nothing to check")
    why = stackable(h.spec.cls, None) if h.kind == "guidance" else stackable(None, h.spec.cls)
    if why:
        raise h.fail("stacked", why)
    if h.kind == "policy":
        compat = h.reg.compatible(h.name)
        guidance = next((g for g in compat if h.reg.guidances[g].cls.stackable), None)
        policy: str | None = h.name
        partner = guidance
    else:
        guidance = h.name
        policy = next((p for p, sp in sorted(h.reg.policies.items())
                       if sp.capabilities <= h.spec.capabilities and sp.cls.stackable), None)
        partner = policy
    if partner is None:
        raise h.fail("stacked", "stackable = True, but no registered stackable half pairs with it")
    seeds = (h.seed, h.seed + 1)
    cfgs = lambda tag: [h._cfg(guidance, policy, "joint", h.workdir / f"{tag}{s}", seed=s)  # noqa: E731
                        for s in seeds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_seeds(cfgs("together"), h.dataset, mode="vmap", progress=False)
        for cfg in cfgs("alone"):
            train(cfg, h.dataset, progress=False)
    for s in seeds:
        logs = []
        for tag in ("together", "alone"):
            lines = (h.workdir / f"{tag}{s}" / "metrics.jsonl").read_text().splitlines()
            logs.append([json.loads(line) for line in lines])
        for a, b in zip(*logs):
            for key, vb in b.items():
                va = a.get(key)
                if key not in ("phase", "step") and not math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-5):
                    raise h.fail("stacked", f"seed {s} step {b['step']}: {key} is {va} stacked but {vb} "
                                               f"alone; draw every random number through modzoo.contract.rng with "
                                               f"the half's gen(), and write the update as stages()")


def check_schedules(h: _Harness) -> None:
    if h.kind == "policy":
        joint, indep = h.partner_guidances()
        res = h._run(joint, h.name, "joint", h.workdir / "joint")
        if res.policy.steps != SCHEDULE_STEPS:
            raise h.fail("schedules", f"joint: policy did {res.policy.steps} steps, expected {SCHEDULE_STEPS}")
        h._expect_run_dir(h.workdir / "joint", ("config.yaml", "policy.pt", "guidance.pt", "result.json"),
                             "joint")
        if indep is None:
            raise h.fail("schedules", f"no policy-independent guidance provides {sorted(h.spec.capabilities)}"
                                         f": guidance-first and pretrained cannot run")
        res = h._run(indep, h.name, "guidance-first", h.workdir / "gf")
        if not res.guidance.frozen or res.guidance.steps != SCHEDULE_STEPS or res.policy.steps != SCHEDULE_STEPS:
            raise h.fail("schedules", "guidance-first: the guidance must train first and be frozen")
        gpt = h.workdir / "gf" / "guidance.pt"
        saved = load_checkpoint(gpt, h.device)
        res = h._run(indep, h.name, "pretrained", h.workdir / "pre", guidance_ckpt=str(gpt))
        probe = h.batch(8)
        if not torch.equal(res.guidance.q(probe["observations"], probe["actions"]),
                           saved.q(probe["observations"], probe["actions"])):
            raise h.fail("schedules", "pretrained: the loaded guidance changed while the policy trained")
        if res.policy.steps != SCHEDULE_STEPS:
            raise h.fail("schedules", "pretrained: the policy did not train")
        return
    policy = h.partner_policy()
    if policy is None:
        raise h.fail("schedules", "no registered policy pairs with this guidance")
    res = h._run(h.name, policy, "joint", h.workdir / "joint")
    if res.guidance.steps != SCHEDULE_STEPS:
        raise h.fail("schedules", f"joint: guidance did {res.guidance.steps} steps, expected {SCHEDULE_STEPS}")
    h._expect_run_dir(h.workdir / "joint", ("guidance.pt", "policy.pt", "result.json"), "joint")
    gpt = h.workdir / "joint" / "guidance.pt"
    if h.build().requires_policy:
        try:
            h._run(h.name, policy, "guidance-first", h.workdir / "gf")
        except ConfigError:
            pass
        else:
            raise h.fail("schedules", "requires_policy is True, yet guidance-first trained it without a policy")
    else:
        res = h._run(h.name, None, "guidance-first", h.workdir / "gf")
        if not res.guidance.frozen or res.guidance.steps != SCHEDULE_STEPS:
            raise h.fail("schedules", "guidance-first: the guidance must train alone and end frozen")
        h._expect_run_dir(h.workdir / "gf", ("guidance.pt", "result.json"), "guidance-first")
        gpt = h.workdir / "gf" / "guidance.pt"
    saved = load_checkpoint(gpt, h.device)
    res = h._run(h.name, policy, "pretrained", h.workdir / "pre", guidance_ckpt=str(gpt))
    probe = h.batch(8)
    if not torch.equal(res.guidance.q(probe["observations"], probe["actions"]),
                       saved.q(probe["observations"], probe["actions"])):
        raise h.fail("schedules", "pretrained: the frozen guidance changed while the policy trained")


def check_env(h: _Harness) -> None:
    m, g = h.build(), h.frozen_partner()

    def act_fn(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32, device=h.device)
            return m.act(o, g).cpu().numpy()

    res = evaluate_policy(act_fn, TASK, episodes=1, seed=h.seed, max_steps=5)
    if not np.isfinite(res.returns).all():
        raise h.fail("env", "non-finite return")


CHECKS: dict[str, Callable[[_Harness], None]] = {
    "construct": check_construct,
    "shapes": check_shapes,
    "update": check_update,
    "determinism": check_determinism,
    "checkpoint": check_checkpoint,
    "learns": check_learns,
    "trains": check_trains,
    "pairs": check_pairs,
    "stacked": check_stacked,
    "schedules": check_schedules,
    "env": check_env,
}


def _yaml(v: Any) -> str:
    """A value as omegaconf's dotlist parser reads it back (lists, null, booleans, numbers, strings)."""
    import yaml
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ---- public API ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _registered(cls: type, kind: str, config: dict[str, Any] | None) -> Iterator[str]:
    """Register a bare class for the duration of the checks (checkpoints are rebuilt through the registry)."""
    name = cls.__dict__.get("algorithm") or cls.__name__.lower()
    if config is None:
        raise ConfigError(f"checking a bare class {cls.__name__} needs its config: pass config={{...}}")
    hook = "modzoo_guidances" if kind == "guidance" else "modzoo_policies"
    spec = HalfSpec(name, cls, {kind: dict(config)}, kind, f"{cls.__name__} (under test)")
    plugin_name = f"modzoo.testing:{name}"
    register_plugin(SimpleNamespace(**{hook: hookimpl(lambda: [spec])}), name=plugin_name)
    try:
        yield name
    finally:
        unregister_plugin(plugin_name)


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
        if isinstance(name_or_cls, type):
            name = stack.enter_context(_registered(name_or_cls, kind, config))
        else:
            name = name_or_cls
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"modzoo-check-{name}-"))
        stack.enter_context(_one_thread())
        report = Report(kind, name)
        failures: list[str] = []
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        data = Path(dataset) if dataset else root / f"{TASK}-synthetic.hdf5"
        if not data.exists():
            synthetic_dataset(data, seed=seed)
        for check in todo:
            sub = root / f"{kind}-{name}-{check}"
            sub.mkdir(parents=True, exist_ok=True)
            h = _Harness(kind, name, overrides, sub, data, device, seed, learn_steps)
            try:
                CHECKS[check](h)
            except _Skip as e:
                report.skipped[check] = str(e)
            except ConformanceError as e:  # raised by the check, or by the _Spy a policy called
                prefix = f"[{check}] {kind} {name!r}"
                failures.append(str(e) if str(e).startswith(f"[{check}]") else f"{prefix}: {e}")
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
    halves = ([("guidance", n) for n, s in sorted(reg.guidances.items()) if s.plugin == plugin]
              + [("policy", n) for n, s in sorted(reg.policies.items()) if s.plugin == plugin])
    if not halves:
        halves = [("guidance", plugin)] * (plugin in reg.guidances) + [("policy", plugin)] * (plugin in reg.policies)
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
    reports: dict[str, Report] = {}
    failures: list[str] = []
    base = kwargs.pop("workdir", None)
    for kind, name in plugin_halves(plugin):
        sub = Path(base) / f"{kind}-{name}" if base else None
        try:
            reports[f"{kind}:{name}"] = _check(kind, name, workdir=sub, **kwargs)
        except ConformanceError as e:
            failures.append(str(e))
    if failures:
        raise ConformanceError("\n".join(failures))
    return reports


def cases(plugin: str) -> list[tuple[str, str, str]]:
    """(kind, half, check) triples for ``plugin``: one pytest item each under ``--modzoo-plugin``."""
    out = []
    for kind, name in plugin_halves(plugin):
        out += [(kind, name, c) for c in (GUIDANCE_CHECKS if kind == "guidance" else POLICY_CHECKS)]
    return out


def run_case(kind: str, name: str, check: str, workdir: str | Path, **kwargs: Any) -> Report:
    """One check of one half (what each ``--modzoo-plugin`` pytest item runs)."""
    return _check(kind, name, checks=[check], workdir=workdir, **kwargs)


Check = Callable[..., Report]
