"""Evaluation speed: lockstep-batched vs sequential episodes with a diffusion-policy-shaped act_fn.

The act_fn does the work of Diffusion-QL's action selection: for every state, 50 candidate actions are
sampled with modzoo's DDPM sampler (T=5, 3x256 Mish MLP denoiser), scored by a twin 3x256 Mish Q network,
and the best is taken. Weights are random (only the cost matters); halfcheetah is used because it never
terminates, so every episode is the full 1000 steps in both variants.

    pytest lab/benchmarks/bench_eval.py --benchmark-only -p no:cacheprovider -o addopts=""
    python lab/benchmarks/bench_eval.py            # prints both times and the ratio (docs/datasets.md)
    python lab/benchmarks/bench_eval.py --profile  # one act_fn call for 1 vs 10 states

Environment: BENCH_EPISODES (default 10), BENCH_MAX_STEPS (default 1000), BENCH_THREADS (default 1).
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

from modzoo.bullet.envs import env_dims
from modzoo.run.evaluation import evaluate_policy

TASK = "bullet-halfcheetah-medium-v0"
EPISODES = int(os.environ.get("BENCH_EPISODES", "10"))
MAX_STEPS = int(os.environ.get("BENCH_MAX_STEPS", "1000"))
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
CANDIDATES = 50
T = 5


def evaluate_sequential(act: Callable[[np.ndarray], np.ndarray], task: str, episodes: int, seed: int,
                        max_steps: int) -> np.ndarray:
    """The baseline: the same episodes one after another, one state per ``act`` call; their lengths."""
    return np.concatenate([evaluate_policy(act, task, episodes=1, seed=seed + i, max_steps=max_steps).lengths
                           for i in range(episodes)])


def make_act_fn(seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Diffusion-QL-style selection: N candidates per state from the DDPM sampler, argmax of min twin-Q."""
    from modzoo.blocks.diffusion import GaussianDiffusion
    from modzoo.blocks.nets import MLPDenoiser, mlp

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    obs_dim, act_dim = env_dims(TASK)
    diffusion = GaussianDiffusion(MLPDenoiser(obs_dim, act_dim, hidden=256, depth=3), act_dim, T=T,
                                  schedule="vp").eval()
    q1 = mlp(obs_dim + act_dim, [256] * 3, 1, act="mish").eval()
    q2 = mlp(obs_dim + act_dim, [256] * 3, 1, act="mish").eval()
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        s = torch.as_tensor(obs).repeat_interleave(CANDIDATES, dim=0)  # (n*N, obs_dim)
        a = diffusion.sample(s, generator=gen)
        sa = torch.cat([s, a], dim=-1)
        q = torch.minimum(q1(sa), q2(sa)).view(-1, CANDIDATES)
        best = q.argmax(dim=1)
        return a.view(-1, CANDIDATES, act_dim)[torch.arange(len(obs)), best].numpy()

    return act


def test_eval_vectorized(benchmark) -> None:  # type: ignore[no-untyped-def]
    act = make_act_fn()
    benchmark.group = "evaluation, 10 x halfcheetah episodes, diffusion act_fn (T=5, 50 candidates)"
    res = benchmark.pedantic(lambda: evaluate_policy(act, TASK, episodes=EPISODES, seed=0, max_steps=MAX_STEPS),
                             rounds=1, iterations=1)
    assert (res.lengths == MAX_STEPS).all()


def test_eval_sequential(benchmark) -> None:  # type: ignore[no-untyped-def]
    act = make_act_fn()
    benchmark.group = "evaluation, 10 x halfcheetah episodes, diffusion act_fn (T=5, 50 candidates)"
    lengths = benchmark.pedantic(lambda: evaluate_sequential(act, TASK, EPISODES, 0, MAX_STEPS), rounds=1,
                                 iterations=1)
    assert (lengths == MAX_STEPS).all()


def profile_calls(seconds: float = 3.0) -> None:
    """Cost of one act_fn call for 1 state vs 10 states: bounds what batching can gain."""
    act = make_act_fn()
    obs_dim, _ = env_dims(TASK)
    per = {}
    for n in (1, 10):
        o = np.random.default_rng(0).standard_normal((n, obs_dim)).astype(np.float32)
        act(o)
        t, k = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            act(o)
            k += 1
        per[n] = (time.perf_counter() - t) / k
        print(f"act_fn with {n:2d} states ({n * CANDIDATES} candidates): {per[n] * 1e3:.1f} ms per call")
    print(f"batched cost per state / single-state cost = {per[10] / 10 / per[1]:.2f}")


def main() -> None:
    import sys

    if "--profile" in sys.argv:
        profile_calls()
        return
    act = make_act_fn()
    t0 = time.perf_counter()
    evaluate_policy(act, TASK, episodes=EPISODES, seed=0, max_steps=MAX_STEPS)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate_sequential(act, TASK, EPISODES, 0, MAX_STEPS)
    t_seq = time.perf_counter() - t0
    print(f"torch {torch.__version__}, threads {THREADS}, {EPISODES} episodes x {MAX_STEPS} steps of {TASK}")
    print(f"vectorized {t_vec:.1f} s, sequential {t_seq:.1f} s, ratio {t_vec / t_seq:.3f} "
          f"(speed-up {t_seq / t_vec:.1f}x)")


if __name__ == "__main__":
    main()
