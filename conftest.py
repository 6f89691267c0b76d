"""Shared fixtures: a small real dataset collected once per test session."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

# One intra-op thread: the nets under test are tiny, and when other processes share the cores torch's default
# thread pool spins (README, "Threads on a shared CPU"); a tiny linear layer measured 11 ms with 2 threads and
# 0.02 ms with 1 on this loaded 2-core machine.
torch.set_num_threads(1)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (addopts): a worker per CPU this process may use, at most 4 (each imports torch and holds up to
    about 1 GB at its peak; past 4 the suite's few long tests set its length anyway); on one CPU none, the tests
    run in this process. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cpus, 4) if cpus > 1 else 0


@pytest.fixture(scope="session")
def small_dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~5k-transition bullet-hopper-medium file made by ``modzoo data collect`` (about 3 s).

    Same layout and recipe as the full dataset, only shorter; seed 0 so it is the same every session.
    """
    from modzoo.bullet.collect import collect

    out = tmp_path_factory.mktemp("data") / "bullet-hopper-medium-v0.hdf5"
    collect("bullet-hopper-medium-v0", transitions=5000, seed=0, out=out, progress=False)
    return out


def random_batch(b: int, seed: int, obs_dim: int, act_dim: int) -> dict[str, torch.Tensor]:
    """A batch of the contract's shapes with random values (no terminals), seeded: for unit tests of a half's
    update that need no dataset."""
    g = torch.Generator().manual_seed(seed)
    return {"observations": torch.randn(b, obs_dim, generator=g),
            "actions": torch.rand(b, act_dim, generator=g) * 2 - 1,
            "rewards": torch.randn(b, generator=g), "next_observations": torch.randn(b, obs_dim, generator=g),
            "terminals": torch.zeros(b), "next_actions": torch.rand(b, act_dim, generator=g) * 2 - 1}


def gaussian_eps(x_t: torch.Tensor, t: torch.Tensor, sde: Any, mean: torch.Tensor, std: float) -> torch.Tensor:
    """The exact eps-prediction of a behaviour N(mean, std^2 I) under ``sde`` (a ``modzoo.blocks.sde.VPSDE``): its
    marginal at t is N(alpha mean, (alpha^2 std^2 + sigma^2) I), so eps*(x_t) = -sigma_t grad log p_t =
    sigma_t (x_t - alpha_t mean) / (alpha_t^2 std^2 + sigma_t^2). For tests of score-based losses and samplers
    against closed forms."""
    a, s = sde.alpha_sigma(t)
    a, s = a[:, None], s[:, None]
    return s * (x_t - a * mean) / (a ** 2 * std ** 2 + s ** 2)
