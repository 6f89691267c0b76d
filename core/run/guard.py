"""The non-finite guard: a NaN or Inf in any update's metrics, or in what the policy reads from its guidance, stops
the run (``run.on_nonfinite: stop``) or is reported once (``warn``). A host sync per step would cost a GPU run most
of its speed, so metrics are gathered on the device and read when the run logs, saves (the last checkpoint is then
the last good one) or evaluates. A frozen guidance has no loss, so what the policy reads of it is probed
(:func:`probe_guidance`); probes leave no trace in the run's numbers.
"""
from __future__ import annotations

import contextlib
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import load_registry
from ..errors import NonFiniteError, PluginError
from .attribution import half_label

ON_NONFINITE = ("stop", "warn")
#: dataset states on which the guidance's outputs are probed
PROBE_ROWS = 64
#: steps gathered before the loop reads them even if it does not log (one sync per this many steps at most)
MAX_PENDING = 1000


@dataclass
class Bad:
    """The first non-finite value found: which run of the group, at which step, which metric, its value."""

    run: int
    step: int
    metric: str
    value: float


@dataclass
class NonFiniteGuard:
    """Gathers a group's step metrics (one dict per run) on the device and checks them when asked. ``runs``: the
    group (:class:`~modzoo.run.training.ActiveRun`), whose halves and saved states a stop names."""

    runs: Sequence[Any] = ()
    on_nonfinite: str = "stop"
    pending: list[tuple[int, list[tuple[int, str, int]], torch.Tensor]] = field(default_factory=list)
    host_bad: Bad | None = None
    warned: set[str] = field(default_factory=set)

    def observe(self, step: int, metrics: Sequence[dict[str, Any]]) -> None:
        """Keep step ``step``'s tensors in one device vector, unread; plain numbers are checked on the spot."""
        parts, where, device = [], [], None
        for i, m in enumerate(metrics):
            for k, v in m.items():
                if isinstance(v, torch.Tensor):
                    if not v.is_floating_point():
                        continue
                    t = v.detach().reshape(-1)
                    device = device or t.device
                    parts.append(t if t.device == device else t.to(device))
                    where.append((i, k, t.numel()))
                elif isinstance(v, float) and not math.isfinite(v) and self.host_bad is None:
                    self.host_bad = Bad(i, step, k, v)
        if parts:
            self.pending.append((step, where, torch.cat(parts) if len(parts) > 1 else parts[0]))

    def first_bad(self) -> Bad | None:
        """The first non-finite value since the last check (one host sync), or None; then forgets what it read."""
        pending, self.pending = self.pending, []
        found, self.host_bad = self.host_bad, None
        if pending and not bool(torch.isfinite(torch.cat([p[2].float() for p in pending])).all()):
            for step, where, vec in pending:
                values, at = vec.tolist(), 0
                for i, key, n in where:
                    for x in values[at:at + n]:
                        if not math.isfinite(x):
                            bad = Bad(i, step, key, x)
                            return bad if found is None or (bad.step, bad.run) < (found.step, found.run) else found
                    at += n
        return found

    def check(self, phase: str) -> None:
        """Read what was gathered (one host sync); a non-finite value stops or warns per ``run.on_nonfinite``."""
        bad = self.first_bad()
        if bad is not None:
            run = self.runs[bad.run]
            half = run.guidance if bad.metric.startswith("guidance/") else run.policy
            self._react(run, f"{half_label(half)} gave a non-finite {bad.metric} = {bad.value} in the {phase} phase "
                        f"at step {bad.step}", "lower the learning rate or fix the plugin's loss, or set "
                        "run.on_nonfinite=warn to train on through it", f"{bad.run}:{bad.metric}")

    def check_guidance(self, where: str) -> None:
        """Probe what each run's policy reads from its guidance on dataset states (halves synced)."""
        for run in self.runs:
            if run.policy is None:
                continue
            data = run.buffer.data
            found = probe_guidance(run.guidance, run.policy, data["observations"][:PROBE_ROWS],
                                   data["actions"][:PROBE_ROWS])
            if found is not None:
                self._react(run, f"{half_label(run.guidance)} gave a non-finite {found[0]} = {found[1]} on dataset "
                            f"states (policy {run.policy.algorithm!r} reads it) {where}", "check the guidance (its "
                            "checkpoint or its plugin's maths), or set run.on_nonfinite=warn to go on",
                            f"guidance:{found[0]}")

    def _react(self, run: Any, message: str, fix: str, key: str) -> None:
        """``stop``: raise :class:`NonFiniteError` saying what the run kept and ``fix``; ``warn``: warn once per
        ``key`` and train on."""
        message += f" (seed {run.r.seed})" if len(self.runs) > 1 else ""
        if self.on_nonfinite == "warn":
            if key not in self.warned:
                self.warned.add(key)
                warnings.warn(f"{message}; run.on_nonfinite=warn, so training goes on", stacklevel=3)
            return
        if run.saved_at is None or run.state_path is None:
            kept = "the run stopped before its first save (nothing to resume) and wrote no score"
        else:
            kept = (f"the run stopped, keeping its last good state ({run.saved_at[0]} phase, step "
                    f"{run.saved_at[1]}, in {run.state_path}), and wrote no score")
        raise NonFiniteError(f"{message}; {kept}; {fix}")


