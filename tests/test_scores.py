"""D4RL reference scores carried by modzoo, and reading d4rl's infos.py without importing d4rl."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modzoo.bullet import scores
from modzoo.bullet.scores import REF_MAX_SCORE, REF_MIN_SCORE, normalized_score
from modzoo.bullet.tasks import TASKS
from modzoo.errors import EnvError


def test_every_task_has_references_and_url() -> None:
    for t in TASKS:
        assert REF_MIN_SCORE[t] < REF_MAX_SCORE[t]
        assert scores.DATASET_URLS[t].startswith("http://rail.eecs.berkeley.edu/datasets/offline_rl/bullet/")
    assert scores.DATASET_URLS["bullet-hopper-medium-replay-v0"].endswith("/bullet-hopper_medium_replay.hdf5")


def test_normalized_score_values() -> None:
    t = "bullet-hopper-medium-v0"
    assert normalized_score(t, 20.058972) == pytest.approx(0.0)
    assert normalized_score(t, 1441.8059623430963) == pytest.approx(100.0)
    # halfcheetah: min -1275.766996, max 2381.6725 -> midpoint scores 50
    assert normalized_score("bullet-halfcheetah-expert-v0", (-1275.766996 + 2381.6725) / 2) == pytest.approx(50.0)
    assert normalized_score("bullet-walker2d-random-v0",
                            16.523877 + 0.1 * (1623.6476303317536 - 16.523877)) == pytest.approx(10.0)
    arr = normalized_score("bullet-ant-medium-v0", np.array([373.705955, 2650.495]))
    assert isinstance(arr, np.ndarray) and np.allclose(arr, [0.0, 100.0])
    assert isinstance(normalized_score(t, 100), float)
    assert normalized_score("hopper", 1441.8059623430963) == pytest.approx(100.0)  # robot name accepted


def test_normalized_score_unknown() -> None:
    with pytest.raises(EnvError, match="bullet-hopper-medium-v0"):
        normalized_score("hopper-medium-v2", 1.0)


def _d4rl_infos() -> dict[str, dict[str, Any]] | None:
    """``DATASET_URLS``, ``REF_MIN_SCORE``, ``REF_MAX_SCORE`` of an installed d4rl (CI: `pip install --no-deps d4rl`),
    None without one. Its infos.py is found and executed on its own (the file has no imports): importing d4rl needs
    MuJoCo."""
    try:
        spec = importlib.util.find_spec("d4rl")
    except (ImportError, ValueError):
        return None
    found = [Path(loc) / "infos.py" for loc in ((spec.submodule_search_locations or []) if spec else [])]
    path = next((p for p in found if p.is_file()), None)
    if path is None:
        return None
    namespace: dict[str, Any] = {"__name__": "d4rl_infos", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return {k: dict(namespace[k]) for k in ("DATASET_URLS", "REF_MIN_SCORE", "REF_MAX_SCORE")}


def test_matches_installed_d4rl() -> None:
    """modzoo's numbers equal d4rl's infos.py for every bullet-* name (CI: `pip install --no-deps d4rl`)."""
    infos = _d4rl_infos()
    if infos is None:
        pytest.skip("d4rl not installed (`pip install --no-deps d4rl`)")
    names = [k for k in infos["DATASET_URLS"] if k.startswith("bullet-")]
    assert set(names) == {k for k in scores.DATASET_URLS}
    for k in names:
        assert scores.DATASET_URLS[k] == infos["DATASET_URLS"][k], k
        assert REF_MIN_SCORE[k] == infos["REF_MIN_SCORE"][k], k
        assert REF_MAX_SCORE[k] == infos["REF_MAX_SCORE"][k], k


def test_infos_read_without_importing_d4rl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A d4rl whose __init__ dies (as the real one does without MuJoCo) still yields its infos.py."""
    pkg = tmp_path / "d4rl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('no mujoco here')\n")
    (pkg / "infos.py").write_text(
        "DATASET_URLS = {'bullet-hopper-medium-v0': 'http://x/bullet-hopper_medium.hdf5'}\n"
        "REF_MIN_SCORE = {'bullet-hopper-medium-v0': 1.0}\nREF_MAX_SCORE = {'bullet-hopper-medium-v0': 2.0}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "d4rl", raising=False)
    infos = _d4rl_infos()
    assert infos is not None and infos["REF_MAX_SCORE"] == {"bullet-hopper-medium-v0": 2.0}
    assert "d4rl" not in sys.modules
