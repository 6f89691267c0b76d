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

from .version import __version__  # noqa: E402
from .errors import CheckpointError, ConfigError, DatasetError, EnvError, ModzooError, PluginError  # noqa: E402
from .contract.interfaces import DiffusionPolicy, GuidanceModule  # noqa: E402
from .contract.registry import HalfSpec, load_registry, register_plugin, unregister_plugin  # noqa: E402
from .contract.hookspecs import hookimpl  # noqa: E402
from .run.checkpoint import load_checkpoint, save_half  # noqa: E402
from .run.halves import make_guidance, make_policy  # noqa: E402
from .run.training import evaluate, run_config, train  # noqa: E402


def normalized_score(name: str, raw_return):
    """D4RL-normalized score x100 of a raw return for a ``bullet-*`` task (see :mod:`modzoo.bullet.scores`)."""
    from .bullet.scores import normalized_score as _ns
    return _ns(name, raw_return)


def _register_envs() -> None:
    try:
        from .bullet.envs import register_envs
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
