"""modzoo: offline RL with diffusion policies as a plugin zoo.

A diffusion-policy algorithm is two halves: a *guidance* (value estimator) and a *policy* (a denoising model over
actions). modzoo trains them jointly, guidance-first (GFDT) or from a saved guidance, and lets the halves of
different algorithms mix. See README.md.
"""
from __future__ import annotations

import os as _os

# Before torch is imported: idle OpenMP threads sleep instead of spinning. With the default (active) policy a
# training step on a CPU shared with other processes ran up to 65x slower (docs/performance.md); with PASSIVE
# the slowdown is gone. Only takes effect when modzoo is imported before torch (the CLI always is).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DatasetError, EnvError, ModzooError, PluginError  # noqa: E402
from .interfaces import DiffusionPolicy, GuidanceModule  # noqa: E402
from .plugins_api import HalfSpec, load_registry, register_plugin, unregister_plugin  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .checkpoint import load_checkpoint, save_half  # noqa: E402
from .training import evaluate, make_guidance, make_policy, run_config, train  # noqa: E402


def normalized_score(name: str, raw_return):
    """D4RL-normalized score x100 of a raw return for a ``bullet-*`` task (see :mod:`modzoo.scores`)."""
    from .scores import normalized_score as _ns
    return _ns(name, raw_return)


def _register_envs() -> None:
    try:
        from .envs import register_envs
    except ImportError:  # the env module is optional at import time (e.g. pybullet missing)
        return
    register_envs()


_register_envs()

__all__ = [
    "__version__", "GuidanceModule", "DiffusionPolicy", "HalfSpec", "hookimpl", "load_registry", "register_plugin",
    "unregister_plugin", "make_guidance", "make_policy", "train", "evaluate", "load_checkpoint", "save_half",
    "run_config", "normalized_score", "ModzooError", "ConfigError", "PluginError", "DatasetError",
    "CheckpointError", "EnvError",
]