#: the probe before training: states taken from the dataset, and candidates asked of ``sample``
PROBE_STATES, PROBE_CANDIDATES = 2, 2


def probe_policy(policy: DiffusionPolicy, guidance: GuidanceModule | None, dataset: Any) -> None:
    """Refuse, before the first step, a policy whose ``sample`` or ``act`` returns the wrong shape (else only the final
    evaluation fails); when ``act`` fails, a NaN guidance, the likelier cause, is named instead of torch's error."""
    obs = torch.as_tensor(dataset.observations[:PROBE_STATES], dtype=torch.float32, device=policy.device)
    b, n, a = obs.shape[0], PROBE_CANDIDATES, policy.act_dim
    with _untouched(policy, guidance), torch.no_grad():
        _expect_shape(policy, f"sample(obs, {n})", policy.sample(obs, n), (b, n, a), "(states, n, act_dim)")
        try:
            acted = policy.act(obs, guidance)
        except Exception:
            act = torch.as_tensor(dataset.actions[:b], dtype=torch.float32, device=policy.device)
            found = probe_guidance(guidance, policy, obs, act) if guidance is not None else None
            if found is not None:
                raise NonFiniteError(f"{half_label(guidance)} gave a non-finite {found[0]} = {found[1]} on dataset "
                                     f"states (policy {policy.algorithm!r} reads it) before training; nothing was "
                                     f"trained: check the guidance (its checkpoint or its plugin's maths)")
            raise
        _expect_shape(policy, "act(obs, guidance)", acted, (b, a), "(states, act_dim)")


def _expect_shape(policy: DiffusionPolicy, call: str, out: Any, want: tuple[int, ...], axes: str) -> None:
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got == want:
        return
    spec = load_registry().policies.get(policy.algorithm)
    plugin = f" (plugin {spec.plugin!r})" if spec is not None else ""
    what = f"shape {got}" if got is not None else f"a {type(out).__name__}, not a tensor of shape"
    raise PluginError(f"policy {policy.algorithm!r}{plugin}: {call} on {want[0]} dataset states returned {what}, "
                      f"expected {want} {axes}; fix the plugin's {call.split('(')[0]} (modzoo.testing.check_policy"
                      f"({policy.algorithm!r}, checks=['shapes']) checks it). Nothing was trained")


@contextlib.contextmanager
def _untouched(*halves: Any) -> Iterator[None]:
    """Put back what a probe may move: each half's noise stream (a lazily created one is dropped), buffers and
    train/eval modes, and the global torch, numpy and Python RNGs."""
    kept = [(h, h.generator, h.generator.get_state() if isinstance(h.generator, torch.Generator) else None,
             [(m, m.training) for m in h.modules()], [x.clone() for x in h.buffers()])
            for h in halves if h is not None]
    cuda = sorted({h.device.index or 0 for h in halves if h is not None and h.device.type == "cuda"})
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            for half, gen, state, modes, buffers in kept:
                if state is not None:
                    gen.set_state(state)
                half.use_generator(gen)
                for m, mode in modes:
                    m.training = mode
                with torch.no_grad():
                    for x, old in zip(half.buffers(), buffers):
                        x.copy_(old)


def probe_guidance(guidance: GuidanceModule, policy: DiffusionPolicy | None, observations: torch.Tensor,
                   actions: torch.Tensor) -> tuple[str, float] | None:
    """The first non-finite output the policy reads from ``guidance`` on these states (``q(obs, act)``, and
    ``v(obs)`` where it needs it), as (call, first bad value); None when all are finite."""
    outputs = {"q(obs, act)": lambda: guidance.q(observations, actions)}
    if "v" in (getattr(policy, "needs", ()) or ()) and "v" in guidance.provides:
        outputs["v(obs)"] = lambda: guidance.v(observations)
    with _untouched(guidance, policy), torch.no_grad():
        for call, output in outputs.items():
            out = output()
            if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                return call, float(out[~torch.isfinite(out)].flatten()[0])
    return None
