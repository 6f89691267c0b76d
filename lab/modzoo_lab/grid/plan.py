"""Experiment plans: which runs and swaps a grid YAML asks for, and whether a run dir still matches it.

An experiment is a YAML file in ``lab/experiments/`` (see ``lab/experiments/gfdt-cpu.yaml``). Each arm names a
guidance, a policy, a schedule, and optional config overrides; an arm may reuse another arm's guidance of the same
task and seed (``guidance_from``), which is the GFDT way to spend compute: one guidance, many policies. After training,
``swaps`` evaluate finished policies with a second, independently trained guidance ranking their candidates.
:mod:`modzoo_lab.grid.runner` executes a plan; :mod:`modzoo_lab.grid.report` reads what it leaves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from modzoo.blocks.policy import behaviour_split
from modzoo.blocks.selection import RULES
from modzoo.bullet.data import load_dataset
from modzoo.errors import ConfigError, ModzooError
from modzoo.run.config import config_diff
from modzoo.run.training import final_episodes, run_config

from .check import check_structure, read_experiment

EXPERIMENT_DIRS = (Path("lab/experiments"),)


@dataclass
class RunSpec:
    """One cell of the grid, as plain data (it crosses process and Ray boundaries)."""

    task: str
    arm: str
    seed: int
    out: str
    guidance: str
    policy: str
    schedule: str
    overrides: list[str] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    guidance_from: str | None = None  # out dir of the run whose guidance.pt this one uses
    summaries: str | None = None

    @property
    def data_source(self) -> str:
        """What the run's ``load_dataset`` reads: its ``dataset`` path, else its task's file."""
        return str(self.run.get("dataset") or self.task)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.arm}/seed{self.seed}"


def find_experiment(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    if p.is_file():
        raise ConfigError(f"{name} is not an experiment file: give a .yaml or .yml file, or an experiment's name")
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise ConfigError(f"no experiment file {name}: check the path, or give the name of one in lab/experiments/")
    for d in EXPERIMENT_DIRS:
        for cand in (d / f"{name}.yaml", d / f"{name}.yml"):
            if cand.exists():
                return cand
    known = sorted(q.stem for d in EXPERIMENT_DIRS if d.exists() for q in d.glob("*.yaml"))
    raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(known) or 'none'} (in lab/experiments/) or "
                      f"give a path to a YAML file")


def load_experiment(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The experiment config with ``key=value`` overrides (struct mode: a misspelt key is an error)."""
    path = find_experiment(name)
    cfg = read_experiment(path)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # omegaconf raises several types for unknown keys and bad values
        raise ConfigError(f"experiment {name}: bad override ({str(e).splitlines()[0]})") from None
    check_experiment(cfg, path)
    return cfg


def check_experiment(exp: DictConfig, source: Path | str) -> None:
    """The whole experiment checked before any run starts (:mod:`modzoo_lab.grid.check`): its keys and shapes, the
    experiment it is shown beside, then every (task, arm)'s run config as the runs will build it, and its swaps."""
    check_structure(exp, source)
    other = (exp.get("beside") or {}).get("experiment")
    if other:
        try:
            find_experiment(str(other))
        except ConfigError as e:
            raise ConfigError(f"experiment {source}: beside: {e}") from None
    cells = {}
    for s in plan(exp):
        cells.setdefault((s.task, s.arm), s)
    for (task, arm), s in cells.items():  # the seed changes no check: one config per task and arm
        try:
            spec_config(s)
        except ModzooError as e:
            raise ConfigError(f"experiment {source}: arm {arm!r} on {task}: {e}") from None
    swap_jobs(exp)


