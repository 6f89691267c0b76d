"""SAC behaviour policies for the datasets, trained with stable-baselines3 (the D4RL recipe).

``modzoo data train-behaviour`` trains a SAC agent on a Bullet robot, keeps evaluated snapshots and its replay
buffer, and exports the chosen expert and medium snapshots as the plain torch actors that the library's collection
loads (:mod:`modzoo.bullet.experts`, without SB3). The library ships the exported actors; training them again is
lab work.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium
import numpy as np

from modzoo.bullet.envs import make_env
from modzoo.bullet.experts import (
    D4RL_PYBULLET_MEDIUM_RETURN,
    Policy,
    TorchActorPolicy,
    actor_filename,
    actor_module,
    read_progress,
    time_feature,
)
from modzoo.bullet.scores import normalized_score
from modzoo.bullet.tasks import robot_of
from modzoo.errors import ModzooError


class TimeFeatureEnv(gymnasium.Wrapper):
    """Appends :func:`time_feature` to the observation: what SAC trains on when ``TrainConfig.time_feature``."""

    def __init__(self, env: gymnasium.Env, max_steps: int = 1000) -> None:
        super().__init__(env)
        low = np.append(env.observation_space.low, 0.0).astype(np.float32)
        high = np.append(env.observation_space.high, 1.0).astype(np.float32)
        self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.max_steps = max_steps
        self._t = 0

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        return np.append(obs, time_feature(np.asarray(self._t), self.max_steps)).astype(np.float32)

    def reset(self, **kw: Any) -> Any:
        self._t = 0
        obs, info = self.env.reset(**kw)
        return self._obs(obs), info

    def step(self, action: Any) -> Any:
        self._t += 1
        obs, r, term, trunc, info = self.env.step(action)
        return self._obs(obs), r, term, trunc, info


def export_sb3_actor(model: Any, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Write an SB3 SAC model's deterministic actor as ``{"meta", "state_dict"}`` (atomic)."""
    import torch
    import torch.nn as nn

    actor = model.policy.actor
    linears = [m for m in actor.latent_pi if isinstance(m, nn.Linear)]
    mu_linear = actor.mu if isinstance(actor.mu, nn.Linear) else next(m for m in actor.mu if isinstance(m, nn.Linear))
    clip_mean = None
    if not isinstance(actor.mu, nn.Linear):
        ht = [m for m in actor.mu if isinstance(m, nn.Hardtanh)]
        clip_mean = float(ht[0].max_val) if ht else None
    obs_dim = linears[0].in_features if linears else mu_linear.in_features
    hidden = [m.out_features for m in linears]
    net = actor_module(obs_dim, mu_linear.out_features, hidden, clip_mean)
    src = linears + [mu_linear]
    dst = [m for m in net if isinstance(m, nn.Linear)]
    for s, d in zip(src, dst):
        d.weight.data.copy_(s.weight.data)
        d.bias.data.copy_(s.bias.data)
    meta = {"obs_dim": obs_dim, "act_dim": mu_linear.out_features, "hidden": hidden, "clip_mean": clip_mean,
            "time_feature": None}
    meta.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": meta, "state_dict": {k: v.clone() for k, v in net.state_dict().items()}}, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# rollouts used for measuring policies
# ----------------------------------------------------------------------------------------------------
@dataclass
class Rollouts:
    """Per-episode outcome of :func:`rollout`. ``forward_m`` is how far the torso moved along x: a walker that
    stands still for the alive bonus earns a return near 900 with well under a metre of it."""

    returns: np.ndarray
    lengths: np.ndarray
    forward_m: np.ndarray


