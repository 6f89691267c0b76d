"""Training schedules (core, not plugin, code) and the run directory they write.

- ``joint``: both halves updated every step, guidance first, as the original algorithms do.
- ``guidance-first`` (GFDT): train the guidance for N steps, freeze it, then train the policy for M steps with it.
- ``pretrained``: load a saved guidance, freeze it, train the policy.

A run dir holds ``config.yaml`` (resolved), ``metrics.jsonl``, ``guidance.pt``, ``policy.pt``, ``result.json``
and, while a run is unfinished, ``train_state.pt`` from which ``resume=True`` continues.
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .buffer import ReplayBuffer
from .checkpoint import atomic_torch_save, atomic_write_text, build_from_payload, check_guidance_fits, \
    checkpoint_bytes, existing_parent, half_payload, load_checkpoint, remove_stale_temp_files, save_half, size_text
from .config import apply_preset, build_run_config, config_diff, load_preset, to_dict
from ..errors import AlreadyFinished, CheckpointError, ConfigError, PluginError, StorageError
from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import load_registry
from .halves import build_half, default_config
from .loggers import Sink, open_sinks
from .profiling import PhaseMeter
from ..progress import progress_bar
from ..blocks.policy import behaviour_split
from ..blocks.utils import seed_everything
from .validation import check_out_dir, validate_config
from ..bullet.envs import env_dims
from ..bullet.data import load_dataset

EVAL_SEED_OFFSET = 10_000  # evaluation episodes never share seeds with training noise
# Run seed s evaluates episodes with env seeds OFFSET + STRIDE * s + i: the episodes of different seeds start from
# different states, so episodes pooled across seeds are that many distinct starts (with a stride of 1 the 5
# seeds x 10 episodes of a grid cell had only 14 distinct starts among 50).
EVAL_SEED_STRIDE = 100_000


def eval_seed(seed: int) -> int:
    """The first env seed of a run's evaluations (and of its sampling generator there): one formula, so that
    another code scored "on the same episodes" (lab/benchmarks/reference_score.py) really is."""
    return EVAL_SEED_OFFSET + EVAL_SEED_STRIDE * seed


def resolve_device(name: str | None) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA on a machine without it is a clear error."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no GPU; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or auto") from None


def run_config(guidance: str | None, policy: str | None, task: str, overrides: list[str] | tuple[str, ...] = (),
               **run: Any) -> DictConfig:
    """The full config of a run: both halves' defaults for ``task``, the preset named by ``run['preset']`` (if
    any), ``run`` settings, then ``overrides``."""
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
    return cfg


# ---- evaluation ---------------------------------------------------------------------------------------------
def evaluate(policy: DiffusionPolicy, guidance: GuidanceModule | None = None, task: str | None = None,
             episodes: int = 10, seed: int = 0, progress: bool = False, candidates: int | None = None):
    """Run ``episodes`` episodes in lockstep (one batched ``act`` per env step); returns an ``EvalResult``."""
    from .evaluation import evaluate_policy
    task = task or getattr(policy, "dataset_meta", {}).get("name")
    if not task:
        raise ConfigError("evaluate needs a task name (e.g. bullet-hopper-medium-v0)")
    if candidates is not None and int(candidates) < 1:
        raise ConfigError(f"candidates (--candidates) must be at least 1, got {candidates}")
    check_policy_fits_env(policy, task)
    device = policy.device

    def act_fn(obs):
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            return policy.act(o, guidance, n=candidates).cpu().numpy()

    base = eval_seed(seed)
    # The policy samples its candidates (and picks among them) from a generator seeded like the episodes, not
    # from its training stream: an evaluation is then reproducible, and how often a run evaluates does not
    # change the noise its training draws.
    training_gen = policy.generator
    policy.use_generator(torch.Generator(device=device).manual_seed(base))
    try:
        return evaluate_policy(act_fn, task, episodes=episodes, seed=base, progress=progress)
    finally:
        policy.use_generator(training_gen)


def check_policy_fits_env(policy: DiffusionPolicy, task: str) -> None:
    """Refuse to act in an env of other dims with one line naming both, rather than a matmul shape error from
    the policy's first layer: a checkpoint knows its dims and the task it was trained on."""
    obs_dim, act_dim = env_dims(task)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        trained = getattr(policy, "dataset_meta", {}).get("name") or "another task"
        raise CheckpointError(f"policy {policy.algorithm!r} was trained on {trained} (obs/act dims {policy.obs_dim}/"
                              f"{policy.act_dim}), but {task} has obs/act dims {obs_dim}/{act_dim}: evaluate it on "
                              f"its own robot's tasks (--env), or leave --env out to use its own task")


# ---- the training loop --------------------------------------------------------------------------------------
@dataclass
class RunResult:
    run_dir: Path | None
    guidance: GuidanceModule
    policy: DiffusionPolicy | None
    eval: Any = None
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def normalized_score(self) -> float | None:
        return None if self.eval is None else float(self.eval.normalized_mean)


