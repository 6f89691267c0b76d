"""Training speed and acting latency of the flow policies (fql, ifql) beside Diffusion-QL (dql), side by side.

    OMP_NUM_THREADS=1 python lab/benchmarks/bench_flow.py                  # hopper shapes, 5 rounds
    OMP_NUM_THREADS=1 python lab/benchmarks/bench_flow.py --rounds 3 --algos fql,dql

Each algorithm is its own guidance and policy at the YAML defaults (fql: 4x512 flow, one-step policy and twin
critic; ifql: 4x512 flow, V and twin critic; dql: 3x256 Mish denoiser T=5 and twin critic). A training step is
what ``modzoo.train``'s joint loop does: the guidance's update on the batch, then the policy's (the dql critic
bootstraps from its EMA actor, fql's from the one-step policy). Acting is ``policy.act(obs, guidance)`` for ONE
state under inference mode, as an evaluation episode calls it: fql one actor pass; ifql 32 candidates x 10 Euler
steps + Q; dql 50 candidates x 5 denoising steps + Q. One torch thread; algorithms take turns within each round
and the median over rounds is reported, wall and process-CPU time both (CPU time leaves out waiting for a core on
a shared machine). Untrained weights: a step costs the same whatever they are. Imports only ``modzoo``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time

import torch

import modzoo  # sets OMP_WAIT_POLICY before torch runs
from modzoo.run.halves import make_guidance, make_policy

OBS, ACT = 15, 3  # bullet-hopper


def ensure_registered(names: list[str]) -> None:
    """The flow plugins come from entry points once installed; register them in-process otherwise."""
    reg = modzoo.load_registry()
    for name in names:
        if name not in reg.policies:
            modzoo.register_plugin(importlib.import_module(f"modzoo.plugins.{name}"), name=name)


def batch(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"observations": torch.randn(n, OBS, generator=g), "actions": torch.rand(n, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(n, generator=g), "next_observations": torch.randn(n, OBS, generator=g),
            "terminals": torch.zeros(n), "next_actions": torch.rand(n, ACT, generator=g) * 2 - 1}


def timed(fn, n: int) -> tuple[float, float]:
    """(wall, cpu) seconds per call of ``fn`` over ``n`` calls."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w) / n, (time.process_time() - c) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", default="fql,ifql,dql")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-seconds", type=float, default=3.0, help="training time per algorithm per round")
    ap.add_argument("--act-calls", type=int, default=50, help="one-state act calls per algorithm per round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    algos = args.algos.split(",")
    ensure_registered([a for a in algos if a in ("fql", "ifql", "fbc")])
    g = torch.Generator().manual_seed(0)
    halves, steps_per_round = {}, {}
    for a in algos:
        torch.manual_seed(0)
        gd, pol = make_guidance(a, OBS, ACT), make_policy(a, OBS, ACT)
        gbs, pbs = int(gd.cfg["batch_size"]), int(pol.cfg["batch_size"])
        b = batch(max(gbs, pbs), g)
        gb, pb = {k: v[:gbs] for k, v in b.items()}, {k: v[:pbs] for k, v in b.items()}
        step = lambda gd=gd, pol=pol, gb=gb, pb=pb: (gd.update(gb, pol if gd.requires_policy else None),  # noqa: E731
                                                     pol.update(pb, gd))
        for _ in range(3):  # warm-up (allocator, first-call costs)
            step()
        wall, _ = timed(step, 3)
        steps_per_round[a] = max(3, round(args.train_seconds / wall))
        obs = torch.randn(1, OBS, generator=g)
        act = lambda gd=gd, pol=pol, obs=obs: pol.act(obs, gd).numpy()  # noqa: E731
        act()
        halves[a] = (step, act)
    res = {a: {"train": [], "train_cpu": [], "act": [], "act_cpu": []} for a in algos}
    for r in range(args.rounds):
        order = algos if r % 2 == 0 else algos[::-1]
        for a in order:
            step, act = halves[a]
            w, c = timed(step, steps_per_round[a])
            res[a]["train"].append(1 / w)
            res[a]["train_cpu"].append(1 / c)
            with torch.inference_mode():
                w, c = timed(act, args.act_calls)
            res[a]["act"].append(w * 1e3)
            res[a]["act_cpu"].append(c * 1e3)
    med = {a: {k: statistics.median(v) for k, v in res[a].items()} for a in algos}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| algorithm | train steps/s (wall) | train steps/s (CPU) | act, one state, ms (wall) | act ms (CPU) |")
    print("|---|---|---|---|---|")
    for a in algos:
        m = med[a]
        print(f"| {a} | {m['train']:.1f} | {m['train_cpu']:.1f} | {m['act']:.2f} | {m['act_cpu']:.2f} |")
    if "fql" in med:
        for a in algos:
            if a != "fql":
                print(f"acting: {a} / fql = {med[a]['act_cpu'] / med['fql']['act_cpu']:.0f}x (CPU time)")


if __name__ == "__main__":
    main()
