"""Minari datasets (the Farama Foundation's offline-RL format) as a second source of tasks and data.

A Minari id (``namespace/name-vN``, e.g. ``mujoco/hopper/medium-v0``) names a dataset in ``$MINARI_DATASETS_PATH``
(default ``~/.minari/datasets``) holding its spaces, the env to evaluate on (``eval_env_spec``, else ``env_spec``)
and maybe the returns that score 0 and 100 (``ref_min_score``, ``ref_max_score``). ``terminations`` are terminals,
``truncations`` are not, no transition crosses an episode. Optional: ``modzoo[minari]``; writing: ``minari[create]``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

#: ``namespace/name-vN`` (namespaces may nest: ``mujoco/hopper/medium-v0``)
_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/[A-Za-z0-9_.-]+-v\d+$")


def is_minari_id(name: str) -> bool:
    """Whether ``name`` is shaped like a Minari dataset id (modzoo's own gym ids ``modzoo/bullet-*`` are not)."""
    return bool(_ID.match(name)) and not name.startswith("modzoo/bullet-")


def datasets_path() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise DatasetError("Minari datasets need the minari package: pip install 'modzoo[minari]'") from None
    return minari


def open_dataset(dataset_id: str) -> Any:
    """The ``minari.MinariDataset`` of a local id, or one line saying where it was looked for and how to get it."""
    minari = _minari()
    if dataset_id not in minari.list_local_datasets():
        raise DatasetError(f"Minari dataset {dataset_id!r} is not in {datasets_path()} ($MINARI_DATASETS_PATH): "
                           f"fetch it with `modzoo data fetch {dataset_id}` (network), or create it with "
                           f"minari.DataCollector")
    try:
        return minari.load_dataset(dataset_id)
    except Exception as e:  # minari raises several kinds for a damaged dataset
        raise DatasetError(f"Minari dataset {dataset_id!r} could not be read: {str(e).splitlines()[0]}") from None


def metadata(dataset_id: str) -> dict[str, Any]:
    """A task's fields from its dataset: dims, the evaluation env's spec (JSON), the reference scores."""
    ds = open_dataset(dataset_id)
    meta = ds.storage.metadata
    if not meta.get("total_episodes"):
        raise DatasetError(f"Minari dataset {dataset_id!r} holds no episodes; nothing to train on")
    obs_space, act_space = ds.observation_space, ds.action_space
    if len(getattr(obs_space, "shape", ()) or ()) != 1 or len(getattr(act_space, "shape", ()) or ()) != 1:
        raise DatasetError(f"Minari dataset {dataset_id!r}: modzoo trains on flat Box observations and actions, "
                           f"not {obs_space} and {act_space}")
    spec = meta.get("eval_env_spec") or meta.get("env_spec")
    if not spec:
        raise DatasetError(f"Minari dataset {dataset_id!r} records no env spec to evaluate on")
    env_spec = json.loads(spec) if isinstance(spec, str) else spec
    return {"obs_dim": int(obs_space.shape[0]), "act_dim": int(act_space.shape[0]),
            "act_high": float(np.max(np.abs(act_space.high))), "env_spec": json.dumps(env_spec),
            **{k: None if meta.get(k) is None else float(meta[k]) for k in ("ref_min_score", "ref_max_score")}}


def episodes(dataset_id: str) -> dict[str, np.ndarray]:
    """The dataset's transitions, D4RL-style (terminals from ``terminations``), and each episode's return, length."""
    keys = ("observations", "next_observations", "actions", "rewards", "terminals")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    returns, lengths = [], []
    for ep in open_dataset(dataset_id).iterate_episodes():
        obs, n = np.asarray(ep.observations, dtype=np.float32), len(ep.actions)
        if obs.shape[0] != n + 1:
            raise DatasetError(f"Minari dataset {dataset_id!r}: episode {ep.id} has {obs.shape[0]} observations "
                               f"for {n} actions (expected {n + 1})")
        for k, v in zip(keys, (obs[:-1], obs[1:], ep.actions, ep.rewards, ep.terminations)):
            parts[k].append(np.asarray(v, dtype=np.float32))
        returns.append(float(np.sum(ep.rewards)))
        lengths.append(n)
    if not lengths:
        raise DatasetError(f"Minari dataset {dataset_id!r} holds no episodes; nothing to train on")
    return {**{k: np.concatenate(v) for k, v in parts.items()}, "episode_returns": np.asarray(returns),
            "episode_lengths": np.asarray(lengths, dtype=np.int64)}


def write(dataset_id: str, episodes: list[dict[str, np.ndarray]], env_id: str, ref_min_score: float,
          ref_max_score: float, algorithm: str, description: str) -> Path:
    """Create a local Minari dataset from episode buffers (needs ``minari[create]``); refuses an existing id."""
    minari = _minari()
    if dataset_id in minari.list_local_datasets():
        raise DatasetError(f"Minari dataset {dataset_id!r} already exists in {datasets_path()} and was left "
                           f"alone; choose another --out")
    import gymnasium
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=i, **e) for i, e in enumerate(episodes)]  # e: observations, actions, ... truncations
    try:
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=buffers, env=gymnasium.spec(env_id), eval_env=gymnasium.spec(env_id),
            algorithm_name=algorithm, ref_min_score=ref_min_score, ref_max_score=ref_max_score,
            description=description, author="modzoo", author_email="modzoo@localhost",
            code_permalink="https://github.com/modzoo/modzoo")
    except ImportError as e:
        raise DatasetError(f"writing a Minari dataset needs minari[create] ({e}): "
                           "pip install 'minari[create]'") from None
    return datasets_path() / dataset_id


def fetch(dataset_id: str) -> Path:
    """Download a dataset through Minari's own remote (network needed)."""
    minari = _minari()
    try:
        minari.download_dataset(dataset_id)
    except Exception as e:
        raise DatasetError(f"could not fetch Minari dataset {dataset_id!r} ({str(e).splitlines()[0]}); offline, copy "
                           f"its folder into {datasets_path()} instead") from None
    return datasets_path() / dataset_id
