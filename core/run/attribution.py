"""Errors attributed to the plugin that raised them, ``<kind> '<name>' (plugin <dist>)``, so a user mixing packages
knows whom to ask: the half whose code holds the innermost traceback frame (none: a bug of modzoo's, left as it is).
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import traceback
from typing import Any, Sequence

from ..contract.interfaces import GuidanceModule
from ..contract.registry import load_registry
from ..errors import PluginFailure

#: modzoo's own code; its first-party plugins live under ``modzoo.plugins`` and count as plugins
_CORE, _FIRST_PARTY = "modzoo", "modzoo.plugins"


def plugin_modules(half: Any) -> set[str]:
    """The modules whose frames are ``half``'s code: those of its MRO outside modzoo's core, builtins and torch (a
    first-party plugin's own module; a third-party one's whole top-level package)."""
    out = set()
    for cls in type(half).__mro__:
        module = cls.__module__ or ""
        core = (module == _CORE or module.startswith(_CORE + ".")) and not module.startswith(_FIRST_PARTY)
        if not (core or module in ("builtins", "abc") or module.startswith(("torch", "typing"))):
            out.add(module if module.startswith(_FIRST_PARTY) else module.split(".")[0])
    return out


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def plugin_dist(half: Any) -> str:
    """The distribution that installed ``half``'s plugin (``modzoo`` for a first-party one), else its registered
    plugin name."""
    module = type(half).__module__ or ""
    if module.startswith(_FIRST_PARTY):
        return _CORE
    dists = _distributions().get(module.split(".")[0])
    if dists:
        return dists[0]
    reg = load_registry()
    spec = (reg.guidances if isinstance(half, GuidanceModule) else reg.policies).get(half.algorithm)
    return spec.plugin if spec is not None and spec.plugin else module.split(".")[0] or "?"


def half_label(half: Any) -> str:
    """``guidance 'idql' (plugin modzoo)``: how every message names a half."""
    kind = "guidance" if isinstance(half, GuidanceModule) else "policy"
    return f"{kind} {half.algorithm!r} (plugin {plugin_dist(half)})"


def attribute(exc: BaseException, halves: Sequence[Any], phase: str, step: int) -> PluginFailure | None:
    """``exc`` as a :class:`PluginFailure` naming the half whose code raised it (that frame kept as ``.frame``), or
    None when no frame is a plugin's."""
    owners = [(h, plugin_modules(h)) for h in halves if h is not None]
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        module = str(frame.f_globals.get("__name__", ""))
        for half, modules in owners:
            if module in modules or module.split(".")[0] in modules:
                lines = str(exc).strip().splitlines()
                message = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
                failure = PluginFailure(f"{half_label(half)} failed in {phase} at step {step}: {message}")
                failure.frame = traceback.FrameSummary(  # type: ignore[attr-defined]
                    frame.f_code.co_filename, lineno, frame.f_code.co_name, lookup_line=False)
                return failure
    return None


def frame_text(failure: BaseException) -> str:
    """Where the plugin raised, ``file:line in function`` (empty when unknown)."""
    frame = getattr(failure, "frame", None)
    return f"{frame.filename}:{frame.lineno} in {frame.name}" if frame is not None else ""
