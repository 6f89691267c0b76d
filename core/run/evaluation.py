"""Policy evaluation on the Bullet tasks, batched across episodes.

A diffusion policy's cost is per *call* (T denoising steps over N candidates), not per state, so
:func:`evaluate_policy` runs K episodes in K envs in lockstep and queries the policy once per time step
for all live episodes together; finished episodes drop out of the batch. :func:`evaluate_sequential`
runs the same episodes one after another (the benchmark's baseline). Episode ``i`` is reset with seed
``seed + i`` in both, and the envs reset deterministically, so both see identical episodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..bullet.envs import env_dims, make_env
from ..bullet.scores import normalized_score
from ..errors import ModzooError
from ..progress import progress_bar

ActFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalResult:
    """Per-episode results of one evaluation."""

    task: str
    returns: np.ndarray
    lengths: np.ndarray
    normalized: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def normalized_mean(self) -> float:
        return float(np.mean(self.normalized))

    @property
    def normalized_std(self) -> float:
        return float(np.std(self.normalized))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (lists, floats) for logs and result files."""
        return {
            "task": self.task,
            "episodes": int(len(self.returns)),
            "returns": [float(x) for x in self.returns],
            "lengths": [int(x) for x in self.lengths],
            "normalized": [float(x) for x in self.normalized],
            "mean": self.mean,
            "std": self.std,
            "normalized_mean": self.normalized_mean,
            "normalized_std": self.normalized_std,
        }


def _check_actions(acts: Any, n: int, act_dim: int) -> np.ndarray:
    a = np.asarray(acts, dtype=np.float32)
    if a.shape != (n, act_dim):
        raise ModzooError(f"policy returned actions of shape {a.shape} for {n} states: expected ({n}, {act_dim}); "
                          "check the policy's action dimension matches the task")
    if not np.isfinite(a).all():
        raise ModzooError("policy returned NaN or inf actions: the checkpoint is likely diverged; "
                          "evaluate an earlier one")
    # Our datasets hold actions in [-1, 1] and the env clips torques anyway; clipping keeps the
    # electricity cost (computed from the raw action) consistent with the data.
    return np.clip(a, -1.0, 1.0)


def _result(task: str, returns: np.ndarray, lengths: np.ndarray) -> EvalResult:
    return EvalResult(task, returns, lengths, np.asarray(normalized_score(task, returns), dtype=np.float64).reshape(-1))


def evaluate_policy(
    act_fn: ActFn, task: str, episodes: int = 10, seed: int = 0, max_steps: int = 1000, progress: bool = False
) -> EvalResult:
    """Run ``episodes`` episodes in lockstep, one batched ``act_fn`` call per time step."""
    if episodes < 1:
        raise ModzooError(f"episodes must be at least 1, got {episodes}")
    obs_dim, act_dim = env_dims(task)
    envs = [make_env(task) for _ in range(episodes)]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        returns = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        live = np.ones(episodes, dtype=bool)
        with progress_bar(total=episodes, desc=f"eval {task}", unit="ep", disable=not progress) as bar:
            while live.any():
                idx = np.flatnonzero(live)
                acts = _check_actions(act_fn(obs[idx]), len(idx), act_dim)
                for j, i in enumerate(idx):
                    o, r, term, trunc, _ = envs[i].step(acts[j])
                    obs[i] = o
                    returns[i] += r
                    lengths[i] += 1
                    if term or trunc or lengths[i] >= max_steps:
                        live[i] = False
                        bar.update(1)
    finally:
        for env in envs:
            env.close()
    return _result(task, returns, lengths)


def evaluate_sequential(
    act_fn: ActFn, task: str, episodes: int = 10, seed: int = 0, max_steps: int = 1000, progress: bool = False
) -> EvalResult:
    """Run the same episodes as :func:`evaluate_policy` one after another, one state per ``act_fn`` call."""
    if episodes < 1:
        raise ModzooError(f"episodes must be at least 1, got {episodes}")
    _, act_dim = env_dims(task)
    env = make_env(task)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    try:
        for i in progress_bar(range(episodes), desc=f"eval {task}", unit="ep", disable=not progress):
            o, _ = env.reset(seed=seed + i)
            while True:
                a = _check_actions(act_fn(o[None].astype(np.float32)), 1, act_dim)[0]
                o, r, term, trunc, _ = env.step(a)
                returns[i] += r
                lengths[i] += 1
                if term or trunc or lengths[i] >= max_steps:
                    break
    finally:
        env.close()
    return _result(task, returns, lengths)
