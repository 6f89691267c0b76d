"""Actions per second at evaluation for each policy with its library defaults, guided by an IQL critic: what a
one-step actor (SRPO, DTQL) saves against candidate chains (IDQL, Diffusion-QL) and energy-guided sampling (QGPO).

    python lab/benchmarks/bench_act.py                              # hopper shapes (obs 15, act 3), 10 states a call
    python lab/benchmarks/bench_act.py --policies srpo,dtql --envs 50

One torch thread. Each call acts for ``envs`` states at once (a vectorized evaluation's step); actions/s is
``envs`` times the calls per second. Untrained weights: acting costs the same whatever they are. The load average
is printed beside each row: on a shared machine it matters.
"""
from __future__ import annotations

import argparse
import os
import time

import modzoo  # noqa: F401  (sets OMP_WAIT_POLICY before torch runs)

# isort: split
import torch

from modzoo.run.halves import default_config, make_guidance, make_policy


def describe(name: str, cfg: dict) -> str:
    """What one action costs, in the policy's own terms."""
    if name == "srpo":
        return "1 actor pass"
    if name == "dtql":
        return f"{cfg['candidates']} one-step samples + Q"
    chain = f"{cfg['T']}-step {'ODE solver' if cfg['schedule'] == 'vp_sde' else 'chain'}"
    guided = " with energy gradients" if name == "qgpo" else ""
    return f"{cfg['candidates']} x {chain}{guided}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--obs", type=int, default=15)
    ap.add_argument("--act", type=int, default=3)
    ap.add_argument("--task", default="bullet-hopper-medium-v0")
    ap.add_argument("--policies", default="idql,dql,qgpo,srpo,dtql")
    ap.add_argument("--envs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=5.0, help="time each policy for at least this long")
    a = ap.parse_args()
    torch.set_num_threads(1)
    guidance = make_guidance("idql", a.obs, a.act, a.task)
    obs = torch.randn(a.envs, a.obs)
    print(f"{'policy':8s} {'actions/s':>10s}  cost of one action")
    for name in a.policies.split(","):
        policy = make_policy(name, a.obs, a.act, a.task)
        policy.act(obs, guidance)  # warm-up
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.seconds:
            policy.act(obs, guidance)
            calls += 1
        rate = a.envs * calls / (time.perf_counter() - t0)
        cfg = default_config("policy", name, a.task)
        print(f"{name:8s} {rate:10.1f}  {describe(name, cfg)} (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
