"""Run configuration with omegaconf: plugin defaults, per-task overrides, a named preset, then ``key=value``. Struct
mode makes a misspelt key an error naming the keys that exist; the resolved config (``config.yaml``) alone repeats or
resumes the run.
"""
from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ..contract.registry import renamed_keys
from ..errors import ConfigError

SCHEDULES = ("joint", "guidance-first", "pretrained")

#: the ``run:`` section: everything about a run that is not an algorithm's hyperparameter.
RUN_DEFAULTS: dict[str, Any] = {
    "task": "bullet-hopper-medium-v0",
    "preset": None,           # a named preset (core/run/presets/NAME.yaml) merged over the halves' defaults
    "dataset": None,          # a path; null: the task's file in the D4RL cache dir
    "schedule": "joint",
    "guidance_ckpt": None,    # for schedule=pretrained
    "guidance_steps": 1000,   # guidance-first: steps before freezing
    "policy_steps": 1000,     # policy steps (joint: steps of both halves)
    "guidance_delay": 0,      # joint only: critic frozen at its random init for K steps (GFDT's "random guidance")
    "eval_every": 0,          # evaluate every E policy steps (0: only at the end)
    "eval_episodes": 10,      # episodes of each interim evaluation (and of the final one unless set below)
    "final_eval_episodes": None,  # episodes of the final evaluation; null: eval_episodes
    "final_eval": True,
    "seed": 0,
    "device": "auto",
    "threads": 1,             # torch threads (null: one per core); one is fastest (docs/performance.md, "threads")
    "out": None,
    "log_every": 100,
    "logger": "jsonl",        # extra sinks besides metrics.jsonl, comma-separated: tensorboard, wandb (.loggers)
    "wandb_project": "modzoo",  # the W&B project of run.logger=wandb
    "save_every": 0,          # also save the resume state every N steps (0: by save_every_s and at phase ends)
    "save_every_s": 600,      # and every this many seconds (0: never): what a kill -9 can cost (docs/runs.md)
    "on_nonfinite": "stop",   # a NaN/Inf loss or guidance value: stop (keeping the last good state) or warn
}


def task_layers(task_overrides: dict[str, Any] | None, task: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The ``task_overrides`` entries (of a plugin YAML or a preset) whose fnmatch pattern matches ``task``."""
    return [(pattern, values) for pattern, values in (task_overrides or {}).items()
            if task and fnmatch.fnmatch(str(task), pattern)]


def half_config(defaults: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """A half's defaults with its ``task_overrides`` for ``task`` applied (patterns in fnmatch syntax)."""
    cfg = dict(defaults)
    for pattern, values in task_layers(cfg.pop("task_overrides", None), task):
        unknown = set(values) - set(cfg)
        if unknown:
            raise ConfigError(f"task_overrides[{pattern!r}] sets unknown keys {sorted(unknown)}")
        cfg.update(values)
    return cfg


#: Presets shipped with modzoo: one YAML each, its values cited key by key.
PRESET_DIR = Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (``gfdt-authors``) or YAML path: optional ``run:`` values and, under ``guidance:`` and
    ``policy:``, values per plugin name (each may carry ``task_overrides``)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(preset_names()) or 'none'} (or a path to a "
                          f"preset YAML file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    extra = set(data) - {"name", "description", "run", "guidance", "policy"}
    if not isinstance(data, dict) or extra:
        raise ConfigError(f"preset {path}: unknown sections {sorted(extra)}; a preset has run, guidance, policy")
    return data


def apply_preset(cfg: dict[str, Any], preset: dict[str, Any], kind: str, name: str | None, task: str | None
                 ) -> dict[str, Any]:
    """``cfg`` (a half's defaults) with the preset's values for plugin ``name`` and their task overrides; a key the
    half lacks is an error naming the preset and the key."""
    values = dict(((preset.get(kind) or {}).get(name) or {}) if name else {})
    if not values:
        return cfg
    values = renamed_keys(kind, values, f"preset {preset.get('name', '?')!r} ({kind} {name})")
    layers = [values] + [v for _, v in task_layers(values.pop("task_overrides", None), task)]
    out = dict(cfg)
    for layer in layers:
        unknown = set(layer) - set(cfg)
        if unknown:
            raise ConfigError(f"preset {preset.get('name', '?')!r} sets {kind} {name!r} keys {sorted(unknown)} that "
                              f"it does not have; keys: {', '.join(sorted(k for k in cfg if k != 'name'))}")
        out.update(layer)
    return out


def parse_overrides(items: Iterable[str]) -> list[str]:
    """Check ``key=value`` items (values parsed as YAML); a renamed key
    (:data:`~modzoo.contract.registry.RENAMED_KEYS`) is read under its new name, with a notice."""
    out = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. policy.eta=2.0 or run.eval_every=500)")
        key, value = item.split("=", 1)
        kind, _, name = key.partition(".")
        new = renamed_keys(kind, {name: None}, f"override {item!r}") if name else {}
        out.append(f"{kind}.{next(iter(new))}={value}" if new and name not in new else item)
    return out


