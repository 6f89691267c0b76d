"""One check of a run's inputs before any work: every config value's type and range, and the run dir. A bad value
must stop a run in seconds with one line naming the key and the fix, not after training nor from deep inside a net.
Types come from the halves' YAML defaults (so no plugin code is needed), ranges and choices from the tables below;
choices only a plugin knows stay with its constructor (also run before the run dir is made).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from ..blocks.diffusion import FAST_SAMPLERS, SAMPLERS
from ..blocks.diffusion import SCHEDULES as NOISE_SCHEDULES
from ..blocks.nets import ACTIVATIONS, INITS, TIME_EMBEDS
from ..blocks.sde import SDE_SAMPLERS
from ..blocks.selection import RULES
from ..contract.normalization import OBS_NORMS
from ..contract.registry import load_registry
from ..errors import ConfigError
from .checkpoint import existing_parent
from .config import RUN_DEFAULTS, SCHEDULES, to_dict
from .guard import ON_NONFINITE
from .halves import default_config
from .loggers import check_available


@dataclass(frozen=True)
class Rule:
    """The values a key accepts: an interval (each end closed, open or absent), or a set of names."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def problem(self, value: Any, name: str) -> str | None:
        """What follows ``config key K`` in refusing ``value`` (None: accepted); lists are checked per element."""
        if isinstance(value, (list, tuple)):
            return next((p for p in (self.problem(v, name) for v in value) if p), None)
        if self.choices is not None:
            return None if value in self.choices else f": unknown {name} {value!r}; known: {', '.join(self.choices)}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f" must be a number, got {value!r}"
        too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if not (too_low or too_high):
            return None
        if self.high is None:
            return f" must be {'>' if self.low_open else '>='} {_num(self.low)}, got {value!r}"
        return (f" must be in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                f"{')' if self.high_open else ']'}, got {value!r}")


def _num(x: float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else str(x)


def at_least(n: float) -> Rule:
    return Rule(low=n)


def one_of(*choices: str) -> Rule:
    return Rule(choices=tuple(choices))


POSITIVE = Rule(low=0, low_open=True)
UNIT = Rule(low=0, high=1)

#: keys of the ``run:`` section whose default is null, with a value of the type they take when set
_RUN_TYPE_EXAMPLES: dict[str, Any] = {"preset": "", "dataset": "", "guidance_ckpt": "", "out": "",
                                      "final_eval_episodes": 0, "threads": 1}

RUN_RULES: dict[str, Rule] = {
    "schedule": one_of(*SCHEDULES), "guidance_steps": at_least(0), "policy_steps": at_least(0),
    "guidance_delay": at_least(0), "eval_every": at_least(0), "eval_episodes": at_least(0),
    "final_eval_episodes": at_least(0), "threads": at_least(1), "log_every": at_least(0), "save_every": at_least(0),
    "save_every_s": at_least(0), "on_nonfinite": one_of(*ON_NONFINITE),
}

_HALF_RULES: dict[str, Rule] = {
    "batch_size": at_least(1), "lr": POSITIVE, "weight_decay": at_least(0), "grad_norm": at_least(0),
    "optimizer": one_of("adam", "adamw"), "lr_schedule": one_of("none", "constant", "cosine"),
    "lr_decay_steps": at_least(1), "activation": one_of(*ACTIVATIONS), "init": one_of(*INITS),
    "obs_norm": one_of(*OBS_NORMS), "hidden": at_least(1),
}

GUIDANCE_RULES: dict[str, Rule] = {
    **_HALF_RULES, "num_q": at_least(1), "gamma": UNIT, "polyak": UNIT, "value_lr": POSITIVE,
    "expectile": Rule(low=0, high=1, low_open=True, high_open=True), "target_every": at_least(1),
    "update_every": at_least(1), "support_actions": at_least(1), "q_alpha": at_least(0),
}

POLICY_RULES: dict[str, Rule] = {
    **_HALF_RULES, "T": at_least(1), "noise_schedule": one_of(*NOISE_SCHEDULES, "vp_sde"),
    "sampler": one_of(*SAMPLERS, *SDE_SAMPLERS), "time_embed": one_of(*TIME_EMBEDS),
    "denoiser": one_of("mlp", "ln_resnet"), "loss_reduce": one_of("mean", "sum"), "act_model": one_of("ema", "live"),
    "candidates": at_least(1), "selection": one_of(*RULES), "tau": UNIT, "temperature": at_least(0),
    "act_temperature": at_least(0), "act_sampler": one_of("trained", "posterior", *FAST_SAMPLERS, *SDE_SAMPLERS),
    "sample_steps": at_least(0), "ddim_eta": UNIT, "ema_decay": UNIT, "ema_every": at_least(1),
    "ema_start": at_least(0), "depth": at_least(1), "blocks": at_least(1), "t_dim": at_least(1),
    "dropout": Rule(low=0, high=1, high_open=True), "cond_dim": at_least(0), "cond_emb": at_least(1),
    "behaviour_steps": at_least(0), "flow_steps": at_least(1), "alpha": at_least(0), "beta": at_least(0),
    "eta": at_least(0), "gamma": at_least(0), "guidance_scale": at_least(0), "support_actions": at_least(1),
    "support_steps": at_least(1), "pretrain_steps": at_least(0), "actor_lr": POSITIVE, "energy_lr": POSITIVE,
    "actor_batch_size": at_least(1), "energy_batch_size": at_least(1), "actor_depth": at_least(1),
    "cond_hidden": at_least(1), "energy_t_dim": at_least(1), "sigma_min": POSITIVE, "sigma_max": POSITIVE,
    "sigma_data": POSITIVE, "sigma_scale": POSITIVE, "reg_t_min": UNIT, "reg_t_max": UNIT, "p_uncond": UNIT,
    "target_quantile": UNIT, "stats_momentum": UNIT,
}

#: the CLI flag that sets a run key, so a message names what the user typed
FLAGS = {"run.policy_steps": "--policy-steps", "run.guidance_steps": "--guidance-steps, or --steps of train-guidance",
         "run.eval_episodes": "--eval-episodes", "run.eval_every": "--eval-every", "run.seed": "--seed",
         "run.threads": "--threads", "run.out": "--out", "run.schedule": "--schedule", "run.dataset": "--dataset",
         "run.guidance_ckpt": "--guidance-ckpt", "run.device": "--device", "run.preset": "--preset"}


def key_name(key: str) -> str:
    """``run.policy_steps (--policy-steps)``: the config key and, where there is one, its flag."""
    return f"{key} ({FLAGS[key]})" if key in FLAGS else key


def _type_problem(value: Any, default: Any) -> str | None:
    """Why ``value`` has the wrong type for a key whose default is ``default`` (None: fine or unknown)."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if isinstance(default, str):
        return None if isinstance(value, (str, os.PathLike)) else "must be a string"
    if isinstance(default, (list, tuple)) and (not isinstance(value, (list, tuple)) or default and any(
            _type_problem(v, default[0]) for v in value)):
        return f"must be a list like {list(default)}"
    return None


def _check(key: str, value: Any, default: Any, rule: Rule | None, template: Any = None) -> None:
    """Refuse ``value`` in one line: key, what it must be, what it got, the default. ``template``: a value of the
    key's type where its default is null."""
    if value is None:
        why = None if default is None else f" must be set, got {value!r}"
    else:
        why = _type_problem(value, default if default is not None else template)
        why = f" {why}, got {value!r}" if why else None
        if why is None and rule is not None:
            why = rule.problem(value, key.split(".")[-1])
    if why:
        hint = f"; its default is {default!r}" if default is not None else ""
        raise ConfigError(f"config key {key_name(key)}{why}{hint}")


def validate_config(cfg: DictConfig, guidance_given: bool = False) -> None:
    """Check the pairing, every value against its default's type and the rule tables, and each phase's budget; the
    first bad key raises. ``guidance_given``: a built guidance was handed in (no guidance phase needs steps)."""
    c = to_dict(cfg)
    r, g, p = c.get("run") or {}, c.get("guidance") or {}, c.get("policy") or {}
    if g.get("name") and p.get("name"):  # before any data or env is loaded: a missing dataset must not hide it
        load_registry().check_pair(g["name"], p["name"], p)
    for key, value in r.items():
        if key in RUN_DEFAULTS:
            _check(f"run.{key}", value, RUN_DEFAULTS[key], RUN_RULES.get(key), _RUN_TYPE_EXAMPLES.get(key))
    for kind, section, rules in (("guidance", g, GUIDANCE_RULES), ("policy", p, POLICY_RULES)):
        defaults = default_config(kind, section["name"], r.get("task")) if section.get("name") else {}
        for key, value in section.items():
            if key != "name" and key in defaults:  # any other key: struct mode refused it, or a saved run's own
                _check(f"{kind}.{key}", value, defaults[key], rules.get(key))
    # a phase that trains needs steps: an untrained half evaluated and reported would look like a result
    has_policy = bool(p.get("name"))
    schedule = r.get("schedule") if has_policy else "guidance-first"
    if has_policy and int(r.get("policy_steps", 0)) < 1:
        raise ConfigError(f"config key {key_name('run.policy_steps')} must be > 0 (the policy trains in this run), "
                          f"got {r.get('policy_steps')!r}")
    if schedule == "guidance-first" and not guidance_given and int(r.get("guidance_steps", 0)) < 1:
        raise ConfigError(f"config key {key_name('run.guidance_steps')} must be > 0 (the guidance trains first in "
                          f"this run), got {r.get('guidance_steps')!r}")
    if has_policy and int(r.get("eval_every") or 0) > 0 and int(r.get("eval_episodes", 0)) < 1:
        raise ConfigError(f"config key {key_name('run.eval_episodes')} must be > 0 when run.eval_every is set (each "
                          f"interim evaluation plays that many episodes), got {r.get('eval_episodes')!r}")
    check_sample_steps(p)
    check_behaviour_steps(p, int(r.get("policy_steps") or 0))
    check_available(r.get("logger"))


def check_sample_steps(policy: Mapping[str, Any]) -> None:
    """Each sampler solves its own kind of model (an ODE, or a discrete chain of T steps); a chain takes at most T
    steps at inference, fewer only with a sampler that skips steps."""
    if policy.get("noise_schedule") == "vp_sde":  # an ODE solver, with any number of steps, never a DDPM chain
        for key in ("sampler", "act_sampler"):
            if policy.get(key) not in (None, "trained", *SDE_SAMPLERS):
                raise ConfigError(f"config key policy.{key}={policy.get(key)} is a discrete-chain sampler; with "
                                  f"policy.noise_schedule=vp_sde use one of {', '.join(SDE_SAMPLERS)}")
        return
    for key in ("sampler", "act_sampler"):
        if policy.get(key) == "dpm_solver++_2s":
            raise ConfigError(f"config key policy.{key}=dpm_solver++_2s solves the continuous-time VP SDE only: "
                              f"set policy.noise_schedule=vp_sde, or use dpm_solver++ on this discrete chain")
    if policy.get("sampler", SAMPLERS[0]) not in SAMPLERS:
        raise ConfigError(f"config key policy.sampler={policy.get('sampler')} is not a sampler a discrete chain "
                          f"trains with; use one of {', '.join(SAMPLERS)} (a faster one when acting: "
                          f"policy.act_sampler)")
    steps, T = int(policy.get("sample_steps") or 0), policy.get("T")
    if not steps or T is None:
        return
    if steps > int(T):
        raise ConfigError(f"policy.sample_steps={steps} is more than the policy's T={T} diffusion steps; use 0 (all "
                          f"of them) or a number up to {T}")
    if steps < int(T) and policy.get("act_sampler", "trained") == "trained":
        raise ConfigError(f"policy.sample_steps={steps} < T={T} needs a sampler that skips steps: set "
                          f"policy.act_sampler to ddim or dpm_solver++ (or posterior, DDIM with eta 1)")


def check_behaviour_steps(policy: Mapping[str, Any], policy_steps: int) -> None:
    """A two-stage policy's ``behaviour_steps``: a fraction in [0, 1) of the policy phase, or a step count that
    leaves the actor some steps (else an untrained actor is evaluated)."""
    b = policy.get("behaviour_steps")
    if b is None or isinstance(b, bool):
        return
    if isinstance(b, float) and not 0 <= b < 1:
        raise ConfigError(f"config key policy.behaviour_steps={b} as a fraction of the policy phase must be in "
                          f"[0, 1); give a fraction such as 0.5, or a whole number of steps")
    if isinstance(b, int) and policy_steps and b >= policy_steps:
        raise ConfigError(f"config key policy.behaviour_steps={b} leaves none of the {policy_steps} policy steps "
                          f"to the actor; give fewer, a fraction of the phase such as 0.5, or more --policy-steps")


def check_out_dir(path: Path) -> None:
    """Refuse a run dir that cannot be made or written, before training. Permissions cannot tell (root passes
    ``os.access`` on a read-only file system), so a directory is made and removed in the nearest existing folder."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run dir {path} (--out) is an existing file, not a directory; choose another --out "
                          f"(the file was left alone)")
    parent = existing_parent(path)
    if not parent.is_dir():
        raise ConfigError(f"run dir {path} (--out) cannot be made: {parent} is a file; choose another --out")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".modzoo-write-check-", dir=parent))
    except OSError as e:
        raise ConfigError(f"run dir {path} (--out) cannot be made or written: making a directory in {parent} "
                          f"failed ({e.strerror or e}); choose a directory on a writable file system") from None