def rollout(policy: Policy, robot: str, episodes: int, seed: int, noise: float = 0.0,
            max_steps: int = 1000) -> Rollouts:
    """``episodes`` episodes (seeds seed+i) of ``policy`` plus Gaussian action noise ``noise`` (clipped to
    [-1, 1]). Used to measure experts, tune the medium noise levels and tell walking from standing."""
    env = make_env(robot)
    rng = np.random.default_rng(seed + 1_000_003)
    rets, lens, fwd = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        body = env.unwrapped._inner.robot  # pybullet's robot: body_xyz is the torso position
        x0, total, n = float(body.body_xyz[0]), 0.0, 0
        for n in range(1, max_steps + 1):
            a = policy(obs[None], np.asarray([n - 1]))[0]
            if noise > 0:
                a = np.clip(a + noise * rng.standard_normal(a.shape), -1.0, 1.0).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            total += r
            if term or trunc:
                break
        rets.append(total)
        lens.append(n)
        fwd.append(float(body.body_xyz[0]) - x0)
    env.close()
    return Rollouts(np.asarray(rets), np.asarray(lens), np.asarray(fwd))


def rollout_returns(
    policy: Policy, robot: str, episodes: int, seed: int, noise: float = 0.0, max_steps: int = 1000
) -> np.ndarray:
    """Returns of :func:`rollout`'s episodes."""
    return rollout(policy, robot, episodes, seed, noise, max_steps).returns


# ----------------------------------------------------------------------------------------------------
# SAC behaviour training (stable-baselines3, optional extra `behaviour`)
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """SAC settings. The defaults are rl-baselines3-zoo's tuned ones for ``Walker2DBulletEnv-v0``
    (``hyperparams/sac.yml``: lr ``lin_7.3e-4``, buffer 300k, batch 256, gamma 0.98, tau 0.02, 8 env steps / 8
    gradient steps, 10k warm-up steps, gSDE with ``log_std_init=-3``, net 400x300, ``TimeFeatureWrapper``).
    The actor sees the time feature; the datasets collected from it record the env's own observation.

    modzoo's committed halfcheetah actors predate these defaults: they were trained with ``net_arch=(256, 256)``,
    a constant learning rate, a 1M buffer and no time feature (each run's ``config.json`` records its own).
    """

    total_steps: int = 1_000_000
    eval_every: int = 10_000
    eval_episodes: int = 5
    seed: int = 0
    learning_starts: int = 10_000
    threads: int = 1
    net_arch: tuple[int, ...] = (400, 300)
    learning_rate: float = 7.3e-4
    #: "linear": learning_rate * (1 - step / total_steps), the zoo's ``lin_`` schedule over the whole run
    #: (computed from the global step, so a resumed run continues the same schedule); "constant" otherwise
    lr_schedule: str = "linear"
    buffer_size: int = 300_000
    #: episode length of the time feature appended to SAC's observation (0: none)
    time_feature: int = 1000

    #: keys that fix what the run's networks and buffer are: a resume with other values is refused
    STRUCTURAL = ("net_arch", "buffer_size", "time_feature", "seed", "learning_starts")

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["net_arch"] = list(self.net_arch)
        return d


def _sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as exc:
        raise ModzooError("training behaviour policies needs stable-baselines3: "
                          "`pip install -e 'lab[behaviour]'`") from exc
    return stable_baselines3



def _check_resume(run_dir: Path, robot: str, cfg: TrainConfig) -> None:
    """Refuse to continue a run under settings that would change its networks or buffer (one clear line)."""
    p = run_dir / "config.json"
    if not (run_dir / "model.zip").exists() or not p.exists():
        return
    old = json.loads(p.read_text())
    # Runs written before these keys existed used 256x256, a 1M buffer and no time feature.
    legacy = {"net_arch": [256, 256], "buffer_size": 1_000_000, "time_feature": 0}
    new = cfg.as_dict()
    diff = [k for k in TrainConfig.STRUCTURAL if old.get(k, legacy.get(k)) != new[k]]
    if old.get("robot") != robot:
        diff.insert(0, "robot")
    if diff:
        shown = ", ".join(f"{k}={old.get(k, legacy.get(k))!r} (asked {new.get(k, robot)!r})" for k in diff)
        raise ModzooError(f"{run_dir} was trained with {shown}: resume it with those values or pass another --run-dir")


