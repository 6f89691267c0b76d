"""The run loop (core, not plugin, code) for one run or a group of seeds, in three schedules: ``joint`` (both
halves every step, guidance first, as the original algorithms do), ``guidance-first`` (GFDT: the guidance for N
steps, frozen, then the policy for M) and ``pretrained`` (a saved guidance, frozen; the policy trains). A run dir
holds ``config.yaml``, ``metrics.jsonl``, ``guidance.pt``, ``policy.pt``, ``result.json`` and, while unfinished,
``train_state.pt``, from which ``resume=True`` continues.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from ..blocks.policy import behaviour_split
from ..blocks.utils import seed_everything
from ..bullet.data import load_dataset
from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import load_registry
from ..errors import ConfigError, RunStopped
from ..progress import progress_bar
from . import stops
from .attribution import attribute
from .buffer import ReplayBuffer
from .checkpoint import atomic_save, check_guidance_fits, half_payload, save_half
from .config import RUN_DEFAULTS, apply_preset, build_run_config, derived, frozen, load_preset, task_layers, to_dict
from .evaluation import evaluate
from .guard import MAX_PENDING, NonFiniteGuard, probe_policy
from .halves import build_half, default_config, resolve_device
from .loggers import open_sinks
from .pretrained import keep_recorded_guidance, pretrained_guidance
from .profiling import PhaseMeter
from .resume import generator_state, restore
from .rundir import RunLog, finite_or_null, open_run_dir, refuse_changes, saved_config, warn_if_short_of_space
from .validation import check_out_dir, validate_config


def run_config(guidance: str | None, policy: str | None, task: str, overrides: list[str] | tuple[str, ...] = (),
               **run: Any) -> DictConfig:
    """The full config of a run: both halves' defaults for ``task``, the preset ``run['preset']`` (if any), ``run``
    settings, then ``overrides``; validated, completed (:func:`settled`) and frozen: what :func:`train` runs and
    records. A changed config is another call (or :func:`modzoo.run.config.derived`).

    ``guidance`` / ``policy``: plugin names (``modzoo list``; ``policy=None`` trains the guidance alone).
    ``overrides``: ``"section.key=value"`` strings (``"policy.eta=2.0"``). ``run``: the keys of
    :data:`modzoo.run.config.RUN_DEFAULTS`, documented there. ``modzoo config`` shows where each value comes from."""
    g = default_config("guidance", guidance, task) if guidance else {}
    p = default_config("policy", policy, task) if policy else {}
    run = {k: v for k, v in run.items() if v is not None}
    if run.get("preset"):
        preset = load_preset(str(run["preset"]))
        g = apply_preset(g, preset, "guidance", guidance, task)
        p = apply_preset(p, preset, "policy", policy, task)
        run = {**(preset.get("run") or {}), **run}
    cfg = build_run_config(g, p, {"task": task, **run}, overrides)
    validate_config(cfg)
    return settled(cfg)


def config_sources(guidance: str | None, policy: str | None, task: str, overrides: list[str] | tuple[str, ...] = (),
                   **run: Any) -> list[tuple[str, Any, str]]:
    """Every key of :func:`run_config`'s result, its value and the layer that set it (base class, plugin YAML, its
    task override, preset, its task override, run default, run setting, override: the order they apply)."""
    cfg = to_dict(run_config(guidance, policy, task, overrides, **run))
    run = {k: v for k, v in run.items() if v is not None}
    preset = load_preset(str(run["preset"])) if run.get("preset") else {}
    preset_label = f"preset {preset.get('name', run.get('preset'))}"
    source: dict[str, str] = {}
    for kind, name in (("guidance", guidance), ("policy", policy)):
        if not name:
            continue
        spec = load_registry().half(kind, name)
        values = dict((preset.get(kind) or {}).get(name) or {})
        # base_defaults() holds every base's keys, so the nearest base is named for them all
        layers = [(f"base {k.__name__}", spec.base_defaults()) for k in spec.bases()[:1]]
        layers += [(f"plugin {name}", spec.own_defaults())]
        layers += [(f"plugin {name} task_overrides[{p!r}]", v)
                   for p, v in task_layers(spec.default_config().get("task_overrides"), task)]
        layers += [(preset_label, values)]
        layers += [(f"preset task_overrides[{p!r}]", v)
                   for p, v in task_layers(values.pop("task_overrides", None), task)]
        for label, layer in layers:
            source.update({f"{kind}.{k}": label for k in layer if k != "task_overrides"})
        source[f"{kind}.name"] = "argument"
    source.update({f"run.{k}": "run default" for k in RUN_DEFAULTS})
    source.update({f"run.{k}": preset_label for k in preset.get("run") or {}})
    source.update({f"run.{k}": "argument" for k in ("task", *run)})
    source.update({item.split("=", 1)[0]: "override" for item in overrides})
    return [(f"{section}.{key}", value, source.get(f"{section}.{key}", "?"))
            for section in ("run", "guidance", "policy") for key, value in (cfg.get(section) or {}).items()]


def settled(cfg: DictConfig) -> DictConfig:
    """A frozen copy of a validated ``cfg`` with what follows from the run: ``run.seed`` seeds both halves, a null
    LR decay horizon is the half's phase length, a behaviour/actor split fraction becomes a step count."""
    out = derived(cfg)
    OmegaConf.set_readonly(out, False)
    r, (has_policy, schedule) = out.run, _plan_of(out)
    for section in ("guidance", "policy"):
        if out[section] and "seed" in out[section]:
            out[section].seed = int(r.seed)
    if has_policy and out.policy.get("lr_decay_steps", "absent") is None:
        out.policy.lr_decay_steps = int(r.policy_steps)
    if has_policy and isinstance(out.policy.get("behaviour_steps"), float):
        out.policy.behaviour_steps = behaviour_split(float(out.policy.behaviour_steps), int(r.policy_steps))
    if out.guidance and out.guidance.get("lr_decay_steps", "absent") is None:
        out.guidance.lr_decay_steps = int(r.policy_steps if schedule == "joint" else r.guidance_steps)
    return frozen(out)


