"""Behaviour policies that generate modzoo's Bullet datasets.

Two kinds, both usable without TensorFlow or stable-baselines3 at collection time:

* pybullet's bundled 2017 "enjoy_TF" experts: small numpy MLPs whose weights are array literals inside
  ``pybullet_envs/examples/enjoy_TF_*BulletEnv_v0_2017may.py``. Importing those modules (or
  ``pybullet_envs`` itself) fails with current gym, so :func:`load_pybullet_expert` finds the file by path
  and reads the literals with :mod:`ast`. The hopper and ant experts work on the gymnasium port; the
  halfcheetah and walker2d ones do not (returns about -860 and 150).
* SAC actors trained by :func:`train_behaviour` (stable-baselines3, the D4RL recipe) for halfcheetah and
  walker2d, exported as a plain torch state dict of the deterministic actor MLP
  (``tanh(mu(relu-MLP(obs)))``) that loads with ``torch.load(weights_only=True)`` and needs no SB3.

A policy here is a callable ``obs (n, obs_dim) float32 -> actions (n, act_dim)`` in [-1, 1].
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .envs import ROBOTS, env_dims, make_env, robot_of
from .errors import EnvError, ModzooError

Policy = Callable[[np.ndarray], np.ndarray]

#: pybullet's bundled experts that work on the gymnasium envs (measured, see docs/datasets.md).
PYBULLET_EXPERTS = {"hopper": "HopperBulletEnv", "ant": "AntBulletEnv"}
#: Where committed SAC actors live: package data, flat (``behaviour-<robot>-<which>.pt``) because the
#: package-data glob ``assets/*`` does not descend into subdirectories.
ASSET_DIR = Path(__file__).resolve().parent / "assets"


def actor_filename(robot: str, which: str) -> str:
    """File name of an exported actor, in the assets and in any ``--behaviour-dir``/``--export-to``."""
    return f"behaviour-{robot}-{which}.pt"


# ----------------------------------------------------------------------------------------------------
# pybullet's numpy experts
# ----------------------------------------------------------------------------------------------------
def pybullet_examples_dir() -> Path:
    """Directory of ``pybullet_envs/examples`` in the installed pybullet wheel, found without importing
    ``pybullet_envs`` (its ``__init__`` needs legacy gym)."""
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or not spec.submodule_search_locations:
        raise ModzooError("pybullet_envs is not installed: `pip install pybullet` provides the bundled experts")
    return Path(list(spec.submodule_search_locations)[0]) / "examples"


def _parse_weights(path: Path) -> dict[str, np.ndarray]:
    """Read the module-level ``weights_* = np.array([...])`` assignments of an enjoy_TF file."""
    tree = ast.parse(path.read_text())
    weights: dict[str, np.ndarray] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.startswith("weights_")
            and isinstance(node.value, ast.Call)
            and node.value.args
        ):
            weights[node.targets[0].id] = np.asarray(ast.literal_eval(node.value.args[0]), dtype=np.float64)
    return weights


class NumpyMLPPolicy:
    """pybullet's ``SmallReactivePolicy``: relu(128) -> relu(64) -> linear, outputs clipped to [-1, 1]
    (the env clips torques anyway; datasets must hold actions inside the action space)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.layers = layers

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return np.clip(x, -1.0, 1.0).astype(np.float32)


def load_pybullet_expert(robot: str) -> NumpyMLPPolicy:
    """pybullet's bundled 2017 expert for ``robot`` (any robot with an enjoy_TF file; only hopper and ant
    are good on the gymnasium port)."""
    robot = robot_of(robot)
    cls = ROBOTS[robot][0]
    path = pybullet_examples_dir() / f"enjoy_TF_{cls}_v0_2017may.py"
    if not path.is_file():
        raise ModzooError(f"pybullet expert file {path} not found: reinstall pybullet (`pip install --force-reinstall pybullet`)")
    w = _parse_weights(path)
    names = ["dense1", "dense2", "final"]
    missing = [n for n in names if f"weights_{n}_w" not in w or f"weights_{n}_b" not in w]
    if missing:
        raise ModzooError(f"pybullet expert file {path} lacks weights for layers {missing}: unexpected pybullet version")
    layers = [(w[f"weights_{n}_w"], w[f"weights_{n}_b"]) for n in names]
    obs_dim, act_dim = env_dims(robot)
    if layers[0][0].shape[0] != obs_dim or layers[-1][0].shape[1] != act_dim:
        raise ModzooError(f"pybullet expert {path.name} has shape {layers[0][0].shape[0]}->{layers[-1][0].shape[1]}, env {obs_dim}->{act_dim}")
    return NumpyMLPPolicy(layers)