def _sac_model(sb3: Any, venv: Any, run_dir: Path, robot: str, cfg: TrainConfig, log: Callable[[str], None]) -> Any:
    """SAC with rl-baselines3-zoo's Bullet settings, or the run's saved model with its replay buffer refilled from
    the saved transition chunks (in order; the oldest fall out)."""
    model_path = run_dir / "model.zip"
    if model_path.exists():
        model = sb3.SAC.load(model_path, env=venv, device="cpu")
        kept, _ = _newest_chunks(run_dir, model.replay_buffer.buffer_size)
        for c in kept:
            _buffer_extend(model.replay_buffer, np.load(c))
        log(f"resumed {robot} at step {model.num_timesteps} with {model.replay_buffer.size()} transitions")
    else:
        model = sb3.SAC(
            "MlpPolicy", venv, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size, batch_size=256,
            ent_coef="auto", gamma=0.98, tau=0.02, train_freq=8, gradient_steps=8,
            learning_starts=cfg.learning_starts, use_sde=True,
            policy_kwargs=dict(log_std_init=-3, net_arch=list(cfg.net_arch)), seed=cfg.seed, device="cpu", verbose=0,
        )
    if cfg.lr_schedule == "linear":
        # SB3's own progress counter restarts with every learn() call; read the global step instead.
        model.lr_schedule = lambda _progress: cfg.learning_rate * max(0.0, 1.0 - model.num_timesteps / cfg.total_steps)
    return model


def _progress_record(model: Any, ev: Any, robot: str, snap: Path, wall_s: float) -> dict[str, Any]:
    """One line of ``progress.jsonl``: the exported actor's evaluation (return, normalized, gait) and SAC's state."""

    train_eps = [float(e["r"]) for e in model.ep_info_buffer] if model.ep_info_buffer else []
    return {
        "step": int(model.num_timesteps),
        "eval_mean": float(ev.returns.mean()),
        "eval_std": float(ev.returns.std()),
        "eval_normalized": float(normalized_score(f"bullet-{robot}-expert-v0", ev.returns.mean())),
        "eval_forward_m": float(ev.forward_m.mean()),
        "eval_length": float(ev.lengths.mean()),
        "train_return_last100": float(np.mean(train_eps)) if train_eps else None,
        "lr": float(model.lr_schedule(0.0)),
        "wall_s": wall_s,
        "snapshot": snap.name,
    }


