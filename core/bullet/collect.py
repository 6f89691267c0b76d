"""``modzoo data collect``: generate D4RL-format Bullet datasets with recorded recipes.

D4RL's ``bullet-*`` files cannot be downloaded here, so modzoo regenerates them as close to D4RL's recipe as the
available policies allow (docs/datasets.md: each task's recipe, every difference). ``random``: uniform actions;
``expert``: the expert with noise (D4RL sampled SAC); ``medium``: a noisier expert (hopper/ant) or a SAC snapshot
near d4rl-pybullet's medium return (halfcheetah/walker2d: D4RL's "SAC stopped early"); ``medium-expert``: the two
concatenated, as D4RL does; ``medium-replay``: the medium policy under noise falling from near random, imitating
SAC's replay buffer that D4RL stores. Each file records its recipe (policy, noise, seed, returns, version, command)
in its HDF5 attributes; :func:`collect` is deterministic given (task, transitions, seed).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetError
from ..progress import progress_bar
from .data import attr_value, dataset_path, episode_returns_from_raw, write_d4rl_file
from .envs import make_env
from .experts import PYBULLET_EXPERTS, Policy, TorchActorPolicy, committed_actor, load_pybullet_expert, medium_snapshot
from .scores import normalized_score
from .tasks import Task, bullet_task

#: D4RL's sizes; its medium-replay holds what SAC's buffer held at "medium", of the order of 200k for bullet.
DEFAULT_TRANSITIONS = {"random": 1_000_000, "medium": 1_000_000, "expert": 1_000_000, "medium-expert": 2_000_000,
                       "medium-replay": 200_000}
#: Action-noise sigma of the medium policy, measured (docs/datasets.md): for hopper/ant it degrades the expert; the
#: SAC robots' medium snapshot is itself the medium policy, so they get only the expert-level jitter.
MEDIUM_SIGMA = {"hopper": 0.3, "ant": 1.0, "halfcheetah": 0.1, "walker2d": 0.1}
#: Noise on expert actions (a stand-in for sampling a stochastic SAC actor, as D4RL did).
EXPERT_SIGMA = 0.1
#: Noise at the start of the medium-replay ladder (near random); ant's medium noise is already 1.0, so it starts higher.
REPLAY_SIGMA_START = {"hopper": 1.0, "ant": 2.0, "halfcheetah": 1.0, "walker2d": 1.0}
_ARRAY_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


@dataclass
class Segment:
    """One homogeneous part of a dataset: a policy and a noise schedule over ``transitions`` steps."""

    label: str
    policy: Policy | None  # None = uniform random actions
    policy_desc: str
    transitions: int
    sigma_start: float
    sigma_end: float


@dataclass
class CollectResult:
    path: Path
    attrs: dict[str, Any]


def behaviour_policy(robot: str, which: str, behaviour_dir: str | os.PathLike[str] | None = None) -> tuple[Policy, str]:
    """``robot``'s expert or medium policy and its recipe line: pybullet's expert or a SAC actor (``behaviour_dir``)."""
    if robot in PYBULLET_EXPERTS:
        return (load_pybullet_expert(robot),
                f"pybullet enjoy_TF_{PYBULLET_EXPERTS[robot]}_v0_2017may expert (numpy MLP 128-64)")
    pol = TorchActorPolicy(committed_actor(robot, which, behaviour_dir))
    m = pol.meta
    return pol, (f"SB3 SAC actor {pol.path.name} (step {m.get('step')}, "
                 f"eval return {m.get('eval_mean', float('nan')):.1f}, seed {m.get('seed')})")


def plan(task: str | Task, transitions: int | None = None,
         behaviour_dir: str | os.PathLike[str] | None = None) -> list[Segment]:
    """The segments that make up ``task``'s dataset (see the module docstring)."""
    parsed = bullet_task(task, "modzoo data collect")
    robot, level = parsed.robot, parsed.level
    n = int(transitions if transitions is not None else DEFAULT_TRANSITIONS[level])
    if n < 2:
        raise DatasetError(f"--transitions {n} is too small: a dataset needs at least 2 transitions")
    if level == "random":
        return [Segment("random", None, "uniform random actions in [-1, 1]", n, 0.0, 0.0)]
    if level == "expert":
        pol, desc = behaviour_policy(robot, "expert", behaviour_dir)
        return [Segment("expert", pol, desc, n, EXPERT_SIGMA, EXPERT_SIGMA)]
    med, med_desc = behaviour_policy(robot, "medium", behaviour_dir)
    s_med = MEDIUM_SIGMA[robot]
    if level == "medium":
        return [Segment("medium", med, med_desc, n, s_med, s_med)]
    if level == "medium-replay":
        return [Segment("medium-replay", med, med_desc, n, REPLAY_SIGMA_START[robot], s_med)]
    exp, exp_desc = behaviour_policy(robot, "expert", behaviour_dir)
    return [Segment("medium", med, med_desc, n // 2, s_med, s_med),
            Segment("expert", exp, exp_desc, n - n // 2, EXPERT_SIGMA, EXPERT_SIGMA)]


def _run_segment(env: Any, seg: Segment, rng: np.random.Generator, bar: Any,
                 out: dict[str, list[np.ndarray]]) -> list[float]:
    """Roll ``seg.transitions`` steps into ``out`` (an episode cut by the segment's end is a timeout); its returns."""
    obs_dim, act_dim, n = env.observation_space.shape[0], env.action_space.shape[0], seg.transitions
    OBS, A, NO = (np.empty((n, d), np.float32) for d in (obs_dim, act_dim, obs_dim))
    R, T, TO = np.empty(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)
    returns: list[float] = []
    obs, _ = env.reset()
    ep_ret, t = 0.0, 0  # t: step index in the episode (a time-feature actor reads it; the data does not)
    for i in range(n):
        if seg.policy is None:
            a = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            a = seg.policy(obs[None], np.asarray([t]))[0]
            sigma = seg.sigma_start + (seg.sigma_end - seg.sigma_start) * (i / max(n - 1, 1))
            if sigma > 0:
                a = a + sigma * rng.standard_normal(act_dim)
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        OBS[i], A[i], R[i], NO[i] = obs, a, r, nxt
        ep_ret += r
        last = i == n - 1
        T[i], TO[i] = term, (trunc or last) and not term
        t += 1
        if term or trunc or last:
            returns.append(ep_ret)
            ep_ret, t = 0.0, 0
            if not last:
                nxt, _ = env.reset()
            bar.set_postfix(episodes=len(returns), last_return=f"{returns[-1]:.0f}", refresh=False)
        obs = nxt
        bar.update(1)
    for k, v in zip(_ARRAY_KEYS, (OBS, A, R, NO, T, TO)):
        out.setdefault(k, []).append(v)
    return returns


def _reuse_cached(robot: str, seg: Segment, seed: int) -> dict[str, np.ndarray] | None:
    """The cached standalone ``bullet-<robot>-<label>-v0`` file's arrays if made by exactly this recipe, else None."""
    import h5py

    try:
        with h5py.File(dataset_path(f"bullet-{robot}-{seg.label}-v0"), "r") as f:
            segs = attr_value(f.attrs.get("segments", ""))
            same = (isinstance(segs, list) and len(segs) == 1 and attr_value(f.attrs.get("seed")) == seed
                    and tuple(segs[0].get(k) for k in ("label", "policy", "transitions", "sigma_start", "sigma_end"))
                    == (seg.label, seg.policy_desc, seg.transitions, seg.sigma_start, seg.sigma_end))
            return {k: f[k][()] for k in _ARRAY_KEYS} if same else None
    except (OSError, KeyError, ValueError):  # no such file, or not one collect wrote
        return None


def _pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # e.g. modzoo running from a plain checkout
        return "unknown"


def _stats(task: str, returns: Sequence[float]) -> dict[str, Any]:
    r = np.asarray(returns)
    return {"episodes": len(r), "mean_return": float(r.mean()), "std_return": float(r.std()),
            "normalized_score": float(normalized_score(task, r.mean()))}


def _write(t: Task, out: str | os.PathLike[str] | None, arrays: dict[str, np.ndarray], seed: Any,
           returns: Sequence[float], segments: list[dict[str, Any]], command: str, generator: str,
           **timing: float) -> CollectResult:
    """Write the file with its recipe: what made it, from what, and the returns it holds."""
    attrs = {"task": t.name, "robot": t.robot, "level": t.level, "env_id": t.env_id, "seed": seed,
             "transitions": len(arrays["rewards"]), **_stats(t.name, returns), "segments": segments,
             "modzoo_version": _pkg_version("modzoo"), "command": command, "generator": generator,
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **timing,
             "pybullet_envs_gymnasium": _pkg_version("pybullet_envs_gymnasium"), "pybullet": _pkg_version("pybullet")}
    path = Path(out).expanduser() if out else dataset_path(t)
    write_d4rl_file(path, *(arrays[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")),
                    attrs, arrays["next_observations"])
    return CollectResult(path, attrs)


def collect(task: str, transitions: int | None = None, seed: int = 0, out: str | os.PathLike[str] | None = None,
            progress: bool = True, behaviour_dir: str | os.PathLike[str] | None = None, reuse: bool = True
            ) -> CollectResult:
    """Generate ``task``'s dataset and write it (atomically) to ``out`` or the D4RL cache path. With ``reuse``, a
    medium-expert segment whose standalone file (same recipe) is cached is read, not simulated: the same bits."""
    parsed = bullet_task(task, "modzoo data collect")
    segments = plan(parsed, transitions, behaviour_dir)
    total = sum(s.transitions for s in segments)
    arrays: dict[str, list[np.ndarray]] = {}
    seg_info, all_returns = [], []
    t0 = time.time()
    with progress_bar(total=total, desc=f"collect {parsed}", unit="step", disable=not progress, mininterval=0.5,
                      unit_scale=True) as bar:
        for seg in segments:
            # Seeded as its level's standalone file: medium-expert is exactly medium + expert (D4RL), so reusable.
            reused = _reuse_cached(parsed.robot, seg, seed) if (reuse and len(segments) > 1) else None
            if reused is not None:
                for k, v in reused.items():
                    arrays.setdefault(k, []).append(v)
                rets = list(episode_returns_from_raw(reused["rewards"].astype(np.float64),
                                                     reused["terminals"] | reused["timeouts"])[0])
                bar.update(seg.transitions)
                source = f"reused {dataset_path(f'bullet-{parsed.robot}-{seg.label}-v0')}"
            else:
                env = make_env(parsed, seed=seed)
                rets = _run_segment(env, seg, np.random.default_rng(seed), bar, arrays)
                env.close()
                source = "simulated"
            all_returns += rets
            seg_info.append({"label": seg.label, "policy": seg.policy_desc, "transitions": seg.transitions,
                             "noise": "gaussian, clipped to [-1, 1]" if seg.policy is not None else "none",
                             "sigma_start": seg.sigma_start, "sigma_end": seg.sigma_end,
                             **_stats(parsed.name, rets), "source": source})
    wall = time.time() - t0
    return _write(parsed, out, {k: np.concatenate(v) for k, v in arrays.items()}, seed, all_returns, seg_info,
                  f"modzoo data collect {parsed} --transitions {total} --seed {seed}", "modzoo data collect",
                  wall_seconds=round(wall, 1), steps_per_second=round(total / max(wall, 1e-9), 1))


def collect_replay_from_run(task: str, run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                            upto_step: int | None = None) -> CollectResult:
    """D4RL's exact medium-replay recipe, unsimulated: every transition a ``train-behaviour`` run's SAC saw
    (``replay/chunk_<step>.npz``) up to its medium snapshot's step (or ``upto_step``)."""
    parsed = bullet_task(task, "modzoo data collect")
    if parsed.level != "medium-replay":
        raise DatasetError(f"--from-run builds medium-replay datasets only, not {parsed}")
    run = Path(run_dir)
    upto_step, snapshot_return = medium_snapshot(parsed.robot, run, upto_step)
    chunks = {int(c.stem.split("_")[1]): c for c in (run / "replay").glob("chunk_*.npz")}
    parts = [np.load(chunks[step]) for step in sorted(chunks) if step <= upto_step]
    if not parts:
        raise DatasetError(f"no replay chunks up to step {upto_step} in {run / 'replay'}: "
                           f"run `modzoo data train-behaviour {parsed.robot}` first")
    cat = {k: np.concatenate([p[k] for p in parts])
           for k in ("observations", "actions", "rewards", "next_observations", "dones", "timeouts")}
    config = json.loads((run / "config.json").read_text())
    if config.get("time_feature"):
        # SAC's buffer holds the observation with the time feature appended; the dataset keeps the env's own.
        cat["observations"], cat["next_observations"] = cat["observations"][:, :-1], cat["next_observations"][:, :-1]
    timeouts = cat["timeouts"].astype(bool)
    terminals = cat["dones"].astype(bool) & ~timeouts
    # Unflagged cuts become timeouts: the buffer's end, and a resume (SB3 resets the env), whose successor differs.
    broken = ~(terminals | timeouts)[:-1] & np.any(cat["next_observations"][:-1] != cat["observations"][1:], axis=1)
    timeouts[:-1] |= broken
    timeouts[-1] = timeouts[-1] or not terminals[-1]
    rets, _ = episode_returns_from_raw(cat["rewards"].astype(np.float64), terminals | timeouts)
    n = len(cat["rewards"])
    segment = {"label": "medium-replay", "policy": f"SB3 SAC replay buffer of {run} up to step {upto_step}",
               "transitions": n, "noise": "SAC's own exploration (gSDE)", "sigma_start": None, "sigma_end": None,
               **_stats(parsed.name, rets), "source": "replay chunks", "snapshot_eval_return": snapshot_return}
    return _write(parsed, out, {**cat, "terminals": terminals, "timeouts": timeouts}, config.get("seed"), rets,
                  [segment], f"modzoo data collect {parsed} --from-run {run} --upto-step {upto_step}",
                  "modzoo data collect --from-run")
