"""The library quickstart (examples/quickstart.py, shown in docs/library.md) runs as written, and the user-level
calls it relies on behave: numpy in and out of ``predict``, ``gym.make`` on a task name."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import modzoo

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def test_the_quickstart_trains_saves_loads_acts_and_evaluates(small_dataset_path: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    score = quickstart.main(str(small_dataset_path), tmp_path, guidance_steps=20, policy_steps=20, episodes=1)
    out = capsys.readouterr().out
    assert math.isfinite(score) and "normalized score:" in out and "one action: [" in out
    assert (tmp_path / "iql" / "guidance.pt").exists() and (tmp_path / "dql" / "policy.pt").exists()


def test_predict_takes_the_envs_own_observation_and_gives_numpy(small_dataset_path: Path, tmp_path: Path) -> None:
    cfg = modzoo.run_config("idql", "idql", "bullet-hopper-medium-v0", ["policy.hidden=32", "guidance.hidden=[32,32]"],
                            policy_steps=2, eval_episodes=0, device="cpu", dataset=str(small_dataset_path))
    res = modzoo.train(cfg, progress=False)
    assert isinstance(res, modzoo.RunResult) and res.normalized_score is None
    env = gym.make("bullet-hopper-medium-v0")
    obs, _ = env.reset(seed=0)
    one = res.policy.predict(obs, res.guidance)
    batch = res.policy.predict(np.stack([obs, obs]), res.guidance)
    assert one.shape == (3,) and one.dtype == np.float32 and np.all(np.abs(one) <= 1)
    assert batch.shape == (2, 3)
    env.step(one)  # the env takes it as it is
    with pytest.raises(ValueError, match=r"observations of shape \(15,\)"):
        res.policy.predict(np.zeros(4))


def test_load_dataset_is_public_and_carries_its_recipe_and_fingerprint(small_dataset_path: Path) -> None:
    data = modzoo.load_dataset(str(small_dataset_path))
    assert data.name == "bullet-hopper-medium-v0" and len(data.fingerprint) >= 16
    assert data.observations.shape[1] == 15 and data.attrs["command"].startswith("modzoo data collect")
    # the recipe: which behaviour policy and noise made it (transitions as collected; loading drops the file's last
    # row and timeouts, as d4rl.qlearning_dataset does)
    assert "HopperBulletEnv" in data.attrs["segments"][0]["policy"] and data.attrs["transitions"] == 5000
    assert 4900 < len(data.observations) < 5000
