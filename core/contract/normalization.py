"""Observation normalization, a property of the data that both halves carry: with ``obs_norm: gaussian`` in a
half's config its networks z-score every observation they read with the dataset's per-dimension statistics (the
GFDT authors' CleanDiffuser pipelines do this through ``GaussianNormalizer``), computed once from the training data
(:func:`fit_obs_norm`) and kept inside the networks (:class:`ObsNorm`), hence in the half's checkpoint.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

OBS_NORMS = ("none", "gaussian")


def obs_norm_enabled(cfg: dict) -> bool:
    """Whether a half's config asks its networks to z-score observations (``obs_norm: gaussian``)."""
    name = cfg.get("obs_norm", "none") or "none"
    if name not in OBS_NORMS:
        raise ValueError(f"unknown obs_norm {name!r}; known: {', '.join(OBS_NORMS)}")
    return name == "gaussian"


class ObsNorm(nn.Module):
    """z-scores observations with the dataset's mean and std (CleanDiffuser's ``GaussianNormalizer``).

    It sits inside every network that reads a state, so a half always takes the env's raw observation: training,
    TD targets, ranking and evaluation all see the same numbers, and two halves normalized differently pair
    without any re-mapping, each applying its own statistics. Filled by :func:`fit_obs_norm`.
    """

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


def gaussian_stats(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) std of ``observations``; a constant dimension gets std 1, as
    CleanDiffuser's ``GaussianNormalizer`` does, so it passes through shifted rather than divided by zero."""
    x = np.asarray(observations, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    std[std == 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def fit_obs_norm(half: Any, observations: np.ndarray) -> None:
    """Fill every :class:`ObsNorm` in ``half`` (target and EMA copies included) with the statistics of
    ``observations`` when its config asks for them.

    A half whose config asks for ``obs_norm: gaussian`` but whose networks have no :class:`ObsNorm` (a plugin that
    builds its own nets) is refused: it would silently train on raw inputs.
    """
    if not obs_norm_enabled(half.cfg):
        return
    layers = [m for m in half.modules() if isinstance(m, ObsNorm)]
    if not layers:
        raise ConfigError(f"{type(half).algorithm or type(half).__name__!r} does not support obs_norm=gaussian: its "
                          f"networks have no modzoo.contract.normalization.ObsNorm (build them with "
                          f"obs_norm=obs_norm_enabled(cfg)); set obs_norm=none for it")
    mean, std = gaussian_stats(observations)
    with torch.no_grad():
        for m in layers:
            m.mean.copy_(torch.as_tensor(mean, device=m.mean.device))
            m.std.copy_(torch.as_tensor(std, device=m.std.device))
