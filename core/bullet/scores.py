"""D4RL reference scores and dataset URLs for the ``bullet-*`` tasks.

Copied from d4rl 1.1's ``d4rl/infos.py`` (PyPI wheel), every ``bullet-`` name, because d4rl does not import without
MuJoCo binaries; ``tests/test_scores.py`` checks them against an installed d4rl's file.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import EnvError
from .minari_data import is_minari_id
from .tasks import LEVELS, AnyTask, MinariTask, robot_of, task_of

_BASE = "http://rail.eecs.berkeley.edu/datasets/offline_rl/bullet/"
_ROBOT_MIN_MAX = {"halfcheetah": (-1275.766996, 2381.6725), "hopper": (20.058972, 1441.8059623430963),
                  "ant": (373.705955, 2650.495), "walker2d": (16.523877, 1623.6476303317536)}
_MAZE_MIN_MAX = {"open": (8.75, 64.15), "umaze": (32.46, 153.99), "medium": (14.87, 238.05), "large": (1.82, 285.92)}
_MIN_MAX = {**{f"bullet-{r}-{lvl}-v0": v for r, v in _ROBOT_MIN_MAX.items() for lvl in LEVELS},
            **{f"bullet-maze2d-{m}-v0": v for m, v in _MAZE_MIN_MAX.items()}}

#: D4RL's download URL of every ``bullet-*`` dataset (d4rl/infos.py DATASET_URLS).
DATASET_URLS: dict[str, str] = {
    **{f"bullet-{r}-{lvl}-v0": f"{_BASE}bullet-{r}_{lvl.replace('-', '_')}.hdf5"
       for r in _ROBOT_MIN_MAX for lvl in LEVELS},
    **{f"bullet-maze2d-{m}-v0": f"{_BASE}bullet-maze2d-{m}-sparse.hdf5" for m in _MAZE_MIN_MAX},
}
#: Return of a random policy (d4rl/infos.py REF_MIN_SCORE): normalized score 0.
REF_MIN_SCORE: dict[str, float] = {k: lo for k, (lo, _) in _MIN_MAX.items()}
#: Return of D4RL's reference expert (d4rl/infos.py REF_MAX_SCORE): normalized score 100.
REF_MAX_SCORE: dict[str, float] = {k: hi for k, (_, hi) in _MIN_MAX.items()}
_WARNED_RAW: set[str] = set()


def normalized_score(name: str | AnyTask, raw_return: Any) -> Any:
    """D4RL normalized score x 100 (as papers report): ``100 * (R - min) / (max - min)``.

    ``name`` is a task, robot or env id (a robot's levels share their references) or a Minari dataset, which uses
    its own ``ref_min_score`` / ``ref_max_score``; without them the raw returns come back, with one warning.
    ``raw_return`` is a number (a float comes back) or an array.
    """
    if isinstance(name, MinariTask) or (isinstance(name, str) and is_minari_id(name)):
        t = task_of(name)
        lo, hi = t.ref_min_score, t.ref_max_score
        if (lo is None or hi is None) and t.name not in _WARNED_RAW:
            _WARNED_RAW.add(t.name)
            warnings.warn(f"Minari dataset {t.name!r} has no ref_min_score / ref_max_score: its 'normalized' "
                          f"scores are raw returns", stacklevel=2)
    else:
        key = str(name)
        if key not in REF_MIN_SCORE:
            try:
                key = f"bullet-{robot_of(key)}-medium-v0"
            except EnvError:
                raise EnvError(f"no D4RL reference score for {key!r}: use one of {', '.join(sorted(REF_MIN_SCORE))}"
                               ) from None
        lo, hi = REF_MIN_SCORE[key], REF_MAX_SCORE[key]
    out = np.asarray(raw_return, dtype=np.float64)
    if lo is not None and hi is not None:
        out = 100.0 * (out - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out