def plan(exp: DictConfig) -> list[RunSpec]:
    """Every run of the grid, seed-major (seed 0 of every arm first, so a partial grid already compares all
    arms), with the ``guidance_from`` arms after the arms whose guidance they reuse."""
    arms = OmegaConf.to_container(exp.arms, resolve=True)
    budget = OmegaConf.to_container(exp.budget, resolve=True)
    out_root = Path(exp.out)
    for a, arm in arms.items():
        src = arm.get("guidance_from")
        if src and (src not in arms or arms[src].get("guidance_from")):
            raise ConfigError(f"arm {a!r}: guidance_from {src!r} must name an arm of this experiment that trains "
                              f"its own guidance ({', '.join(a2 for a2 in arms if not arms[a2].get('guidance_from'))})")
    # arms that reuse a guidance go last within their seed, so their source has usually finished by then
    order = [a for a in arms if not arms[a].get("guidance_from")] + [a for a in arms if arms[a].get("guidance_from")]
    specs: list[RunSpec] = []
    for seed in exp.seeds:
        for task in exp.tasks:
            for a in order:
                arm = arms[a]
                out = out_root / task / a / f"seed{seed}"
                src = arm.get("guidance_from")
                specs.append(RunSpec(
                    task=task, arm=a, seed=int(seed), out=str(out), guidance=arm["guidance"], policy=arm["policy"],
                    schedule="pretrained" if src else arm.get("schedule", "joint"),
                    overrides=list(arm.get("overrides", [])),
                    run={**budget, **({"preset": arm["preset"]} if arm.get("preset") else {}), **arm.get("run", {})},
                    guidance_from=str(out_root / task / src / f"seed{seed}") if src else None,
                    summaries=str(Path(exp.summaries) / task / a / f"seed{seed}")))
    return specs


def spec_config(s: RunSpec, **run: Any) -> DictConfig:
    """The run config a grid cell trains with (``run``: settings known only when it starts, such as the
    checkpoint of the guidance it reuses)."""
    return run_config(s.guidance, s.policy, s.task, s.overrides, schedule=s.schedule, seed=s.seed, out=s.out,
                      **{**s.run, **run})


def is_finished(out: str | Path) -> bool:
    return (Path(out) / "result.json").exists()


# Filled in by training's setup whatever the defaults say (the halves' seed from run.seed, decay horizons from the
# budget), path-like, or how a run saves and guards itself (no trained number depends on those): not settings a
# changed default can alter.
_NOT_COMPARED = {"seed", "lr_decay_steps", "guidance_ckpt", "out", "save_every_s", "on_nonfinite"}


def config_drift(s: RunSpec, path: str | Path | None = None) -> list[str]:
    """How a run dir's saved ``config.yaml`` differs from the config this grid would start it with now, as
    ``"policy.selection: expectile -> argmax"`` lines (empty when it matches or the dir has none).

    A finished or half-trained run made under other defaults or overrides must not be skipped or resumed into a
    grid whose other runs use the new ones: the report would mix two configs without saying so. A ``pretrained``
    run's guidance settings are not compared: its config records the checkpoint's own (what trained), and a change
    to them shows as drift of the run that trained that guidance, which makes this one stale too (``stale_runs``).
    """
    path = Path(path) if path is not None else Path(s.out) / "config.yaml"  # (or a summary's copy of it)
    if not path.exists():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    now = OmegaConf.to_container(spec_config(s), resolve=True)
    policy = now.get("policy") or {}
    if isinstance(policy.get("behaviour_steps"), float):  # saved as the step count the trainer made of it
        policy["behaviour_steps"] = behaviour_split(policy["behaviour_steps"], int(now["run"]["policy_steps"]))
    return config_diff(saved, now, lambda name, old, new: name.split(".")[1] in _NOT_COMPARED
                       or new is None and name.startswith("run.")
                       or s.schedule == "pretrained" and name.startswith("guidance.") and name != "guidance.name")


def _fingerprint_reader() -> Callable[[RunSpec], str | None]:
    """The fingerprint of the data a run would load now, read once per dataset (None if it cannot load: the run
    itself will say what is wrong with it)."""
    fingerprints: dict[str, str | None] = {}

    def current(s: RunSpec) -> str | None:
        key = s.data_source
        if key not in fingerprints:
            try:
                fingerprints[key] = load_dataset(key, task=s.task).fingerprint
            except Exception:
                fingerprints[key] = None
        return fingerprints[key]
    return current


