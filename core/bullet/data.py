"""D4RL-format datasets: reading, validating, building transitions, writing. The layout is D4RL's HDF5, so D4RL's
files, plain h5py files and ``modzoo data collect``'s load alike; transitions are built exactly as
``d4rl.qlearning_dataset`` builds them. A fixable problem is a one-line DatasetError naming the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DatasetError, EnvError
from . import minari_data
from .envs import env_dims, make_env
from .scores import DATASET_URLS, REF_MAX_SCORE, REF_MIN_SCORE
from .tasks import MAX_EPISODE_STEPS, TASKS, Task, task_of

#: Keys every D4RL file has (d4rl's ``get_dataset`` asserts exactly these).
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
#: The transition arrays, in the order the fingerprint hashes them.
TRANSITION_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")
_FIX = "rebuild it with `modzoo data collect NAME`"


def dataset_dir() -> Path:
    """D4RL's cache directory: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets`` (d4rl's default)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def demo_dir() -> Path:
    """``modzoo demo``'s own cache (``$XDG_CACHE_HOME/modzoo``, default ``~/.cache/modzoo``), not D4RL's."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "modzoo"


def demo_dataset_path(task: str, transitions: int, directory: str | os.PathLike[str] | None = None) -> Path:
    """``modzoo demo``'s small dataset of ``task``, never at D4RL's path: a run naming the task must get the full
    dataset or a "not found" pointing here, never 50k demo transitions standing in for D4RL's million."""
    return Path(directory or demo_dir()).expanduser() / f"{task}-demo-{int(transitions)}.hdf5"


def dataset_path(task: str | Task) -> Path:
    """The cache dir + the file name of D4RL's URL (``bullet-hopper_medium.hdf5``), as d4rl's ``filepath_from_url``."""
    return dataset_dir() / DATASET_URLS[task_of(task).name].rsplit("/", 1)[-1]  # task_of: EnvError naming the tasks


def task_from_filename(path: str | os.PathLike[str]) -> str | None:
    """The task of a D4RL file name (``bullet-hopper_medium_replay.hdf5``) or ``<task>.hdf5``, else None."""
    stem = re.sub(r"\.(hdf5|h5)$", "", Path(path).name)
    m = re.fullmatch(r"bullet-([a-z0-9]+)_([a-z_]+)", stem)
    name = f"bullet-{m.group(1)}-{m.group(2).replace('_', '-')}-v0" if m else stem
    return name if name in TASKS else None


@dataclass
class Dataset:
    """Transitions of one dataset, built like ``d4rl.qlearning_dataset``. Equal ``fingerprint``s (a hash of the
    transitions) mean the same data, which decides whether a frozen guidance and a policy can be mixed."""

    name: str
    path: str | None
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    attrs: dict[str, Any]
    fingerprint: str
    raw_episode_returns: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    raw_episode_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def episode_returns(self) -> np.ndarray:
        """Undiscounted returns of the raw episodes (split at ``terminals | timeouts``; a trailing cut one counts)."""
        return self.raw_episode_returns

    def episode_lengths(self) -> np.ndarray:
        """Lengths of the raw episodes, in the order of :meth:`episode_returns`."""
        return self.raw_episode_lengths


