"""An experiment YAML checked whole, before any of its runs starts.

A grid runs for hours, and each run builds its own config in a worker: a misspelt key, an override a plugin does
not have or a task that does not exist would otherwise surface as one FAILED line per run after the other runs had
trained, or not at all (an unknown top-level or swap key was read by nothing). Nothing here reads a dataset
or touches a run dir, so ``--status`` and ``--report-only`` get the same checks for free.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, NoReturn

import yaml
from omegaconf import DictConfig, OmegaConf

from modzoo.bullet.minari_data import is_minari_id
from modzoo.bullet.tasks import task_of
from modzoo.errors import ConfigError, EnvError

#: Top-level keys with what each is for; every one is read somewhere in :mod:`modzoo_lab.grid`.
KEYS: dict[str, str] = {
    "name": "the experiment's name", "description": "a paragraph for the report",
    "out": "run dirs (checkpoints)", "summaries": "per-run summaries the report reads", "report": "the report's path",
    "findings": "a markdown file spliced into the report",
    "reference": "{dir, arm, code} or a list of them: the authors' code beside an arm",
    "beside": "{experiment: NAME, at_steps: BOOL}: another grid's scores next to these", "backend": "local or ray",
    "workers": "runs in parallel", "isolate_runs": "a fresh process per run", "tasks": "task names",
    "seeds": "integer seeds", "budget": "run settings shared by every arm", "arms": "name -> {guidance, policy, ...}",
    "swaps": "inference-time swaps", "gfdt_pairs": "GFDT arm -> joint arm (or BESIDE_GRID/ARM)",
    "ray": "Ray backend settings",
}
REQUIRED = ("name", "out", "summaries", "report", "tasks", "seeds", "budget", "arms")
ARM_KEYS = ("guidance", "policy", "schedule", "preset", "overrides", "run", "guidance_from")
SWAP_KEYS = ("other_seed", "other_algorithm", "selection", "temperature", "episodes")
RAY_KEYS = ("address", "num_cpus", "cpus_per_run", "gpus_per_run")
#: The arm the reference check sits beside when ``reference`` names none.
REFERENCE_ARM = "dql-joint"
# the authors' codes a reference JSON can come from (lab/benchmarks/reference_score.py, reference_idql.py)
REFERENCE_CODES = ("dql", "idql")


def read_experiment(path: Path) -> DictConfig:
    """The file as a config, or one line saying where its YAML breaks (not the parser's traceback)."""
    try:  # OmegaConf's own YAML loader: it reads 1e-4 as a float where plain PyYAML reads a string
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"experiment {path}: not valid YAML{where} ({problem}); fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"experiment {path}: cannot be read ({e})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"experiment {path}: holds a {type(cfg).__name__}, not a mapping of keys (name, tasks, "
                          f"seeds, budget, arms, ...); see lab/experiments/gfdt-cpu.yaml")
    return cfg