def _plan_of(cfg: DictConfig) -> tuple[bool, str]:
    """Whether the run trains a policy, and its schedule (a guidance alone trains as guidance-first)."""
    has_policy = bool(cfg.policy) and bool(cfg.policy.get("name"))
    return has_policy, (cfg.run.schedule if has_policy else "guidance-first")


@dataclass
class RunResult:
    """What :func:`train` returns: the run dir (None without ``run.out``), the trained halves, the final
    :class:`~modzoo.run.evaluation.EvalResult` (None when evaluation is off) and ``result.json``'s phase records."""

    run_dir: Path | None
    guidance: GuidanceModule
    policy: DiffusionPolicy | None
    eval: Any = None
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def normalized_score(self) -> float | None:
        """The final evaluation's mean D4RL-normalized score (x100, as papers report it)."""
        return None if self.eval is None else float(self.eval.normalized_mean)


@dataclass(kw_only=True)
class ActiveRun:
    """One seed's run while it trains: its config, halves, data stream, run dir and progress."""

    cfg: DictConfig
    device: torch.device
    meta: dict[str, Any]
    schedule: str
    buffer: ReplayBuffer
    guidance: GuidanceModule
    policy: DiffusionPolicy | None
    run_dir: Path | None
    state_path: Path | None
    log: RunLog
    result: RunResult
    plan: list[tuple[str, int]]
    phase: str | None
    start_step: int
    phase_time: dict[str, float] = field(default_factory=dict)  # spent in ``phase`` before an interruption
    #: the (phase, step) of the resume state on disk: what a stopped run keeps
    saved_at: tuple[str, int] | None = None

    @property
    def r(self) -> DictConfig:
        return self.cfg.run

    def save_state(self, ph: str, step: int, phase_time: dict[str, float] | None = None) -> None:
        """``phase_time``: the time spent so far in ``ph``, so a resumed run reports the phase's whole cost."""
        if self.state_path is None:
            return
        halves = {"guidance": self.guidance, "policy": self.policy}
        atomic_save({"phase": ph, "step": step, "phase_time": dict(phase_time or {}),
                     **{k: half_payload(h, self.meta) if h is not None else None for k, h in halves.items()},
                     "buffer": self.buffer.state_dict(), "phases": self.result.phases,
                     # the halves' own noise streams: a resumed run draws what the uninterrupted one would
                     "generators": {k: generator_state(h) for k, h in halves.items() if h is not None}},
                    self.state_path)
        self.saved_at = (ph, step)


