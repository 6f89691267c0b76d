"""Observation normalization, a property of the data that both halves carry.

With ``obs_norm: gaussian`` in a half's config its networks z-score every observation they read with the
dataset's per-dimension mean and standard deviation (the GFDT authors' CleanDiffuser pipelines do this through
``GaussianNormalizer``). The statistics are computed once from the training data, kept as buffers inside the
networks (:class:`~modzoo.nets.ObsNorm`) and so saved in the half's checkpoint. A half therefore always takes raw
env observations: a guidance and a policy normalized differently (or one of them not at all) pair correctly,
each applying its own statistics, whether they meet in training, at ``modzoo eval`` or in a swap.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .nets import ObsNorm, obs_norm_enabled


def gaussian_stats(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) std of ``observations``; a constant dimension gets std 1, as
    CleanDiffuser's ``GaussianNormalizer`` does, so it passes through shifted rather than divided by zero."""
    x = np.asarray(observations, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def norm_layers(half: torch.nn.Module) -> list[ObsNorm]:
    """Every :class:`ObsNorm` inside ``half`` (its target and EMA copies included)."""
    return [m for m in half.modules() if isinstance(m, ObsNorm)]


def fit_obs_norm(half: Any, observations: np.ndarray) -> bool:
    """Fill ``half``'s normalizers with the statistics of ``observations`` when its config asks for them.

    Returns whether it did. A half whose config asks for ``obs_norm: gaussian`` but whose networks have no
    :class:`ObsNorm` (a plugin that builds its own nets) is refused: it would silently train on raw inputs.
    """
    if not obs_norm_enabled(half.cfg):
        return False
    layers = norm_layers(half)
    if not layers:
        raise ConfigError(f"{type(half).algorithm or type(half).__name__!r} does not support obs_norm=gaussian: its "
                          f"networks have no modzoo.nets.ObsNorm (build them with obs_norm=obs_norm_enabled(cfg)); "
                          f"set obs_norm=none for it")
    mean, std = gaussian_stats(observations)
    with torch.no_grad():
        for m in layers:
            m.mean.copy_(torch.as_tensor(mean, device=m.mean.device))
            m.std.copy_(torch.as_tensor(std, device=m.std.device))
    return True


def obs_stats(half: torch.nn.Module) -> dict[str, list[float]] | None:
    """The statistics a half normalizes with (None when it reads raw observations): for run records."""
    layers = norm_layers(half)
    if not layers:
        return None
    return {"mean": layers[0].mean.tolist(), "std": layers[0].std.tolist()}
