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
    docstring); each step gives one dict per run of the group (stacked seeds each have their own metrics)."""

    pending: list[tuple[int, list[tuple[int, str, int]], torch.Tensor]] = field(default_factory=list)
    host_bad: Bad | None = None

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


def nonfinite_message(half: Any, metric: str, value: float, where: str, seed: str = "") -> str:
    """The line a non-finite value is reported with: the half and its plugin, the metric and its value, and
    ``where`` (the phase and step)."""
    return f"{half_label(half)} gave a non-finite {metric} = {value} {where}{seed}"


def react(on_nonfinite: str, message: str, stop_tail: str, warned: set[str], key: str) -> None:
    """``stop``: raise :class:`NonFiniteError` (``message`` and ``stop_tail``: what was kept and the fix);
    ``warn``: one warning per run and metric, and the run trains on."""
    if on_nonfinite == "warn":
        if key not in warned:
            warned.add(key)
            warnings.warn(f"{message}; run.on_nonfinite=warn, so training goes on", stacklevel=3)
        return
    raise NonFiniteError(f"{message}; {stop_tail}")
