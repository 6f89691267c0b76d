"""Measure behaviour policies: mean episode return of a robot's expert/medium policy under Gaussian action
noise, as used to pick ``modzoo.bullet.collect.MEDIUM_SIGMA`` (figures in docs/datasets.md).

    python lab/benchmarks/measure_policies.py hopper --sigmas 0,0.1,0.25,0.3,0.35 --episodes 20
    python lab/benchmarks/measure_policies.py halfcheetah --which medium --sigmas 0,0.1 --episodes 10
    python lab/benchmarks/measure_policies.py walker2d --gait runs/behaviour/walker2d \\
        --steps 90000,140000,150000,170000,200000 --episodes 4

Episodes use seeds 0..episodes-1; noise is added after the policy's output is clipped to [-1, 1] and the
result clipped again, exactly as ``modzoo data collect`` does.
"""
from __future__ import annotations

import argparse
import time

from modzoo.bullet.collect import behaviour_policy
from modzoo.bullet.scores import normalized_score
from modzoo_lab.behaviour import rollout_returns


def gait(robot: str, run_dir: str, steps: list[int], episodes: int) -> None:
    """Per SAC snapshot and episode (seeds 20000+, as the export re-evaluates): return, length, and how far the
    torso moved forward. Tells a walking policy from one that stands still for the alive bonus."""
    from pathlib import Path

    from modzoo.bullet.experts import TorchActorPolicy
    from modzoo_lab.behaviour import rollout

    for step in steps:
        ev = rollout(TorchActorPolicy(Path(run_dir) / "snapshots" / f"step_{step}.pt"), robot, episodes, seed=20_000)
        rows = [f"return {r:.0f}, {n} steps, {x:.1f} m" for r, n, x in zip(ev.returns, ev.lengths, ev.forward_m)]
        print(f"step {step}: " + "; ".join(rows), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("robot")
    ap.add_argument("--which", default="expert", choices=["expert", "medium"])
    ap.add_argument("--sigmas", default="0")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--behaviour-dir", default=None)
    ap.add_argument("--gait", metavar="RUN_DIR", help="report return, length and forward distance of the snapshots "
                                                      "--steps of a train-behaviour run instead")
    ap.add_argument("--steps", default="", help="snapshot steps for --gait, e.g. 90000,170000")
    a = ap.parse_args()
    if a.gait:
        gait(a.robot, a.gait, [int(x) for x in a.steps.split(",") if x], a.episodes)
        return
    pol, desc = behaviour_policy(a.robot, a.which, a.behaviour_dir)
    print(f"{a.robot} {a.which}: {desc}")
    for s in (float(x) for x in a.sigmas.split(",")):
        t = time.time()
        r = rollout_returns(pol, a.robot, a.episodes, seed=0, noise=s)
        print(f"sigma {s:<5} return {r.mean():8.1f} ± {r.std():6.1f}  "
              f"normalized {normalized_score(a.robot, r.mean()):6.1f}"
              f"  ({a.episodes} episodes, {time.time() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