def train_behaviour(robot: str, run_dir: str | os.PathLike[str], cfg: TrainConfig | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Train (or resume) SAC on ``robot`` in ``run_dir``; returns the path of the best exported actor.

    Every ``eval_every`` env steps it evaluates the deterministic actor on ``eval_episodes`` episodes
    (return, and the torso's forward distance, which tells walking from standing), exports it to
    ``snapshots/step_<N>.pt`` (so datasets can be collected from any level reached, e.g. "medium" at about a
    third of the expert's return), appends a line to ``progress.jsonl`` and saves the SB3 model
    (``model.zip``). Every env transition SAC saw is appended to ``replay/chunk_<N>.npz``: that is D4RL's
    medium-replay material, and on resume the last ``buffer_size`` of them refill SAC's replay buffer, so a
    killed run continues where its last checkpoint left it without pickling the whole buffer each time.
    """
    import torch

    cfg = cfg or TrainConfig()
    robot = robot_of(robot)
    sb3 = _sb3()
    from stable_baselines3.common.vec_env import DummyVecEnv

    if cfg.lr_schedule not in ("linear", "constant"):
        raise ModzooError(f"lr_schedule {cfg.lr_schedule!r} is not one of linear, constant")
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    _check_resume(run_dir, robot, cfg)
    (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    (run_dir / "replay").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"robot": robot, "algo": "sb3-SAC", **cfg.as_dict()}, indent=1))

    def make() -> Any:
        from stable_baselines3.common.monitor import Monitor

        env = make_env(robot)
        return Monitor(TimeFeatureEnv(env, cfg.time_feature) if cfg.time_feature else env)

    venv = DummyVecEnv([make])
    model_path = run_dir / "model.zip"
    model = _sac_model(sb3, venv, run_dir, robot, cfg, log)
    meta = {"robot": robot, "algo": "sb3-SAC", "seed": cfg.seed, "time_feature": cfg.time_feature or None}
    progress = read_progress(run_dir)
    t_start = time.time()
    wall_before = progress[-1]["wall_s"] if progress else 0.0
    while model.num_timesteps < cfg.total_steps:
        pos0 = model.replay_buffer.pos
        full0 = model.replay_buffer.full
        chunk = min(cfg.eval_every - model.num_timesteps % cfg.eval_every, cfg.total_steps - model.num_timesteps)
        model.learn(chunk, reset_num_timesteps=False, progress_bar=False)
        step = int(model.num_timesteps)
        _save_chunk(model.replay_buffer, pos0, full0, run_dir / "replay" / f"chunk_{step}.npz")
        snap = run_dir / "snapshots" / f"step_{step}.pt"
        export_sb3_actor(model, snap, {**meta, "step": step})
        # Evaluate the exported file, not the SB3 model: the numbers then describe the artifact collected from.
        ev = rollout(TorchActorPolicy(snap), robot, cfg.eval_episodes, seed=10_000)
        tmp = run_dir / "model.zip.tmp.zip"
        model.save(tmp, exclude=["lr_schedule"])  # a closure over the model; rebuilt above on load
        os.replace(tmp, model_path)
        rec = _progress_record(model, ev, robot, snap, wall_before + time.time() - t_start)
        with open(run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(json.dumps(rec))
    return best_snapshot(run_dir)


def pack_run(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], keep_transitions: int = 100_000,
             snapshot_every: int = 20_000, best: int = 12) -> dict[str, int]:
    """A compact copy of a training run that resumes with the same command (``--run-dir DEST``), for machines that
    do not outlive a session: the model, its progress and config, the snapshots an export may choose (every
    ``snapshot_every`` steps and the ``best`` by evaluation return) and the newest ``keep_transitions`` of the replay
    chunks. Resumed from it, SAC's buffer starts with those transitions instead of its full size; the replay before
    them (D4RL's medium-replay material) is not kept. Returns what was copied."""
    import shutil

    src, dest = Path(run_dir), Path(dest)
    progress = read_progress(src)
    if not (src / "model.zip").exists() or not progress:
        raise ModzooError(f"{src} holds no checkpointed training run (model.zip, progress.jsonl)")
    (dest / "snapshots").mkdir(parents=True, exist_ok=True)
    (dest / "replay").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "progress.jsonl", "model.zip"):
        shutil.copy2(src / name, dest / name)
    buckets: dict[int, str] = {}  # the first snapshot in each snapshot_every-step span (steps need not be round)
    for r in progress:
        buckets.setdefault(int(r["step"]) // snapshot_every, r["snapshot"])
    keep = set(buckets.values())
    keep |= {r["snapshot"] for r in sorted(progress, key=lambda r: -r["eval_mean"])[:best]}
    keep.add(progress[-1]["snapshot"])
    for old in (dest / "snapshots").glob("*.pt"):
        if old.name not in keep:
            old.unlink()
    for name in keep:
        shutil.copy2(src / "snapshots" / name, dest / "snapshots" / name)
    kept, total = _newest_chunks(src, keep_transitions)
    for old in (dest / "replay").glob("*.npz"):
        if old.name not in {c.name for c in kept}:
            old.unlink()
    for c in kept:
        shutil.copy2(c, dest / "replay" / c.name)
    return {"step": int(progress[-1]["step"]), "snapshots": len(keep), "transitions": total}


def _newest_chunks(run_dir: Path, transitions: int) -> tuple[list[Path], int]:
    """The newest replay chunks of a run that together hold at least ``transitions`` (all of them if fewer), oldest
    first, and how many transitions they hold: what a resumed buffer refills from, and what a pack keeps."""
    chunks = sorted((run_dir / "replay").glob("chunk_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    kept: list[Path] = []
    total = 0
    for c in reversed(chunks):
        if total >= transitions:
            break
        kept.append(c)
        total += int(np.load(c)["rewards"].shape[0])
    return kept[::-1], total


def _save_chunk(buf: Any, pos0: int, full0: bool, path: Path) -> None:
    pos1 = buf.pos
    if buf.full and not full0 and pos1 <= pos0:
        idx = np.r_[np.arange(pos0, buf.buffer_size), np.arange(0, pos1)]
    else:
        idx = np.arange(pos0, pos1)
    nxt = buf.next_observations[idx, 0]
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        observations=buf.observations[idx, 0], actions=buf.actions[idx, 0], rewards=buf.rewards[idx, 0],
        next_observations=nxt, dones=buf.dones[idx, 0], timeouts=buf.timeouts[idx, 0],
    )
    os.replace(tmp, path)


def _buffer_extend(buf: Any, z: Any) -> None:
    n = len(z["rewards"])
    for i in range(n):
        buf.add(
            z["observations"][i][None], z["next_observations"][i][None], z["actions"][i][None],
            np.asarray([z["rewards"][i]]), np.asarray([z["dones"][i]]),
            [{"TimeLimit.truncated": bool(z["timeouts"][i])}],
        )


def best_snapshot(run_dir: str | os.PathLike[str]) -> Path:
    """The exported snapshot with the highest evaluation return in a training run."""
    run_dir = Path(run_dir)
    progress = read_progress(run_dir)
    if not progress:
        raise ModzooError(f"no evaluated snapshots in {run_dir}: run `modzoo data train-behaviour` first")
    best = max(progress, key=lambda r: r["eval_mean"])
    return run_dir / "snapshots" / best["snapshot"]


def export_choice(
    robot: str, run_dir: str | os.PathLike[str], export_dir: str | os.PathLike[str],
    medium_return: float | None = None, episodes: int = 10, candidates: int = 12,
) -> dict[str, Path]:
    """Pick a run's expert (best re-evaluated snapshot) and medium (re-evaluated return nearest
    ``medium_return``, default d4rl-pybullet's medium return) snapshots among the ``candidates`` best by the
    training-time evaluation, re-evaluating each on ``episodes`` episodes, and write them as
    ``behaviour-<robot>-{expert,medium}.pt`` in ``export_dir`` with the evaluation in their metadata (collection
    records it in the dataset's recipe)."""
    import torch

    robot = robot_of(robot)
    target = D4RL_PYBULLET_MEDIUM_RETURN[robot] if medium_return is None else medium_return
    run_dir = Path(run_dir)
    progress = read_progress(run_dir)
    if not progress:
        raise ModzooError(f"no evaluated snapshots in {run_dir}: run `modzoo data train-behaviour` first")
    # The training-time evaluation (5 episodes) is noisy: a SAC walker that falls now and then can score its
    # best there by luck. Re-evaluate the `candidates` most promising snapshots on `episodes` fresh episodes
    # and choose on those returns (walker2d: the 5-episode best, 922 at step 200k, re-evaluated at 550 +- 370).
    cache: dict[Path, Rollouts] = {}

    def measured(snap: Path) -> Rollouts:
        if snap not in cache:
            cache[snap] = rollout(TorchActorPolicy(snap), robot, episodes, seed=20_000)
        return cache[snap]

    def returns(snap: Path) -> np.ndarray:
        return measured(snap).returns

    def snaps(order: list[dict[str, Any]]) -> list[Path]:
        return [run_dir / "snapshots" / r["snapshot"] for r in order[:candidates]]
    by_return = sorted(progress, key=lambda r: -r["eval_mean"])
    expert = max(snaps(by_return), key=lambda p: returns(p).mean())
    # medium comes from before the expert, as D4RL's medium policy is an earlier stage of the same training
    step = {r["snapshot"]: r["step"] for r in progress}
    earlier = [r for r in progress if r["step"] <= step[expert.name]]
    by_target = sorted(earlier, key=lambda r: abs(r["eval_mean"] - target))
    picks = {"expert": expert, "medium": min(snaps(by_target), key=lambda p: abs(returns(p).mean() - target))}
    out: dict[str, Path] = {}
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    for which, snap in picks.items():
        ev = measured(snap)
        blob = torch.load(snap, map_location="cpu", weights_only=True)
        blob["meta"] = {**blob["meta"], "which": which, "eval_mean": float(ev.returns.mean()),
                        "eval_std": float(ev.returns.std()), "eval_forward_m": float(ev.forward_m.mean()),
                        "eval_length": float(ev.lengths.mean()), "eval_episodes": episodes, "source": str(snap)}
        dst = export_dir / actor_filename(robot, which)
        tmp = dst.with_name(dst.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, dst)
        out[which] = dst
    return out
