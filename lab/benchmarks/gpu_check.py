"""One command that measures modzoo on a GPU, within a fixed wall-time budget, and costs the paper's grid from it.

Why this exists: every speed figure in docs/performance.md is CPU. On a GPU the papers' small MLPs are
launch-bound, so the levers are stacking seeds (``modzoo.run.stacked``, one vmapped step for K seeds) and graph
capture (``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs); and nobody has checked that a run on CUDA
computes what the same run computes on CPU. A GPU is lent rarely and for minutes, so everything is prepared here,
tested on CPU (``--device cpu --quick``, run by lab/tests/test_gpu_check.py), and run once when one is there:

    python lab/benchmarks/gpu_check.py --out gpu_check.json            # on the GPU machine, at most ~8 minutes
    python lab/benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json   # the CPU smoke mode

It writes ``--out`` (JSON) and the same figures as markdown tables beside it (``.md``), printed at the end too.

Sections, in order of value (each skipped, with the reason recorded, when the budget left cannot hold it):

1. agreement: the same steps of DQL and IDQL (joint schedule, same seed) through ``modzoo.train`` on CPU and on
   the device; every logged loss and every tensor of both checkpoints (parameters, targets, EMA copies, optimizer
   moments) compared: the first step's to a fixed tolerance, the rest against a yardstick measured in the same
   command (how far a rounding-sized change of the initial weights grows in that arm; :data:`PERTURB`); the
   device run's checkpoints loaded on CPU, bit-exact, and acting there. modzoo draws its noise and batches from
   generators on the training device, and CUDA's Philox stream differs from the CPU's Mersenne twister, so two
   runs from the same seed on two devices see different numbers by design. To compare arithmetic rather than
   streams, this section draws every random number (``modzoo.contract.rng`` and the replay buffer's indices) on
   the CPU, from a generator seeded like the one the draw was asked of, and moves it to the device: both runs
   then consume identical inputs.
2. train: steps/s of the joint step (the body of ``modzoo.train``'s loop: batch, guidance update, policy update)
   for 1 seed and for K seeds stacked with ``StackedStepper`` (``--stack vmap``, what ``--seeds`` picks on a GPU);
   per seed (each seed advances one step per stacked step) and in total (K x that); peak GPU memory per row.
3. act: latency of one action for one state, numpy in and out as ``modzoo.evaluate`` acts, with the policy's
   default candidates and sampler.
4. eval: a vectorized evaluation (``modzoo.run.evaluation.evaluate_policy``, one batched act per env step) on
   halfcheetah, whose episodes never end early; env steps/s and the share of the time spent in the policy.
5. compile: the nets of one seed (denoisers, critics, value net) wrapped in ``torch.compile(mode=...)`` by this
   script, in a child process with a timeout (compilation time is unbounded). modzoo itself has no compile switch
   and its stacked step (vmap over functional_call) is not compiled here: the table says so instead of a number.
6. grid: GPU-hours of lab/experiments/gfdt-paper.yaml's training (12 tasks x 8 arms x 5 seeds x 200k steps) from
   the measured rates, one seed per process and seeds stacked, and its evaluation schedule's cost.

Data: a synthetic D4RL-format file (``modzoo.testing.synthetic_dataset``) written into a temp dir, so the device
machine needs no download. Imports: modzoo, torch and the standard library only.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import modzoo  # first: it sets OMP_WAIT_POLICY before torch starts its threads
from modzoo.bullet.data import load_dataset
from modzoo.bullet.envs import env_dims
from modzoo.contract import rng
from modzoo.run.buffer import ReplayBuffer
from modzoo.run.checkpoint import load_checkpoint
from modzoo.run.evaluation import eval_seed, evaluate_policy
from modzoo.run.halves import default_config, make_guidance, make_policy
from modzoo.run.stacked import StackedStepper
from modzoo.run.training import ActiveRun, Stepper, _train_step, setup_run
from modzoo.testing import checkpoint_tensors, synthetic_dataset, tiny_overrides

SCHEMA = 1
TASK = "bullet-hopper-medium-v0"  # training shapes: hopper (obs 15, act 3), as every CPU figure in the docs
EVAL_TASK = "bullet-halfcheetah-medium-v0"  # its episodes never terminate, so every eval step has all envs live
#: arm -> (guidance, policy); both trained on the joint schedule, each with its library defaults
ARMS: dict[str, tuple[str, str]] = {"dql": ("dql", "dql"), "idql": ("idql", "idql")}
#: DQL's EMA starts at step 1000 (dql.yaml step_start_ema); timing starts there so the steady state is measured
STEADY_STEP = 1000

# lab/experiments/gfdt-paper.yaml, the paper's full grid (lab/tests/test_gpu_check.py checks these against it)
GRID_TASKS, GRID_SEEDS, GRID_STEPS = 12, 5, 200_000
#: its 8 arms by the algorithm whose joint step prices them: idql-joint and idql-gf train IDQL; dql-joint,
#: dql-gf-iql, dql-gf-sarsa, dql-gf-literal, dql-bc and dql-random-first train a DQL actor
GRID_ARMS: dict[str, int] = {"idql": 2, "dql": 6}
GRID_EVAL_EVERY, GRID_EVAL_EPISODES, MAX_EPISODE_STEPS = 800, 50, 1000

# Agreement tolerances, CPU vs device over the same steps and inputs (fp32 on both; TF32 is off by torch's default
# and recorded). Rounding differences (other kernels, other summation orders) start near 1e-7 relative and training
# amplifies them, by how much depends on the arm: a 1e-6 relative change of IDQL's initial weights grew to 6e-4 in
# its losses and 6e-3 in a value-net bias over 200 CPU steps, DQL's to 7e-6 and 1e-4. So no fixed bound fits after
# 200 steps; the bound is measured in the run itself: the YARDSTICK run repeats the device run with its initial
# weights changed by PERTURB (about what rounding amounts to), and the CPU-vs-device differences may be at most
# MARGIN times the yardstick's. At the first step nothing has been amplified yet: its logged values must agree to
# FIRST_STEP_RTOL. A run that computes something else (another random stream, a wrong device path) differs by far
# more than either bound.
PERTURB, MARGIN, FIRST_STEP_RTOL = 1e-6, 10.0, 1e-4


# ---- budget ---------------------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Wall-time budget of the whole command. Each section may spend what is left minus what the later sections
    are guaranteed (their ``reserve``), and every item is skipped, with its reason recorded, when its estimated
    cost does not fit: the command ends within ``total_s`` plus one item's misestimate."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def fits(self, estimate_s: float, reserve_s: float, what: str) -> bool:
        room = self.left() - reserve_s
        if estimate_s <= room:
            return True
        self.skipped.append(f"{what}: estimated {estimate_s:.0f} s, {max(room, 0):.0f} s of the budget left for it")
        return False


# ---- environment --------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: enough to tell two cards, two torch builds or two commits apart."""
    env: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda, "modzoo": modzoo.__version__,
        "python": platform.python_version(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "commit": _git_commit(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    else:
        env["device_name"] = _cpu_model()
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _error(e: BaseException) -> str:
    """An exception as one table cell: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300]}" if msg else type(e).__name__


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---- runs as modzoo.train builds them ---------------------------------------------------------------------------
@dataclass
class Setup:
    """What every section shares: the data file, the device, the size of the nets and the timing lengths."""

    device: torch.device
    data: Path
    quick: bool
    seconds: float  # timed window of one throughput figure
    warmup: int  # untimed calls first (CUDA context, cuBLAS handles, vmap's first trace)

    def overrides(self, guidance: str, policy: str) -> list[str]:
        """Quick mode shrinks the nets (``modzoo.testing.tiny_overrides``): it checks the script, not speed."""
        if not self.quick:
            return []
        out = []
        for kind, name in (("guidance", guidance), ("policy", policy)):
            d = default_config(kind, name, TASK)
            d.pop("task_overrides", None)
            out += [f"{kind}.{k}={json.dumps(v)}" for k, v in tiny_overrides(d).items()]
        return out


def arm_config(s: Setup, arm: str, seed: int, device: str, **run: Any) -> Any:
    g, p = ARMS[arm]
    run = {"policy_steps": GRID_STEPS, "eval_episodes": 0, "final_eval": False, **run}
    return modzoo.run_config(g, p, TASK, s.overrides(g, p), schedule="joint", device=device, dataset=str(s.data),
                             seed=seed, **run)


def build_group(s: Setup, arm: str, k: int, dataset: Any) -> tuple[list[ActiveRun], Stepper]:
    """K runs of one arm as ``train_seeds`` builds them (one dataset copy on the device, a buffer stream per
    seed), at the steady-state step, with the stepper a GPU run picks: one seed alone, K seeds stacked (vmap)."""
    runs: list[ActiveRun] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(k):
            cfg = arm_config(s, arm, seed, str(s.device))
            runs.append(setup_run(cfg, dataset, False, None, share=runs[0].buffer if runs else None))
    for run in runs:
        for half in (run.guidance, run.policy):
            half._steps.fill_(STEADY_STEP)
    return runs, (StackedStepper(runs) if k > 1 else Stepper(runs))


def step_fn(runs: list[ActiveRun], stepper: Stepper) -> Callable[[], Any]:
    """One joint step of every run in the group, exactly as ``train_group`` takes it."""
    cfg = runs[0].cfg
    pbs, gbs = int(cfg.policy.batch_size), int(cfg.guidance.batch_size)
    counter = iter(range(STEADY_STEP, 10**12))
    return lambda: _train_step(runs, stepper, "policy", True, next(counter), pbs, gbs, 0)


def timed(fn: Callable[[], Any], device: torch.device, seconds: float, warmup: int, min_calls: int = 3
          ) -> dict[str, float]:
    """Calls per second of ``fn`` over a window of at least ``seconds`` and ``min_calls`` calls, after ``warmup``
    untimed calls; the device is synchronized at both ends, so queued GPU work is counted."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    sync(device)
    wall = time.perf_counter() - t0
    return {"calls": calls, "wall_s": round(wall, 3), "per_s": calls / wall, "ms_per_call": 1e3 * wall / calls}


# ---- 1. agreement ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def host_random_numbers() -> Iterator[None]:
    """Every draw of ``modzoo.contract.rng`` and every replay-buffer index drawn on the CPU from a stand-in
    generator seeded like the generator asked (one stand-in per generator object), then moved to the device: a CPU
    run and a CUDA run of the same seed then consume the same numbers (see the module docstring)."""
    stand_ins: dict[int, tuple[torch.Generator, torch.Generator]] = {}

    def host(g: torch.Generator | None) -> torch.Generator | None:
        if g is None:
            return None  # torch's global CPU stream, seeded by the run on both devices alike
        kept = stand_ins.get(id(g))
        if kept is None or kept[0] is not g:
            kept = (g, torch.Generator().manual_seed(g.initial_seed()))
            stand_ins[id(g)] = kept  # the generator is kept alive with it, so its id is never reused
        return kept[1]

    def to(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
        return t if device is None else t.to(device)

    patched = {
        "randn": lambda shape, generator=None, device=None: to(torch.randn(
            tuple(shape), generator=host(generator)), device),
        "rand": lambda shape, generator=None, device=None: to(torch.rand(
            tuple(shape), generator=host(generator)), device),
        "randint": lambda high, shape, generator=None, device=None: to(torch.randint(
            0, high, tuple(shape), generator=host(generator)), device),
        "randperm": lambda n, generator=None, device=None: to(torch.randperm(n, generator=host(generator)), device),
    }

    def sample(self: ReplayBuffer, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), generator=host(self.generator)).to(self.device)
        return {k: v.index_select(0, idx) for k, v in self.data.items()}

    saved = {name: getattr(rng, name) for name in patched}
    saved_sample = ReplayBuffer.sample
    try:
        for name, fn in patched.items():
            setattr(rng, name, fn)
        ReplayBuffer.sample = sample  # type: ignore[method-assign]
        yield
    finally:
        for name, fn in saved.items():
            setattr(rng, name, fn)
        ReplayBuffer.sample = saved_sample  # type: ignore[method-assign]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def loss_agreement(a: Path, b: Path) -> dict[str, Any]:
    """The largest relative difference between the values runs ``a`` and ``b`` logged, over all steps and at the
    first step, with where it was."""
    la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    if not la or [(m["phase"], m["step"]) for m in la] != [(m["phase"], m["step"]) for m in lb]:
        return {"why": "the two runs logged different steps"}
    worst: dict[str, Any] = {"rel": 0.0, "key": None, "step": None}
    first, values = 0.0, 0
    for ma, mb in zip(la, lb):
        for key, va in ma.items():
            if key in ("phase", "step"):
                continue
            vb = mb.get(key)
            values += 1
            if vb is None or not (math.isfinite(va) and math.isfinite(vb)):
                return {"why": f"{key} at step {ma['step']}: {va} vs {vb}"}
            rel = _rel(va, vb)
            if ma["step"] == la[0]["step"]:
                first = max(first, rel)
            if rel > worst["rel"]:
                worst = {"rel": rel, "key": key, "step": ma["step"], "a": va, "b": vb}
    return {"values": values, "worst": worst, "first_step_rel": first}


def param_agreement(a: Path, b: Path) -> dict[str, Any]:
    """The largest relative L2 difference of any floating tensor of the two runs' checkpoints (parameters,
    buffers, targets, EMA copies, optimizer moments), and which one."""
    worst, name, count = 0.0, None, 0
    for half in ("guidance.pt", "policy.pt"):
        ta = checkpoint_tensors(torch.load(a / half, map_location="cpu", weights_only=True))
        tb = checkpoint_tensors(torch.load(b / half, map_location="cpu", weights_only=True))
        if ta.keys() != tb.keys():
            return {"why": f"{half}: the checkpoints hold different tensors"}
        for key in ta:
            count += 1
            x, y = ta[key].double(), tb[key].double()
            # relative to the tensor's own size; a tensor that is all zeros (never updated) by its absolute norm
            rel = float((x - y).norm() / x.norm()) if x.norm() > 0 else float((x - y).norm())
            if rel > worst:
                worst, name = rel, f"{half}:{key}"
    return {"tensors": count, "worst_rel_l2": worst, "worst_tensor": name}


@contextlib.contextmanager
def perturbed_initial_weights(relative: float, seed: int = 12345) -> Iterator[None]:
    """Halves that ``modzoo.train`` builds get every parameter multiplied by ``1 + relative * N(0, 1)`` (drawn on
    the CPU from a fixed seed, so the change is the same on every device): the yardstick run."""
    from modzoo.run import training

    real = training.build_half

    def build(*args: Any, **kwargs: Any) -> Any:
        half = real(*args, **kwargs)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in half.parameters():
                p.mul_(1 + relative * torch.randn(p.shape, generator=g).to(p.device))
        return half
    training.build_half = build
    try:
        yield
    finally:
        training.build_half = real


def checkpoint_to_cpu(run_dir: Path, trained: Any, dataset: Any) -> dict[str, Any]:
    """The device run's checkpoints loaded on CPU: every state tensor equal to the trained halves' (bit for bit:
    a save only copies), and the loaded pair acts on one state with finite actions."""
    exact, loaded = True, {}
    for half, live in (("guidance", trained.guidance), ("policy", trained.policy)):
        m = load_checkpoint(run_dir / f"{half}.pt", "cpu", kind=half)
        loaded[half] = m
        want = {k: v.detach().cpu() for k, v in live.state_dict().items()}
        got = m.state_dict()
        exact &= want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        exact &= all(t.device.type == "cpu" for t in list(m.parameters()) + list(m.buffers()))
    obs = torch.as_tensor(dataset.observations[:1], dtype=torch.float32)
    with torch.inference_mode():
        act = loaded["policy"].act(obs, loaded["guidance"])
    acts_ok = tuple(act.shape) == (1, dataset.act_dim) and bool(torch.isfinite(act).all())
    return {"ok": bool(exact and acts_ok), "bit_exact": bool(exact), "acts_on_cpu": acts_ok}


def agreement(s: Setup, dataset: Any, arm: str, steps: int, reference: str, work: Path) -> dict[str, Any]:
    """``steps`` joint steps of ``arm`` from seed 0 through ``modzoo.train`` on ``reference`` (CPU) and on the
    device, with host-drawn random numbers, and the yardstick run (the device run from slightly perturbed weights;
    see :data:`PERTURB`); losses and checkpoints compared, and the device checkpoint loaded on CPU."""
    dirs, results = {}, {}
    with host_random_numbers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag, dev in (("reference", reference), ("device", str(s.device)), ("yardstick", str(s.device))):
            out = work / f"agree-{arm}-{tag}"
            cfg = arm_config(s, arm, 0, dev, policy_steps=steps, log_every=1, out=str(out))
            t0 = time.perf_counter()
            with perturbed_initial_weights(PERTURB) if tag == "yardstick" else contextlib.nullcontext():
                results[tag] = modzoo.train(cfg, dataset, progress=False)
            results[f"{tag}_s"] = round(time.perf_counter() - t0, 2)
            dirs[tag] = out
    losses = loss_agreement(dirs["reference"], dirs["device"])
    params = param_agreement(dirs["reference"], dirs["device"])
    yard_losses = loss_agreement(dirs["device"], dirs["yardstick"])
    yard_params = param_agreement(dirs["device"], dirs["yardstick"])
    ckpt = checkpoint_to_cpu(dirs["device"], results["device"], dataset)
    complete = not any("why" in x for x in (losses, params, yard_losses, yard_params))
    bounds = {"loss_rel": MARGIN * yard_losses["worst"]["rel"], "tensor_rel_l2": MARGIN * yard_params["worst_rel_l2"],
              "first_step_rel": FIRST_STEP_RTOL} if complete else {}
    checks = {"first_step": complete and losses["first_step_rel"] <= FIRST_STEP_RTOL,
              "losses": complete and losses["worst"]["rel"] <= bounds["loss_rel"],
              "tensors": complete and params["worst_rel_l2"] <= bounds["tensor_rel_l2"],
              "checkpoint_to_cpu": ckpt["ok"]}
    return {"arm": arm, "steps": steps, "devices": [reference, str(s.device)], "losses": losses, "params": params,
            "yardstick": {"perturb": PERTURB, "losses": yard_losses, "params": yard_params}, "bounds": bounds,
            "checks": checks, "ok": all(checks.values()), "checkpoint_to_cpu": ckpt,
            "wall_s": {k: results[f"{k}_s"] for k in ("reference", "device", "yardstick")}}


# ---- 2. training throughput -----------------------------------------------------------------------------------
def train_rows(s: Setup, dataset: Any, arms: list[str], seeds: list[int], budget: Budget, reserve: float
               ) -> list[dict[str, Any]]:
    """Steps/s per arm and seed count; each row's cost is estimated from the previous row's before it starts."""
    rows: list[dict[str, Any]] = []
    for arm in arms:
        last: tuple[int, float, float] | None = None  # (K, build seconds per seed, seconds per step)
        for k in seeds:
            build_per_seed, step_s = (last[1], last[2] * k / last[0]) if last else (2.0, 0.5)
            estimate = build_per_seed * k + step_s * (s.warmup + 3) + s.seconds
            row: dict[str, Any] = {"arm": arm, "seeds": k, "stack": "vmap" if k > 1 else "none (one seed)"}
            if not budget.fits(estimate, reserve, f"train {arm} x{k} seeds"):
                rows.append({**row, "skipped": "budget"})
                continue
            reset_peak(s.device)
            try:
                t0 = time.perf_counter()
                runs, stepper = build_group(s, arm, k, dataset)
                built = time.perf_counter() - t0
                r = timed(step_fn(runs, stepper), s.device, s.seconds, s.warmup)
            except Exception as e:  # out of memory at 64 seeds, or a failure on this device: a result, not the end
                rows.append({**row, "error": _error(e)})
                runs = stepper = None  # type: ignore[assignment]
                reset_peak(s.device)
                continue
            rows.append({**row, "steps_per_s_per_seed": r["per_s"], "seed_steps_per_s": r["per_s"] * k,
                         "ms_per_step": r["ms_per_call"], "timed_steps": r["calls"], "build_s": round(built, 2),
                         "peak_gpu_mib": peak_mib(s.device)})
            last = (k, built / k, r["ms_per_call"] / 1e3)
            del runs, stepper
            reset_peak(s.device)
    base = {row["arm"]: row.get("seed_steps_per_s") for row in rows if row["seeds"] == 1}
    for row in rows:
        if row.get("seed_steps_per_s") and base.get(row["arm"]):
            row["total_vs_one_seed"] = row["seed_steps_per_s"] / base[row["arm"]]
    return rows


# ---- 3. acting latency, 4. vectorized evaluation ------------------------------------------------------------------
def _act_pair(arm: str, task: str, device: torch.device, quick: bool) -> tuple[Any, Any]:
    """Untrained halves of ``arm`` for ``task`` with their library defaults (acting costs the same whatever the
    weights), on the device, ranking with the evaluation generator ``modzoo.evaluate`` uses."""
    g_name, p_name = ARMS[arm]
    obs_dim, act_dim = env_dims(task)
    over = {}
    if quick:
        d = default_config("policy", p_name, task)
        d.pop("task_overrides", None)
        over = tiny_overrides(d)
    guidance = make_guidance(g_name, obs_dim, act_dim, task).to(device).eval()
    policy = make_policy(p_name, obs_dim, act_dim, task, **over).to(device)
    policy.use_generator(torch.Generator(device=device).manual_seed(eval_seed(0)))
    return guidance, policy


def _act_fn(policy: Any, guidance: Any, device: torch.device) -> Callable[[Any], Any]:
    """``modzoo.evaluate``'s act function: numpy states in, numpy actions out, under inference mode."""
    def act(obs: Any) -> Any:
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            return policy.act(o, guidance).cpu().numpy()
    return act


def act_rows(s: Setup, arms: list[str], budget: Budget, reserve: float) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        row: dict[str, Any] = {"arm": arm, "task": TASK}
        if not budget.fits(s.seconds + 5, reserve, f"act {arm}"):
            rows.append({**row, "skipped": "budget"})
            continue
        try:
            guidance, policy = _act_pair(arm, TASK, s.device, s.quick)
            act = _act_fn(policy, guidance, s.device)
            obs = torch.randn(1, policy.obs_dim).numpy()
            for _ in range(s.warmup):
                act(obs)
            times = []
            t_end = time.perf_counter() + s.seconds
            while len(times) < 5 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                act(obs)  # returns numpy, so each call ends synchronized
                times.append(time.perf_counter() - t0)
        except Exception as e:
            rows.append({**row, "error": _error(e)})
            continue
        times.sort()
        rows.append({**row, "candidates": policy.cfg.get("candidates"), "sampler": policy.cfg.get("act_sampler"),
                     "sample_steps": policy.cfg.get("sample_steps"), "T": policy.cfg.get("T"), "calls": len(times),
                     "median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * times[int(0.9 * (len(times) - 1))]})
    return rows


class _TimedAct:
    """An act function that records when each call starts and how long the policy took: the time before the first
    call is making and resetting the envs, the time between calls one lockstep step (policy, then every env)."""

    def __init__(self, act: Callable[[Any], Any]) -> None:
        self.act, self.starts, self.policy_s = act, [], 0.0

    def __call__(self, obs: Any) -> Any:
        t0 = time.perf_counter()
        self.starts.append(t0)
        out = self.act(obs)
        self.policy_s += time.perf_counter() - t0
        return out

    def run(self, episodes: int, max_steps: int) -> dict[str, float]:
        self.starts, self.policy_s = [], 0.0
        t0 = time.perf_counter()
        res = evaluate_policy(self, EVAL_TASK, episodes=episodes, seed=eval_seed(0), max_steps=max_steps)
        wall = time.perf_counter() - t0
        n = len(self.starts)
        step_s = (self.starts[-1] - self.starts[0]) / (n - 1) if n > 1 else wall
        return {"wall_s": wall, "setup_s": self.starts[0] - t0, "step_s": step_s, "calls": n,
                "env_steps": int(res.lengths.sum())}


def eval_rows(s: Setup, arms: list[str], episodes: int, budget: Budget, reserve: float, share_s: float
              ) -> list[dict[str, Any]]:
    """A vectorized evaluation per arm, as long as its share of the budget allows (up to 1000 steps per
    episode); a 3-step probe prices the envs' setup and one lockstep step first."""
    rows = []
    for arm in arms:
        row: dict[str, Any] = {"arm": arm, "task": EVAL_TASK, "episodes": episodes}
        if not budget.fits(5, reserve, f"eval {arm}"):
            rows.append({**row, "skipped": "budget"})
            continue
        try:
            guidance, policy = _act_pair(arm, EVAL_TASK, s.device, s.quick)
            act = _TimedAct(_act_fn(policy, guidance, s.device))
            probe = act.run(episodes, 3)
            room = min(share_s, budget.left() - reserve) - probe["setup_s"]
            max_steps = int(min(10 if s.quick else MAX_EPISODE_STEPS, max(5, room / max(probe["step_s"], 1e-6))))
            r = act.run(episodes, max_steps)
        except Exception as e:
            rows.append({**row, "error": _error(e)})
            continue
        rows.append({**row, "steps_per_episode": max_steps, "env_steps": r["env_steps"],
                     "wall_s": round(r["wall_s"], 2),
                     "env_setup_s": r["setup_s"], "lockstep_step_ms": 1e3 * r["step_s"],
                     "env_steps_per_s": r["env_steps"] / r["wall_s"],
                     "stepping_env_steps_per_s": episodes / r["step_s"],
                     "policy_share": act.policy_s / r["wall_s"], "candidates": policy.cfg.get("candidates")})
    return rows


# ---- 5. torch.compile (child process) -------------------------------------------------------------------------
#: attributes holding the nets whose forward a step calls: denoisers (``<diffusion>.model``), critics, value net
COMPILE_ATTRS = ("model", "critic", "critic_target", "value")


def compile_nets(half: torch.nn.Module, mode: str | None, backend: str) -> list[str]:
    """Wrap every net named in :data:`COMPILE_ATTRS` inside ``half`` in ``torch.compile``; returns their paths.
    The optimizer keeps the same Parameter objects, so training goes on unchanged."""
    done = []
    for path, owner in list(half.named_modules()):
        for attr in COMPILE_ATTRS:
            net = owner._modules.get(attr)
            if (isinstance(net, torch.nn.Module) and any(True for _ in net.parameters())
                    and not hasattr(net, "_orig_mod")):
                kw = {"mode": mode} if backend == "inductor" else {}
                owner._modules[attr] = torch.compile(net, dynamic=False, backend=backend, **kw)
                done.append(f"{path + '.' if path else ''}{attr}")
    return done


def compile_child(s: Setup, dataset: Any, arms: list[str], mode: str, backend: str, out: Path) -> None:
    """Runs in its own process: per arm, one seed eager and with its nets compiled, steps/s and act latency.
    Results are written to ``out`` after each arm, so a timeout keeps what finished."""
    rows: list[dict[str, Any]] = []
    for arm in arms:
        for variant in ("eager", f"compiled ({mode if backend == 'inductor' else 'backend=' + backend})"):
            row: dict[str, Any] = {"arm": arm, "seeds": 1, "variant": variant}
            try:
                runs, stepper = build_group(s, arm, 1, dataset)
                t0 = time.perf_counter()
                if variant != "eager":
                    row["compiled"] = (compile_nets(runs[0].guidance, mode, backend)
                                       + compile_nets(runs[0].policy, mode, backend))
                step = step_fn(runs, stepper)
                for _ in range(3):  # compiles forward, backward and the act shapes
                    step()
                act = _act_fn(runs[0].policy, runs[0].guidance, s.device)
                obs = dataset.observations[:1]
                for _ in range(3):
                    act(obs)
                sync(s.device)
                row["warmup_s"] = round(time.perf_counter() - t0, 2)
                r = timed(step, s.device, s.seconds, 0)
                a = timed(lambda: act(obs), s.device, min(s.seconds, 2.0), 0, min_calls=5)
                row.update(steps_per_s=r["per_s"], ms_per_step=r["ms_per_call"], act_ms=a["ms_per_call"])
            except Exception as e:  # a compile failure is a result: the table says what failed
                row["error"] = _error(e)
            rows.append(row)
            out.write_text(json.dumps(rows))


def compile_rows(s: Setup, args: argparse.Namespace, arms: list[str], budget: Budget, reserve: float,
                 work: Path) -> list[dict[str, Any]]:
    """The compile measurement in a child process bounded by what the budget leaves (compilation can take
    minutes); the stacked step is listed as not supported (see the module docstring)."""
    note = {"arm": "all", "seeds": ">1", "variant": "compiled, stacked",
            "unsupported": "modzoo has no compile switch; its stacked step (vmap over functional_call) is not "
                           "compiled by this script either"}
    room = budget.left() - reserve
    if args.no_compile or room < 30:
        budget.skipped.append("compile: " + ("--no-compile" if args.no_compile else f"{max(room, 0):.0f} s left"))
        return [{"arm": a, "seeds": 1, "variant": "compiled", "skipped": "--no-compile" if args.no_compile
                 else "budget"} for a in arms] + [note]
    out = work / "compile.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-compile", str(out), "--device", str(s.device),
           "--arms", ",".join(arms), "--compile-mode", args.compile_mode, "--compile-backend", args.compile_backend,
           "--threads", str(args.threads), "--data", str(s.data)] + (["--quick"] if s.quick else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=room)
        tail = (proc.stderr or "").strip().splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        tail = [f"timed out after {room:.0f} s (the budget left); rows that finished are kept"]
    rows = json.loads(out.read_text()) if out.exists() else []
    if tail:
        rows.append({"arm": "all", "seeds": 1, "variant": "compiled", "error": tail[0][:300]})
    for row in rows:
        row.setdefault("child_s", round(time.perf_counter() - t0, 1))
    return rows + [note]


# ---- 6. the paper's grid ----------------------------------------------------------------------------------------
def _seed_steps_per_s(train: list[dict[str, Any]], arm: str, k: int) -> tuple[float | None, str]:
    """Seed-steps/s of ``arm`` with ``k`` seeds stacked: measured, else interpolated linearly in the step time
    between the measured neighbours (stated), else None."""
    rows = {r["seeds"]: r for r in train if r["arm"] == arm and r.get("ms_per_step")}
    if k in rows:
        return rows[k]["seed_steps_per_s"], f"measured at K={k}"
    lo = max((x for x in rows if x < k), default=None)
    hi = min((x for x in rows if x > k), default=None)
    if lo is None or hi is None:
        return None, f"K={k} not measured"
    t = rows[lo]["ms_per_step"] + (rows[hi]["ms_per_step"] - rows[lo]["ms_per_step"]) * (k - lo) / (hi - lo)
    return k * 1e3 / t, f"interpolated between K={lo} and K={hi}"


def grid_cost(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> dict[str, Any]:
    """GPU-hours of lab/experiments/gfdt-paper.yaml's training from the measured joint-step rates.

    Each run is priced as GRID_STEPS joint steps of its actor's algorithm: a guidance-first run's 200k critic and
    200k actor steps cost about what 200k joint steps (one critic and one actor update each) cost, and
    dql-gf-iql, which trains only the actor, costs less (an upper bound). One process per GPU at a time."""
    runs = {arm: n * GRID_TASKS * GRID_SEEDS for arm, n in GRID_ARMS.items()}
    out: dict[str, Any] = {"runs": sum(runs.values()), "steps_per_run": GRID_STEPS, "scenarios": []}
    for label, k in (("one seed per process", 1), (f"{GRID_SEEDS} seeds stacked (vmap)", GRID_SEEDS)):
        hours: float | None = 0.0
        basis = []
        for arm, n in runs.items():
            rate, how = _seed_steps_per_s(train, arm, k)
            if rate is None:
                hours = None  # JSON null, "not computed" in the table: a part of the grid has no rate
                basis.append(f"{arm}: {how}")
                continue
            hours = hours + n * GRID_STEPS / rate / 3600 if hours is not None else None
            basis.append(f"{arm}: {n} runs at {rate:.1f} seed-steps/s ({how})")
        out["scenarios"].append({"scenario": label, "training_hours": hours, "basis": "; ".join(basis)})
    rates = {r["arm"]: r for r in evals if r.get("lockstep_step_ms")}
    if all(arm in rates for arm in runs):
        evals_per_run = GRID_STEPS // GRID_EVAL_EVERY
        # one evaluation: make and reset the envs, then up to 1000 lockstep steps with every episode live
        hours = sum(n * evals_per_run * (rates[arm]["env_setup_s"] + MAX_EPISODE_STEPS *
                                         rates[arm]["lockstep_step_ms"] / 1e3) / 3600 for arm, n in runs.items())
        envs = {r["episodes"] for r in rates.values()}
        out["evaluation"] = {
            "hours_upper_bound": hours, "evaluations_per_run": evals_per_run,
            "basis": f"{evals_per_run} evaluations per run, each the measured env setup plus {MAX_EPISODE_STEPS} "
                     f"lockstep steps of {'/'.join(map(str, sorted(envs)))} envs (the grid: {GRID_EVAL_EPISODES}); "
                     f"an upper bound, as hopper and walker2d episodes can end early"}
    return out


# ---- report -----------------------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(res: dict[str, Any]) -> str:
    """The JSON's figures as the tables docs/performance.md takes (pasted as they are)."""
    e = res["environment"]
    lines = [f"**Device:** {e.get('device_name')} ({e['device']}), torch {e['torch']}, CUDA {e.get('cuda') or '-'}, "
             f"modzoo {e['modzoo']} at {e.get('commit') or '?'}, {e['cpu_cores']} CPU cores, "
             f"{e['torch_threads']} torch thread(s), TF32 matmul {e['tf32_matmul']}; "
             f"mode {res['mode']}, {res['wall_s']:.0f} s of a {res['budget_s']:.0f} s budget, {e['time_utc']}.",
             f"`{res['command']}`", "",
             "| arm | seeds | stack | steps/s per seed | seed-steps/s total | ms per step | total vs 1 seed | "
             "peak GPU MiB |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in res["train"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['arm']} | {r['seeds']} | {r['stack']} | {r.get('skipped') or r.get('error')} "
                         f"| | | | |")
            continue
        lines.append(f"| {r['arm']} | {r['seeds']} | {r['stack']} | {_f(r['steps_per_s_per_seed'])} | "
                     f"{_f(r['seed_steps_per_s'])} | {_f(r['ms_per_step'], 2)} | {_f(r.get('total_vs_one_seed'), 2)}x"
                     f" | {_f(r['peak_gpu_mib'])} |")
    lines += ["", "| arm | seeds | variant | steps/s | ms per step | act ms (1 state) | warm-up s | note |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in res["compile"]:
        note = (r.get("unsupported") or r.get("error") or r.get("skipped")
                or (f"compiled: {', '.join(r['compiled'])}" if r.get("compiled") else ""))
        lines.append(f"| {r['arm']} | {r['seeds']} | {r['variant']} | {_f(r.get('steps_per_s'))} | "
                     f"{_f(r.get('ms_per_step'), 2)} | {_f(r.get('act_ms'), 2)} | {_f(r.get('warmup_s'))} | {note} |")
    lines += ["", "| arm | candidates | sampler | act latency, 1 state: median ms | p90 ms | calls |",
              "|---|---:|---|---:|---:|---:|"]
    for r in res["act"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['arm']} | {r.get('error') or 'skipped (' + r['skipped'] + ')'} | | | | |")
            continue
        lines.append(f"| {r['arm']} | {r['candidates']} | {r['sampler']} (T={r['T']}) | {_f(r['median_ms'], 2)} | "
                     f"{_f(r['p90_ms'], 2)} | {r['calls']} |")
    lines += ["", "| arm | eval task | envs | steps per episode | env setup s | ms per lockstep step | "
              "env steps/s (whole call) | env steps/s (stepping) | policy share |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["eval"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['arm']} | {r['task']} | {r.get('error') or 'skipped (' + r['skipped'] + ')'} "
                         f"| | | | | | |")
            continue
        lines.append(f"| {r['arm']} | {r['task']} | {r['episodes']} | {r['steps_per_episode']} | "
                     f"{_f(r['env_setup_s'], 2)} | {_f(r['lockstep_step_ms'], 2)} | {_f(r['env_steps_per_s'])} | "
                     f"{_f(r['stepping_env_steps_per_s'])} | {_f(r['policy_share'], 2)} |")
    lines += ["", "| agreement | steps | devices | first step, worst loss rel | worst loss rel (key@step) | "
              "bound | worst tensor rel L2 | bound | checkpoint device -> CPU | passed |",
              "|---|---:|---|---:|---|---:|---|---:|---|---|"]
    for r in res["agreement"]:
        if "skipped" in r or "error" in r or not r.get("bounds"):
            why = r.get("skipped") or r.get("error") or r["losses"].get("why") or r["params"].get("why")
            lines.append(f"| {r['arm']} | | | {why} | | | | | | NO |" if "skipped" not in r else
                         f"| {r['arm']} | skipped ({why}) | | | | | | | | |")
            continue
        lw, p, b, ck = r["losses"]["worst"], r["params"], r["bounds"], r["checkpoint_to_cpu"]
        worst = f"{lw['rel']:.1e} ({lw['key']}@{lw['step']})" if lw.get("key") else "0"
        failed = [k for k, v in r["checks"].items() if not v]
        tensor = f"{p['worst_rel_l2']:.1e} ({p['worst_tensor'] or 'all equal'})"
        passed = "yes" if r["ok"] else "NO: " + ", ".join(failed)
        lines.append(f"| {r['arm']} | {r['steps']} | {' vs '.join(r['devices'])} | "
                     f"{r['losses']['first_step_rel']:.1e} | {worst} | {b['loss_rel']:.1e} | {tensor} | "
                     f"{b['tensor_rel_l2']:.1e} | {'bit-exact' if ck['bit_exact'] else 'DIFFERS'}, acts "
                     f"{'ok' if ck['acts_on_cpu'] else 'NOT ok'} | {passed} |")
    if res["agreement"]:
        lines.append(f"\nBounds: the first step's logged values within {FIRST_STEP_RTOL:g} relative; after that "
                     f"{MARGIN:g}x the differences of the yardstick run (the device run again from initial weights "
                     f"changed by {PERTURB:g} relative), which is how far rounding-sized differences grow in this arm. "
                     f"Random numbers are drawn on the CPU for both runs (the script's docstring says why).")
    g = res["grid"]
    unit = "GPU-hours" if e["device"].startswith("cuda") else "hours (CPU mode: not a GPU figure)"
    lines += ["", f"| paper grid ({GRID_TASKS} tasks x {sum(GRID_ARMS.values())} arms x {GRID_SEEDS} seeds x "
              f"{GRID_STEPS // 1000}k steps, {g['runs']} runs) | {unit} on this device | basis |",
              "|---|---:|---|"]
    for sc in g["scenarios"]:
        hours = sc["training_hours"]
        lines.append(f"| training, {sc['scenario']} | {'not computed' if hours is None else _f(hours)} | "
                     f"{sc['basis']} |")
    if "evaluation" in g:
        lines.append(f"| evaluation as gfdt-paper.yaml schedules it | {_f(g['evaluation']['hours_upper_bound'])}"
                     f" | {g['evaluation']['basis']} |")
    if res["skipped"]:
        lines += ["", "Skipped: " + "; ".join(res["skipped"]) + "."]
    return "\n".join(lines) + "\n"


# ---- main -------------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Full description: the module docstring of lab/benchmarks/gpu_check.py")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON file; the markdown goes beside it")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny nets, short windows: checks the script, not speed")
    ap.add_argument("--budget", type=float, help="wall seconds for everything (default 420, --quick 45)")
    ap.add_argument("--seeds", help="stacked seed counts (default 1,4,5,16,64; --quick 1,2); 5 is the grid's")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    ap.add_argument("--agree-steps", type=int, help="steps of the agreement check (default 200, --quick 10)")
    ap.add_argument("--eval-episodes", type=int, help=f"envs in the vectorized evaluation (default "
                                                      f"{GRID_EVAL_EPISODES}, the grid's; --quick 2)")
    ap.add_argument("--seconds", type=float, help="timed window per figure (default 3, --quick 0.3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the project's figures use 1)")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--compile-backend", help="default inductor; eager under --quick (checks the wiring fast)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)  # the parent's data file, for the child
    ap.add_argument("--child-compile", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    q = a.quick
    a.budget = a.budget if a.budget is not None else (45.0 if q else 420.0)
    a.seeds = [int(x) for x in (a.seeds or ("1,2" if q else "1,4,5,16,64")).split(",")]
    a.arms = [x for x in a.arms.split(",") if x]
    unknown = set(a.arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    a.agree_steps = a.agree_steps if a.agree_steps is not None else (10 if q else 200)
    a.eval_episodes = a.eval_episodes if a.eval_episodes is not None else (2 if q else GRID_EVAL_EPISODES)
    a.seconds = a.seconds if a.seconds is not None else (0.3 if q else 3.0)
    a.compile_backend = a.compile_backend or ("eager" if q else "inductor")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no GPU here; run with --device cpu --quick for the CPU check",
              file=sys.stderr)
        return 2
    device = torch.device(a.device)
    budget = Budget(a.budget)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        data = a.data or synthetic_dataset(work / f"{TASK}.hdf5", transitions=5_000 if a.quick else 100_000, seed=0)
        dataset = load_dataset(str(data), task=TASK)
        s = Setup(device, Path(data), a.quick, a.seconds, 1 if a.quick else 3)
        if a.child_compile:
            compile_child(s, dataset, a.arms, a.compile_mode, a.compile_backend, a.child_compile)
            return 0
        res: dict[str, Any] = {"schema": SCHEMA, "mode": "quick" if a.quick else "full", "budget_s": a.budget,
                               "command": " ".join([Path(sys.argv[0]).name if argv is None else "gpu_check.py",
                                                    *(sys.argv[1:] if argv is None else argv)]),
                               "environment": environment(device), "skipped": budget.skipped}
        # the part of the budget each later section is guaranteed (the grid costs nothing)
        share = {"train": 0.35, "act": 0.03, "eval": 0.12, "compile": 0.22}
        reserve = lambda *later: a.budget * sum(share[x] for x in later)  # noqa: E731
        res["agreement"] = []
        # a 200-step full-size run took 10 (DQL) to 27 s (IDQL) on one thread of a loaded CPU, and the two device
        # runs cost less than that on a GPU; the first arm's measured cost prices the next
        estimate = (0.01 if a.quick else 0.15) * a.agree_steps + 5
        for arm in a.arms:
            if not budget.fits(estimate, reserve("train", "act", "eval", "compile"), f"agreement {arm}"):
                res["agreement"].append({"arm": arm, "skipped": "budget"})
                continue
            t0 = time.perf_counter()
            try:
                res["agreement"].append(agreement(s, dataset, arm, a.agree_steps, "cpu", work))
            except Exception as e:
                res["agreement"].append({"arm": arm, "error": _error(e), "traceback": traceback.format_exc()})
            estimate = time.perf_counter() - t0
        reset_peak(device)
        res["train"] = train_rows(s, dataset, a.arms, a.seeds, budget, reserve("act", "eval", "compile"))
        res["act"] = act_rows(s, a.arms, budget, reserve("eval", "compile"))
        res["eval"] = eval_rows(s, a.arms, a.eval_episodes, budget, reserve("compile"),
                                a.budget * share["eval"] / max(1, len(a.arms)))
        res["compile"] = compile_rows(s, a, a.arms, budget, 0.0, work)
        res["peak_gpu_mib"] = (max((r.get("peak_gpu_mib") or 0 for r in res["train"]), default=None)
                               if device.type == "cuda" else None)
        res["grid"] = grid_cost(res["train"], res["eval"])
        res["wall_s"] = round(time.perf_counter() - budget.start, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    a.out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
