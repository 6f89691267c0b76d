"""Batched (lockstep) evaluation must see exactly the episodes sequential evaluation sees."""
from __future__ import annotations

import numpy as np
import pytest

from modzoo.bullet.scores import normalized_score
from modzoo.errors import ModzooError
from modzoo.run.evaluation import EvalResult, evaluate_policy


def _linear_policy(obs_dim: int, act_dim: int, seed: int = 0):
    """Deterministic row-wise policy (no cross-row arithmetic, so batching cannot change its output)."""
    w = np.random.default_rng(seed).standard_normal((obs_dim, act_dim)).astype(np.float32) * 0.5

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([np.tanh(o @ w) for o in obs])

    return act


def test_vector_equals_sequential_hopper() -> None:
    batch_sizes: list[int] = []
    pol = _linear_policy(15, 3)

    def recording(obs: np.ndarray) -> np.ndarray:
        assert obs.dtype == np.float32
        batch_sizes.append(len(obs))
        return pol(obs)

    vec = evaluate_policy(recording, "bullet-hopper-medium-v0", episodes=4, seed=3, max_steps=300)
    # the same episodes one at a time (episode i is reset with seed + i)
    seq = [evaluate_policy(pol, "bullet-hopper-medium-v0", episodes=1, seed=3 + i, max_steps=300) for i in range(4)]
    np.testing.assert_array_equal(vec.returns, np.concatenate([s.returns for s in seq]))
    np.testing.assert_array_equal(vec.lengths, np.concatenate([s.lengths for s in seq]))
    assert batch_sizes[0] == 4 and batch_sizes == sorted(batch_sizes, reverse=True)  # finished ones drop out
    assert len(batch_sizes) == vec.lengths.max()
    np.testing.assert_allclose(vec.normalized, normalized_score("bullet-hopper-medium-v0", vec.returns))


def test_expert_on_ant_and_result_api() -> None:
    from modzoo.bullet.experts import load_pybullet_expert

    res = evaluate_policy(load_pybullet_expert("ant"), "bullet-ant-expert-v0", episodes=2, seed=0, max_steps=200)
    assert isinstance(res, EvalResult)
    assert (res.lengths == 200).all() and res.mean > 150
    d = res.to_dict()
    assert d["episodes"] == 2 and d["normalized_mean"] == pytest.approx(res.normalized_mean)
    assert d["std"] == pytest.approx(res.std) and d["normalized_std"] == pytest.approx(res.normalized_std)
    assert len(d["returns"]) == 2 and isinstance(d["returns"][0], float)


def test_different_seeds_different_episodes() -> None:
    pol = _linear_policy(15, 3)
    a = evaluate_policy(pol, "bullet-hopper-medium-v0", episodes=2, seed=0, max_steps=50)
    b = evaluate_policy(pol, "bullet-hopper-medium-v0", episodes=2, seed=10, max_steps=50)
    assert a.returns[0] != a.returns[1] and not np.array_equal(a.returns, b.returns)


def test_bad_actions_refused() -> None:
    with pytest.raises(ModzooError, match=r"expected \(3, 3\)"):
        evaluate_policy(lambda o: np.zeros((len(o), 2)), "bullet-hopper-medium-v0", episodes=3, max_steps=5)
    with pytest.raises(ModzooError, match="NaN"):
        evaluate_policy(lambda o: np.full((len(o), 3), np.nan), "bullet-hopper-medium-v0", episodes=1, max_steps=5)
