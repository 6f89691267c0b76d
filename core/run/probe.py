"""Probes that leave no trace in the run: before training, a policy whose ``sample`` or ``act`` returns the wrong
shape is refused; and the guidance outputs a policy reads are checked for non-finite values."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator

import numpy as np
import torch

from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import load_registry
from ..errors import NonFiniteError, PluginError
from .attribution import half_label

#: the probe before training: states taken from the dataset, and candidates asked of ``sample``
PROBE_STATES, PROBE_CANDIDATES = 2, 2


def probe_policy(policy: DiffusionPolicy, guidance: GuidanceModule | None, dataset: Any) -> None:
    """Refuse, before the first step, a policy whose ``sample`` or ``act`` returns the wrong shape: otherwise the
    run trains every phase and fails in the final evaluation. When ``act`` fails, a guidance answering NaN (a
    diverged checkpoint) is more often why than the policy's code: it is named, instead of the torch error from
    deep inside the selection rule."""
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
    """Put back everything a probe's sampling may move: each half's noise stream (one it created lazily is dropped
    again), its buffers and train/eval modes, and the global torch, numpy and Python RNGs."""
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
    """The first output the policy reads from ``guidance`` (``q(obs, act)``, and ``v(obs)`` where it needs it)
    that is non-finite on these dataset states, as (that call, its first bad value); None when all are finite."""
    outputs = {"q(obs, act)": lambda: guidance.q(observations, actions)}
    if "v" in (getattr(policy, "needs", ()) or ()) and "v" in guidance.provides:
        outputs["v(obs)"] = lambda: guidance.v(observations)
    with _untouched(guidance, policy), torch.no_grad():
        for call, output in outputs.items():
            out = output()
            if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                return call, float(out[~torch.isfinite(out)].flatten()[0])
    return None