def setup_run(cfg: DictConfig, dataset: Any, resume: bool, guidance: GuidanceModule | None,
              share: ReplayBuffer | None = None) -> ActiveRun:
    """Validate, build or restore the halves, then create the run dir (last: a refused run leaves no dir, a refused
    resume changes no file). ``share``: another seed's buffer on the same data, whose device tensors are reused."""
    if not OmegaConf.is_readonly(cfg):  # not from run_config (a loaded config.yaml, a hand-built one): check it here
        validate_config(cfg, guidance_given=guidance is not None)
        cfg = settled(cfg)
    r = cfg.run
    run_dir = Path(r.out) if r.out else None
    saved = saved_config(run_dir, resume) if run_dir is not None else None
    if run_dir is not None:
        check_out_dir(run_dir)
    device = resolve_device(r.device)
    if r.get("threads"):
        torch.set_num_threads(int(r.threads))
    seed_everything(int(r.seed))
    has_policy, schedule = _plan_of(cfg)
    if saved is not None:
        refuse_changes(saved, cfg, schedule, run_dir)
    if dataset is None:
        dataset = load_dataset(r.dataset or r.task, task=r.task)
    meta = {"name": dataset.name, "fingerprint": dataset.fingerprint, "path": str(dataset.path or "")}
    state_path = run_dir / "train_state.pt" if run_dir else None
    if share is not None and share.device == device and share.size == len(dataset.observations):
        buffer = share.with_seed(int(r.seed))
    else:
        buffer = ReplayBuffer(dataset, device, seed=int(r.seed))

    if resume and state_path is not None and state_path.exists():
        guidance, policy, phase, start_step, phases_done, phase_time = restore(state_path, dataset, device, buffer)
    else:  # fresh halves fitted to the data: a saved guidance (frozen), the one passed in, or one from the config
        if schedule == "pretrained":
            guidance, cfg = pretrained_guidance(cfg, guidance, device)  # the config records the checkpoint's own
            check_guidance_fits(guidance, dataset.obs_dim, dataset.act_dim, dataset.fingerprint, dataset.name)
            guidance.freeze()
        elif guidance is None:
            guidance = build_half("guidance", to_dict(cfg.guidance), dataset.obs_dim, dataset.act_dim).to(device)
            guidance.fit_data(dataset)
        policy = None
        if has_policy:
            policy = build_half("policy", to_dict(cfg.policy), dataset.obs_dim, dataset.act_dim).to(device)
            policy.fit_data(dataset)
        phase, start_step, phases_done, phase_time = None, 0, [], {}
    if schedule == "guidance-first" and guidance.requires_policy and not guidance.frozen:
        raise ConfigError(f"guidance {guidance.algorithm!r} with this config samples the policy in its TD target, "
                          f"so it can only train jointly; use --schedule joint, or a policy-independent guidance "
                          f"(e.g. idql, or dql with guidance.target_actions=dataset)")
    if schedule == "pretrained" and saved is not None:
        cfg = keep_recorded_guidance(cfg, saved)
    if policy is not None:
        probe_policy(policy, guidance, dataset)

    if run_dir is not None:
        warn_if_short_of_space(run_dir, guidance, policy)
        open_run_dir(run_dir, cfg)
    log = RunLog(run_dir, open_sinks(run_dir, cfg, (phase, start_step) if phase is not None else None))
    if resume:
        log.truncate_after(phase, start_step)
    plan = [("guidance", int(r.guidance_steps))] if schedule == "guidance-first" and not guidance.frozen else []
    plan += [("policy", int(r.policy_steps))] if has_policy else []
    return ActiveRun(cfg=cfg, device=device, meta=meta, schedule=schedule, buffer=buffer, guidance=guidance,
                     policy=policy, run_dir=run_dir, state_path=state_path, log=log,
                     result=RunResult(run_dir, guidance, policy, phases=phases_done), plan=plan, phase=phase,
                     start_step=start_step, phase_time=phase_time,
                     saved_at=(phase, start_step) if phase is not None else None)


