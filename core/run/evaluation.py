"""Policy evaluation on the Bullet tasks, batched across episodes: a diffusion policy's cost is per *call* (T
denoising steps over N candidates), not per state, so K envs step in lockstep with one policy query per time step.
Episode ``i`` is reset with seed ``seed + i`` (deterministic resets): a batch sees the episodes it would one by one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..bullet.envs import env_dims, make_env
from ..bullet.scores import normalized_score
from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..errors import CheckpointError, ConfigError, ModzooError
from ..progress import progress_bar
from .checkpoint import check_guidance_fits, load_checkpoint
from .halves import resolve_device


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
        return {"task": self.task, "episodes": int(len(self.returns)), "returns": [float(x) for x in self.returns],
                "lengths": [int(x) for x in self.lengths], "normalized": [float(x) for x in self.normalized],
                "mean": self.mean, "std": self.std, "normalized_mean": self.normalized_mean,
                "normalized_std": self.normalized_std}


def _check_actions(acts: Any, n: int, act_dim: int) -> np.ndarray:
    a = np.asarray(acts, dtype=np.float32)
    if a.shape != (n, act_dim):
        raise ModzooError(f"policy returned actions of shape {a.shape} for {n} states: expected ({n}, {act_dim}); "
                          "check the policy's action dimension matches the task")
    if not np.isfinite(a).all():
        raise ModzooError("policy returned NaN or inf actions: the checkpoint is likely diverged; "
                          "evaluate an earlier one")
    # the data's actions are in [-1, 1]; the env clips torques anyway, but its electricity cost reads the raw action
    return np.clip(a, -1.0, 1.0)


def evaluate_policy(act_fn: Callable[[np.ndarray], np.ndarray], task: str, episodes: int = 10, seed: int = 0,
                    max_steps: int = 1000, progress: bool = False) -> EvalResult:
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
    return EvalResult(task, returns, lengths, np.asarray(normalized_score(task, returns), dtype=np.float64).reshape(-1))


def eval_seed(seed: int) -> int:
    """The first env (and sampling) seed of a run's evaluations, one formula (lab/benchmarks/reference_score.py too):
    never a training seed, and distinct starts across seeds (a stride of 1 gave 5 seeds x 10 episodes 14 starts)."""
    return 10_000 + 100_000 * seed


def evaluate(policy: DiffusionPolicy, guidance: GuidanceModule | None = None, task: str | None = None,
             episodes: int = 10, seed: int = 0, progress: bool = False, candidates: int | None = None):
    """Run ``episodes`` episodes in lockstep (one batched ``act`` per env step); returns an ``EvalResult``."""
    task = task or getattr(policy, "dataset_meta", {}).get("name")
    if not task:
        raise ConfigError("evaluate needs a task name (e.g. bullet-hopper-medium-v0)")
    if candidates is not None and int(candidates) < 1:
        raise ConfigError(f"candidates (--candidates) must be at least 1, got {candidates}")
    check_policy_fits_env(policy, task)
    device = policy.device

    def act_fn(obs):
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            return policy.act(o, guidance, n=candidates).cpu().numpy()

    base = eval_seed(seed)
    # sampled from a generator seeded like the episodes, not the training stream: an evaluation is reproducible, and
    # how often a run evaluates does not change its training noise
    training_gen = policy.generator
    policy.use_generator(torch.Generator(device=device).manual_seed(base))
    try:
        return evaluate_policy(act_fn, task, episodes=episodes, seed=base, progress=progress)
    finally:
        policy.use_generator(training_gen)


def check_policy_fits_env(policy: DiffusionPolicy, task: str) -> None:
    """Refuse an env of other dims in one line naming both, not a matmul shape error from the first layer."""
    obs_dim, act_dim = env_dims(task)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        trained = getattr(policy, "dataset_meta", {}).get("name") or "another task"
        raise CheckpointError(f"policy {policy.algorithm!r} was trained on {trained} (obs/act dims {policy.obs_dim}/"
                              f"{policy.act_dim}), but {task} has obs/act dims {obs_dim}/{act_dim}: evaluate it on "
                              f"its own robot's tasks (--env), or leave --env out to use its own task")


def load_policy_and_guidance(policy_ckpt: str | Path, guidance_ckpt: str | Path | None = None,
                             device: str | torch.device = "cpu", task: str | None = None
                             ) -> tuple[DiffusionPolicy, GuidanceModule | None]:
    """For ``modzoo eval``: a policy checkpoint and the guidance that ranks its candidates (without
    ``guidance_ckpt``: the ``guidance.pt`` beside it, if any). ``task``: the env, checked against the policy first."""
    device = resolve_device(str(device))
    policy = load_checkpoint(policy_ckpt, device, kind="policy")
    if task:
        check_policy_fits_env(policy, task)
    gpath = Path(guidance_ckpt) if guidance_ckpt else Path(policy_ckpt).with_name("guidance.pt")
    guidance = None
    n = int(policy.cfg.get("candidates", 1) or 1)
    if not guidance_ckpt and not gpath.exists():
        if n > 1:  # found without its guidance (moved out of its run dir): its score is then not the run's
            warnings.warn(f"no guidance found for {policy_ckpt} (no --guidance, and no {gpath}): policy "
                          f"{policy.algorithm!r} acts with one sample per state instead of ranking {n} candidates; "
                          f"pass --guidance PATH to rank them", stacklevel=2)
    else:
        guidance = load_checkpoint(gpath, device, kind="guidance")
        check_ranking(policy, guidance, str(gpath))
        meta = getattr(policy, "dataset_meta", {})
        check_guidance_fits(guidance, policy.obs_dim, policy.act_dim, meta.get("fingerprint"), meta.get("name"))
        guidance.freeze()
    return policy, guidance


def check_ranking(policy: DiffusionPolicy, guidance: GuidanceModule, where: str | None = None) -> None:
    """Refuse, before any episode, a guidance lacking what the policy needs under its settings (an expectile
    selection needs V), naming the setting to change."""
    missing = {cap: why for cap, why in policy.needs_for(policy.cfg).items() if cap not in guidance.provides}
    if not missing:
        return
    what = f"guidance {where} ({guidance.algorithm})" if where else f"guidance {guidance.algorithm!r}"
    if set(missing.values()) == {"policy"}:
        raise CheckpointError(f"{what} lacks {sorted(missing)}, which policy {policy.algorithm!r} needs to select "
                              f"actions")
    raise ConfigError(f"{', '.join(sorted(set(missing.values())))} needs {sorted(missing)} from the guidance, which "
                      f"{what} lacks: select by argmax or softmax (--selection), or rank with a guidance that has it")