def _data_drift(result: Path, current: Callable[[RunSpec], str | None], s: RunSpec) -> list[str]:
    """``["dataset: fingerprint A -> B"]`` when a finished run's ``result.json`` was made from other data than
    the run would load now (a re-collected dataset), else empty."""
    return _fingerprint_drift((json.loads(result.read_text()).get("dataset") or {}).get("fingerprint"), current, s)


def _fingerprint_drift(was: str | None, current: Callable[[RunSpec], str | None], s: RunSpec,
                       what: str = "") -> list[str]:
    now = current(s) if was else None
    return [f"dataset: fingerprint {was} -> {now}{what}"] if was and now and was != now else []


def _state_data_drift(state: Path, current: Callable[[RunSpec], str | None], s: RunSpec) -> list[str]:
    """:func:`_data_drift` for an interrupted run, from the fingerprint its ``train_state.pt`` saved (memory-mapped:
    the halves' tensors are not read). A state that cannot be read is left to the run to report."""
    import torch

    try:
        st = torch.load(state, map_location="cpu", weights_only=True, mmap=True)
        was = ((st.get("guidance") or {}).get("dataset") or {}).get("fingerprint")
    except Exception:
        return []
    return _fingerprint_drift(was, current, s, " (an interrupted run)")


def stale_runs(specs: list[RunSpec]) -> dict[str, list[str]]:
    """``config_drift`` of every run of a grid, by out dir, checked before any job starts; a run that reuses a
    stale run's guidance (``guidance_from``) is stale too, even if its own settings did not change."""
    out: dict[str, list[str]] = {}
    current = _fingerprint_reader()
    for s in specs:  # plan() puts the runs that reuse a guidance after the run they take it from
        drift = config_drift(s)
        res, state = Path(s.out) / "result.json", Path(s.out) / "train_state.pt"
        if res.exists():  # a finished run made from other data (a re-collected dataset) is stale too
            drift += _data_drift(res, current, s)
        elif state.exists():  # so is an interrupted one: resuming it would refuse, in a worker, hours in
            drift += _state_data_drift(state, current, s)
        if s.guidance_from and s.guidance_from in out:
            drift = [*drift, f"its guidance comes from {s.guidance_from}, which is stale"]
        if drift:
            out[s.out] = drift
    return out


def summary_only_runs(specs: list[RunSpec]) -> dict[str, Path]:
    """Runs finished on another machine, by out dir: their summary (``result.json`` and ``config.yaml``) is in
    the summaries folder, which is committed, but no run dir of theirs is here, so neither are their checkpoints.

    Such a run counts as finished: a fresh clone must not spend a grid's hours retraining what its summaries
    already report. It is kept only while it matches the grid as it is now (its summary's config and data
    fingerprint), while the run whose guidance it reused counts as finished too, and while no run that is still
    to train here needs its ``guidance.pt`` (that run's source is then retrained, as only a run dir holds a
    checkpoint). Swaps need both runs' checkpoints, so none pairs a summary-only run."""
    kept: dict[str, Path] = {}
    current = _fingerprint_reader()
    for s in specs:  # sources before the runs that reuse their guidance
        summary = Path(s.summaries) if s.summaries else None
        if summary is None or (Path(s.out) / "config.yaml").exists():  # started here: its run dir decides
            continue
        if not ((summary / "result.json").exists() and (summary / "config.yaml").exists()):
            continue
        if config_drift(s, summary / "config.yaml") or _data_drift(summary / "result.json", current, s):
            continue
        if s.guidance_from and s.guidance_from not in kept and not is_finished(s.guidance_from):
            continue
        kept[s.out] = summary
    for s in specs:  # still to train here: neither finished nor stale (a stale run is left alone, not resumed)
        if s.guidance_from in kept and s.out not in kept and not is_finished(s.out) and not config_drift(s):
            del kept[s.guidance_from]
    return kept


BEFORE = "before-rebuild"  # the committed summary of a run being rebuilt, set aside in its run dir