class _Logger:
    """``metrics.jsonl`` (always, when there is a run dir) and the extra sinks of ``run.logger``, fed the same
    records."""

    def __init__(self, run_dir: Path | None, sinks: list[Sink] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.sinks = list(sinks or [])

    def truncate_after(self, phase: str | None, step: int) -> None:
        """On resume, drop what was logged after the restored state (it will be logged again), so the curve
        has no duplicate steps: everything when nothing was restored, else the restored phase's later steps
        (evaluations belong to the policy phase)."""
        if self.path is None or not self.path.exists():
            return
        keep = []
        if phase is not None:
            for line in self.path.read_text().splitlines():
                rec = json.loads(line)
                ph = "policy" if rec.get("phase") == "eval" else rec.get("phase")
                if ph != phase or rec.get("step", 0) <= step:
                    if not (phase == "guidance" and ph == "policy"):
                        keep.append(line)
        atomic_write_text(self.path, "".join(x + "\n" for x in keep))

    def log(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        clean = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        line = json.dumps(clean) + "\n"
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError as e:
            raise StorageError(f"could not append to {self.path}: {e.strerror or e}; free space (or fix the "
                               f"directory) and resume with --resume") from None
        for sink in self.sinks:
            sink.write(clean)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def n_params(module: torch.nn.Module) -> int:
    """Trainable-architecture size: every parameter of the half (targets and EMA copies included, as they are
    held in memory), counted once."""
    return sum(p.numel() for p in module.parameters())


def _dataset_meta(dataset: Any) -> dict[str, Any]:
    return {"name": dataset.name, "fingerprint": dataset.fingerprint, "path": str(dataset.path or "")}


@dataclass(kw_only=True)
class ActiveRun:
    """One seed's run while it trains: its config, halves, data stream, run dir and progress."""

    cfg: DictConfig
    device: torch.device
    meta: dict[str, Any]
    schedule: str
    has_policy: bool
    buffer: ReplayBuffer
    guidance: GuidanceModule
    policy: DiffusionPolicy | None
    run_dir: Path | None
    state_path: Path | None
    log: _Logger
    result: RunResult
    plan: list[tuple[str, int]]
    phase: str | None
    start_step: int
    # time spent in ``phase`` before an interruption: {"train_s", "eval_s", "evals", "train_cpu_s",
    # "eval_cpu_s"} (empty for a fresh run; no CPU keys in a state saved by older versions)
    phase_time: dict[str, float] = field(default_factory=dict)

    @property
    def r(self) -> DictConfig:
        return self.cfg.run

    def save_state(self, ph: str, step: int, phase_time: dict[str, float] | None = None) -> None:
        """``phase_time``: the time spent so far in ``ph`` (training and interim evaluation, kept apart), so that
        a resumed run reports the phase's whole cost rather than what ran after the interruption."""
        if self.state_path is None:
            return
        atomic_torch_save({"phase": ph, "step": step, "phase_time": dict(phase_time or {}),
                           "guidance": half_payload(self.guidance, self.meta),
                           "policy": half_payload(self.policy, self.meta) if self.policy is not None else None,
                           "buffer": self.buffer.state_dict(), "phases": self.result.phases,
                           # the halves' own noise streams: a resumed run draws what the uninterrupted one would
                           "generators": {k: _generator_state(h) for k, h in (("guidance", self.guidance),
                                                                               ("policy", self.policy))
                                          if h is not None}}, self.state_path)


def _generator_state(half: Any) -> torch.Tensor:
    gen = half.gen()
    if not isinstance(gen, torch.Generator):  # a stacked twin's is not saved; the runs' own halves are
        raise TypeError("resume state is written from each run's own halves")
    return gen.get_state()


#: run keys a resume may change: where the run dir is named from, and the process's thread count
RESUME_MAY_CHANGE = ("run.out", "run.threads")


_Restored = tuple[GuidanceModule, "DiffusionPolicy | None", "str | None", int, list[dict[str, Any]], dict[str, float]]


def _restore(state_path: Path, dataset: Any, device: torch.device, buffer: ReplayBuffer) -> _Restored:
    """An interrupted run as its last ``train_state.pt`` left it: both halves, the buffer's sampling state, the
    halves' noise streams, and where in which phase it stopped (with the time that phase had taken)."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    was = (st["guidance"].get("dataset") or {}).get("fingerprint")
    if was and was != dataset.fingerprint:
        raise ConfigError(f"run dir {state_path.parent} was trained on other data than "
                          f"{dataset.path or dataset.name} holds now (fingerprint {was} vs {dataset.fingerprint}); "
                          f"resuming would mix the two. Start it again in another --out, or restore that dataset")
    guidance = build_from_payload(st["guidance"], state_path, device)
    policy = build_from_payload(st["policy"], state_path, device) if st.get("policy") else None
    buffer.load_state_dict(st["buffer"])
    for key, half in (("guidance", guidance), ("policy", policy)):
        state = st.get("generators", {}).get(key)
        if half is not None and state is not None:
            half.gen().set_state(state)
    return (guidance, policy, st["phase"], int(st["step"]), list(st.get("phases", [])),
            dict(st.get("phase_time") or {}))


def _fresh_halves(cfg: DictConfig, schedule: str, guidance: GuidanceModule | None, has_policy: bool, dataset: Any,
                  device: torch.device) -> tuple[GuidanceModule, DiffusionPolicy | None]:
    """The halves of a new run, fitted to the data: a saved guidance (frozen) for ``pretrained``, the one passed
    in, or one built from the config; and the policy."""
    obs_dim, act_dim = dataset.obs_dim, dataset.act_dim
    if schedule == "pretrained":
        guidance = _pretrained_guidance(cfg, guidance, device)
        check_guidance_fits(guidance, obs_dim, act_dim, dataset.fingerprint, dataset.name)
        guidance.freeze()
    elif guidance is None:
        guidance = build_half("guidance", to_dict(cfg.guidance), obs_dim, act_dim).to(device)
        guidance.fit_data(dataset)
    policy = None
    if has_policy:
        policy = build_half("policy", to_dict(cfg.policy), obs_dim, act_dim).to(device)
        policy.fit_data(dataset)
    return guidance, policy


def setup_run(cfg: DictConfig, dataset: Any, resume: bool, guidance: GuidanceModule | None,
           share: ReplayBuffer | None = None) -> ActiveRun:
    """Validate the config, build or restore the halves and create the run dir (only once the input is known to
    be good: a refused run leaves no dir behind, and a refused resume changes no file). ``share``: another run's
    buffer on the same data, whose device tensors this run reuses (seeds trained in one process)."""
    r = cfg.run
    run_dir = Path(r.out) if r.out else None
    saved = _resumed_config(run_dir, resume) if run_dir is not None else None
    validate_config(cfg, guidance_given=guidance is not None)
    if run_dir is not None:
        check_out_dir(run_dir)
    device = resolve_device(r.device)
    if r.get("threads"):
        torch.set_num_threads(int(r.threads))
    seed_everything(int(r.seed))
    has_policy = bool(cfg.policy) and bool(cfg.policy.get("name"))
    schedule = r.schedule if has_policy else "guidance-first"
    _fill_from_run(cfg, has_policy, schedule)
    if saved is not None:
        _refuse_changes(saved, cfg, schedule, run_dir)
    if dataset is None:
        dataset = load_dataset(r.dataset or r.task, task=r.task)
    meta = _dataset_meta(dataset)
    state_path = run_dir / "train_state.pt" if run_dir else None

    if share is not None and share.device == device and share.size == len(dataset.observations):
        buffer = share.with_seed(int(r.seed))
    else:
        buffer = ReplayBuffer(dataset, device, seed=int(r.seed))
    if resume and state_path is not None and state_path.exists():
        guidance, policy, phase, start_step, phases_done, phase_time = _restore(state_path, dataset, device, buffer)
    else:
        guidance, policy = _fresh_halves(cfg, schedule, guidance, has_policy, dataset, device)
        phase, start_step, phases_done, phase_time = None, 0, [], {}
    if schedule == "guidance-first" and guidance.requires_policy and not guidance.frozen:
        raise ConfigError(f"guidance {guidance.algorithm!r} with this config samples the policy in its TD target, "
                          f"so it can only train jointly; use --schedule joint, or a policy-independent guidance "
                          f"(e.g. idql, or dql with guidance.target_actions=dataset)")
    if schedule == "pretrained" and saved is not None:
        _keep_recorded_guidance(cfg, saved)
    if policy is not None:
        probe_policy(policy, guidance, dataset)

    if run_dir is not None:
        warn_if_short_of_space(run_dir, guidance, policy)
        _open_run_dir(run_dir, cfg)
    log = _Logger(run_dir, open_sinks(run_dir, cfg, (phase, start_step) if phase is not None else None))
    if resume:
        log.truncate_after(phase, start_step)
    plan: list[tuple[str, int]] = []
    if schedule == "guidance-first" and not guidance.frozen:
        plan.append(("guidance", int(r.guidance_steps)))
    if has_policy:
        plan.append(("policy", int(r.policy_steps)))
    result = RunResult(run_dir, guidance, policy, phases=phases_done)
    return ActiveRun(cfg=cfg, device=device, meta=meta, schedule=schedule, has_policy=bool(has_policy), buffer=buffer,
                     guidance=guidance, policy=policy, run_dir=run_dir, state_path=state_path, log=log, result=result,
                     plan=plan, phase=phase, start_step=start_step, phase_time=phase_time)


#: the probe before training: states taken from the dataset, and candidates asked of ``sample``
PROBE_STATES, PROBE_CANDIDATES = 2, 2


def probe_policy(policy: DiffusionPolicy, guidance: GuidanceModule | None, dataset: Any) -> None:
    """Refuse, before the first step, a policy whose ``sample`` or ``act`` returns the wrong shape: otherwise the
    run trains every phase and fails in the final evaluation. The probe leaves no trace (:func:`_untouched`), so a
    run trains to the same numbers with it as without it."""
    obs = torch.as_tensor(dataset.observations[:PROBE_STATES], dtype=torch.float32, device=policy.device)
    b, n, a = obs.shape[0], PROBE_CANDIDATES, policy.act_dim
    with _untouched(policy, guidance), torch.no_grad():
        _expect_shape(policy, f"sample(obs, {n})", policy.sample(obs, n), (b, n, a), "(states, n, act_dim)")
        _expect_shape(policy, "act(obs, guidance)", policy.act(obs, guidance), (b, a), "(states, act_dim)")


def _expect_shape(policy: DiffusionPolicy, call: str, out: Any, want: tuple[int, ...], axes: str) -> None:
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got == want:
        return
    spec = load_registry().policies.get(policy.algorithm)
    plugin = f" (plugin {spec.plugin!r})" if spec is not None else ""
    what = f"shape {got}" if got is not None else f"a {type(out).__name__}, not a tensor of shape"
    raise PluginError(f"policy {policy.algorithm!r}{plugin}: {call} on {want[0]} dataset states returned {what}, "
                      f"expected {want} {axes}; fix the plugin's {call.split('(')[0]} (modzoo.testing.check_policy"
                      f"({policy.algorithm!r}, checks=['shapes']) checks it). Nothing was trained")


@contextlib.contextmanager
def _untouched(*halves: Any) -> Iterator[None]:
    """Put back everything a probe's sampling may move: each half's noise stream (one it created lazily is dropped
    again), its buffers and train/eval modes, and the global torch, numpy and Python RNGs."""
    kept = [(h, h.generator, h.generator.get_state() if isinstance(h.generator, torch.Generator) else None,
             [(m, m.training) for m in h.modules()], [x.clone() for x in h.buffers()])
            for h in halves if h is not None]
    cuda = sorted({h.device.index or 0 for h in halves if h is not None and h.device.type == "cuda"})
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            for half, gen, state, modes, buffers in kept:
                if state is not None:
                    gen.set_state(state)
                half.use_generator(gen)
                for m, mode in modes:
                    m.training = mode
                with torch.no_grad():
                    for x, old in zip(half.buffers(), buffers):
                        x.copy_(old)


def checkpoints_need(run_dir: Path, guidance: GuidanceModule, policy: DiffusionPolicy | None) -> int:
    """About the free bytes the checkpoints of a run in ``run_dir`` will take: guidance.pt, policy.pt and
    train_state.pt (both halves again) at their trained size, plus the temp copy of the largest, which a save
    writes beside the file it replaces. Files a resumed run already holds count as space it has."""
    g = checkpoint_bytes(guidance)
    p = checkpoint_bytes(policy) if policy is not None else 0
    files = {"guidance.pt": g, "policy.pt": p, "train_state.pt": g + p}
    on_disk = sum((run_dir / name).stat().st_size for name in files if (run_dir / name).is_file())
    return sum(files.values()) + max(files.values()) - on_disk


def warn_if_short_of_space(run_dir: Path, guidance: GuidanceModule, policy: DiffusionPolicy | None) -> None:
    """One warning line, before training, when the run dir's file system has less free space than the run's
    checkpoints need: a full disk found only at the first save costs the training before it. A warning, not an
    error: the estimate is rough, other files come and go, and a failed save keeps what is on disk and says so."""
    need = checkpoints_need(run_dir, guidance, policy)
    try:
        free = shutil.disk_usage(existing_parent(run_dir)).free
    except OSError:
        return  # nothing to measure against: the save itself reports a failure
    if free < need:
        warnings.warn(f"run dir {run_dir}: its file system has {size_text(free)} free, but this run's checkpoints "
                      f"need about {size_text(need)} (guidance.pt, policy.pt, train_state.pt and a save's temp "
                      f"copy); training starts anyway, but free space or choose another --out, or a save will fail",
                      stacklevel=3)


def _fill_from_run(cfg: DictConfig, has_policy: bool, schedule: str) -> None:
    """Settings of the halves that follow from the run: one seed drives both halves' noise streams, an LR decay
    horizon left null is the length of the phase that half trains in, and a behaviour/actor split given as a
    fraction becomes a step count (the pairing was checked with the settings, by :func:`validate_config`)."""
    r = cfg.run
    for section in ("guidance", "policy"):
        if cfg[section] and "seed" in cfg[section]:
            cfg[section].seed = int(r.seed)
    if has_policy and cfg.policy.get("lr_decay_steps", "absent") is None:
        cfg.policy.lr_decay_steps = int(r.policy_steps)
    if has_policy and isinstance(cfg.policy.get("behaviour_steps"), float):
        cfg.policy.behaviour_steps = behaviour_split(float(cfg.policy.behaviour_steps), int(r.policy_steps))
    if cfg.guidance and cfg.guidance.get("lr_decay_steps", "absent") is None:
        cfg.guidance.lr_decay_steps = int(r.policy_steps if schedule == "joint" else r.guidance_steps)


def _resumed_config(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The saved config of the run ``resume`` continues in ``run_dir`` (None: nothing saved there yet).

    A finished run is refused with :class:`AlreadyFinished` before anything is read or written: resuming it
    used to train it again from step 0 over its own results.
    """
    if resume and (run_dir / "result.json").exists():
        raise AlreadyFinished(f"run dir {run_dir} holds a finished run (its result.json): --resume has nothing to "
                              f"continue, and no file was changed")
    config = run_dir / "config.yaml"
    if not config.exists():
        return None
    if not resume:
        raise ConfigError(f"run dir {run_dir} already holds a run; pass --resume to continue it or choose "
                          f"another --out (nothing was overwritten)")
    return OmegaConf.to_container(OmegaConf.load(config), resolve=True)


def _refuse_changes(saved: dict[str, Any], cfg: DictConfig, schedule: str, run_dir: Path) -> None:
    """A resume continues the run its ``config.yaml`` describes, so any other setting is refused with what
    differs: resuming under it would train the rest of the run under values no record shows. Left out: the keys
    of :data:`RESUME_MAY_CHANGE`, and a ``pretrained`` run's guidance settings, which its checkpoint fixed (the
    record holds the checkpoint's own; the overrides never built it)."""
    diff = config_diff(saved, to_dict(cfg), lambda name, old, new: name in RESUME_MAY_CHANGE or (
        schedule == "pretrained" and name.startswith("guidance.") and name != "guidance.name"))
    if diff:
        raise ConfigError(f"--resume of run dir {run_dir} with another config than its config.yaml ({'; '.join(diff)})"
                          f": resume with the run's own settings, or start a new run in another --out")


def _pretrained_guidance(cfg: DictConfig, guidance: GuidanceModule | None, device: torch.device) -> GuidanceModule:
    """The frozen guidance of a ``pretrained`` run (loaded from ``run.guidance_ckpt`` unless passed in), with the
    run config made to record it.

    A checkpoint of another algorithm than ``--guidance`` is refused, not renamed: that name chose the pairing
    that was checked and labels the run (its default out dir, result.json), so accepting it would make the command
    say one thing and the run do another. The guidance's config, though, is the checkpoint's own, whatever the
    defaults and overrides for that name say: config.yaml and result.json record it, with the checkpoint's path,
    steps and training data (:func:`_record_pretrained`).
    """
    r = cfg.run
    source = None
    if guidance is None:
        if not r.guidance_ckpt:
            raise ConfigError("schedule 'pretrained' needs --guidance-ckpt PATH (a guidance.pt)")
        source = str(r.guidance_ckpt)
        guidance = load_checkpoint(source, device, kind="guidance")
    asked = cfg.guidance.get("name") if cfg.guidance else None
    if asked and asked != guidance.algorithm:
        raise ConfigError(f"--guidance {asked} does not match {source or 'the guidance passed in'}, which holds a "
                          f"{guidance.algorithm!r} guidance: pass --guidance {guidance.algorithm} (or a {asked} "
                          f"guidance.pt)")
    _record_pretrained(cfg, guidance, source)
    return guidance


def _record_pretrained(cfg: DictConfig, guidance: GuidanceModule, source: str | None) -> None:
    """The ``guidance`` section becomes the loaded guidance's own algorithm and config, and ``guidance_checkpoint``
    says where it came from and on which data it trained (its dataset fingerprint)."""
    with open_dict(cfg):
        cfg.guidance = {"name": guidance.algorithm, **guidance.cfg}
        cfg.guidance_checkpoint = {"path": source, "algorithm": guidance.algorithm, "steps": guidance.steps,
                                   "dataset": dict(getattr(guidance, "dataset_meta", {}) or {})}


def _keep_recorded_guidance(cfg: DictConfig, saved: dict[str, Any]) -> None:
    """On resume, a ``pretrained`` run keeps the guidance its config.yaml records (the checkpoint is not read
    again: the resume state holds the guidance), so result.json says the same."""
    with open_dict(cfg):
        cfg.guidance = saved.get("guidance") or {}
        if saved.get("guidance_checkpoint"):
            cfg.guidance_checkpoint = saved["guidance_checkpoint"]


def _open_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Make the run dir, drop the temp files of saves killed mid-write in an earlier start, and write the config
    (once: a resumed run keeps the record it started with, which the resume was checked against)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"could not make run dir {run_dir} (--out): {e.strerror or e}; choose another --out") \
            from None
    remove_stale_temp_files(run_dir)
    if not (run_dir / "config.yaml").exists():
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))