# ----------------------------------------------------------------------------------------------------
# exported SAC actors (torch, no SB3)
# ----------------------------------------------------------------------------------------------------
def _actor_module(obs_dim: int, act_dim: int, hidden: list[int], clip_mean: float | None) -> Any:
    import torch.nn as nn

    layers: list[nn.Module] = []
    d = obs_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, act_dim))
    if clip_mean:
        layers.append(nn.Hardtanh(-clip_mean, clip_mean))
    layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class TorchActorPolicy:
    """Deterministic SAC actor (the squashed mean) loaded from an exported state dict."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import torch

        self.path = Path(path)
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            meta = blob["meta"]
            self.net = _actor_module(int(meta["obs_dim"]), int(meta["act_dim"]), [int(h) for h in meta["hidden"]], meta.get("clip_mean"))
            self.net.load_state_dict(blob["state_dict"])
        except Exception as exc:  # corrupt/incompatible file: one clear line for the user
            raise ModzooError(f"behaviour policy {self.path} could not be loaded ({exc.__class__.__name__}: {exc}); re-export it with `modzoo data train-behaviour`") from exc
        self.meta = dict(meta)
        self.net.eval()
        self._torch = torch

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            x = self._torch.as_tensor(np.asarray(obs, dtype=np.float32))
            return self.net(x).numpy().astype(np.float32)


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
    net = _actor_module(obs_dim, mu_linear.out_features, hidden, clip_mean)
    src = linears + [mu_linear]
    dst = [m for m in net if isinstance(m, nn.Linear)]
    for s, d in zip(src, dst):
        d.weight.data.copy_(s.weight.data)
        d.bias.data.copy_(s.bias.data)
    meta = {"obs_dim": obs_dim, "act_dim": mu_linear.out_features, "hidden": hidden, "clip_mean": clip_mean}
    meta.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": meta, "state_dict": {k: v.clone() for k, v in net.state_dict().items()}}, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# rollouts used for measuring policies
# ----------------------------------------------------------------------------------------------------
def rollout_returns(
    policy: Policy, robot: str, episodes: int, seed: int, noise: float = 0.0, max_steps: int = 1000
) -> np.ndarray:
    """Returns of ``episodes`` episodes (seeds seed+i) of ``policy`` plus Gaussian action noise ``noise``
    (clipped to [-1, 1]). Used to measure experts and tune the medium noise levels."""
    env = make_env(robot)
    rng = np.random.default_rng(seed + 1_000_003)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total = 0.0
        for _ in range(max_steps):
            a = policy(obs[None])[0]
            if noise > 0:
                a = np.clip(a + noise * rng.standard_normal(a.shape), -1.0, 1.0).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            total += r
            if term or trunc:
                break
        out.append(total)
    env.close()
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------------
# SAC behaviour training (stable-baselines3, optional extra `behaviour`)
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """SAC settings: rl-baselines3-zoo's tuned values for the pybullet envs (lr 7.3e-4, gamma 0.98,
    tau 0.02, 8 env steps / 8 gradient steps, gSDE), except a 256x256 net (zoo: 400x300) to keep the
    committed actor small and training fast on 2 cores, and no TimeFeatureWrapper (it would change the
    observation, which must match the dataset's)."""

    total_steps: int = 300_000
    eval_every: int = 10_000
    eval_episodes: int = 5
    seed: int = 0
    learning_starts: int = 10_000
    threads: int = 1


def _sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as exc:
        raise ModzooError("training behaviour policies needs stable-baselines3: `pip install 'modzoo[behaviour]'`") from exc
    return stable_baselines3


def _read_progress(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "progress.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def train_behaviour(robot: str, run_dir: str | os.PathLike[str], cfg: TrainConfig | None = None, log: Callable[[str], None] = print) -> Path:
    """Train (or resume) SAC on ``robot`` in ``run_dir``; returns the path of the best exported actor.

    Every ``eval_every`` env steps it evaluates the deterministic actor on ``eval_episodes`` episodes,
    exports it to ``snapshots/step_<N>.pt`` (so datasets can be collected from any level reached, e.g.
    "medium" at about a third of the expert's return), appends a line to ``progress.jsonl`` and saves the
    SB3 model (``model.zip``). Every env transition SAC saw is appended to ``replay/chunk_<N>.npz``: that
    is D4RL's medium-replay material, and on resume it refills SAC's replay buffer, so a killed run
    continues where its last checkpoint left it without pickling the whole buffer each time.
    """
    import torch

    cfg = cfg or TrainConfig()
    robot = robot_of(robot)
    sb3 = _sb3()
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    (run_dir / "snapshots").mkdir(parents=True, exist_ok=True)
    (run_dir / "replay").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"robot": robot, **cfg.__dict__}, indent=1))

    from .scores import normalized_score

    def make() -> Any:
        from stable_baselines3.common.monitor import Monitor

        return Monitor(make_env(robot))

    venv = DummyVecEnv([make])
    model_path = run_dir / "model.zip"
    if model_path.exists():
        model = sb3.SAC.load(model_path, env=venv, device="cpu")
        # Refill the replay buffer from the saved transition chunks (in order).
        chunks = sorted((run_dir / "replay").glob("chunk_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
        for c in chunks:
            z = np.load(c)
            _buffer_extend(model.replay_buffer, z)
        log(f"resumed {robot} at step {model.num_timesteps} with {model.replay_buffer.size()} transitions")
    else:
        model = sb3.SAC(
            "MlpPolicy", venv, learning_rate=7.3e-4, buffer_size=1_000_000, batch_size=256, ent_coef="auto",
            gamma=0.98, tau=0.02, train_freq=8, gradient_steps=8, learning_starts=cfg.learning_starts,
            use_sde=True, policy_kwargs=dict(log_std_init=-3, net_arch=[256, 256]), seed=cfg.seed,
            device="cpu", verbose=0,
        )
    progress = _read_progress(run_dir)
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
        export_sb3_actor(model, snap, {"robot": robot, "step": step, "algo": "sb3-SAC", "seed": cfg.seed})
        # Evaluate the exported file, not the SB3 model: the numbers then describe the artifact collected from.
        rets = rollout_returns(TorchActorPolicy(snap), robot, cfg.eval_episodes, seed=10_000)
        tmp = run_dir / "model.zip.tmp.zip"
        model.save(tmp)
        os.replace(tmp, model_path)
        train_eps = [float(e["r"]) for e in model.ep_info_buffer] if model.ep_info_buffer else []
        rec = {
            "step": step,
            "eval_mean": float(rets.mean()),
            "eval_std": float(rets.std()),
            "eval_normalized": float(normalized_score(f"bullet-{robot}-expert-v0", rets.mean())),
            "train_return_last100": float(np.mean(train_eps)) if train_eps else None,
            "wall_s": wall_before + time.time() - t_start,
            "snapshot": snap.name,
        }
        with open(run_dir / "progress.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(json.dumps(rec))
    return best_snapshot(run_dir)


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
    progress = _read_progress(run_dir)
    if not progress:
        raise ModzooError(f"no evaluated snapshots in {run_dir}: run `modzoo data train-behaviour` first")
    best = max(progress, key=lambda r: r["eval_mean"])
    return run_dir / "snapshots" / best["snapshot"]


def snapshot_near(run_dir: str | os.PathLike[str], target_return: float, max_step: int | None = None) -> Path:
    """The earliest snapshot whose evaluation return is closest to ``target_return`` (for "medium")."""
    run_dir = Path(run_dir)
    progress = [r for r in _read_progress(run_dir) if max_step is None or r["step"] <= max_step]
    if not progress:
        raise ModzooError(f"no evaluated snapshots in {run_dir}: run `modzoo data train-behaviour` first")
    best = min(progress, key=lambda r: abs(r["eval_mean"] - target_return))
    return run_dir / "snapshots" / best["snapshot"]


def committed_actor(robot: str, which: str) -> Path:
    """Path of a committed SAC actor (``which`` in {"expert", "medium"}) in the package assets."""
    robot = robot_of(robot)
    p = ASSET_DIR / actor_filename(robot, which)
    if not p.is_file():
        raise EnvError(f"no committed {which} behaviour policy for {robot} ({p}): train one with `modzoo data train-behaviour {robot}`")
    return p


#: Mean episode returns of d4rl-pybullet's medium datasets (takuseno): the target for "medium".
D4RL_PYBULLET_MEDIUM_RETURN = {"hopper": 1078.4, "halfcheetah": 787.4, "walker2d": 1106.7, "ant": 570.8}


def export_choice(
    robot: str, run_dir: str | os.PathLike[str], export_dir: str | os.PathLike[str],
    medium_return: float | None = None, episodes: int = 10, candidates: int = 12,
) -> dict[str, Path]:
    """Pick a run's expert (best re-evaluated snapshot) and medium (re-evaluated return nearest
    ``medium_return``, default d4rl-pybullet's medium return) snapshots among the ``candidates`` best by the
    training-time evaluation, re-evaluating each on ``episodes`` episodes, and write them as ``behaviour-<robot>-{expert,medium}.pt`` in ``export_dir`` with the
    evaluation in their metadata (collection records it in the dataset's recipe)."""
    import torch

    robot = robot_of(robot)
    target = D4RL_PYBULLET_MEDIUM_RETURN[robot] if medium_return is None else medium_return
    run_dir = Path(run_dir)
    progress = _read_progress(run_dir)
    if not progress:
        raise ModzooError(f"no evaluated snapshots in {run_dir}: run `modzoo data train-behaviour` first")
    # The training-time evaluation (5 episodes) is noisy: a SAC walker that falls now and then can score its
    # best there by luck. Re-evaluate the `candidates` most promising snapshots on `episodes` fresh episodes
    # and choose on those returns (walker2d: the 5-episode best, 922 at step 200k, re-evaluated at 550 +- 370).
    cache: dict[Path, np.ndarray] = {}

    def returns(snap: Path) -> np.ndarray:
        if snap not in cache:
            cache[snap] = rollout_returns(TorchActorPolicy(snap), robot, episodes, seed=20_000)
        return cache[snap]

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
        rets = returns(snap)
        blob = torch.load(snap, map_location="cpu", weights_only=True)
        blob["meta"] = {**blob["meta"], "which": which, "eval_mean": float(rets.mean()), "eval_std": float(rets.std()),
                        "eval_episodes": episodes, "source": str(snap)}
        dst = export_dir / actor_filename(robot, which)
        tmp = dst.with_name(dst.name + ".tmp")
        torch.save(blob, tmp)
        os.replace(tmp, dst)
        out[which] = dst
    return out
