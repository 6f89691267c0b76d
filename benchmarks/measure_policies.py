"""Measure behaviour policies: mean episode return of a robot's expert/medium policy under Gaussian action
noise, as used to pick ``modzoo.collect.MEDIUM_SIGMA`` (figures in docs/datasets.md).

    python benchmarks/measure_policies.py hopper --sigmas 0,0.1,0.25,0.3,0.35 --episodes 20
    python benchmarks/measure_policies.py halfcheetah --which medium --sigmas 0,0.1 --episodes 10

Episodes use seeds 0..episodes-1; noise is added after the policy's output is clipped to [-1, 1] and the
result clipped again, exactly as ``modzoo data collect`` does.
"""
from __future__ import annotations

import argparse
import time

from modzoo.behaviour import rollout_returns
from modzoo.collect import behaviour_policy
from modzoo.scores import normalized_score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("robot")
    ap.add_argument("--which", default="expert", choices=["expert", "medium"])
    ap.add_argument("--sigmas", default="0")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--behaviour-dir", default=None)
    a = ap.parse_args()
    pol, desc = behaviour_policy(a.robot, a.which, a.behaviour_dir)
    print(f"{a.robot} {a.which}: {desc}")
    for s in (float(x) for x in a.sigmas.split(",")):
        t = time.time()
        r = rollout_returns(pol, a.robot, a.episodes, seed=0, noise=s)
        print(f"sigma {s:<5} return {r.mean():8.1f} ± {r.std():6.1f}  normalized {normalized_score(a.robot, r.mean()):6.1f}"
              f"  ({a.episodes} episodes, {time.time() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
