"""Samplers at inference: one policy trained with T = 100 steps, acting with fewer (docs/performance.md).

Trains EDP (T = 100, its own 50 candidates ranked by softmax over Q) jointly with the IQL critic on ``--task``
(policy-independent: Diffusion-QL's critic would run the 100-step chain for every TD target), once, into
``--out`` (reused when it is there), then scores the same checkpoint with each sampler at each number of grid
points and times ``act`` on a batch of dataset states:

    python lab/benchmarks/bench_samplers.py --task bullet-hopper-medium-v0 --steps 10000 --episodes 5 \\
        --json lab/experiments/results/bench-samplers/hopper-edp.json

The trained chain (``posterior`` on all 100 steps) is the reference row; ``posterior`` on fewer steps is DDIM with
eta = 1 (the posterior step on the sub-grid). Scores share the evaluation seeds across rows.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import modzoo
from modzoo.bullet.data import load_dataset
from modzoo.run.evaluation import load_policy_and_guidance

ROWS = [("posterior", 100), ("posterior", 20), ("posterior", 10), ("posterior", 5),
        ("ddim", 100), ("ddim", 20), ("ddim", 10), ("ddim", 5),
        ("dpm_solver++", 100), ("dpm_solver++", 20), ("dpm_solver++", 10), ("dpm_solver++", 5)]


def actions_per_second(policy: modzoo.DiffusionPolicy, guidance: modzoo.GuidanceModule, obs: torch.Tensor,
                       reps: int) -> float:
    policy.act(obs, guidance)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        policy.act(obs, guidance)
    return reps * obs.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="bullet-hopper-medium-v0")
    ap.add_argument("--steps", type=int, default=5000, help="training steps (joint)")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--states", type=int, default=64, help="batch of states for the actions/s timing")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-samplers/edp")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    if not (out / "result.json").exists():
        cfg = modzoo.run_config("idql", "edp", a.task, schedule="joint", policy_steps=a.steps, eval_episodes=0,
                                device="cpu", threads=1, out=str(out), seed=0)
        modzoo.train(cfg, progress=False)
    policy, guidance = load_policy_and_guidance(out / "policy.pt", out / "guidance.pt", "cpu", task=a.task)
    obs = torch.as_tensor(load_dataset(a.task).observations[: a.states], dtype=torch.float32)
    rows = []
    for sampler, k in ROWS:
        policy.cfg.update(act_sampler=sampler, sample_steps=k, ddim_eta=1.0 if sampler == "posterior" else 0.0)
        aps = actions_per_second(policy, guidance, obs, a.reps)
        ev = modzoo.evaluate(policy, guidance, a.task, episodes=a.episodes, seed=0)
        rows.append({"sampler": sampler, "sample_steps": k, "normalized_mean": ev.normalized_mean,
                     "normalized_std": ev.normalized_std, "actions_per_s": aps})
        print(f"{sampler:>13} {k:>4} steps: normalized {ev.normalized_mean:6.1f} +- {ev.normalized_std:5.1f}, "
              f"{aps:8.1f} actions/s ({policy.cfg['candidates']} candidates each)", flush=True)
    res = {"task": a.task, "train_steps": a.steps, "episodes": a.episodes, "states": a.states,
           "candidates": policy.cfg["candidates"], "T": policy.cfg["T"], "torch": torch.__version__, "rows": rows}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