class Stepper:
    """How a group of runs takes one training step. This one: each run alone, one after another (a group of one
    is a plain run); :class:`modzoo.run.stacked.StackedStepper` takes the step for all seeds at once."""

    mode = "lockstep"

    def __init__(self, runs: list[ActiveRun]) -> None:
        self.runs = runs

    def guidance_step(self, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        return [run.guidance.update(b) for run, b in zip(self.runs, batches)]

    def joint_guidance_step(self, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        return [run.guidance.update(b, run.policy) for run, b in zip(self.runs, batches)]

    def policy_step(self, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        return [run.policy.update(b, run.guidance) for run, b in zip(self.runs, batches)]

    def sync(self) -> None:
        """Bring each run's own halves up to date (a no-op here: they are the ones being trained)."""

    def frozen_guidance(self) -> None:
        """The guidance phase ended and each run's guidance was frozen."""


@dataclass
class _PhaseClock:
    """Time spent in a phase, per run. Interim evaluations run inside the phase but are not training: their time
    is kept apart, so that a phase's wall_s is the cost of its updates (an IDQL evaluation can take as long as
    2500 steps). ``prior``: what a resumed phase had already spent."""

    prior: list[dict[str, float]]
    eval_s: list[float]
    eval_cpu: list[float]
    evals: int = 0

    @classmethod
    def start(cls, runs: list[ActiveRun], resumed: bool) -> "_PhaseClock":
        return cls([run.phase_time if resumed else {} for run in runs], [0.0] * len(runs), [0.0] * len(runs))

    def times(self, i: int, meter: PhaseMeter) -> dict[str, float]:
        prior = self.prior[i]
        t = {"train_s": prior.get("train_s", 0.0) + meter.elapsed() - sum(self.eval_s),
             "eval_s": prior.get("eval_s", 0.0) + self.eval_s[i],
             "evals": prior.get("evals", 0) + self.evals}
        # a state saved without CPU time cannot give the whole phase's: then none rather than a part
        if not prior or "train_cpu_s" in prior:
            t["train_cpu_s"] = prior.get("train_cpu_s", 0.0) + meter.cpu_elapsed() - sum(self.eval_cpu)
            t["eval_cpu_s"] = prior.get("eval_cpu_s", 0.0) + self.eval_cpu[i]
        return t


def _train_step(runs: list[ActiveRun], stepper: Stepper, ph: str, joint: bool, step: int, pbs: int, gbs: int,
                delay: int) -> list[dict[str, Any]]:
    """One update of every run of the group, its metrics keyed ``guidance/...`` and ``policy/...``: the
    guidance alone in its own phase; in a joint policy phase the guidance first (after ``guidance_delay`` steps),
    then the policy."""
    if ph == "guidance":
        gm = stepper.guidance_step([run.buffer.sample(gbs) for run in runs])
        return [{f"guidance/{k}": v for k, v in m.items()} for m in gm]
    ms: list[dict[str, Any]] = [{} for _ in runs]
    batches = [run.buffer.sample(max(pbs, gbs) if joint else pbs) for run in runs]
    if joint and not runs[0].guidance.frozen and step >= delay:
        # one batch per step; the critic takes its first gbs rows (IDQL slices 512 -> 256)
        gbatches = [b if gbs >= len(b["rewards"]) else {k: v[:gbs] for k, v in b.items()} for b in batches]
        for m, gm in zip(ms, stepper.joint_guidance_step(gbatches)):
            m.update({f"guidance/{k}": v for k, v in gm.items()})
        if pbs < gbs:
            batches = [{k: v[:pbs] for k, v in b.items()} for b in batches]
    for m, pm in zip(ms, stepper.policy_step(batches)):
        m.update({f"policy/{k}": v for k, v in pm.items()})
    return ms


def _interim_eval(runs: list[ActiveRun], stepper: Stepper, step: int, clock: _PhaseClock,
                  on_eval: Callable[[int, Any], None] | None) -> None:
    """Evaluate every run of the group at ``step`` of its policy phase, timed apart from training."""
    stepper.sync()
    clock.evals += 1
    for i, run in enumerate(runs):
        t_ev, c_ev = time.perf_counter(), time.process_time()
        ev = evaluate(run.policy, run.guidance, run.r.task, int(run.r.eval_episodes), int(run.r.seed))
        clock.eval_s[i] += time.perf_counter() - t_ev
        clock.eval_cpu[i] += time.process_time() - c_ev
        run.log.log({"phase": "eval", "step": step, "normalized_mean": ev.normalized_mean,
                     "normalized_std": ev.normalized_std, "return_mean": ev.mean})
        if on_eval:
            on_eval(step, ev)


def _phase_record(meter: PhaseMeter, t: dict[str, float], total: int, first: int, stepper: Stepper,
                  n_runs: int) -> dict[str, Any]:
    """What ``result.json`` says about one finished phase of one run."""
    cpu = {"cpu_s": t["train_cpu_s"], "eval_cpu_s": t["eval_cpu_s"]} if "train_cpu_s" in t else {}
    return {**{k: v for k, v in meter.result.items() if k != "cpu_s"}, **cpu,
            "wall_s": t["train_s"], "eval_wall_s": t["eval_s"], "evals": int(t["evals"]), "steps": total,
            **({"resumed_at": first} if first else {}),
            **({"seeds_together": n_runs, "stack": stepper.mode} if n_runs > 1 else {})}


def train_group(runs: list[ActiveRun], stepper: Stepper, progress: bool,
                on_eval: Callable[[int, Any], None] | None = None) -> list[RunResult]:
    """The training loop for runs that share a config but their seeds (a lone run is a group of one).

    Every run keeps its own run dir, log, checkpoints and evaluation; only the step itself goes through
    ``stepper``. Before anything reads a run's halves (evaluation, a checkpoint) the stepper syncs them.
    """
    lead = runs[0]
    r, cfg, schedule = lead.r, lead.cfg, lead.schedule
    save_every, log_every = int(r.save_every or 0), max(1, int(r.log_every))
    eval_every = int(r.eval_every or 0)
    delay = int(r.get("guidance_delay", 0) or 0)
    pbs = int(cfg.policy.batch_size) if lead.has_policy else 0
    gbs = int(cfg.guidance.batch_size) if cfg.guidance and "batch_size" in cfg.guidance else pbs
    order = [p for p, _ in lead.plan]
    phase, start_step = lead.phase, lead.start_step
    tag = f" x{len(runs)} seeds" if len(runs) > 1 else ""
    for ph, total in lead.plan:
        if phase in order and order.index(ph) < order.index(phase):
            continue  # finished before the interruption
        first = start_step if ph == phase else 0
        if first >= total:
            continue  # finished before the interruption (which came after it); its record is in the phases
        joint = ph == "policy" and schedule == "joint"
        clock = _PhaseClock.start(runs, resumed=ph == phase)
        with PhaseMeter(ph if not joint else "joint", lead.device) as meter:
            bar = progress_bar(range(first, total), desc=f"{ph}{' (joint)' if joint else ''}{tag}",
                               disable=not progress, initial=first, total=total, dynamic_ncols=True)
            for step in bar:
                ms = _train_step(runs, stepper, ph, joint, step, pbs, gbs, delay)
                if (step + 1) % log_every == 0 or step + 1 == total:
                    for run, m in zip(runs, ms):
                        run.log.log({"phase": ph, "step": step + 1, **{k: float(v) for k, v in m.items()}})
                    bar.set_postfix({k.split("/")[-1]: f"{float(v):.3g}" for k, v in list(ms[0].items())[:3]})
                if ph == "policy" and eval_every and (step + 1) % eval_every == 0 and step + 1 < total:
                    _interim_eval(runs, stepper, step + 1, clock, on_eval)
                if save_every and (step + 1) % save_every == 0 and step + 1 < total:
                    stepper.sync()
                    for i, run in enumerate(runs):
                        run.save_state(ph, step + 1, clock.times(i, meter))
            bar.close()
        stepper.sync()
        for i, run in enumerate(runs):
            run.result.phases.append(_phase_record(meter, clock.times(i, meter), total, first, stepper, len(runs)))
            if (ph == "guidance" or joint) and run.run_dir is not None:
                save_half(run.guidance, run.run_dir / "guidance.pt", run.meta)
            if ph == "guidance":
                run.guidance.freeze()
        if ph == "guidance":
            stepper.frozen_guidance()
        for run in runs:
            run.save_state(ph, total)
        phase, start_step = None, 0
    return [_finish(run, progress) for run in runs]


def final_episodes(r: Any) -> int:
    """Episodes of a run's final evaluation: ``final_eval_episodes``, or ``eval_episodes`` when that is unset."""
    n = r.get("final_eval_episodes")
    return int(r.eval_episodes if n is None else n)


def _finish(run: ActiveRun, progress: bool) -> RunResult:
    """Final checkpoints, the final evaluation and ``result.json``; removes the resume state."""
    r, guidance, policy, run_dir, result = run.r, run.guidance, run.policy, run.run_dir, run.result
    if run_dir is not None:
        if not (run_dir / "guidance.pt").exists() or run.schedule == "pretrained":
            save_half(guidance, run_dir / "guidance.pt", run.meta)
        if policy is not None:
            save_half(policy, run_dir / "policy.pt", run.meta)
    episodes = final_episodes(r)
    if policy is not None and r.final_eval and episodes > 0:
        with PhaseMeter("eval", run.device) as meter:
            result.eval = evaluate(policy, guidance, r.task, episodes, int(r.seed), progress=progress)
        result.phases.append({**meter.result, "episodes": episodes})
        run.log.log({"phase": "eval", "step": int(r.policy_steps), "normalized_mean": result.eval.normalized_mean,
                     "normalized_std": result.eval.normalized_std, "return_mean": result.eval.mean})
    if run_dir is not None:
        cfg = run.cfg
        summary = {"task": r.task, "guidance": cfg.guidance.get("name") if cfg.guidance else None,
                   "policy": cfg.policy.get("name") if run.has_policy else None, "schedule": run.schedule,
                   "seed": int(r.seed), "dataset": run.meta, "phases": result.phases,
                   "guidance_steps": guidance.steps, "policy_steps": policy.steps if policy else 0,
                   "parameters": {"guidance": n_params(guidance), "policy": n_params(policy) if policy else 0},
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if cfg.get("guidance_checkpoint"):
            summary["guidance_checkpoint"] = {**to_dict(cfg.guidance_checkpoint),
                                              "config": {k: v for k, v in to_dict(cfg.guidance).items()
                                                         if k != "name"}}
        if result.eval is not None:
            summary["eval"] = result.eval.to_dict()
            summary["normalized_score"] = float(result.eval.normalized_mean)
        atomic_write_text(run_dir / "result.json", json.dumps(summary, indent=2))
        if run.state_path is not None:
            run.state_path.unlink(missing_ok=True)
    run.log.close()
    return result


def train(cfg: DictConfig, dataset: Any = None, *, progress: bool = True, resume: bool = False,
          guidance: GuidanceModule | None = None,
          on_eval: Callable[[int, Any], None] | None = None) -> RunResult:
    """Train per ``cfg`` (see :func:`run_config`) and, if ``run.out`` is set, write the run dir.

    ``dataset`` defaults to ``run.dataset`` (a path) or the task's file in the D4RL cache. ``guidance`` may be
    passed in already built (library use of the ``pretrained`` schedule). ``resume`` continues the unfinished run
    in ``run.out`` under the config its ``config.yaml`` records: a ``cfg`` that differs is refused with the
    difference, and a finished run raises :class:`~modzoo.errors.AlreadyFinished` with no file changed.
    """
    run = setup_run(cfg, dataset, resume, guidance)
    try:
        return train_group([run], Stepper([run]), progress, on_eval)[0]
    finally:
        run.log.close()  # an interrupted run's TensorBoard / W&B files keep what was logged up to then


def load_policy_and_guidance(policy_ckpt: str | Path, guidance_ckpt: str | Path | None = None,
                             device: str | torch.device = "cpu", task: str | None = None
                             ) -> tuple[DiffusionPolicy, GuidanceModule | None]:
    """For ``modzoo eval``: a policy checkpoint and the guidance that ranks its candidates.

    Without ``guidance_ckpt`` the run's own ``guidance.pt`` beside the policy is used when present. ``task``: the
    env it will act in, checked against the policy's dims before anything else is loaded.
    """
    device = resolve_device(str(device))
    policy = load_checkpoint(policy_ckpt, device, kind="policy")
    if task:
        check_policy_fits_env(policy, task)
    gpath = Path(guidance_ckpt) if guidance_ckpt else Path(policy_ckpt).with_name("guidance.pt")
    guidance = None
    if not guidance_ckpt and not gpath.exists():
        _warn_no_guidance(policy, policy_ckpt, gpath)
    else:
        guidance = load_checkpoint(gpath, device, kind="guidance")
        missing = policy.needs - guidance.provides
        if missing:
            raise CheckpointError(f"guidance {gpath} ({guidance.algorithm}) lacks {sorted(missing)}, which policy "
                                  f"{policy.algorithm!r} needs to select actions")
        meta = getattr(policy, "dataset_meta", {})
        check_guidance_fits(guidance, policy.obs_dim, policy.act_dim, meta.get("fingerprint"), meta.get("name"))
        guidance.freeze()
    return policy, guidance


def _warn_no_guidance(policy: DiffusionPolicy, policy_ckpt: str | Path, looked: Path) -> None:
    """A policy that ranks candidates, found without its guidance (moved out of its run dir), still evaluates, but
    as one unranked sample per state: say so, since its score is then not the run's."""
    n = int(policy.cfg.get("candidates", 1) or 1)
    if n > 1:
        warnings.warn(f"no guidance found for {policy_ckpt} (no --guidance, and no {looked}): policy "
                      f"{policy.algorithm!r} acts with one sample per state instead of ranking {n} candidates; pass "
                      f"--guidance PATH to rank them", stacklevel=3)
