"""modzoo: offline RL with diffusion policies as a plugin zoo.

A diffusion-policy algorithm is two halves: a *guidance* (value estimator) and a *policy* (a denoising model over
actions). modzoo trains them jointly, guidance-first (GFDT) or from a saved guidance, and lets the halves of
different algorithms mix. See README.md.

This module is the public API, one list (``__all__``): what a plugin is written against (the contract, the two
bases, hooks) and what a library user calls (build, train, evaluate, checkpoints). Everything else is reached
through its layer (``modzoo.blocks.nets``, ``modzoo.bullet.data``, ...; CONTRIBUTING.md, "How the code is laid out").
"""
from __future__ import annotations

import os as _os

# Process setup, not domain work, and it has to happen here: idle OpenMP threads must sleep instead of spinning,
# and the variable is only read when torch is first imported, which the imports below do. With torch's default
# (active) policy a training step on a CPU shared with other processes ran up to 65x slower
# (docs/performance.md). A user who set the variable keeps their value.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .blocks.critics import TwinCriticGuidance  # noqa: E402
from .blocks.policy import DDPMPolicy  # noqa: E402
from .bullet.data import load_dataset  # noqa: E402
from .bullet.scores import normalized_score  # noqa: E402
from .contract.hookspecs import hookimpl  # noqa: E402
from .contract.interfaces import Batch, DiffusionPolicy, GuidanceModule, Metrics  # noqa: E402
from .contract.normalization import ObsNorm, obs_norm_enabled  # noqa: E402
from .contract.registry import HalfSpec, load_registry, register_plugin, unregister_plugin  # noqa: E402
from .contract.stages import Stage, run_stages  # noqa: E402
from .errors import CheckpointError, ConfigError, DatasetError, EnvError, ModzooError, PluginError  # noqa: E402
from .run.checkpoint import load_checkpoint, save_half  # noqa: E402
from .run.evaluation import EvalResult, evaluate  # noqa: E402
from .run.halves import make_guidance, make_policy  # noqa: E402
from .run.training import RunResult, run_config, train  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "__version__",
    # the contract a plugin keeps
    "GuidanceModule", "DiffusionPolicy", "Batch", "Metrics", "HalfSpec", "hookimpl", "Stage", "run_stages",
    "ObsNorm", "obs_norm_enabled",
    # the bases most halves derive from
    "DDPMPolicy", "TwinCriticGuidance",
    # plugins at runtime
    "load_registry", "register_plugin", "unregister_plugin",
    # a library user's calls
    "make_guidance", "make_policy", "run_config", "train", "evaluate", "load_checkpoint", "save_half",
    "normalized_score", "load_dataset", "RunResult", "EvalResult",
    # errors
    "ModzooError", "ConfigError", "PluginError", "DatasetError", "CheckpointError", "EnvError",
]
