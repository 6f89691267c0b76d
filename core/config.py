"""Run configuration with omegaconf: plugin defaults, per-task overrides, then the user's ``key=value``.

Struct mode makes a misspelt key an error that names the key and the keys that do exist. The resolved config of
a run is saved as ``config.yaml`` in its run dir, so the run can be repeated or resumed from it alone.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError

SCHEDULES = ("joint", "guidance-first", "pretrained")

#: the ``run:`` section: everything about a run that is not an algorithm's hyperparameter.
RUN_DEFAULTS: dict[str, Any] = {
    "task": "bullet-hopper-medium-v0",
    "dataset": None,          # a path; null: the task's file in the D4RL cache dir
    "schedule": "joint",
    "guidance_ckpt": None,    # for schedule=pretrained
    "guidance_steps": 1000,   # guidance-first: steps before freezing
    "policy_steps": 1000,     # policy steps (joint: steps of both halves)
    "guidance_delay": 0,      # joint only: keep the critic frozen at its random init for the first K steps
                              # (the GFDT paper's "random guidance" necessity variant)
    "eval_every": 0,          # evaluate every E policy steps (0: only at the end)
    "eval_episodes": 10,
    "final_eval": True,
    "seed": 0,
    "device": "auto",
    "threads": None,          # torch intra-op threads; null: torch's default. Use 1 per process when several
                              # processes share the cores: spinning thread pools slow a step down up to 50x.
    "out": None,
    "log_every": 100,
    "save_every": 0,          # 0: save training state only at phase ends
}


def half_config(defaults: dict[str, Any], task: str | None = None) -> dict[str, Any]:
    """A half's defaults with its ``task_overrides`` for ``task`` applied (patterns in fnmatch syntax)."""
    cfg = dict(defaults)
    overrides = cfg.pop("task_overrides", None) or {}
    if task:
        for pattern, values in overrides.items():
            if fnmatch.fnmatch(task, pattern):
                unknown = set(values) - set(cfg)
                if unknown:
                    raise ConfigError(f"task_overrides[{pattern!r}] sets unknown keys {sorted(unknown)}")
                cfg.update(values)
    return cfg


def parse_overrides(items: Iterable[str]) -> list[str]:
    """Check ``key=value`` items (the value is parsed by omegaconf as YAML: numbers, lists, null ...)."""
    out = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. policy.eta=2.0 or run.eval_every=500)")
        out.append(item)
    return out


def build_run_config(guidance: dict[str, Any], policy: dict[str, Any], run: dict[str, Any],
                     overrides: Iterable[str] = ()) -> DictConfig:
    """Merge the three sections and the user's dotted overrides in struct mode."""
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
    if cfg.run.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {cfg.run.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return cfg


def to_dict(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
