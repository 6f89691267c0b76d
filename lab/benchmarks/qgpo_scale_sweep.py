"""Evaluate one trained QGPO policy at several guidance scales s, as the authors do (their train_critic.py
evaluates every s in [0, 1, 2, 3, 5, 8, 10] and fixes none); s = 0 samples the behaviour model alone.

    python lab/benchmarks/qgpo_scale_sweep.py runs/.../qgpo-gf-iql/seed0/policy.pt --scales 0,1,3,5 --episodes 10

The guidance beside the policy (its run dir's guidance.pt) is loaded too, though QGPO does not rank with it.
"""
from __future__ import annotations

import argparse

import modzoo  # noqa: F401  (sets OMP_WAIT_POLICY before torch runs)

# isort: split
import torch

from modzoo import ModzooError
from modzoo.run.evaluation import evaluate, load_policy_and_guidance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policy", help="a qgpo policy.pt")
    ap.add_argument("--scales", default="0,1,3,5")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    try:
        policy, guidance = load_policy_and_guidance(a.policy, None, "cpu")
    except ModzooError as e:
        raise SystemExit(f"error: {e}") from None
    if policy.algorithm != "qgpo":
        raise SystemExit(f"error: {a.policy} holds a {policy.algorithm} policy, not qgpo")
    trained = policy.cfg["guidance_scale"]
    for s in (float(x) for x in a.scales.split(",")):
        policy.cfg["guidance_scale"] = s
        ev = evaluate(policy, guidance, episodes=a.episodes, seed=a.seed)
        mark = " (its config's)" if s == trained else ""
        print(f"guidance scale {s:g}{mark}: normalized {ev.normalized_mean:.1f} +- {ev.normalized_std:.1f} over "
              f"{len(ev.returns)} episodes", flush=True)


if __name__ == "__main__":
    main()