def runs_to_rebuild(exp: DictConfig, specs: list[RunSpec], kept: dict[str, Path],
                    finish_here: set[str], only: Sequence[str] = ()) -> list[RunSpec]:
    """The runs finished elsewhere (``kept``) to train again here so that the swaps they pair can run: each swap
    not yet recorded whose two runs finish here (``finish_here``) or are kept, and one of them is kept; and the
    kept runs whose guidance those reuse. In plan order (sources before the runs that reuse them).

    ``only``: glob patterns of run keys (``task/arm/seedN``): just the runs to rebuild that match one, so that a
    machine that holds its run dirs only for a session rebuilds the few that close some swaps, not all of them."""
    need: set[str] = set()
    for j in swap_jobs(exp):
        pair = {j["policy_run"], j["guidance_run"]}
        if (pair & set(kept) and pair <= finish_here | set(kept)
                and j["label"] not in recorded_swaps(j["policy_run"], kept)):
            need |= pair & set(kept)
    if only:
        keys = {s.out: s.key for s in specs if s.out in need}
        # a rebuild that started here before an interruption now has a run dir, so it resumes as a run to train
        started = [s.key for s in specs if (Path(s.out) / BEFORE).is_dir() and not is_finished(s.out)]
        for pattern in only:
            if not any(fnmatch(k, pattern) for k in [*keys.values(), *started]):
                raise ConfigError(f"--rebuild-only {pattern}: no run to rebuild matches it; those a swap still "
                                  f"needs: {', '.join(sorted(keys.values())) or 'none'}")
        need = {out for out, k in keys.items() if any(fnmatch(k, p) for p in only)}
    for s in reversed(specs):  # a run that reuses a guidance comes after its source
        if s.out in need and s.guidance_from in kept:
            need.add(s.guidance_from)
    return [s for s in specs if s.out in need]


def finished_elsewhere(exp: DictConfig, specs: list[RunSpec], rebuild_beside: dict[str, list[str]] | None,
                       only: Sequence[str] = ()) -> tuple[dict[str, Path], dict[str, Path], list[RunSpec]]:
    """The runs finished elsewhere, as a grid run and ``--status`` both see them: those kept as they are
    (:func:`summary_only_runs`), the summary folders of all of them (a rebuild that reproduces its summary carries
    that summary's swaps over), and the runs to rebuild (:func:`runs_to_rebuild`). ``rebuild_beside``: the stale
    runs (:func:`stale_runs`), which do not finish here, when rebuilding; None for no rebuild. ``only``: the
    rebuilds' key patterns (:func:`runs_to_rebuild`)."""
    kept = summary_only_runs(specs)
    summaries = dict(kept)
    rebuilds: list[RunSpec] = []
    if rebuild_beside is not None:
        here = {s.out for s in specs if s.out not in kept and s.out not in rebuild_beside}
        rebuilds = runs_to_rebuild(exp, specs, kept, here, only)
        for s in rebuilds:
            del kept[s.out]
    return kept, summaries, rebuilds


def recorded_swaps(policy_run: str, kept: dict[str, Path]) -> dict[str, Any]:
    """The swaps recorded for a policy run, by label: its run dir's ``swaps.json``, or its summary's for a run
    finished elsewhere (``kept``: :func:`summary_only_runs`)."""
    path = (kept.get(policy_run) or Path(policy_run)) / "swaps.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ---- inference-time swaps ---------------------------------------------------------------------------------
def swap_episodes(exp: DictConfig, arm: str) -> int:
    """Episodes of each swap of ``arm``'s policies: ``swaps.episodes`` (a number, or per arm with an optional
    ``default``), else the budget's final evaluation size. A swap is scored like a final evaluation."""
    eps = exp.swaps.get("episodes") if exp.get("swaps") else None
    if isinstance(eps, int):
        return eps
    if eps is not None and (arm in eps or "default" in eps):
        return int(eps[arm] if arm in eps else eps["default"])
    return final_episodes(exp.budget)


