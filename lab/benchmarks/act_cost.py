"""What acting costs per episode-step under the gfdt-authors preset: the figure a grid's evaluation schedule is
planned from (lab/experiments/gfdt-50k.yaml).

    python lab/benchmarks/act_cost.py                      # halfcheetah shapes (obs 26, act 6), 10 and 50 envs
    python lab/benchmarks/act_cost.py --obs 15 --act 3 --candidates 64

One torch thread; a batch of ``envs`` states, each with the policy's candidates, selected by a critic of the
preset's shape; the time per call divided by ``envs`` is the cost of one step of one episode in a vectorized
evaluation. Prints the load average beside each figure: on a shared machine it matters.
"""
from __future__ import annotations

import argparse
import os
import time

import modzoo  # noqa: F401  (sets OMP_WAIT_POLICY before torch runs)

# isort: split
import torch

from modzoo.run.config import apply_preset, load_preset
from modzoo.run.halves import default_config, make_guidance, make_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--obs", type=int, default=26)
    ap.add_argument("--act", type=int, default=6)
    ap.add_argument("--task", default="bullet-halfcheetah-medium-v0")
    ap.add_argument("--envs", default="10,50")
    ap.add_argument("--candidates", type=int, default=None, help="override the preset's (IDQL 256, DQL 50)")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    preset = load_preset("gfdt-authors")
    for alg in ("idql", "dql"):
        pcfg = apply_preset(default_config("policy", alg, a.task), preset, "policy", alg, a.task)
        gcfg = apply_preset(default_config("guidance", alg, a.task), preset, "guidance", alg, a.task)
        drop = ("name", "task_overrides")
        p = make_policy(alg, a.obs, a.act, a.task, **{k: v for k, v in pcfg.items() if k not in drop})
        g = make_guidance(alg, a.obs, a.act, a.task, **{k: v for k, v in gcfg.items() if k not in drop})
        n = a.candidates or int(pcfg["candidates"])
        for envs in (int(e) for e in a.envs.split(",")):
            obs = torch.randn(envs, a.obs)
            p.act(obs, g, n=n)
            t = time.perf_counter()
            for _ in range(a.repeats):
                p.act(obs, g, n=n)
            dt = (time.perf_counter() - t) / a.repeats
            print(f"{alg} {envs} envs x {n} candidates: {dt * 1000:.0f} ms per env step, "
                  f"{dt * 1000 / envs:.1f} ms per episode-step (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
