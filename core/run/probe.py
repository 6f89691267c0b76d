"""The probe before training: a policy whose ``sample`` or ``act`` returns the wrong shape is refused before
the first step, and the probe leaves no trace in the run."""
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
    run trains every phase and fails in the final evaluation. The probe leaves no trace (:func:`_untouched`), so a
    run trains to the same numbers with it as without it."""
    obs = torch.as_tensor(dataset.observations[:PROBE_STATES], dtype=torch.float32, device=policy.device)
    b, n, a = obs.shape[0], PROBE_CANDIDATES, policy.act_dim
    with _untouched(policy, guidance), torch.no_grad():
        _expect_shape(policy, f"sample(obs, {n})", policy.sample(obs, n), (b, n, a), "(states, n, act_dim)")
        try:
            acted = policy.act(obs, guidance)
        except Exception:
            _refuse_nonfinite_guidance(policy, guidance, obs, dataset)
            raise
        _expect_shape(policy, "act(obs, guidance)", acted, (b, a), "(states, act_dim)")


def _refuse_nonfinite_guidance(policy: DiffusionPolicy, guidance: GuidanceModule | None, obs: torch.Tensor,
                               dataset: Any) -> None:
    """When ``act`` failed: a guidance answering NaN (a diverged checkpoint) is why, more often than the policy's
    code; name it, instead of the torch error from deep inside the selection rule."""
    if guidance is None:
        return
    act = torch.as_tensor(dataset.actions[:len(obs)], dtype=torch.float32, device=policy.device)
    found = probe_guidance(guidance, policy, obs, act)
    if found is not None:
        name, value = found
        call = "q(obs, act)" if name == "q" else f"{name}(obs)"
        raise NonFiniteError(f"{half_label(guidance)} gave a non-finite {call} = {value} on dataset states (policy "
                             f"{policy.algorithm!r} reads it) before training; nothing was trained: check the guidance "
                             f"(its checkpoint or its plugin's maths)")


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
    """Which output the policy reads from ``guidance`` is non-finite on these dataset states (``"q"`` or
    ``"v"``) and its first bad value, or None. Leaves no trace: the noise streams, buffers and modes are put back,
    so a run trains to the same numbers with the probe as without it."""
    needs = set(getattr(policy, "needs", ()) or ()) | {"q"}
    with _untouched(guidance, policy), torch.no_grad():
        outputs = {"q": lambda: guidance.q(observations, actions)}
        if "v" in needs and "v" in guidance.provides:
            outputs["v"] = lambda: guidance.v(observations)
        for name, call in outputs.items():
            out = call()
            if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                return name, float(out[~torch.isfinite(out)].flatten()[0])
    return None