def swap_jobs(exp: DictConfig) -> list[dict[str, Any]]:
    """(policy run, guidance run, label) for every swap the experiment asks for: the policy ranked by another
    seed's guidance of the same arm, by another algorithm's, or by its own with another selection rule or a scaled
    softmax temperature."""
    if "swaps" not in exp or exp.swaps is None:
        return []
    sw = OmegaConf.to_container(exp.swaps, resolve=True)
    _check_swap_arms(exp, sw)
    seeds = [int(s) for s in exp.seeds]
    root = Path(exp.out)

    def job(task: str, arm: str, s: int, label: str, guidance_run: str | None = None,
            **extra: Any) -> dict[str, Any]:
        """Arm ``arm``'s seed-``s`` policy under ``label``, ranked by ``guidance_run`` (default: its own run's)."""
        run = str(root / task / arm / f"seed{s}")
        return {"policy_run": run, "guidance_run": guidance_run or run, "label": label, **extra, "task": task,
                "seed": s, "episodes": swap_episodes(exp, arm),
                "summaries": str(Path(exp.summaries) / task / arm / f"seed{s}")}
    jobs = []
    for task in exp.tasks:
        for arm in sw.get("other_seed", []) or []:
            if len(seeds) < 2:
                continue
            for i, s in enumerate(seeds):
                other = seeds[(i + 1) % len(seeds)]
                jobs.append(job(task, arm, s, "other_seed", str(root / task / arm / f"seed{other}")))
        for arm, garm in (sw.get("other_algorithm", {}) or {}).items():
            for s in seeds:
                jobs.append(job(task, arm, s, "other_algorithm", str(root / task / garm / f"seed{s}"),
                                guidance_arm=garm))
        # the run's own guidance under another selection rule: what the rule, not the critic, does to the score;
        # "none": no guidance at all, one sample of the policy (what the actor has learnt without a ranking)
        for arm, rules in (sw.get("selection", {}) or {}).items():
            for rule in [rules] if isinstance(rules, str) else rules:
                if rule not in (*RULES, "none"):
                    raise ConfigError(f"swaps.selection.{arm}: unknown rule {rule!r}; known: "
                                      f"{', '.join((*RULES, 'none'))}")
                jobs += [job(task, arm, s, f"selection={rule}", selection=rule) for s in seeds]
        # the run's own guidance and rule with the softmax temperature scaled: how greedy the ranking should be,
        # tested on the grid's own policies rather than tuned on one
        for arm, factors in (sw.get("temperature", {}) or {}).items():
            for f in _temperature_factors(arm, factors):
                jobs += [job(task, arm, s, f"temperature*{f:g}", temperature_scale=f) for s in seeds]
    return jobs


def _temperature_factors(arm: str, factors: Any) -> list[float]:
    """``swaps.temperature.<arm>``: one factor or a list, each a positive finite number."""
    out = []
    for f in factors if isinstance(factors, list) else [factors]:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < float("inf"):
            raise ConfigError(f"swaps.temperature.{arm}: {f!r} is not a positive number (the factor the policy's "
                              f"softmax temperature is multiplied by, e.g. [0.1, 0.01])")
        out.append(float(f))
    return out


def _check_swap_arms(exp: DictConfig, sw: dict[str, Any]) -> None:
    """Every arm a swap names is an arm of the grid, and a temperature swap's arm selects by softmax: one line
    before any job starts, not a swap that is silently left out or fails after the grid's hours of training."""
    arms = OmegaConf.to_container(exp.arms, resolve=True)
    named = [("other_seed", a) for a in sw.get("other_seed", []) or []]
    for kind in ("other_algorithm", "selection", "temperature"):
        named += [(kind, a) for a in (sw.get(kind, {}) or {})]
    named += [("other_algorithm", g) for g in (sw.get("other_algorithm", {}) or {}).values()]
    for kind, a in named:
        if a not in arms:
            raise ConfigError(f"swaps.{kind}: {a!r} is not an arm of this experiment; its arms: {', '.join(arms)}")
    temp = sw.get("temperature", {}) or {}
    if not temp:
        return
    specs = {(s.task, s.arm): s for s in plan(exp) if s.arm in temp}
    for (task, a), s in specs.items():
        rule = spec_config(s).policy.get("selection")
        if rule != "softmax":
            raise ConfigError(f"swaps.temperature.{a}: its policy selects by {rule!r} on {task}, and the "
                              f"temperature is the softmax rule's: add policy.selection=softmax to the arm, or drop "
                              f"the swap")
