"""Reproduce the shared-CPU thread pitfall: time one IQL critic update (hopper shapes, batch 256) with 1 and with
torch's default threads, optionally while N busy processes load the cores.

    python lab/benchmarks/threads_pitfall.py --load 2

On a 2-core machine with 2 busy processes, the default thread pool spins and the update is many times slower than
with one thread. Figures go to stdout with the load average at the time.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch


def _busy(stop) -> None:
    os.nice(10)  # like a background job: lower priority, still takes the core when it can
    x = 0
    while not stop.is_set():
        x += 1


def time_update(threads: int, reps: int = 30) -> float:
    import modzoo
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = modzoo.make_guidance("idql", 15, 3)
    b = {"observations": torch.randn(256, 15), "actions": torch.rand(256, 3) * 2 - 1, "rewards": torch.randn(256),
         "next_observations": torch.randn(256, 15), "terminals": torch.zeros(256), "next_actions": torch.zeros(256, 3)}
    for _ in range(3):
        g.update(b)
    t = time.perf_counter()
    for _ in range(reps):
        g.update(b)
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=int, default=0, help="busy background processes to start")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the 'default' thread count")
    a = ap.parse_args()
    stop = mp.Event()
    procs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(a.load)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)
        for threads in (1, a.threads, 1, a.threads):
            ms = time_update(threads)
            print(f"threads={threads} load_avg={os.getloadavg()[0]:.2f} busy_procs={a.load}: "
                  f"IQL update {ms:.1f} ms")
    finally:
        stop.set()
        for p in procs:
            p.join()


if __name__ == "__main__":
    main()
