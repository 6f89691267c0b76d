"""The non-finite guard: a NaN or Inf in any update's metrics, or in what the policy reads from its guidance, stops
the run (``run.on_nonfinite: stop``) or is reported once (``warn``).

Why cheap: a host sync per step (reading a loss) would cost a GPU run most of its speed, so a step only gathers its
metrics into one device vector (:meth:`NonFiniteGuard.observe`, a single ``cat``, no sync); the vectors are read
together at the points where the run reads the device anyway or must not go on blind: when it logs, before each
save (so that a checkpoint is written only from finite numbers, and the last one on disk is the last good one) and
before each evaluation. Only on a failure does the guard look for the first bad step and metric.

Why also the guidance's outputs: a frozen guidance (a pretrained checkpoint, the policy phase of guidance-first)
trains no more, so no loss of it is checked, yet the policy ranks actions by its ``q`` (and ``v``). Those are probed
on a few dataset states (:func:`modzoo.run.probe.probe_guidance`) when a policy phase starts and before each
evaluation, leaving no trace in the run.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import NonFiniteError
from .attribution import half_label
from .probe import probe_guidance

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
    """Collects the metrics of a group's steps on the device and checks them when asked (see the module
    docstring); each step gives one dict per run of the group (stacked seeds each have their own metrics).
    ``runs``: the group (:class:`~modzoo.run.training.ActiveRun`), whose halves and saved states a stop names."""

    runs: Sequence[Any] = ()
    on_nonfinite: str = "stop"
    pending: list[tuple[int, list[tuple[int, str, int]], torch.Tensor]] = field(default_factory=list)
    host_bad: Bad | None = None
    warned: set[str] = field(default_factory=set)

    def observe(self, step: int, metrics: Sequence[dict[str, Any]]) -> None:
        """Record step ``step``'s metrics (one dict per run) without reading them: tensors go into one device
        vector, plain numbers are checked on the spot."""
        parts, where = [], []
        device = None
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
                values = vec.tolist()
                at = 0
                for i, key, n in where:
                    for x in values[at:at + n]:
                        if not math.isfinite(x):
                            bad = Bad(i, step, key, x)
                            return bad if found is None or (bad.step, bad.run) < (found.step, found.run) else found
                    at += n
        return found

    def check(self, phase: str) -> None:
        """Read the metrics gathered since the last check (one host sync); a non-finite one stops the run or
        warns, per ``run.on_nonfinite``."""
        bad = self.first_bad()
        if bad is not None:
            run = self.runs[bad.run]
            half = run.guidance if bad.metric.startswith("guidance/") else run.policy
            self._react(run, f"{half_label(half)} gave a non-finite {bad.metric} = {bad.value} in the {phase} phase "
                        f"at step {bad.step}", "lower the learning rate or fix the plugin's loss, or set "
                        "run.on_nonfinite=warn to train on through it", f"{bad.run}:{bad.metric}")

    def check_guidance(self, where: str) -> None:
        """The values each run's policy reads from its guidance (``q``, and ``v`` where it needs it), probed on
        dataset states: a frozen guidance has no loss left to watch. The halves must be synced."""
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
        """``stop``: raise :class:`NonFiniteError` with ``message``, what the run kept, and ``fix``; ``warn``: one
        warning per run and metric (``key``), and the run trains on."""
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
