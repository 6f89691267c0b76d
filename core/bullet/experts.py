"""The behaviour policies that generate modzoo's Bullet datasets, usable without TensorFlow or stable-baselines3:
pybullet's 2017 "enjoy_TF" numpy experts, whose weight literals are read with :mod:`ast` (importing their files fails
with current gym; only hopper's and ant's walk on the gymnasium port), and SAC actors for halfcheetah and walker2d
(``modzoo data train-behaviour``) as plain torch state dicts, loaded with ``torch.load(weights_only=True)``.

A policy is ``policy(obs (n, obs_dim), t=None) -> actions (n, act_dim)`` in [-1, 1]; ``t`` (each row's episode step)
is read only by an actor trained with rl-baselines3-zoo's ``TimeFeatureWrapper``. Datasets record the env's own obs.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EnvError, ModzooError
from .envs import env_dims
from .tasks import ROBOTS, robot_of

Policy = Callable[..., np.ndarray]  # (obs, t=None) -> actions; see the module docstring

#: pybullet's bundled experts that work on the gymnasium envs (measured, see docs/datasets.md).
PYBULLET_EXPERTS = {"hopper": "HopperBulletEnv", "ant": "AntBulletEnv"}
#: Mean episode returns of d4rl-pybullet's medium datasets (takuseno): the target for "medium".
D4RL_PYBULLET_MEDIUM_RETURN = {"hopper": 1078.4, "halfcheetah": 787.4, "walker2d": 1106.7, "ant": 570.8}
#: Committed SAC actors, flat (``behaviour-<robot>-<which>.pt``): the package-data glob ``assets/*`` is not recursive.
ASSET_DIR = Path(__file__).resolve().parent / "assets"


def actor_filename(robot: str, which: str) -> str:
    return f"behaviour-{robot}-{which}.pt"


class NumpyMLPPolicy:
    """pybullet's ``SmallReactivePolicy``, relu(128) -> relu(64) -> linear, clipped so datasets stay in the space."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.layers = layers

    def __call__(self, obs: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float64)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return np.clip(x, -1.0, 1.0).astype(np.float32)


def load_pybullet_expert(robot: str) -> NumpyMLPPolicy:
    """pybullet's bundled 2017 expert for ``robot`` (only hopper's and ant's are good on the gymnasium port)."""
    robot = robot_of(robot)
    # found without importing ``pybullet_envs``, whose ``__init__`` needs legacy gym
    spec = importlib.util.find_spec("pybullet_envs")
    if spec is None or not spec.submodule_search_locations:
        raise ModzooError("pybullet_envs is not installed: `pip install pybullet` provides the bundled experts")
    path = Path(list(spec.submodule_search_locations)[0]) / "examples" / f"enjoy_TF_{ROBOTS[robot][0]}_v0_2017may.py"
    if not path.is_file():
        raise ModzooError(f"pybullet expert file {path} not found: "
                          "reinstall pybullet (`pip install --force-reinstall pybullet`)")
    # the file's module-level ``weights_* = np.array([...])`` assignments
    w = {a.targets[0].id: np.asarray(ast.literal_eval(a.value.args[0]), dtype=np.float64)
         for a in ast.parse(path.read_text()).body
         if isinstance(a, ast.Assign) and isinstance(a.value, ast.Call) and a.value.args and len(a.targets) == 1
         and isinstance(a.targets[0], ast.Name) and a.targets[0].id.startswith("weights_")}
    try:
        layers = [(w[f"weights_{n}_w"], w[f"weights_{n}_b"]) for n in ("dense1", "dense2", "final")]
    except KeyError as exc:
        raise ModzooError(f"pybullet expert file {path} lacks the weights {exc}: unexpected pybullet version") from None
    obs_dim, act_dim = env_dims(robot)
    if layers[0][0].shape[0] != obs_dim or layers[-1][0].shape[1] != act_dim:
        raise ModzooError(f"pybullet expert {path.name} has shape {layers[0][0].shape[0]}->{layers[-1][0].shape[1]}, "
                          f"env {obs_dim}->{act_dim}")
    return NumpyMLPPolicy(layers)


def actor_module(obs_dim: int, act_dim: int, hidden: list[int], clip_mean: float | None) -> Any:
    """The exported SAC actor's network, ``tanh(clip(mu(relu-MLP(obs))))`` (clip: SB3's ``clip_mean``)."""
    import torch.nn as nn

    dims = [obs_dim, *hidden]
    layers = [m for d, h in zip(dims, hidden) for m in (nn.Linear(d, h), nn.ReLU())]
    clip = [nn.Hardtanh(-clip_mean, clip_mean)] if clip_mean else []
    return nn.Sequential(*layers, nn.Linear(dims[-1], act_dim), *clip, nn.Tanh())


