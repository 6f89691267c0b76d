"""K seeds in one process: one stacked step (``modzoo.run.stacked.StackedStepper``) vs K separate steps.

Both variants run the body of ``modzoo.train``'s loop for K seeds of one arm, hopper shapes, batch 256, T=5,
each seed with its own halves, data stream and noise; timed alternately in one process (speed_common.alternate).

    python lab/benchmarks/bench_stacked.py                      # DQL joint, K=5 (docs/performance.md)
    python lab/benchmarks/bench_stacked.py --arm idql --seeds 5 # IDQL joint: IQL critic + LN-ResNet actor
    python lab/benchmarks/bench_stacked.py --matmul             # one (5,256,256) bmm vs five 256x256 mm
    python lab/benchmarks/bench_stacked.py --profile            # where the time goes: matmul vs elementwise
    pytest lab/benchmarks/bench_stacked.py --benchmark-only -p no:cacheprovider -o addopts=""
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
import speed_common as sc  # noqa: E402

sc.set_threads()

import torch  # noqa: E402


def make_steps(arm: str = "dql", k: int = 5, device: str = "cpu") -> dict[str, Callable[[], Any]]:
    """``{"separate": ..., "stacked": ...}``: each call takes one joint step for all k seeds."""
    from modzoo.run.stacked import StackedStepper
    from modzoo.run.training import Stepper

    ds = sc.synthetic_dataset()
    runs = []
    for seed in range(k):
        g, p, buf = sc.build_halves(arm, arm, ds, seed=seed)
        g.to(device), p.to(device)
        p._steps.fill_(1000)  # DQL's EMA runs every 5 steps from step 1000: time the steady state
        runs.append(SimpleNamespace(guidance=g, policy=p, buffer=buf))
    separate = Stepper(runs)  # type: ignore[arg-type]
    # the stacked twins are built from copies, so the two variants never share a tensor
    twins_of = [SimpleNamespace(guidance=_copy(r.guidance), policy=_copy(r.policy), buffer=r.buffer) for r in runs]
    stacked = StackedStepper(twins_of)  # type: ignore[arg-type]
    pbs = int(runs[0].policy.cfg["batch_size"])
    gbs = int(runs[0].guidance.cfg.get("batch_size", pbs))
    n = max(pbs, gbs)

    def step(stepper: Any) -> Callable[[], None]:
        def run() -> None:
            batches = [r.buffer.sample(n) for r in runs]
            stepper.step("joint", [{k_: v[:gbs] for k_, v in b.items()} for b in batches])
            stepper.step("policy", [{k_: v[:pbs] for k_, v in b.items()} for b in batches])
            if device == "cuda":
                torch.cuda.synchronize()
        return run
    return {"separate": step(separate), "stacked": step(stacked)}


def _copy(half: Any) -> Any:
    import copy
    h = copy.deepcopy(half)
    h.generator = None  # a deep-copied generator would share nothing anyway; a fresh one per seed
    return h


def matmul(k: int = 5, d: int = 256, n: int = 200) -> dict[str, float]:
    """Microseconds for k seeds' d x d layer at batch d: one ``bmm`` against k ``mm``."""
    x, w = torch.randn(k, d, d), torch.randn(k, d, d)
    fns = {"bmm": lambda: torch.bmm(x, w), "mm_each": lambda: [torch.mm(x[i], w[i]) for i in range(k)]}
    t = sc.alternate(fns, rounds=5, repeat=n)
    return {name: round(sc.median(v) * 1e6, 1) for name, v in t.items()}


def profile(arm: str = "dql", k: int = 5) -> None:
    """Self CPU time of matmuls against everything else, for 3 joint steps of each variant."""
    from torch.profiler import profile as prof
    fns = make_steps(arm, k)
    for name, f in fns.items():
        f()
        with prof() as p:
            for _ in range(3):
                f()
        ev = p.key_averages()
        mat = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::bmm", "aten::addmm",
                                                                 "aten::baddbmm"))
        total = sum(e.self_cpu_time_total for e in ev)
        print(f"{name}: {total / 3e3:.1f} ms per step, matmuls {mat / 3e3:.1f} ms, "
              f"the rest {(total - mat) / 3e3:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", default="dql", choices=["dql", "idql"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--matmul", action="store_true")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    if a.matmul:
        print(json.dumps({"machine": sc.machine(), "us": matmul(a.seeds)}, indent=1))
        return
    if a.profile:
        profile(a.arm, a.seeds)
        return
    fns = make_steps(a.arm, a.seeds, a.device)
    t = sc.alternate(fns, rounds=a.rounds, repeat=a.repeat)
    sep, stk = sc.median(t["separate"]), sc.median(t["stacked"])
    print(json.dumps({"arm": a.arm, "seeds": a.seeds, "device": a.device, "machine": sc.machine(),
                      "separate_ms_per_step_all_seeds": round(sep * 1e3, 1),
                      "stacked_ms_per_step_all_seeds": round(stk * 1e3, 1),
                      "stacked_speedup": round(sep / stk, 3)}, indent=1))


def test_stacked_dql_joint(benchmark) -> None:  # type: ignore[no-untyped-def]
    f = make_steps("dql", 5)["stacked"]
    benchmark.group = "5 seeds, DQL joint step (hopper shapes, batch 256, T=5)"
    benchmark(f)


def test_separate_dql_joint(benchmark) -> None:  # type: ignore[no-untyped-def]
    f = make_steps("dql", 5)["separate"]
    benchmark.group = "5 seeds, DQL joint step (hopper shapes, batch 256, T=5)"
    benchmark(f)


if __name__ == "__main__":
    main()
