"""Before/after of a code change: two revisions of modzoo timed in turns, in one run, on the same cases.

On a shared machine, figures from two separate runs compare the load more than the code. Here each revision
is exported (``git archive``, no change to the repository) into a temporary directory, one worker process per
revision imports *that* modzoo, and the driver asks them in turn for short timed blocks of each case
(A, B, B, A, ...): the median of the per-round ratios is the speed-up. Both wall time and the workers' CPU time
(``time.process_time``) are reported: with one intra-op thread the CPU time excludes the time spent waiting
for a core, so it is the steadier of the two on a loaded machine (it still sees cache and SMT contention).

    python lab/benchmarks/ab_commits.py --a HEAD~1 --b HEAD
    python lab/benchmarks/ab_commits.py --a HEAD --b WORKTREE --cases joint_dql,act_dql_1x50 --rounds 11

``WORKTREE`` is the checkout as it is now (uncommitted edits included). Cases are ``speed_common.CASES``; the
benchmark code itself (this directory) is the current one for both sides, so both run exactly the same
measurement. One intra-op thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

WORKER = r"""
import json, os, sys, time
root, bench, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
sys.path.insert(1, bench)
import modzoo
assert (os.path.realpath(modzoo.__file__).startswith(os.path.realpath(root))
        or os.path.dirname(modzoo.__file__).startswith(root)), modzoo.__file__
from speed_common import case, set_threads
set_threads(threads)
fns = {}
print(json.dumps({"ready": modzoo.__file__}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    name, n = cmd["case"], cmd["n"]
    if name not in fns:
        fns[name] = case(name)
    f = fns[name]
    if cmd.get("flops"):
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as fc:
            f()
        print(json.dumps({"flops": fc.get_total_flops()}), flush=True)
        continue
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        f()
    print(json.dumps({"s": (time.perf_counter() - t0) / n, "cpu": (time.process_time() - c0) / n}), flush=True)
"""


def export_revision(rev: str, dest: Path) -> Path:
    """An importable ``modzoo`` of revision ``rev`` (or the live checkout for ``WORKTREE``) under ``dest``.

    The repository maps core/ -> ``modzoo`` and plugins/ -> ``modzoo.plugins``; the import root mirrors that
    with symbolic links, so each revision's own files (and its yaml configs) are what gets imported.
    """
    if rev == "WORKTREE":
        src = REPO
    else:
        src = dest / "src"
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = dest / "root" / "modzoo"
    pkg.mkdir(parents=True)
    for entry in (src / "core").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "plugins").symlink_to(src / "plugins")
    return dest / "root"


class Worker:
    """A process that imports one revision's modzoo and times cases on request."""

    def __init__(self, root: Path, threads: int) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        self.p = subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(HERE), str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.module = json.loads(self._line())["ready"]

    def _line(self) -> str:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited (code {self.p.wait()})")
        return line

    def time(self, case: str, n: int) -> tuple[float, float]:
        """(wall, CPU) seconds per call of ``case`` over ``n`` calls."""
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"case": case, "n": n}) + "\n")
        self.p.stdin.flush()
        out = json.loads(self._line())
        return float(out["s"]), float(out["cpu"])

    def flops(self, case: str) -> int:
        """Matmul FLOPs of one call of ``case`` (torch.utils.flop_counter, forward and backward as executed)."""
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"case": case, "n": 1, "flops": True}) + "\n")
        self.p.stdin.flush()
        return int(json.loads(self._line())["flops"])

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=60)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from speed_common import CASES, machine, median, set_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", default="HEAD~1", help="baseline revision (or WORKTREE)")
    ap.add_argument("--b", default="HEAD", help="changed revision (or WORKTREE)")
    ap.add_argument("--cases", default="joint_dql,guidance_dql,policy_dql,guidance_iql,policy_idql,"
                                       "act_dql_1x50,act_dql_50x256")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=0, help="calls per block (0: about 0.3 s per block)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--count-flops", action="store_true", help="also count each case's matmul FLOPs on both sides")
    a = ap.parse_args(argv)
    cases = [c for c in a.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    set_threads(a.threads)
    revs = {}
    for side in (a.a, a.b):
        if side != "WORKTREE":
            revs[side] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", side], check=True,
                                        capture_output=True, text=True).stdout.strip()
        else:
            revs[side] = "WORKTREE"
    info = machine()
    print(f"A = {a.a} ({revs[a.a]}), B = {a.b} ({revs[a.b]}); torch {info['torch']}, {a.threads} thread(s), "
          f"{info['cpu']} x{info['cores']}, load {info['loadavg']}")
    results: dict[str, Any] = {"a": a.a, "b": a.b, "a_rev": revs[a.a], "b_rev": revs[a.b], **info, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="modzoo_ab_") as tmp:
        wa = Worker(export_revision(a.a, Path(tmp) / "a"), a.threads)
        wb = Worker(export_revision(a.b, Path(tmp) / "b"), a.threads)
        try:
            for c in cases:
                one = min(wa.time(c, 1)[0], wb.time(c, 1)[0])  # builds and warms up the case in both workers
                n = a.repeat or max(1, min(200, int(0.3 / max(one, 1e-6))))
                ta, tb, loads = [], [], []
                for r in range(a.rounds):
                    if r % 2 == 0:
                        ta.append(wa.time(c, n))
                        tb.append(wb.time(c, n))
                    else:
                        tb.append(wb.time(c, n))
                        ta.append(wa.time(c, n))
                    loads.append(os.getloadavg()[0])
                wall = median([x[0] / y[0] for x, y in zip(ta, tb)])
                cpu = median([x[1] / y[1] for x, y in zip(ta, tb)])
                row = {"a_ms": median([x[0] for x in ta]) * 1e3, "b_ms": median([x[0] for x in tb]) * 1e3,
                       "a_cpu_ms": median([x[1] for x in ta]) * 1e3, "b_cpu_ms": median([x[1] for x in tb]) * 1e3,
                       "speedup": wall, "speedup_cpu": cpu, "rounds": a.rounds, "calls_per_block": n,
                       "load_min": min(loads), "load_max": max(loads)}
                if a.count_flops:
                    row["a_gflop"], row["b_gflop"] = wa.flops(c) / 1e9, wb.flops(c) / 1e9
                    print(f"{c:16s} matmul FLOPs per call: A {row['a_gflop']:.3f} GFLOP, B {row['b_gflop']:.3f} GFLOP")
                results["cases"][c] = row
                print(f"{c:16s} wall A {row['a_ms']:9.3f} B {row['b_ms']:9.3f} ms {wall:5.2f}x | CPU A "
                      f"{row['a_cpu_ms']:9.3f} B {row['b_cpu_ms']:9.3f} ms {cpu:5.2f}x | {a.rounds}x{n} calls, "
                      f"load {min(loads):.2f}-{max(loads):.2f}", flush=True)
        finally:
            wa.close()
            wb.close()
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