def build_run_config(guidance: dict[str, Any], policy: dict[str, Any], run: dict[str, Any],
                     overrides: Iterable[str] = ()) -> DictConfig:
    """Merge the sections and dotted overrides in struct mode. An unknown ``run`` key is refused: merged in, it would
    be recorded while the run used the default (``polcy_steps: 50000`` trained 1000 steps)."""
    unknown = [k for k in run if k not in RUN_DEFAULTS]
    if unknown:
        raise ConfigError(f"unknown config key 'run.{unknown[0]}'; keys in 'run': {', '.join(RUN_DEFAULTS)}")
    base = OmegaConf.create({"run": {**RUN_DEFAULTS, **run}, "guidance": guidance, "policy": policy})
    OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(parse_overrides(overrides)))
    except (ConfigAttributeError, ConfigKeyError) as e:
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        section = str(key).split(".")[0]
        known = list(base[section].keys()) if section in base else list(base.keys())
        raise ConfigError(f"unknown config key {key!r}; keys in '{section}': {', '.join(map(str, known))}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config override: {str(e).splitlines()[0]}") from None
    return cfg


def to_dict(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


# Keys added after runs had been made, each with the value that reproduces the code from before the key: a saved
# config without the key matches one holding that value. Add a key here only with that guarantee.
ADDED_KEYS: dict[str, Any] = {
    "guidance.obs_norm": "none", "policy.obs_norm": "none", "policy.act_temperature": 1.0,
    "guidance.target_every": 1, "guidance.update_every": 1, "guidance.init": "torch", "policy.init": "torch",
    "policy.cond_dim": 0, "policy.cond_emb": 32, "run.logger": "jsonl", "run.wandb_project": "modzoo",
    "policy.act_sampler": "trained", "policy.sample_steps": 0, "policy.ddim_eta": 0.0,
    "policy.time_embed": "learned",
    # before these: no timed saves, no guard (closest: warn); neither changes a trained number (RESUME_MAY_CHANGE)
    "run.save_every_s": 0, "run.on_nonfinite": "warn",
}

_ABSENT = object()


def config_diff(saved: Mapping[str, Any], now: Mapping[str, Any],
                skip: Callable[[str, Any, Any], bool] = lambda name, old, new: False) -> list[str]:
    """How config ``now`` differs from ``saved`` (plain dicts), as ``"policy.lr: 0.0003 -> 0.001"`` lines;
    ``skip(name, old, new)`` leaves a key out. A key ``saved`` lacks is no difference when ``now`` holds its
    :data:`ADDED_KEYS` value or null."""
    out = []
    for section in ("run", "guidance", "policy"):
        old, new = renamed_keys(section, saved.get(section) or {}), now.get(section) or {}
        for key in sorted(set(old) | set(new)):
            name = f"{section}.{key}"
            added = key not in old and new.get(key) in (None, ADDED_KEYS.get(name, _ABSENT))
            if not added and old.get(key) != new.get(key) and not skip(name, old.get(key), new.get(key)):
                out.append(f"{name}: {old.get(key)!r} -> {new.get(key)!r}")
    return out


def frozen(cfg: DictConfig) -> DictConfig:
    """``cfg`` made read-only: a setting changed after validation would run unchecked, and the record could say
    another thing than the run did. Derive a changed one with :func:`derived`."""
    OmegaConf.set_readonly(cfg, True)
    return cfg


def derived(cfg: DictConfig, **sections: Any) -> DictConfig:
    """A frozen copy of ``cfg`` with top-level ``sections`` replaced or added (a pretrained run's guidance)."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    with open_dict(out):
        for key, value in sections.items():
            out[key] = value
    return frozen(out)
