"""The FLOP ceiling of a DQL training step: how many FLOPs one step does, how fast this machine multiplies
matrices, and the fraction of that rate the step reaches.

    python lab/benchmarks/ceiling.py                                  # modzoo's joint DQL step, 1 thread
    python lab/benchmarks/ceiling.py --reference-dir /work/ref/dql    # also count the reference's step
    python lab/benchmarks/ceiling.py --profile                        # only: self CPU time per op over 20 steps

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` while one step runs (every mm/addmm/bmm/
baddbmm of the forward and backward passes as executed, 2 FLOPs per multiply-add; elementwise ops are not
counted, as usual). The matmul rate is measured on a large fp32 matmul (2048^3) and on 256^3 (the step's own
hidden-layer shape, batch 256 x 256 x 256), in blocks that alternate with blocks of training steps, with the
same threads; both wall and process-CPU time are reported (on a loaded machine the CPU time is the one that
describes the code rather than the neighbours).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import BATCH, case, machine, median, set_threads  # noqa: E402


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of one call of ``fn`` and their split by aten op."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops(), {str(k): int(v) for k, v in fc.get_flop_counts()["Global"].items()}


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call over ``n`` calls."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def reference_step(ref_dir: Path) -> Callable[[], Any]:
    """One ``Diffusion_QL.train`` iteration of the reference, built as bench_reference builds it."""
    from bench_reference import build_reference, import_reference
    from speed_common import synthetic_dataset

    Diffusion_QL, Data_Sampler = import_reference(ref_dir.resolve())
    ds = synthetic_dataset()
    sampler = Data_Sampler({"observations": ds.observations, "actions": ds.actions,
                            "next_observations": ds.next_observations, "rewards": ds.rewards,
                            "terminals": ds.terminals}, "cpu", reward_tune="no")
    agent = build_reference(Diffusion_QL, lr_decay=False)
    return lambda: agent.train(sampler, iterations=1, batch_size=BATCH)


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_step(step: Callable[[], Any], n: int = 20, rows: int = 12) -> None:
    """Where one step's time goes: self CPU time per op (torch.profiler), matmuls against the rest."""
    from torch.profiler import profile

    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(n):
            step()
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) / n / 1e3
    mat = sum(e.self_cpu_time_total for e in ev if e.key in MATMULS) / n / 1e3
    print(f"profiled: {total:.1f} ms self CPU per step, matmuls {mat:.1f} ms, the rest {total - mat:.1f} ms")
    for e in ev[:rows]:
        print(f"  {e.key[:40]:40s} {e.self_cpu_time_total / n / 1e3:7.2f} ms per step  {e.count // n:5d} calls")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    ap.add_argument("--reference-dir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="print a per-op profile of the step and stop")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    step = case("joint_dql")
    if a.profile:
        profile_step(step)
        return {}
    flops, split = count_flops(step)
    out: dict[str, Any] = {**machine(), "step_flops": flops, "step_flops_by_op": split}
    print(f"torch {out['torch']}, {out['threads']} thread(s), {out['cpu']} x{out['cores']}, load {out['loadavg']}")
    print(f"modzoo joint DQL step (hopper shapes, batch {BATCH}, T=5): {flops / 1e9:.3f} GFLOP "
          f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in split.items())})")
    halves = {k: count_flops(case(k))[0] for k in ("guidance_dql", "policy_dql")}
    out["step_flops_by_half"] = halves
    print(f"  of which DQLGuidance.update (target chain + target Q + critic fit) {halves['guidance_dql'] / 1e9:.3f}, "
          f"DQLPolicy.update (BC + chain + Q term) {halves['policy_dql'] / 1e9:.3f} GFLOP")
    if a.reference_dir:
        ref_flops, ref_split = count_flops(reference_step(a.reference_dir))
        out.update(ref_step_flops=ref_flops, ref_step_flops_by_op=ref_split)
        print(f"reference Diffusion_QL.train iteration: {ref_flops / 1e9:.3f} GFLOP "
              f"({', '.join(f'{k} {v / 1e9:.3f}' for k, v in ref_split.items())})")

    big = (torch.randn(2048, 2048), torch.randn(2048, 2048))
    small = (torch.randn(BATCH, 256), torch.randn(256, 256))
    # bf16 is not what modzoo trains in: it is timed to show what the one lever left on the matmuls would give
    small16 = tuple(x.bfloat16() for x in small)
    fns = {"mm2048": (lambda: big[0] @ big[1], 2, 2 * 2048**3),
           "mm256": (lambda: small[0] @ small[1], 200, 2 * BATCH * 256 * 256),
           "mm256_bf16": (lambda: small16[0] @ small16[1], 200, 2 * BATCH * 256 * 256),
           "step": (step, a.steps, flops)}
    for f, n, _ in fns.values():
        f()
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for r in range(a.rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            f, n, _ = fns[k]
            res[k].append(timed(f, n))
    rates = {}
    for k, (_, _, fl) in fns.items():
        wall, cpu = median([x[0] for x in res[k]]), median([x[1] for x in res[k]])
        rates[k] = {"wall_s": wall, "cpu_s": cpu, "gflops_wall": fl / wall / 1e9, "gflops_cpu": fl / cpu / 1e9}
    out["rates"] = rates
    out["loadavg_end"] = os.getloadavg()
    s, m, m2 = rates["step"], rates["mm2048"], rates["mm256"]
    out["fraction_of_mm2048"] = {"wall": s["gflops_wall"] / m["gflops_wall"], "cpu": s["gflops_cpu"] / m["gflops_cpu"]}
    out["fraction_of_mm256"] = {"wall": s["gflops_wall"] / m2["gflops_wall"],
                                "cpu": s["gflops_cpu"] / m2["gflops_cpu"]}
    print(f"fp32 matmul 2048^3: {m['gflops_wall']:.1f} GFLOP/s wall, {m['gflops_cpu']:.1f} GFLOP/s CPU time")
    print(f"fp32 matmul {BATCH}x256x256: {m2['gflops_wall']:.1f} GFLOP/s wall, {m2['gflops_cpu']:.1f} GFLOP/s CPU")
    m3 = rates["mm256_bf16"]
    print(f"bf16 matmul {BATCH}x256x256: {m3['gflops_wall']:.1f} GFLOP/s wall, {m3['gflops_cpu']:.1f} GFLOP/s CPU "
          f"(the step's matmuls at this rate: {flops / m3['gflops_cpu'] / 1e6:.1f} ms CPU)")
    print(f"DQL step: {s['wall_s'] * 1e3:.1f} ms wall, {s['cpu_s'] * 1e3:.1f} ms CPU -> {s['gflops_wall']:.1f} "
          f"GFLOP/s wall, {s['gflops_cpu']:.1f} GFLOP/s CPU")
    print(f"fraction of the 2048^3 matmul rate: {out['fraction_of_mm2048']['wall']:.2f} (wall), "
          f"{out['fraction_of_mm2048']['cpu']:.2f} (CPU); of the 256^3 rate: {out['fraction_of_mm256']['wall']:.2f}"
          f" (wall), {out['fraction_of_mm256']['cpu']:.2f} (CPU); the step's matmuls alone at the 256^3 rate "
          f"would take {flops / m2['gflops_cpu'] / 1e6:.1f} ms CPU; load {out['loadavg_end'][0]:.2f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
