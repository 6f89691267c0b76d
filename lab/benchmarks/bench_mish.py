"""Mish on this CPU: torch's ``F.mish`` against modzoo's ``FastMish`` (core/blocks/activations.py), alone and inside
Diffusion-QL's 3x256 MLP, with ReLU and sigmoid for scale.

    python lab/benchmarks/bench_mish.py            # 1 thread; CPU time per call, variants alternating

Each row is the median over rounds of blocks in which every variant takes its turn, in process CPU time
(``time.process_time``), so that the load of a shared machine distorts the comparison as little as it can.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_common import activation_calls, cpu_alternate, machine, median, set_threads  # noqa: E402

from modzoo.blocks.activations import FastMish, mish  # noqa: E402


def cpu_medians(fns: dict[str, Callable[[], Any]], rounds: int, repeat: int) -> dict[str, float]:
    """Median CPU seconds per call of each function, the functions taking turns in blocks of ``repeat``."""
    t = cpu_alternate({k: (f, repeat) for k, f in fns.items()}, rounds, warmup=1)
    return {k: median(v) for k, v in t.items()}


def accuracy() -> str:
    """Max |difference| of FastMish's values and gradients from F.mish's (float32) and from float64 truth,
    over -100..100."""
    x64 = torch.linspace(-100, 100, 400_001, dtype=torch.float64).requires_grad_(True)
    F.mish(x64).sum().backward()
    out = {}
    for name, fn in (("FastMish", mish), ("F.mish", F.mish)):
        x = x64.detach().float().requires_grad_(True)
        y = fn(x)
        y.sum().backward()
        out[name] = ((y.double() - F.mish(x64.detach())).abs().max().item(),
                     (x.grad.double() - x64.grad).abs().max().item(), y.detach(), x.grad)
    fm, tm = out["FastMish"], out["F.mish"]
    return (f"accuracy over -100..100 (float32): FastMish vs F.mish: values {(fm[2] - tm[2]).abs().max():.2e}, "
            f"gradients {(fm[3] - tm[3]).abs().max():.2e}; against float64: FastMish values {fm[0]:.2e}, gradients "
            f"{fm[1]:.2e}; F.mish values {tm[0]:.2e}, gradients {tm[1]:.2e}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    info = machine()
    print(f"torch {info['torch']}, {info['threads']} thread(s), {info['cpu']} x{info['cores']}, load {info['loadavg']}")
    print(accuracy())
    for rows in (50, 256, 1024):
        fwd, fwd_bwd = activation_calls(torch.randn(rows, 256) * 3, torch.randn(rows, 256))
        r = cpu_medians({"F.mish fwd": fwd(F.mish), "FastMish fwd": fwd(mish), "relu fwd": fwd(F.relu),
                         "sigmoid fwd": fwd(torch.sigmoid), "F.mish fwd+bwd": fwd_bwd(F.mish),
                         "FastMish fwd+bwd": fwd_bwd(mish), "relu fwd+bwd": fwd_bwd(F.relu)},
                        a.rounds, max(20, 20_000 // rows))
        print(f"{rows}x256: " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in r.items())
              + f"; FastMish/F.mish: fwd {r['F.mish fwd'] / r['FastMish fwd']:.2f}x, fwd+bwd "
              f"{r['F.mish fwd+bwd'] / r['FastMish fwd+bwd']:.2f}x")

    def net(act: Callable[[], nn.Module]) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(34, 256), act(), nn.Linear(256, 256), act(), nn.Linear(256, 256), act(),
                             nn.Linear(256, 3))
    inp = torch.randn(256, 34)
    nets = {"nn.Mish": net(nn.Mish), "FastMish": net(FastMish), "ReLU": net(nn.ReLU)}

    def train_call(m: nn.Module) -> Callable[[], Any]:
        def f() -> None:
            m.zero_grad(set_to_none=True)
            m(inp).square().mean().backward()
        return f
    r = cpu_medians({k: train_call(m) for k, m in nets.items()}, a.rounds, 20)
    with FlopCounterMode(display=False) as fc:  # matmul FLOPs of forward + backward as executed
        train_call(nets["ReLU"])()
    flops = fc.get_total_flops()
    print("3x256 MLP (input 34), batch 256, forward+backward: " + ", ".join(
        f"{k} {v * 1e3:.2f} ms ({flops / v / 1e9:.0f} GFLOP/s)" for k, v in r.items())
          + f"; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
