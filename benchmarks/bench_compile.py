"""torch.compile on and off: the joint DQL step and action selection with the denoisers and critics compiled,
against eager, alternating in one process; and Mish alone, compiled into one kernel, against FastMish.

    python benchmarks/bench_compile.py                       # modes: default, max-autotune-no-cudagraphs
    python benchmarks/bench_compile.py --modes default

What is compiled: ``torch.compile(module, dynamic=False, mode=...)`` on the live and EMA denoisers, the critic
and the target critic (the nets, where the FLOPs and the elementwise work are); the rest of the step (sampling
loop, losses, optimizers) stays eager. Compile time is printed; the timed blocks start after warm-up, so it is
not counted. CPU time per call, 1 thread.
Result on this machine (docs/performance.md): no mode was faster, so modzoo keeps eager and offers no compile
switch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import activation_calls, build_halves, cpu_alternate, joint_step, machine, median, set_threads, \
    synthetic_dataset  # noqa: E402


def build(ds: Any, mode: str | None) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(joint step, selection for 1 state x 50 candidates), eager or with the nets compiled in ``mode``."""
    g, p, buf = build_halves("dql", "dql", ds)
    p._steps.fill_(1000)
    if mode is not None:
        for d in (p.diffusion, p.ema_diffusion):
            d.model = torch.compile(d.model, dynamic=False, mode=mode)
        g.critic = torch.compile(g.critic, dynamic=False, mode=mode)
        g.critic_target = torch.compile(g.critic_target, dynamic=False, mode=mode)
    obs = buf.sample(1)["observations"]

    def act() -> torch.Tensor:
        with torch.inference_mode():
            return p.act(obs, g, n=50)
    return (lambda: joint_step(buf, g, p)), act


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    info = machine()
    print(f"torch {info['torch']}, {info['threads']} thread(s), {info['cpu']} x{info['cores']}, load {info['loadavg']}")
    ds = synthetic_dataset()
    fns: dict[str, tuple[Callable[[], Any], int]] = {}
    for mode in [None, *[m for m in a.modes.split(",") if m]]:
        t0 = time.perf_counter()
        step, act = build(ds, mode)
        for _ in range(2):  # compiles (forward, backward, inference graphs) and warms up
            step()
            act()
        name = mode or "eager"
        print(f"{name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
        fns[f"{name} step"] = (step, 3)
        fns[f"{name} act"] = (act, 30)
    res = cpu_alternate(fns, a.rounds)
    for k, v in res.items():
        base = res[f"eager {k.split()[-1]}"]
        print(f"{k:40s} {median(v) * 1e3:8.2f} ms CPU   eager/this {median([b / x for b, x in zip(base, v)]):.2f}x")

    from modzoo.activations import mish

    def formula(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        w = s * (2 - s)
        return x * w / (2 - w)
    compiled = torch.compile(formula, dynamic=False)
    fwd, fb = activation_calls(torch.randn(256, 256) * 3, torch.randn(256, 256))
    for f in (fwd(compiled), fb(compiled)):
        f()
    r = cpu_alternate({"FastMish fwd": (fwd(mish), 100), "compiled fwd": (fwd(compiled), 100),
                       "FastMish fwd+bwd": (fb(mish), 100), "compiled fwd+bwd": (fb(compiled), 100)}, a.rounds)
    print("Mish on 256x256, compiled into one kernel vs FastMish: "
          + ", ".join(f"{k} {median(v) * 1e6:.1f} us" for k, v in r.items()))


if __name__ == "__main__":
    main()