def check_structure(exp: DictConfig, source: Path | str) -> None:
    """Every key known, every required one there, and each of the right shape; the arms and swaps name arms
    that exist."""
    def fail(msg: str) -> NoReturn:
        raise ConfigError(f"experiment {source}: {msg}")

    c = OmegaConf.to_container(exp, resolve=True)
    for key in c:
        if key not in KEYS:
            fail(f"unknown key {key!r}{_near(key, KEYS)}; known keys: {', '.join(KEYS)}")
    for key in REQUIRED:
        if c.get(key) in (None, "", [], {}):
            fail(f"missing {key!r} ({KEYS[key]}); see lab/experiments/gfdt-cpu.yaml")
    for key in ("name", "out", "summaries", "report"):
        if not isinstance(c[key], str):
            fail(f"{key!r} must be a string, got {c[key]!r}")
    tasks, seeds = c["tasks"], c["seeds"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        fail(f"'tasks' must be a list of task names, e.g. [bullet-hopper-medium-v0], got {tasks!r}")
    for t in tasks:
        if not is_minari_id(t):  # a Minari id is checked where its dataset is read: its metadata lives on disk
            try:
                task_of(t)
            except EnvError as e:
                fail(f"tasks: {e}")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in seeds):
        fail(f"'seeds' must be a list of non-negative integers, e.g. [0, 1, 2], got {seeds!r}")
    for what, values in (("tasks", tasks), ("seeds", seeds)):
        dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if dup is not None:
            fail(f"{what}: {dup!r} is listed twice; its runs would share one run dir")
    if not isinstance(c["budget"], dict):
        fail(f"'budget' must be a mapping of run settings (policy_steps: 50000, ...), got {c['budget']!r}")
    _check_arms(c["arms"], fail)
    arms = c["arms"]
    _check_mapping(c, "swaps", SWAP_KEYS, fail)
    _check_mapping(c, "ray", RAY_KEYS, fail)
    pairs = c.get("gfdt_pairs") or {}
    if not isinstance(pairs, dict):
        fail(f"'gfdt_pairs' must map a GFDT arm to its joint arm, e.g. {{idql-gf: idql-joint}}, got {pairs!r}")
    beside_name = c["beside"].get("experiment") if isinstance(c.get("beside"), dict) else None
    other = Path(str(beside_name)).stem if beside_name else None  # how a pair names the beside grid: OTHER/ARM
    for g, j in pairs.items():
        if isinstance(j, str) and "/" in j:  # the joint arm of the `beside` grid
            if j.rsplit("/", 1)[0] != other:
                fail(f"gfdt_pairs: {j!r} names another grid's arm; only the `beside` experiment's can be paired, as "
                     + (f"'{other}/ARM'" if other else "NAME/ARM with beside: {experiment: NAME}"))
            j = None
        for a in (g, j):
            if a is not None and a not in arms:
                fail(f"gfdt_pairs: {a!r} is not an arm of this experiment; its arms: {', '.join(arms)}")
    refs = c.get("reference")
    for ref in ([] if refs is None else refs if isinstance(refs, list) else [refs]):
        if not isinstance(ref, dict) or set(ref) - {"dir", "arm", "code"} or "dir" not in ref:
            fail(f"'reference' must be {{dir: FOLDER, arm: ARM, code: {'|'.join(REFERENCE_CODES)}}} (the arm the "
                 f"reference sits beside, the authors' code it ran), or a list of them, got {ref!r}")
        if ref.get("arm", REFERENCE_ARM) not in arms:
            fail(f"reference.arm: {ref.get('arm', REFERENCE_ARM)!r} is not an arm of this experiment; its arms: "
                 f"{', '.join(arms)}")
        if ref.get("code", "dql") not in REFERENCE_CODES:
            fail(f"reference.code: {ref.get('code')!r} is not one of {', '.join(REFERENCE_CODES)}")
    beside = c.get("beside")
    if beside is not None and (not isinstance(beside, dict) or "experiment" not in beside
                               or set(beside) - {"experiment", "at_steps"}
                               or not isinstance(beside.get("at_steps", False), bool)):
        fail(f"'beside' must be {{experiment: NAME, at_steps: true|false}}, got {beside!r}")
    if c.get("backend", "local") not in ("local", "ray"):
        fail(f"backend: {c['backend']!r} is not local or ray")
    workers = c.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        fail(f"workers: {workers!r} must be a whole number of parallel runs, at least 1")


def _check_arms(arms: Any, fail: Callable[[str], NoReturn]) -> None:
    if not isinstance(arms, dict):
        fail(f"'arms' must map an arm name to {{guidance: ..., policy: ..., ...}}, got {arms!r}")
    for name, arm in arms.items():
        if not isinstance(arm, dict):
            fail(f"arms.{name} must be a mapping {{guidance: ..., policy: ..., ...}}, got {arm!r}")
        for key in arm:
            if key not in ARM_KEYS:
                fail(f"arms.{name}: unknown key {key!r}{_near(key, ARM_KEYS)}; an arm's keys: {', '.join(ARM_KEYS)} "
                     f"(a setting of the run goes under its 'run', a config key under its 'overrides')")
        for key in ("guidance", "policy"):
            if not isinstance(arm.get(key), str):
                fail(f"arms.{name}: {key!r} must name a plugin (e.g. idql), got {arm.get(key)!r}")
        ov = arm.get("overrides", [])
        if not isinstance(ov, list) or not all(isinstance(o, str) and "=" in o for o in ov):
            fail(f"arms.{name}.overrides must be a list of key=value strings, e.g. [policy.candidates=64], got {ov!r}")
        if not isinstance(arm.get("run", {}), dict):
            fail(f"arms.{name}.run must be a mapping of run settings, got {arm['run']!r}")


def _check_mapping(c: dict[str, Any], key: str, known: Iterable[str], fail: Callable[[str], NoReturn]) -> None:
    value = c.get(key)
    if value is None:
        return
    if not isinstance(value, dict):
        fail(f"{key!r} must be a mapping, got {value!r}")
    for k in value:
        if k not in known:
            fail(f"{key}: unknown key {k!r}{_near(k, known)}; known: {', '.join(known)}")


def _near(key: str, known: Iterable[str]) -> str:
    from difflib import get_close_matches
    close = get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
