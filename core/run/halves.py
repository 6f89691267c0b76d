"""Halves built by plugin name (default config, construction, device), for every layer that needs one, so a
plugin's constructor errors become one :class:`~modzoo.errors.ConfigError` line in one place.
"""
from __future__ import annotations

from typing import Any

import torch

from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..contract.registry import load_registry
from ..errors import ConfigError, ModzooError
from .config import half_config


def default_config(kind: str, name: str, task: str | None = None) -> dict[str, Any]:
    """A half's default config (with its task overrides applied) plus its ``name``."""
    return {"name": name, **half_config(load_registry().half(kind, name).default_config(), task)}


def build_half(kind: str, cfg: dict[str, Any], obs_dim: int, act_dim: int) -> Any:
    """The ``kind`` half named by ``cfg['name']``, constructed from the rest of ``cfg``."""
    cls, body = load_registry().half(kind, cfg["name"]).cls, {k: v for k, v in cfg.items() if k != "name"}
    try:
        return cls(obs_dim, act_dim, body)
    except ModzooError:
        raise
    # chained, not ``from None``: the CLI prints the one line, and --debug shows the plugin's own frame
    except KeyError as e:  # halves read cfg["key"]: the YAML is where every default lives
        raise ConfigError(f"{kind} {cfg['name']!r} reads config key {e}, which its plugin YAML's {kind}: section "
                          f"does not have; add it there with its default") from e
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{kind} {cfg['name']!r} rejected its config: {e}") from e


def make_guidance(name: str, obs_dim: int, act_dim: int, task: str | None = None, **overrides: Any
                  ) -> GuidanceModule:
    """Build a guidance half by plugin name with its defaults (for ``task``) and keyword overrides."""
    return _make("guidance", name, obs_dim, act_dim, task, overrides)


def make_policy(name: str, obs_dim: int, act_dim: int, task: str | None = None, **overrides: Any
                ) -> DiffusionPolicy:
    """Build a policy half by plugin name with its defaults (for ``task``) and keyword overrides."""
    return _make("policy", name, obs_dim, act_dim, task, overrides)


def _make(kind: str, name: str, obs_dim: int, act_dim: int, task: str | None, overrides: dict[str, Any]) -> Any:
    cfg = default_config(kind, name, task)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ConfigError(f"{kind} {name!r} has no config keys {sorted(unknown)}; keys: {', '.join(sorted(cfg))}")
    return build_half(kind, {**cfg, **overrides}, obs_dim, act_dim)


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