class Stepper:
    """How a group of runs takes one step: here each run in turn (a group of one is a plain run);
    :class:`modzoo.run.stacked.StackedStepper` takes it for all seeds at once."""

    mode = "lockstep"

    def __init__(self, runs: list[ActiveRun]) -> None:
        self.runs = runs

    def step(self, kind: str, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        """One update of each run's ``kind`` half: ``guidance`` (alone), ``joint`` (the guidance, given the
        policy) or ``policy``; one metrics dict per run."""
        if kind == "policy":
            return [run.policy.update(b, run.guidance) for run, b in zip(self.runs, batches)]
        return [run.guidance.update(b, run.policy if kind == "joint" else None) for run, b in zip(self.runs, batches)]

    def sync(self) -> None:
        """Bring each run's own halves up to date (here they are the ones trained)."""

    def frozen_guidance(self) -> None:
        """Called once each run's guidance is frozen."""


@dataclass
class _PhaseClock:
    """Time spent in a phase, per run, with interim evaluations kept apart: a phase's wall_s is the cost of its
    updates (an IDQL evaluation can take as long as 2500 steps). ``prior``: what a resumed phase had spent."""

    meter: PhaseMeter
    prior: list[dict[str, float]]
    eval_s: list[float]
    eval_cpu: list[float]
    evals: int = 0

    def times(self, i: int) -> dict[str, float]:
        prior, (wall, cpu) = self.prior[i], self.meter.elapsed()
        t = {"train_s": prior.get("train_s", 0.0) + wall - sum(self.eval_s),
             "eval_s": prior.get("eval_s", 0.0) + self.eval_s[i],
             "evals": prior.get("evals", 0) + self.evals}
        # a state saved without CPU time cannot give the whole phase's: then none rather than a part
        if not prior or "train_cpu_s" in prior:
            t["train_cpu_s"] = prior.get("train_cpu_s", 0.0) + cpu - sum(self.eval_cpu)
            t["eval_cpu_s"] = prior.get("eval_cpu_s", 0.0) + self.eval_cpu[i]
        return t

    def record(self, i: int, total: int, first: int, stepper: Stepper) -> dict[str, Any]:
        """What ``result.json`` says about run ``i``'s finished phase."""
        t, n = self.times(i), len(self.prior)
        cpu = {"cpu_s": t["train_cpu_s"], "eval_cpu_s": t["eval_cpu_s"]} if "train_cpu_s" in t else {}
        return {**{k: v for k, v in self.meter.result.items() if k != "cpu_s"}, **cpu,
                "wall_s": t["train_s"], "eval_wall_s": t["eval_s"], "evals": int(t["evals"]), "steps": total,
                **({"resumed_at": first} if first else {}),
                **({"seeds_together": n, "stack": stepper.mode} if n > 1 else {})}


def _train_step(runs: list[ActiveRun], stepper: Stepper, ph: str, joint: bool, step: int, pbs: int, gbs: int,
                delay: int) -> list[dict[str, Any]]:
    """One update of every run, metrics keyed ``guidance/...`` and ``policy/...``; in a joint phase the guidance
    first (after ``guidance_delay`` steps), then the policy."""
    if ph == "guidance":
        gm = stepper.step("guidance", [run.buffer.sample(gbs) for run in runs])
        return [{f"guidance/{k}": v for k, v in m.items()} for m in gm]
    ms: list[dict[str, Any]] = [{} for _ in runs]
    batches = [run.buffer.sample(max(pbs, gbs) if joint else pbs) for run in runs]
    if joint and not runs[0].guidance.frozen and step >= delay:
        # one batch per step; the critic takes its first gbs rows (IDQL slices 512 -> 256)
        gbatches = [b if gbs >= len(b["rewards"]) else {k: v[:gbs] for k, v in b.items()} for b in batches]
        for m, gm in zip(ms, stepper.step("joint", gbatches)):
            m.update({f"guidance/{k}": v for k, v in gm.items()})
        if pbs < gbs:
            batches = [{k: v[:pbs] for k, v in b.items()} for b in batches]
    for m, pm in zip(ms, stepper.step("policy", batches)):
        m.update({f"policy/{k}": v for k, v in pm.items()})
    return ms


class _Watch:
    """What the loop checks between steps: non-finite values (:mod:`.guard`), a stop signal (:mod:`.stops`), and
    the timed save (``run.save_every_s``) that bounds what a hard kill, which no handler sees, can lose."""

    def __init__(self, runs: list[ActiveRun], stepper: Stepper) -> None:
        self.runs, self.stepper = runs, stepper
        r = runs[0].r  # a config saved before these keys: stop, and no timed saves
        self.guard = NonFiniteGuard(runs, str(r.get("on_nonfinite") or "stop"))
        self.save_every_s = float(r.get("save_every_s") or 0)
        self.last_save = time.monotonic()

    def save(self, ph: str, phase: str, step: int, clock: _PhaseClock) -> None:
        """Every run's resume state at ``step``, only from finite numbers."""
        self.guard.check(phase)
        self.stepper.sync()
        for i, run in enumerate(self.runs):
            run.save_state(ph, step, clock.times(i))
        self.last_save = time.monotonic()

    def save_due(self) -> bool:
        return bool(self.save_every_s) and time.monotonic() - self.last_save >= self.save_every_s

    def stop_if_asked(self, ph: str, step: int, total: int) -> None:
        signum = stops.pending()
        if signum is None:
            return
        dirs = ", ".join(str(run.run_dir) for run in self.runs if run.run_dir is not None)
        saved = f"; its state is saved in {dirs}" if dirs else ""
        raise RunStopped(signum, f"stopped by {stops.signal_name(signum)} at step {step} of {total} of the {ph} "
                                 f"phase{saved}")


@contextlib.contextmanager
def _blamed(runs: list[ActiveRun], phase: str, step: int) -> Iterator[None]:
    """A plugin's exception becomes a :class:`~modzoo.errors.PluginFailure` naming its half (:mod:`.attribution`);
    modzoo's own keeps its traceback; a stop (a second signal lands anywhere) stays a stop."""
    try:
        yield
    except RunStopped:
        raise
    except Exception as exc:
        failure = attribute(exc, [runs[0].guidance, runs[0].policy], phase, step)
        if failure is None:
            raise
        raise failure from exc


def _interim_eval(runs: list[ActiveRun], stepper: Stepper, step: int, clock: _PhaseClock,
                  on_eval: Callable[[int, Any], None] | None, guard: NonFiniteGuard) -> None:
    """Evaluate every run at ``step``, timed apart from training; never on non-finite numbers (a policy over a NaN
    guidance dies inside torch, naming nothing)."""
    stepper.sync()
    guard.check("policy")
    guard.check_guidance(f"before the evaluation at policy step {step}")
    clock.evals += 1
    for i, run in enumerate(runs):
        t_ev, c_ev = time.perf_counter(), time.process_time()
        with _blamed([run], "the evaluation during the policy phase", step):
            ev = evaluate(run.policy, run.guidance, run.r.task, int(run.r.eval_episodes), int(run.r.seed))
        clock.eval_s[i] += time.perf_counter() - t_ev
        clock.eval_cpu[i] += time.process_time() - c_ev
        run.log.log({"phase": "eval", "step": step, "normalized_mean": ev.normalized_mean,
                     "normalized_std": ev.normalized_std, "return_mean": ev.mean})
        if on_eval:
            on_eval(step, ev)


def train_group(runs: list[ActiveRun], stepper: Stepper, progress: bool,
                on_eval: Callable[[int, Any], None] | None = None) -> list[RunResult]:
    """The training loop for runs that differ only in their seed (a lone run is a group of one). Each run keeps its
    own run dir, log, checkpoints and evaluation; only the step goes through ``stepper``, which syncs the halves
    before anything reads them. Between steps :class:`_Watch` checks; a plugin's exception is attributed to it."""
    lead = runs[0]
    r, cfg, schedule = lead.r, lead.cfg, lead.schedule
    save_every, log_every = int(r.save_every or 0), max(1, int(r.log_every))
    eval_every = int(r.eval_every or 0)
    delay = int(r.get("guidance_delay", 0) or 0)
    pbs = int(cfg.policy.batch_size) if lead.policy is not None else 0
    gbs = int(cfg.guidance.batch_size) if cfg.guidance and "batch_size" in cfg.guidance else pbs
    order = [p for p, _ in lead.plan]
    phase, start_step = lead.phase, lead.start_step
    tag = f" x{len(runs)} seeds" if len(runs) > 1 else ""
    watch = _Watch(runs, stepper)
    guard = watch.guard
    with stops.deferred():
        for ph, total in lead.plan:
            if phase in order and order.index(ph) < order.index(phase):
                continue  # finished before the interruption
            first = start_step if ph == phase else 0
            if first >= total:
                continue  # finished before the interruption (which came after it); its record is in the phases
            joint = ph == "policy" and schedule == "joint"
            label = "joint" if joint else ph
            watch.last_save = time.monotonic()
            with PhaseMeter(label, lead.device) as meter:
                clock = _PhaseClock(meter, [run.phase_time if ph == phase else {} for run in runs],
                                    [0.0] * len(runs), [0.0] * len(runs))
                if ph == "policy":
                    guard.check_guidance(f"at the start of the {label} phase (step {first})")
                bar = progress_bar(range(first, total), desc=f"{ph}{' (joint)' if joint else ''}{tag}",
                                   disable=not progress, initial=first, total=total, dynamic_ncols=True)
                for step in bar:
                    with _blamed(runs, f"the {label} phase", step + 1):
                        ms = _train_step(runs, stepper, ph, joint, step, pbs, gbs, delay)
                    guard.observe(step + 1, ms)
                    if len(guard.pending) >= MAX_PENDING:
                        guard.check(label)  # a long log interval must not hold every step's metrics
                    if (step + 1) % log_every == 0 or step + 1 == total:
                        for run, m in zip(runs, ms):
                            run.log.log({"phase": ph, "step": step + 1, **{k: float(v) for k, v in m.items()}})
                        bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in list(ms[0].items())[:3]})
                        guard.check(label)
                    if ph == "policy" and eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
                        _interim_eval(runs, stepper, step + 1, clock, on_eval, guard)
                    if step + 1 < total and (save_every and (step + 1) % save_every == 0 or watch.save_due()
                                             or stops.pending() is not None):
                        watch.save(ph, label, step + 1, clock)
                        watch.stop_if_asked(ph, step + 1, total)
                bar.close()
            guard.check(label)
            stepper.sync()
            for i, run in enumerate(runs):
                run.result.phases.append(clock.record(i, total, first, stepper))
                if (ph == "guidance" or joint) and run.run_dir is not None:
                    save_half(run.guidance, run.run_dir / "guidance.pt", run.meta)
                if ph == "guidance":
                    run.guidance.freeze()
            if ph == "guidance":
                stepper.frozen_guidance()
            for run in runs:
                run.save_state(ph, total)
            watch.last_save = time.monotonic()
            watch.stop_if_asked(ph, total, total)
            phase, start_step = None, 0
    return [_finish(run, progress, guard) for run in runs]


