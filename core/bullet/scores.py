"""D4RL reference scores and dataset URLs for the ``bullet-*`` tasks.

The numbers are copied from d4rl 1.1's ``d4rl/infos.py`` (the wheel on PyPI), for every name starting with
``bullet-``; ``tests/test_scores.py`` checks them against an installed d4rl's file. modzoo carries them
because d4rl cannot be imported without MuJoCo binaries; :func:`load_d4rl_infos` reads d4rl's file by
path instead, without importing the package.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EnvError, ModzooError
from .minari_data import is_minari_id
from .tasks import ROBOTS, AnyTask, MinariTask, Task, robot_of, task_of

_BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl/bullet/"
_ROBOT_MIN_MAX = {
    "halfcheetah": (-1275.766996, 2381.6725),
    "hopper": (20.058972, 1441.8059623430963),
    "ant": (373.705955, 2650.495),
    "walker2d": (16.523877, 1623.6476303317536),
}
_LEVEL_FILE = {
    "random": "random",
    "medium": "medium",
    "expert": "expert",
    "medium-expert": "medium_expert",
    "medium-replay": "medium_replay",
}

#: D4RL's download URL of every ``bullet-*`` dataset (d4rl/infos.py DATASET_URLS).
DATASET_URLS: dict[str, str] = {}
#: Return of a random policy (d4rl/infos.py REF_MIN_SCORE): normalized score 0.
REF_MIN_SCORE: dict[str, float] = {}
#: Return of D4RL's reference expert (d4rl/infos.py REF_MAX_SCORE): normalized score 100.
REF_MAX_SCORE: dict[str, float] = {}

for _robot, (_lo, _hi) in _ROBOT_MIN_MAX.items():
    for _level, _file in _LEVEL_FILE.items():
        _name = f"bullet-{_robot}-{_level}-v0"
        DATASET_URLS[_name] = f"{_BASE}bullet-{_robot}_{_file}.hdf5"
        REF_MIN_SCORE[_name] = _lo
        REF_MAX_SCORE[_name] = _hi
for _maze, (_lo, _hi) in {
    "open": (8.75, 64.15),
    "umaze": (32.46, 153.99),
    "medium": (14.87, 238.05),
    "large": (1.82, 285.92),
}.items():
    _name = f"bullet-maze2d-{_maze}-v0"
    DATASET_URLS[_name] = f"{_BASE}bullet-maze2d-{_maze}-sparse.hdf5"
    REF_MIN_SCORE[_name] = _lo
    REF_MAX_SCORE[_name] = _hi


_WARNED_RAW: set[str] = set()


def _refs(name: str | AnyTask) -> tuple[float | None, float | None]:
    if isinstance(name, MinariTask) or (isinstance(name, str) and is_minari_id(name)):
        t = task_of(name)
        if (t.ref_min_score is None or t.ref_max_score is None) and t.name not in _WARNED_RAW:
            _WARNED_RAW.add(t.name)
            warnings.warn(f"Minari dataset {t.name!r} has no ref_min_score / ref_max_score: its 'normalized' "
                          f"scores are raw returns", stacklevel=3)
        return t.ref_min_score, t.ref_max_score
    key = _ref_name(name)
    return REF_MIN_SCORE[key], REF_MAX_SCORE[key]


def _ref_name(name: str | Task) -> str:
    """Accept a task (name or value), or a robot / env id (all levels of a robot share the references)."""
    name = str(name)
    if name in REF_MIN_SCORE:
        return name
    try:
        robot = robot_of(name)
    except EnvError:
        robot = None
    if robot in ROBOTS:
        return f"bullet-{robot}-medium-v0"
    raise EnvError(
        f"no D4RL reference score for {name!r}: use one of {', '.join(sorted(REF_MIN_SCORE))}"
    )


def normalized_score(name: str | AnyTask, raw_return: Any) -> Any:
    """D4RL normalized score x 100 (as papers report): ``100 * (R - min) / (max - min)``.

    ``raw_return`` may be a number or an array; a float comes back for a scalar, an array otherwise. A Minari
    task normalizes with its dataset's ``ref_min_score`` / ``ref_max_score``; one without them gives the raw
    returns back, and says so once.
    """
    lo, hi = _refs(name)
    if lo is None or hi is None:
        out = np.asarray(raw_return, dtype=np.float64)
        return float(out) if out.ndim == 0 else out
    out = 100.0 * (np.asarray(raw_return, dtype=np.float64) - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out


def d4rl_infos_path() -> Path | None:
    """Path of an installed d4rl's ``infos.py``, found without importing d4rl (whose ``__init__`` needs
    MuJoCo); None when d4rl is not installed."""
    try:
        spec = importlib.util.find_spec("d4rl")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "infos.py"
        if p.is_file():
            return p
    return None


def load_d4rl_infos() -> dict[str, dict[str, Any]]:
    """``{"DATASET_URLS", "REF_MIN_SCORE", "REF_MAX_SCORE"}`` from an installed d4rl's infos.py, executed
    on its own (the file has no imports)."""
    path = d4rl_infos_path()
    if path is None:
        raise ModzooError("d4rl is not installed: `pip install --no-deps d4rl` provides its infos.py")
    namespace: dict[str, Any] = {"__name__": "d4rl_infos", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return {k: dict(namespace[k]) for k in ("DATASET_URLS", "REF_MIN_SCORE", "REF_MAX_SCORE")}
