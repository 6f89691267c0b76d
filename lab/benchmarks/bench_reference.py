"""Side by side with the reference Diffusion-QL code: training steps/s and actions/s, in one process, alternating.

The reference is the authors' public repository (github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL),
kept OUTSIDE this project (none of its code is committed here); point ``--reference-dir`` at a checkout:

    git --git-dir=<mirror> archive HEAD | tar -x -C /work/ref/dql
    python lab/benchmarks/bench_reference.py --reference-dir /work/ref/dql            # 1 thread (default)
    python lab/benchmarks/bench_reference.py --reference-dir /work/ref/dql --threads 2

What is timed, on the same synthetic hopper-shaped data (obs 15, act 3, batch 256, T=5, vp):

- reference training: ``Diffusion_QL.train(sampler, iterations=k, batch_size=256)`` with main.py's settings for
  hopper-medium (discount 0.99, tau 0.005, eta 1, ema 0.995 every 5 from step 1000, grad_norm 9, lr 3e-4,
  ``--lr_decay`` as the flag says), fed by the reference's own ``utils.data_sampler.Data_Sampler``;
- modzoo training: k times the body of ``modzoo.train``'s joint loop: ``buffer.sample(256)``,
  ``DQLGuidance.update(batch, policy)``, ``DQLPolicy.update(batch, guidance)``;
- reference selection: ``Diffusion_QL.sample_action(state)`` (one state, 50 candidates, softmax over min Q);
- modzoo selection: ``modzoo.evaluate``'s act function: ``policy.act(obs, guidance)`` under inference mode,
  numpy in and out, 50 candidates, softmax, live actor (dql.yaml's ``act_model: live``).

Both agents' step counters start at 1000 so that both run in the EMA-updating regime the whole time. The
variants take turns in short blocks (order reversed every round) and the medians over rounds are compared;
the load average is printed with every round, because this is a shared machine. Ratios are given on wall time
and on process CPU time (``time.process_time``; with one thread it leaves out time spent waiting for a core).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import (  # noqa: E402
    ACT_DIM,
    BATCH,
    OBS_DIM,
    T,
    build_halves,
    joint_step,
    machine,
    median,
    set_threads,
    synthetic_dataset,
)


def import_reference(ref_dir: Path) -> tuple[Any, Any]:
    """``agents.ql_diffusion.Diffusion_QL`` and ``utils.data_sampler.Data_Sampler`` from the reference checkout.

    Its ``utils.logger`` imports packages a training run needs but the agent does not (tabulate,
    python-dateutil): if one of those is missing here, only that import is replaced by an empty module; no code
    of the reference itself is changed.
    """
    if not (ref_dir / "agents" / "ql_diffusion.py").exists():
        raise SystemExit(f"{ref_dir} is not a Diffusion-Policies-for-Offline-RL checkout (no agents/ql_diffusion.py)")
    sys.path.insert(0, str(ref_dir))
    for _ in range(5):
        try:
            ql = importlib.import_module("agents.ql_diffusion")
            ds = importlib.import_module("utils.data_sampler")
            return ql.Diffusion_QL, ds.Data_Sampler
        except ModuleNotFoundError as e:  # a logging-only dependency: stub that import alone
            if e.name is None or e.name.split(".")[0] in {"agents", "utils"}:
                raise
            print(f"note: stubbing missing module {e.name!r} (imported by the reference's logger only)")
            stub = types.ModuleType(e.name)
            stub.tabulate = lambda *a, **k: ""  # type: ignore[attr-defined]
            sys.modules[e.name] = stub
    raise SystemExit("could not import the reference agent")


def build_reference(Diffusion_QL: Any, lr_decay: bool) -> Any:
    """The agent main.py builds for hopper-medium-v2 (its hyperparameter table: lr 3e-4, eta 1, gn 9)."""
    agent = Diffusion_QL(state_dim=OBS_DIM, action_dim=ACT_DIM, max_action=1.0, device="cpu", discount=0.99,
                         tau=0.005, max_q_backup=False, beta_schedule="vp", n_timesteps=T, eta=1.0, lr=3e-4,
                         lr_decay=lr_decay, lr_maxt=2000, grad_norm=9.0)
    agent.step = 1000  # past step_start_ema: the EMA update runs every 5 steps, as in steady state
    return agent


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-dir", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--train-iters", type=int, default=10, help="training steps per timed block")
    ap.add_argument("--act-iters", type=int, default=50, help="action selections per timed block")
    ap.add_argument("--lr-decay", action="store_true", help="the reference's --lr_decay (cosine per epoch)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)

    set_threads(a.threads)
    Diffusion_QL, Data_Sampler = import_reference(a.reference_dir.resolve())
    ds = synthetic_dataset()
    sampler = Data_Sampler({"observations": ds.observations, "actions": ds.actions,
                            "next_observations": ds.next_observations, "rewards": ds.rewards,
                            "terminals": ds.terminals}, "cpu", reward_tune="no")
    torch.manual_seed(0)
    np.random.seed(0)
    ref = build_reference(Diffusion_QL, a.lr_decay)
    guidance, policy, buffer = build_halves("dql", "dql", ds)
    policy._steps.fill_(1000)  # the same EMA regime as the reference
    state = ds.observations[0]

    def ref_train() -> None:
        ref.train(sampler, iterations=a.train_iters, batch_size=BATCH)

    def mz_train() -> None:
        for _ in range(a.train_iters):
            joint_step(buffer, guidance, policy)

    def ref_act() -> None:
        for _ in range(a.act_iters):
            ref.sample_action(state)

    def mz_act() -> None:
        for _ in range(a.act_iters):
            with torch.inference_mode():
                policy.act(torch.as_tensor(state[None], dtype=torch.float32), guidance).cpu().numpy()

    info = machine()
    print(f"torch {info['torch']}, {info['threads']} thread(s), {info['cpu']} x{info['cores']}; "
          f"T={T}, batch {BATCH}, obs {OBS_DIM}, act {ACT_DIM}; load at start {info['loadavg']}")
    for f in (ref_train, mz_train, ref_act, mz_act):  # warm-up (allocator, first-call costs)
        f()
    res: dict[str, list[float]] = {"ref_train": [], "mz_train": [], "ref_act": [], "mz_act": []}
    cpu: dict[str, list[float]] = {k: [] for k in res}
    fns = {"ref_train": ref_train, "mz_train": mz_train, "ref_act": ref_act, "mz_act": mz_act}
    loads = []
    for r in range(a.rounds):
        order = ["ref_train", "mz_train", "ref_act", "mz_act"]
        if r % 2:
            order = ["mz_train", "ref_train", "mz_act", "ref_act"]
        for k in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            res[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
        n_t, n_a = a.train_iters, a.act_iters
        print(f"round {r}: train ref {n_t / res['ref_train'][-1]:6.2f} modzoo {n_t / res['mz_train'][-1]:6.2f} "
              f"steps/s | act ref {n_a / res['ref_act'][-1]:7.1f} modzoo {n_a / res['mz_act'][-1]:7.1f} /s "
              f"| load {loads[-1]:.2f}")
    rate = {k: (a.train_iters if "train" in k else a.act_iters) / median(v) for k, v in res.items()}
    ratio_t = median([r / m for r, m in zip(res["ref_train"], res["mz_train"])])
    ratio_a = median([r / m for r, m in zip(res["ref_act"], res["mz_act"])])
    cpu_t = median([r / m for r, m in zip(cpu["ref_train"], cpu["mz_train"])])
    cpu_a = median([r / m for r, m in zip(cpu["ref_act"], cpu["mz_act"])])
    per = {k: median(v) / (a.train_iters if "train" in k else a.act_iters) * 1e3 for k, v in cpu.items()}
    out = {**info, "rounds": a.rounds, "train_iters": a.train_iters, "act_iters": a.act_iters,
           "lr_decay": a.lr_decay, "load_per_round": loads,
           "ref_steps_per_s": rate["ref_train"], "modzoo_steps_per_s": rate["mz_train"],
           "ref_actions_per_s": rate["ref_act"], "modzoo_actions_per_s": rate["mz_act"],
           "train_ratio": ratio_t, "act_ratio": ratio_a, "train_ratio_cpu": cpu_t, "act_ratio_cpu": cpu_a,
           "cpu_ms_per_call": per}
    print(f"median: training ref {rate['ref_train']:.2f} steps/s, modzoo {rate['mz_train']:.2f} steps/s, "
          f"ratio {ratio_t:.2f}x (median of per-round ratios)")
    print(f"median: selection ref {rate['ref_act']:.1f} actions/s, modzoo {rate['mz_act']:.1f} actions/s, "
          f"ratio {ratio_a:.2f}x; load average {min(loads):.2f}-{max(loads):.2f}")
    print(f"CPU time per call: training ref {per['ref_train']:.1f} ms, modzoo {per['mz_train']:.1f} ms, ratio "
          f"{cpu_t:.2f}x; selection ref {per['ref_act']:.2f} ms, modzoo {per['mz_act']:.2f} ms, ratio {cpu_a:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