def final_episodes(r: Any) -> int:
    """``final_eval_episodes``, or ``eval_episodes`` when that is unset."""
    n = r.get("final_eval_episodes")
    return int(r.eval_episodes if n is None else n)


def _finish(run: ActiveRun, progress: bool, guard: NonFiniteGuard) -> RunResult:
    """Final checkpoints, the final evaluation and ``result.json``; removes the resume state."""
    r, cfg, guidance, policy, run_dir, result = run.r, run.cfg, run.guidance, run.policy, run.run_dir, run.result
    episodes = final_episodes(r)
    evaluates = policy is not None and r.final_eval and episodes > 0
    if evaluates:
        guard.check_guidance("before the final evaluation")
    if run_dir is not None:
        if not (run_dir / "guidance.pt").exists() or run.schedule == "pretrained":
            save_half(guidance, run_dir / "guidance.pt", run.meta)
        if policy is not None:
            save_half(policy, run_dir / "policy.pt", run.meta)
    if evaluates:
        with PhaseMeter("eval", run.device) as meter, _blamed([run], "the final evaluation", int(r.policy_steps)):
            result.eval = evaluate(policy, guidance, r.task, episodes, int(r.seed), progress=progress)
        result.phases.append({**meter.result, "episodes": episodes})
        run.log.log({"phase": "eval", "step": int(r.policy_steps), "normalized_mean": result.eval.normalized_mean,
                     "normalized_std": result.eval.normalized_std, "return_mean": result.eval.mean})
    if run_dir is not None:
        summary = {"task": r.task, "guidance": cfg.guidance.get("name") if cfg.guidance else None,
                   "policy": cfg.policy.get("name") if policy is not None else None, "schedule": run.schedule,
                   "seed": int(r.seed), "dataset": run.meta, "phases": result.phases,
                   "guidance_steps": guidance.steps, "policy_steps": policy.steps if policy else 0,
                   "parameters": {k: sum(p.numel() for p in h.parameters()) if h is not None else 0
                                  for k, h in (("guidance", guidance), ("policy", policy))},
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if cfg.get("guidance_checkpoint"):
            summary["guidance_checkpoint"] = {**to_dict(cfg.guidance_checkpoint), "config": {
                k: v for k, v in to_dict(cfg.guidance).items() if k != "name"}}
        if result.eval is not None:
            summary["eval"] = result.eval.to_dict()
            summary["normalized_score"] = float(result.eval.normalized_mean)
        atomic_save(json.dumps(finite_or_null(summary), allow_nan=False, indent=2), run_dir / "result.json")
        if run.state_path is not None:
            run.state_path.unlink(missing_ok=True)
    run.log.close()
    return result


def train(cfg: DictConfig, dataset: Any = None, *, progress: bool = True, resume: bool = False,
          guidance: GuidanceModule | None = None, on_eval: Callable[[int, Any], None] | None = None) -> RunResult:
    """Train per ``cfg`` (see :func:`run_config`) and, if ``run.out`` is set, write the run dir.

    ``dataset`` defaults to ``run.dataset`` (a path) or the task's file in the D4RL cache. ``guidance``: one already
    built (library use of the ``pretrained`` schedule). ``resume`` continues the unfinished run in ``run.out`` under
    its ``config.yaml``: a ``cfg`` that differs is refused with the difference, and a finished run raises
    :class:`~modzoo.errors.AlreadyFinished` with no file changed. ``on_eval(step, result)``: called after each
    interim evaluation."""
    run = setup_run(cfg, dataset, resume, guidance)
    try:
        return train_group([run], Stepper([run]), progress, on_eval)[0]
    finally:
        run.log.close()  # an interrupted run's TensorBoard / W&B files keep what was logged up to then
