"""Shared pieces of the speed benchmarks (``bench_speed.py``, ``bench_reference.py``): hopper-shaped synthetic
data, the halves built exactly as ``modzoo.train`` builds them, the joint step ``modzoo.train`` runs, and an
alternating timer.

Why alternate: this is a shared 2-core machine, so its speed drifts by tens of percent within minutes. Two
variants timed in separate runs (or one after the other in long blocks) compare the load, not the code; timing
them in short blocks A, B, A, B ... in one process and taking the median over rounds cancels most of the drift.

Why one thread by default: with torch's default 2 intra-op threads on a loaded 2-core machine, a thread that
waits for a core spins and small-net steps get up to 50x slower. ``set_threads`` is called before anything
else; pass ``--threads 2`` (or ``BENCH_THREADS=2``) to measure threading itself.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

OBS_DIM, ACT_DIM, BATCH, T = 15, 3, 256, 5  # hopper shapes, the papers' batch and chain length
TASK = "bullet-hopper-medium-v0"  # only for the per-task config overrides (DQL's grad_norm 9 on hopper-medium)


def set_threads(n: int | None = None) -> int:
    """Intra-op threads for this process (``BENCH_THREADS``, default 1: see the module docstring)."""
    n = int(n if n is not None else os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def machine() -> dict[str, Any]:
    """What a figure was measured on: torch, threads, CPU model, core count, load average now."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "cores": os.cpu_count(), "loadavg": tuple(round(x, 2) for x in os.getloadavg())}


def synthetic_dataset(n: int = 100_000, seed: int = 0, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM
                      ) -> SimpleNamespace:
    """A hopper-shaped offline dataset (random values: only the cost is measured), with the attributes
    :class:`modzoo.run.buffer.ReplayBuffer` and the halves' ``prepare`` read, and the dict the reference
    ``Data_Sampler`` takes."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    nxt = np.concatenate([obs[1:], rng.standard_normal((1, obs_dim)).astype(np.float32)])
    ds = SimpleNamespace(
        name=TASK, path=None, fingerprint="synthetic", observations=obs, next_observations=nxt,
        actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        rewards=rng.standard_normal(n).astype(np.float32),
        terminals=(rng.random(n) < 0.001).astype(np.float32),
        obs_dim=obs_dim, act_dim=act_dim)
    ds.episode_returns = lambda: np.array([0.0, 1000.0])
    return ds


def build_halves(guidance: str, policy: str, dataset: Any, seed: int = 0, **policy_overrides: Any
                 ) -> tuple[Any, Any, Any]:
    """(guidance, policy, buffer) built as ``modzoo.train`` builds them for a joint run on ``TASK``."""
    from modzoo.run.buffer import ReplayBuffer
    from modzoo.run.halves import make_guidance, make_policy

    torch.manual_seed(seed)
    g = make_guidance(guidance, dataset.obs_dim, dataset.act_dim, task=TASK, seed=seed, lr_decay_steps=1_000_000)
    p = make_policy(policy, dataset.obs_dim, dataset.act_dim, task=TASK, seed=seed, lr_decay_steps=1_000_000,
                    **policy_overrides)
    g.fit_data(dataset)
    p.fit_data(dataset)
    return g, p, ReplayBuffer(dataset, "cpu", seed=seed)


def joint_step(buffer: Any, guidance: Any, policy: Any, batch_size: int = BATCH) -> None:
    """One step of ``modzoo.train``'s joint schedule (batch, guidance update with the policy, policy update)."""
    batch = buffer.sample(batch_size)
    guidance.update(batch, policy)
    policy.update(batch, guidance)


def _batch(buffer: Any, n: int = BATCH) -> dict[str, torch.Tensor]:
    return buffer.sample(n)