def fingerprint_of(transitions: Mapping[str, np.ndarray]) -> str:
    """Short sha256 (16 hex) over the float32 bytes and shapes of the :data:`TRANSITION_KEYS` arrays."""
    h = hashlib.sha256()
    for k in TRANSITION_KEYS:
        a = np.ascontiguousarray(transitions[k], dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def qlearning_transitions(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray,
                          timeouts: np.ndarray | None, max_episode_steps: int = MAX_EPISODE_STEPS
                          ) -> dict[str, np.ndarray]:
    """``d4rl.qlearning_dataset`` (``terminate_on_end=False``), vectorized: row ``i < N-1`` gives ``(obs[i], act[i],
    rew[i], obs[i+1], terminals[i])`` unless ``timeouts[i]`` (its successor starts the next episode); without
    ``timeouts``, step ``max_episode_steps - 1`` of each episode is the timeout. ``next_observations`` is ignored."""
    n = int(rewards.shape[0])
    if n < 2:
        keep = np.zeros(0, dtype=np.int64)
    elif timeouts is not None:
        keep = np.flatnonzero(~timeouts[: n - 1].astype(bool))
    else:
        done, kept, episode_step = terminals.astype(bool), [], 0
        for i in range(n - 1):
            if episode_step == max_episode_steps - 1:  # the episode's last step: d4rl's timeout
                episode_step = 0
                continue
            if done[i]:
                episode_step = 0
            kept.append(i)
            episode_step += 1  # d4rl increments even right after a terminal (its quirk, kept)
        keep = np.asarray(kept, dtype=np.int64)
    return {"observations": observations[keep].astype(np.float32), "actions": actions[keep].astype(np.float32),
            "rewards": rewards[keep].astype(np.float32), "next_observations": observations[keep + 1].astype(np.float32),
            "terminals": terminals[keep].astype(np.float32)}


def episode_boundaries(terminals: np.ndarray, timeouts: np.ndarray | None,
                       max_episode_steps: int = MAX_EPISODE_STEPS) -> np.ndarray:
    """Per row: it ends an episode (terminal or timeout; without timeouts, d4rl's every ``max_episode_steps``)."""
    ends = terminals.astype(bool).copy()
    if timeouts is not None:
        return ends | timeouts.astype(bool)
    step = 0
    for i in range(len(ends)):
        step += 1
        if ends[i] or step == max_episode_steps:
            ends[i] = True
            step = 0
    return ends


def episode_returns_from_raw(rewards: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of the episodes delimited by ``ends`` (trailing open segment included)."""
    n = len(rewards)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    stops = np.flatnonzero(ends) + 1
    if len(stops) == 0 or stops[-1] != n:
        stops = np.r_[stops, n]
    starts = np.r_[0, stops[:-1]]
    csum = np.r_[0.0, np.cumsum(rewards, dtype=np.float64)]
    return csum[stops] - csum[starts], (stops - starts).astype(np.int64)


def attr_value(v: Any) -> Any:
    """HDF5 attribute -> plain Python (JSON strings written by modzoo come back as dicts/lists)."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, (np.generic, np.ndarray)):
        v = v.tolist()
    if isinstance(v, str) and v[:1] in "{[":
        with contextlib.suppress(ValueError):
            return json.loads(v)
    return v


def read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A D4RL-layout file's arrays (as stored, before transitions are built) and its attributes."""
    import h5py

    _must_exist(path)
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if missing := [k for k in REQUIRED_KEYS if k not in keys]:
                raise DatasetError(f"dataset file {path} has no key {missing[0]!r}: not a D4RL-format file (keys: "
                                   f"{', '.join(sorted(keys)) or 'none'}); {_FIX}")
            raw: dict[str, np.ndarray] = {}
            for k in (*REQUIRED_KEYS, "timeouts", "next_observations"):
                if k in keys:
                    if not isinstance(f[k], h5py.Dataset):
                        raise _broken(path, f"{k!r} is a group, not an array; not a D4RL-format file")
                    raw[k] = f[k][()]
            attrs = {str(k): attr_value(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise DatasetError(f"dataset file {path} is unreadable or corrupt ({msg}); the file was left alone: rebuild "
                           "it with `modzoo data collect NAME --force` or download it again with `modzoo data fetch "
                           "NAME --force`") from exc
    return raw, attrs


def _first_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def _broken(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"dataset file {path}: {problem}; {_FIX}")


def _validate(path: Path, raw: dict[str, np.ndarray], task: Task) -> None:
    for k, dim in zip(("observations", "actions"), env_dims(task)):
        if raw[k].ndim != 2 or raw[k].shape[1] != dim:
            raise DatasetError(f"dataset file {path}: {k} have shape {raw[k].shape}, but {task} needs (N, {dim}); "
                               f"wrong task for this file? pass the right task or {_FIX}")
    n = raw["observations"].shape[0]
    if n == 0:
        raise DatasetError(f"dataset file {path} holds no transitions: {_FIX}")
    for k, a in raw.items():
        if a.ndim == 0:
            raise _broken(path, f"{k!r} is a single value, expected one per row ({n})")
        if a.shape[0] != n:
            raise _broken(path, f"{k!r} has {a.shape[0]} rows but observations have {n}; the file is inconsistent")
        if k in ("rewards", "terminals", "timeouts") and a.ndim != 1:
            raise _broken(path, f"{k!r} has shape {a.shape}, expected ({n},)")
    if "next_observations" in raw and raw["next_observations"].shape != raw["observations"].shape:
        raise _broken(path, f"next_observations have shape {raw['next_observations'].shape}, observations "
                            f"{raw['observations'].shape}")
    for k, a in raw.items():
        real = np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
        if k in ("terminals", "timeouts"):  # d4rl reads flags as booleans: anything but 0/1 is a broken file
            if not (real or a.dtype == np.bool_):
                raise _broken(path, f"{k!r} has dtype {a.dtype}, expected 0/1 flags")
            bad = ~np.isin(a.astype(np.float64), (0.0, 1.0))
            if bad.any():
                row = _first_row(bad)
                raise _broken(path, f"{k!r} holds {a[row]!r} at row {row}; flags must be 0 or 1")
        elif not real:
            raise _broken(path, f"{k!r} has dtype {a.dtype}, not real numbers")
        elif (~np.isfinite(a)).any():
            raise _broken(path, f"{k!r} contains NaN or inf (first at row {_first_row(~np.isfinite(a))})")
        elif np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize > 4:
            big = np.abs(a) > float(np.finfo(np.float32).max)  # would load as inf: everything trains in float32
            if big.any():
                raise _broken(path, f"{k!r} holds a value beyond float32 (first at row {_first_row(big)})")


def _resolve(name_or_path: str, task: str | None) -> tuple[Path, str]:
    """Path and task for ``load_dataset``'s argument (a file path or a task name)."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".hdf5", ".h5") or os.sep in name_or_path or p.exists():
        return p, task or ""
    try:
        task_of(name_or_path)
    except EnvError as exc:
        raise DatasetError(f"{name_or_path!r} is neither a dataset file nor a known task name; {exc}") from exc
    path = dataset_path(name_or_path)
    if not path.exists():
        # the demo's small file is offered by path, never used in the full dataset's place (see demo_dataset_path)
        demo = max(demo_dir().glob(f"{name_or_path}-demo-*.hdf5"), key=lambda f: (len(f.name), f.name), default=None)
        hint = (f"; the small dataset `modzoo demo` made is {demo}: pass it by path to use it (--dataset {demo}, or "
                f"`modzoo data info {demo}`)") if demo else ""
        raise DatasetError(f"dataset {name_or_path} not found at {path}: build it with `modzoo data collect "
                           f"{name_or_path}` (or `modzoo data fetch {name_or_path}` where D4RL's server is reachable; "
                           f"set $D4RL_DATASET_DIR to use another directory){hint}")
    return path, task or name_or_path


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist: give an existing path or build it with "
                           f"`modzoo data collect NAME --out {path}`")
    if path.is_dir():  # never advise deleting it: a directory given by mistake is usually someone's data
        raise DatasetError(f"dataset {path} is a directory, not a dataset file: give the .hdf5 file itself (e.g. "
                           f"{path / 'NAME.hdf5'}), or a task name or Minari dataset id")


def _from_minari(name_or_path: str) -> bool:
    """A Minari dataset id, unless a file of that name is here (a path wins)."""
    return minari_data.is_minari_id(name_or_path) and not Path(name_or_path).expanduser().exists()


def dataset_file(name_or_path: str, task: str | None = None) -> Path | None:
    """The file :func:`load_dataset` would read (None for a Minari id) or its error: a grid checks all up front."""
    if _from_minari(str(name_or_path)):
        return None
    path, _ = _resolve(str(name_or_path), task)
    _must_exist(path)
    return path


def load_dataset(name_or_path: str, task: str | None = None) -> Dataset:
    """Load and validate a D4RL-format dataset by task name (from :func:`dataset_dir`), path or Minari id: its
    transitions as numpy arrays, the file's recipe (``attrs``) and the ``fingerprint`` every run records.

    The task (whose env the data belongs to) is the ``task`` argument, else the file's ``task`` attribute, else
    the file name (D4RL's ``bullet-hopper_medium.hdf5`` or ``bullet-hopper-medium-v0.hdf5``).
    """
    if _from_minari(str(name_or_path)):
        return _load_minari(str(name_or_path))
    path, t = _resolve(str(name_or_path), task)
    raw, attrs = read_raw(path)
    t = t or str(attrs.get("task") or "") or (task_from_filename(path) or "")
    if not t:
        raise DatasetError(f"dataset file {path}: cannot tell which task it belongs to (no 'task' attribute, file name "
                           "not D4RL's); pass the task, e.g. load_dataset(path, task='bullet-hopper-medium-v0')")
    try:
        parsed = task_of(t)
    except EnvError as exc:
        raise DatasetError(f"dataset file {path}: task {t!r} unknown; {exc}") from exc
    for k in ("rewards", "terminals", "timeouts"):  # some writers store (N, 1); d4rl squeezes
        if k in raw and raw[k].ndim == 2 and raw[k].shape[1] == 1:
            raw[k] = raw[k][:, 0]
    _validate(path, raw, parsed)
    timeouts = raw.get("timeouts")
    tr = qlearning_transitions(raw["observations"], raw["actions"], raw["rewards"], raw["terminals"], timeouts)
    if len(tr["rewards"]) == 0:
        raise DatasetError(f"dataset file {path} yields no transitions (every row is an episode's last step); {_FIX}")
    rets, lens = episode_returns_from_raw(raw["rewards"].astype(np.float64),
                                          episode_boundaries(raw["terminals"], timeouts))
    return Dataset(name=t, path=str(path), attrs=attrs, fingerprint=fingerprint_of(tr),
                   raw_episode_returns=rets, raw_episode_lengths=lens, **tr)


def _load_minari(dataset_id: str) -> Dataset:
    """A Minari dataset as a :class:`Dataset`, checked against the env it is evaluated on (built, not stepped)."""
    t = task_of(dataset_id)
    tr = minari_data.episodes(dataset_id)
    rets, lens = tr.pop("episode_returns"), tr.pop("episode_lengths")
    env = make_env(t)
    env_obs, env_act = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
    env.close()
    if (tr["observations"].shape[1], tr["actions"].shape[1]) != (env_obs, env_act):
        raise DatasetError(f"Minari dataset {dataset_id!r}: its data has observation/action dims "
                           f"{tr['observations'].shape[1]}/{tr['actions'].shape[1]} but its evaluation env "
                           f"{t.env_id} has {env_obs}/{env_act}; the dataset does not belong to that env")
    if abs(t.act_high - 1.0) > 1e-6:
        raise DatasetError(f"Minari dataset {dataset_id!r}: actions span +-{t.act_high:g}, but modzoo's policies "
                           f"act in [-1, 1] (D4RL's locomotion range); rescale the dataset's actions first")
    return Dataset(name=dataset_id, path=str(minari_data.datasets_path() / dataset_id),
                   attrs={"task": dataset_id, "source": "minari", "env_id": t.env_id}, fingerprint=fingerprint_of(tr),
                   raw_episode_returns=rets, raw_episode_lengths=lens, **tr)


def write_d4rl_file(path: str | os.PathLike[str], observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                    terminals: np.ndarray, timeouts: np.ndarray, attrs: Mapping[str, Any] | None = None,
                    next_observations: np.ndarray | None = None) -> Path:
    """Write a D4RL-layout HDF5 file atomically (temp file, then ``os.replace``: never a half file under the name),
    with D4RL's dtypes (float32, bool flags); dict/list attributes as JSON strings (HDF5 nests none), None as ""."""
    import h5py

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(rewards)
    arrays = {"observations": np.asarray(observations, dtype=np.float32), "actions": np.asarray(actions, np.float32),
              "rewards": np.asarray(rewards, dtype=np.float32).reshape(n),
              "terminals": np.asarray(terminals).astype(bool).reshape(n),
              "timeouts": np.asarray(timeouts).astype(bool).reshape(n)}
    if next_observations is not None:
        arrays["next_observations"] = np.asarray(next_observations, dtype=np.float32)
    for k, a in arrays.items():
        if a.shape[0] != n:
            raise DatasetError(f"cannot write {path}: {k} has {a.shape[0]} rows, rewards {n}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for k, a in arrays.items():
                f.create_dataset(k, data=a)
            for k, v in (attrs or {}).items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else "" if v is None else v
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def raw_episodes(raw: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A D4RL-layout file's rows as Minari episodes (n + 1 ``observations``; ``actions``, ``rewards``,
    ``terminations``, ``truncations`` n each); without ``next_observations`` each episode's last step is dropped."""
    ends = np.flatnonzero(episode_boundaries(raw["terminals"], raw.get("timeouts"))) + 1
    n_rows, nxt, out = len(raw["rewards"]), raw.get("next_observations"), []
    bounds = list(ends) + ([n_rows] if not len(ends) or ends[-1] < n_rows else [])
    for start, end in zip([0, *bounds[:-1]], bounds):
        cut = end if nxt is not None else end - 1
        if cut - start < 1:
            continue
        obs = raw["observations"][start:end]
        if nxt is not None:
            obs = np.concatenate([obs, nxt[end - 1:end]])
        term = raw["terminals"][start:cut].astype(bool)
        trunc = np.zeros(cut - start, dtype=bool)
        trunc[-1] = not term[-1]  # not a fall: the time limit, the file's end, or a step dropped above
        out.append({"observations": obs.astype(np.float32), "actions": raw["actions"][start:cut].astype(np.float32),
                    "rewards": raw["rewards"][start:cut].astype(np.float64).reshape(-1), "terminations": term,
                    "truncations": trunc})
    return out


def export_minari(task: str, dataset_id: str | None = None, path: str | os.PathLike[str] | None = None) -> str:
    """``modzoo data export-minari``: a Bullet dataset as a Minari one (for d3rlpy, torchrl), with D4RL's scores."""
    t = task_of(task)
    if not isinstance(t, Task):
        raise DatasetError(f"{task!r} is already a Minari dataset")
    src = Path(path).expanduser() if path else dataset_path(t)
    raw, attrs = read_raw(src)
    dataset_id = dataset_id or f"modzoo/{t.robot}/{t.level}-v0"
    if not minari_data.is_minari_id(dataset_id):
        raise DatasetError(f"--out {dataset_id!r} is not a Minari id namespace/name-vN (e.g. modzoo/hopper/medium-v0)")
    recipe = {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))}
    minari_data.write(dataset_id, raw_episodes(raw), env_id=t.env_id, ref_min_score=REF_MIN_SCORE[t.name],
                      ref_max_score=REF_MAX_SCORE[t.name], algorithm=str(attrs.get("behaviour") or "modzoo collect"),
                      description=f"modzoo {t.name} ({src.name}); recipe: {json.dumps(recipe, default=str)}")
    return dataset_id