class TorchActorPolicy:
    """Deterministic SAC actor (the squashed mean) from an exported state dict, acting the same on every CPU so a
    collected dataset (and the fingerprint every grid run records) is the same on any machine: torch's products,
    even float64, differ in their last bits between MKL's code paths, and the simulator turns those bits into other
    episodes. So it runs in numpy float64 in a fixed summation order (no BLAS), rounded to float32 once (numpy's
    tanh may differ in a float64's last bit, far below float32's step)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import torch

        self.path = Path(path)
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
            meta = blob["meta"]
            net = actor_module(int(meta["obs_dim"]), int(meta["act_dim"]), [int(h) for h in meta["hidden"]],
                               meta.get("clip_mean"))
            net.load_state_dict(blob["state_dict"])  # checks every shape against the metadata
        except Exception as exc:  # corrupt/incompatible file: one clear line for the user
            raise ModzooError(f"behaviour policy {self.path} could not be loaded ({exc.__class__.__name__}: {exc}); "
                              "re-export it with `modzoo data train-behaviour`") from exc
        self.meta = dict(meta)
        #: episode length the actor's time feature counts down over (None: the actor sees only obs)
        self.time_feature: int | None = int(meta["time_feature"]) if meta.get("time_feature") else None
        self._layers = [(m.weight.detach().double().numpy().T.copy(), m.bias.detach().double().numpy())
                        for m in net if isinstance(m, torch.nn.Linear)]
        self._clip = float(meta["clip_mean"]) if meta.get("clip_mean") else None

    def forward64(self, obs: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        """The actions in float64, before their one rounding to float32."""
        x = np.asarray(obs, dtype=np.float64)
        if self.time_feature:
            if t is None:
                raise ModzooError(f"behaviour policy {self.path.name} was trained with a time feature: "
                                  "pass each row's episode step t")
            x = np.concatenate([x, time_feature(np.asarray(t), self.time_feature)[:, None]], axis=1)
        for i, (w, b) in enumerate(self._layers):
            # (batch, in, 1) * (1, in, out) summed over `in` one row after another: no BLAS, one order everywhere
            x = (x[:, :, None] * w[None]).sum(axis=1) + b
            if i < len(self._layers) - 1:
                x = np.maximum(x, 0.0)
        if self._clip:
            x = np.clip(x, -self._clip, self._clip)
        return np.tanh(x)

    def __call__(self, obs: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
        return self.forward64(obs, t).astype(np.float32)


def time_feature(t: np.ndarray, max_steps: int) -> np.ndarray:
    """sb3-contrib's ``TimeFeatureWrapper``: 1 at reset to 0 at the limit, so the critic tells a timeout from a fall."""
    return (1.0 - np.asarray(t, dtype=np.float32) / float(max_steps)).astype(np.float32)


def read_progress(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluated snapshots of a ``train-behaviour`` run (its ``progress.jsonl``), oldest first."""
    p = run_dir / "progress.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def medium_snapshot(robot: str, run: Path, step: int | None = None) -> tuple[int, float | None]:
    """Step (``step`` where given) and eval return (None if unevaluated) of a run's medium snapshot: the medium actor's
    recorded ``source`` (medium-replay ends where it was taken), else the earliest closest to d4rl-pybullet's medium."""
    progress = read_progress(run)
    if step is None:
        import torch

        exported = ASSET_DIR / actor_filename(robot, "medium")
        meta = torch.load(exported, map_location="cpu", weights_only=True)["meta"] if exported.is_file() else {}
        name = Path(meta.get("source", "")).name
        if not (name and (run / "snapshots" / name).is_file()):
            if not progress:
                raise ModzooError(f"no evaluated snapshots in {run}: run `modzoo data train-behaviour` first")
            name = min(progress, key=lambda r: abs(r["eval_mean"] - D4RL_PYBULLET_MEDIUM_RETURN[robot]))["snapshot"]
        step = int(Path(name).stem.split("_")[1])
    return step, next((r["eval_mean"] for r in progress if r["step"] == step), None)


def committed_actor(robot: str, which: str, directory: str | os.PathLike[str] | None = None) -> Path:
    """An exported SAC actor (``which``: expert or medium) in ``directory`` (default: the assets), or how to make it."""
    robot = robot_of(robot)
    d = Path(directory) if directory else ASSET_DIR
    p = d / actor_filename(robot, which)
    if not p.is_file():
        raise EnvError(f"no {which} behaviour policy for {robot} at {p}: train one with `modzoo data train-behaviour "
                       f"{robot}` and export it (`modzoo data train-behaviour {robot} --export-to {d}`)")
    return p
