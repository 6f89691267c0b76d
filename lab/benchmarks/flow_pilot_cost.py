"""What a training step and an evaluation episode cost for the arms of issue #38's hopper pilot, through `modzoo.train`.

    OMP_NUM_THREADS=1 python lab/benchmarks/flow_pilot_cost.py --dataset /tmp/h38p/hopper20k.hdf5
    OMP_NUM_THREADS=1 python lab/benchmarks/flow_pilot_cost.py --dataset D.hdf5 --steps 300 --arms fql-joint,ifql

Each arm trains a short run as the pilot's grid would (`modzoo.train`, plugin defaults, one torch thread, on CPU,
on a real hopper dataset: `modzoo data collect bullet-hopper-medium-v0 --transitions 20000 --out D.hdf5`), then
evaluates `--episodes` episodes in lockstep, as a grid's evaluation does. Printed per arm: each training phase's
seconds per step (CPU and wall, from `result.json`'s phase records) and the evaluation's cost per env step
(`policy.act` on the batch of live episodes plus the env steps), and per 1000-step episode (hopper's cap; an
untrained policy falls after a few dozen steps, so the per-step cost is what is measured and the episode is that
times 1000). Arms:

- fql-joint: `--guidance fql --policy fql --schedule joint` (the published algorithm);
- fql-gf-iql: `--guidance idql --policy fql --schedule guidance-first` (a guidance phase, then FQL's actor on the
  frozen IQL critic);
- ifql: `--guidance ifql --policy ifql --schedule joint`;
- idql-gf: `--guidance idql --policy idql --schedule guidance-first` (the arm that would train the IQL critic if
  the FQL arm reused it through `guidance_from`, as gfdt-50k's dql-gf-iql does).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import modzoo  # sets OMP_WAIT_POLICY before torch runs
from modzoo.run.evaluation import evaluate
from modzoo.run.training import run_config

TASK = "bullet-hopper-medium-v0"
ARMS = {
    "fql-joint": ("fql", "fql", "joint"),
    "fql-gf-iql": ("idql", "fql", "guidance-first"),
    "ifql": ("ifql", "ifql", "joint"),
    "idql-gf": ("idql", "idql", "guidance-first"),
}


def measure(arm: str, dataset: str, steps: int, episodes: int, out: Path) -> dict:
    guidance, policy, schedule = ARMS[arm]
    cfg = run_config(guidance, policy, TASK, schedule=schedule, dataset=dataset, guidance_steps=steps,
                     policy_steps=steps, eval_every=0, final_eval=False, threads=1, device="cpu", seed=0,
                     out=str(out / arm), log_every=100)
    res = modzoo.train(cfg, progress=False)
    record = json.loads((out / arm / "result.json").read_text())
    phases = {p["phase"]: {"cpu_ms_per_step": 1e3 * p["cpu_s"] / p["steps"],
                           "wall_ms_per_step": 1e3 * p["wall_s"] / p["steps"]} for p in record["phases"]}
    pol, gd = res.policy, res.guidance
    act, calls = pol.act, []

    def timed_act(obs, guidance=None, n=None):  # the act calls alone, beside the whole evaluation
        c = time.process_time()
        a = act(obs, guidance, n=n)
        calls.append((time.process_time() - c, len(obs)))
        return a

    pol.act = timed_act
    w, c = time.perf_counter(), time.process_time()
    ev = evaluate(pol, gd, TASK, episodes, seed=0)
    eval_wall, eval_cpu = time.perf_counter() - w, time.process_time() - c
    env_steps = int(ev.lengths.sum())
    act_cpu = sum(t for t, _ in calls)
    return {"arm": arm, "guidance": guidance, "policy": policy, "schedule": schedule, "steps": steps,
            "phases": phases, "eval": {
                "episodes": episodes, "env_steps": env_steps, "lockstep_calls": len(calls),
                "cpu_s": eval_cpu, "wall_s": eval_wall, "act_cpu_s": act_cpu,
                "cpu_ms_per_env_step": 1e3 * eval_cpu / env_steps,
                "act_cpu_ms_per_env_step": 1e3 * act_cpu / env_steps,
                "cpu_s_per_1000_step_episode": eval_cpu / env_steps * 1000}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a hopper dataset (D4RL-format HDF5)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--steps", type=int, default=300, help="steps per phase")
    ap.add_argument("--episodes", type=int, default=10, help="episodes of the evaluation, in lockstep")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms.split(","):
            rows.append(measure(arm, args.dataset, args.steps, args.episodes, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print("| arm | phase | ms/step (CPU) | ms/step (wall) |")
    print("|---|---|---|---|")
    for r in rows:
        for ph, p in r["phases"].items():
            print(f"| {r['arm']} | {ph} | {p['cpu_ms_per_step']:.0f} | {p['wall_ms_per_step']:.0f} |")
    print("| arm | eval env steps | ms per env step (CPU, of which act) | s per 1000-step episode (CPU) |")
    print("|---|---|---|---|")
    for r in rows:
        e = r["eval"]
        print(f"| {r['arm']} | {e['env_steps']} | {e['cpu_ms_per_env_step']:.2f} ({e['act_cpu_ms_per_env_step']:.2f}) "
              f"| {e['cpu_s_per_1000_step_episode']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
