"""torch.compile on and off: the joint DQL step and action selection with the denoisers and critics compiled,
against eager, alternating in one process; and Mish alone, compiled into one kernel, against FastMish.

    python lab/benchmarks/bench_compile.py                       # modes: default, max-autotune-no-cudagraphs
    python lab/benchmarks/bench_compile.py --modes default
    python lab/benchmarks/bench_compile.py --whole-loss         # each half's whole loss as one graph instead

What is compiled: ``torch.compile(module, dynamic=False, mode=...)`` on the live and EMA denoisers, the critic
and the target critic (the nets, where the FLOPs and the elementwise work are); the rest of the step (sampling
loop, losses, optimizers) stays eager. With ``--whole-loss``, each half's whole loss (the DQL critic's TD target
chain and regression; the actor's BC term, its chain and Q term) is compiled instead, forward and backward as
single graphs: for that, Mish is torch's ``nn.Mish`` (FastMish's autograd.Function with a custom jvp breaks the
graph) and every random draw goes to torch's global generator (a seeded ``torch.Generator`` argument breaks it
too), so the numbers it trains are not modzoo's, only the cost is comparable. Compile time is printed; the timed
blocks start after warm-up, so it is not counted. CPU time per call, 1 thread.

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
from speed_common import (  # noqa: E402
    activation_calls,
    build_halves,
    cpu_alternate,
    joint_step,
    machine,
    median,
    set_threads,
    synthetic_dataset,
)


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


def _graph_friendly(*mods: torch.nn.Module) -> None:
    """Make the halves traceable as one graph: ``nn.Mish`` for FastMish, unseeded global draws for
    ``modzoo.contract.rng`` (this changes the random streams, so it is for timing only)."""
    from modzoo.blocks.activations import FastMish
    from modzoo.contract import rng

    rng.randn = lambda shape, g=None, device=None: torch.randn(shape, device=device)
    rng.rand = lambda shape, g=None, device=None: torch.rand(shape, device=device)
    rng.randint = lambda high, shape, g=None, device=None: torch.randint(0, high, shape, device=device)
    rng.randperm = lambda n, g=None, device=None: torch.randperm(n, device=device)

    def swap(m: torch.nn.Module) -> None:
        for name, child in m.named_children():
            if isinstance(child, FastMish):
                setattr(m, name, torch.nn.Mish())
            else:
                swap(child)
    for m in mods:
        swap(m)


def whole_loss(ds: Any, rounds: int) -> None:
    """Eager FastMish, eager nn.Mish, and both losses compiled whole (nn.Mish), alternating."""
    import torch._dynamo

    fns: dict[str, tuple[Callable[[], Any], int]] = {}
    g, p, buf = build_halves("dql", "dql", ds)
    p._steps.fill_(1000)
    fns["eager FastMish step"] = (lambda: joint_step(buf, g, p), 3)
    _graph_friendly()
    for name, compiled in (("eager nn.Mish step", False), ("whole-loss compiled step", True)):
        g2, p2, buf2 = build_halves("dql", "dql", ds)
        p2._steps.fill_(1000)
        _graph_friendly(g2, p2)
        g2.gen(), p2.gen()  # made lazily: created inside a traced function they would split the graph
        if compiled:
            p2.loss = torch.compile(p2.loss, dynamic=False)
            g2.q_loss = torch.compile(g2.q_loss, dynamic=False)
        t0 = time.perf_counter()
        for _ in range(3):
            joint_step(buf2, g2, p2)
        print(f"{name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
        fns[name] = ((lambda b=buf2, gg=g2, pp=p2: joint_step(b, gg, pp)), 3)
    breaks = torch._dynamo.utils.counters["graph_break"]
    print(f"graph breaks: {sum(breaks.values())}" + "".join(f"\n  {n} x {why.splitlines()[0][:160]}"
                                                       for why, n in breaks.items()))
    res = cpu_alternate(fns, rounds)
    base = res["eager FastMish step"]
    for k, v in res.items():
        print(f"{k:40s} {median(v) * 1e3:8.2f} ms CPU   "
              f"eager FastMish/this {median([b / x for b, x in zip(base, v)]):.2f}x")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--whole-loss", action="store_true", help="compile each half's whole loss (timing only)")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    info = machine()
    print(f"torch {info['torch']}, {info['threads']} thread(s), {info['cpu']} x{info['cores']}, load {info['loadavg']}")
    ds = synthetic_dataset()
    if a.whole_loss:
        whole_loss(ds, a.rounds)
        return
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

    from modzoo.blocks.activations import mish

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