def case(name: str, dataset: Any | None = None) -> Callable[[], Any]:
    """A named benchmark case, built and warmed up: returns the function one timed call runs.

    Every case uses hopper shapes (obs 15, act 3), batch 256 and T=5, with the halves' default configs for
    ``TASK`` (so DQL's critic is 3x256 Mish twin Q, IDQL's 2x256 ReLU Q+V, etc.):

    - ``guidance_iql``: ``IQLGuidance.update(batch)`` (V expectile step, then the twin-Q TD step)
    - ``guidance_dql``: ``DQLGuidance.update(batch, policy)`` (TD target from one EMA-actor sample per row)
    - ``policy_idql``: ``IDQLPolicy.update(batch)`` (LN-ResNet diffusion BC)
    - ``policy_dql``: ``DQLPolicy.update(batch, guidance)`` (BC + the Q term through the whole chain)
    - ``joint_dql``: the body of ``modzoo.train``'s joint loop for DQL (sample, guidance, policy)
    - ``act_{alg}_{B}x{N}``: ``policy.act(obs, guidance, n=N)`` for B states under inference mode
    - ``sample_1M``: ``ReplayBuffer.sample(256)`` from a 1M-transition buffer (D4RL's medium size)

    Batches are drawn fresh each call (as in training) except in the update cases, which reuse a few
    pre-drawn batches so that the sampling cost is not counted twice.
    """
    ds = dataset if dataset is not None else synthetic_dataset()
    if name == "sample_1M":
        from modzoo.run.buffer import ReplayBuffer
        buf = ReplayBuffer(synthetic_dataset(1_000_000), "cpu", seed=0)
        return lambda: buf.sample(BATCH)
    if name.startswith("act_"):
        _, alg, shape = name.split("_")
        b, n = (int(v) for v in shape.split("x"))
        g, p, buf = build_halves(alg, alg, ds)
        p._steps.fill_(1000)
        obs = buf.sample(b)["observations"]

        def act() -> torch.Tensor:
            with torch.inference_mode():
                return p.act(obs, g, n=n)
        act()
        return act
    alg = {"guidance_iql": "idql", "policy_idql": "idql"}.get(name, "dql")
    g, p, buf = build_halves(alg, alg, ds)
    p._steps.fill_(1000)  # DQL's EMA runs every 5 steps from step 1000: time the steady state
    batches = [_batch(buf) for _ in range(8)]
    it = iter(range(10**12))

    def nxt() -> dict[str, torch.Tensor]:
        return batches[next(it) % len(batches)]
    fns: dict[str, Callable[[], Any]] = {
        "guidance_iql": lambda: g.update(nxt()),
        "guidance_dql": lambda: g.update(nxt(), p),
        "policy_idql": lambda: p.update(nxt()),
        "policy_dql": lambda: p.update(nxt(), g),
        "joint_dql": lambda: joint_step(buf, g, p),
    }
    if name not in fns:
        raise KeyError(f"unknown case {name!r}; known: {sorted(CASES)}")
    f = fns[name]
    f()
    return f


CASES = ("guidance_iql", "guidance_dql", "policy_idql", "policy_dql", "joint_dql",
         "act_dql_1x50", "act_dql_50x50", "act_dql_1x256", "act_dql_50x256",
         "act_idql_1x50", "act_idql_50x50", "act_idql_1x256", "act_idql_50x256", "sample_1M")


def alternate(fns: dict[str, Callable[[], Any]], rounds: int = 7, repeat: int = 10, warmup: int = 2
              ) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in blocks of ``repeat`` calls, the functions taking turns
    (their order reversed every other round, so neither always runs first). Returns the per-round times."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            f = fns[k]
            t0 = time.perf_counter()
            for _ in range(repeat):
                f()
            out[k].append((time.perf_counter() - t0) / repeat)
    return out


def cpu_alternate(fns: dict[str, tuple[Callable[[], Any], int]], rounds: int, warmup: int = 0
                  ) -> dict[str, list[float]]:
    """Like :func:`alternate`, in process CPU seconds per call, each function with its own block size
    (``{name: (fn, calls per block)}``): the steadier clock for one-thread micro-benchmarks on a loaded machine."""
    for f, _ in fns.values():
        for _ in range(warmup):
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            f, n = fns[k]
            c0 = time.process_time()
            for _ in range(n):
                f()
            out[k].append((time.process_time() - c0) / n)
    return out


def activation_calls(x: torch.Tensor, grad: torch.Tensor
                     ) -> tuple[Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[], None]],
                                Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[], None]]]:
    """``(fwd, fwd_bwd)``: for an activation ``act``, ``fwd(act)`` is a call of ``act(x)`` without grad and
    ``fwd_bwd(act)`` one forward and backward (with ``grad``) on a copy of ``x`` that requires grad."""
    xg = x.clone().requires_grad_(True)

    def fwd(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                act(x)
        return run

    def fwd_bwd(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            act(xg).backward(grad)
            xg.grad = None
        return run
    return fwd, fwd_bwd


def median(xs: list[float]) -> float:
    return statistics.median(xs)
