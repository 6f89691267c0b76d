"""Plugin discovery and the registry of halves.

Plugins are found through the ``modzoo`` entry-point group (first-party ones too), loaded one by one so that a
plugin that fails to import or raises while registering is recorded, shown by ``modzoo list``, and does not stop
the others. Compatibility is by capability: a policy pairs with every guidance that provides what it needs.
"""
from __future__ import annotations

import copy
import functools
import importlib.metadata as md
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import pluggy
import yaml

from ..errors import ConfigError, PluginError
from . import hookspecs
from .interfaces import DiffusionPolicy, GuidanceModule

#: keys renamed since runs, checkpoints and plugin YAMLs were written with the old name: ``(kind, old) -> new``.
#: "schedule" meant three things; a policy's noise schedule is ``noise_schedule`` now (``--schedule`` is the
#: training plan, ``lr_schedule`` the learning rate's).
RENAMED_KEYS: dict[tuple[str, str], str] = {("policy", "schedule"): "noise_schedule"}


def renamed_keys(kind: str, section: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """``section`` (a half's config) with old key names replaced by the new ones, in place of the old key; with
    ``where``, one warning line saying where the old name was read (records and checkpoints pass none)."""
    renamed = {key: RENAMED_KEYS.get((kind, key), key) for key in section}
    for old, new in renamed.items():
        if new != old and where is not None:
            warnings.warn(f"{where}: {kind}.{old} is now {kind}.{new}; read as such (rename it there)", stacklevel=3)
    return {renamed[key]: value for key, value in section.items()}


@dataclass
class HalfSpec:
    """One guidance or policy half as a plugin declares it: ``HalfSpec(name, cls, config, paper=...)``.

    Only what modzoo cannot read from the class is asked for: the kind follows from the base class
    (:class:`GuidanceModule` or :class:`DiffusionPolicy`) and the description is the first line of the class
    docstring, so the algorithm box a plugin writes there is also what ``modzoo list`` shows. Either can still be
    given explicitly.
    """

    name: str
    cls: type
    config: Path | str | dict[str, Any]
    kind: str | None = None  # "guidance" | "policy"; None: from the base class
    description: str | None = None  # None: the first line of the class docstring
    paper: str = ""
    plugin: str = ""  # filled in by the registry: the entry-point name that contributed it

    def __post_init__(self) -> None:
        if self.kind is None:  # "" for a class that is no half: the registry then refuses it
            bases = getattr(self.cls, "__mro__", ())
            self.kind = "guidance" if GuidanceModule in bases else "policy" if DiffusionPolicy in bases else ""
        if self.description is None:
            doc = (getattr(self.cls, "__doc__", None) or "").strip()
            self.description = doc.split("\n\n")[0].replace("\n", " ").strip()

    def default_config(self) -> dict[str, Any]:
        """The ``guidance:`` or ``policy:`` section of the plugin's YAML (task overrides included), over the
        machinery defaults of the base classes it is built on
        (:attr:`~modzoo.contract.interfaces.Half.config_defaults`): the plugin's keys in its own order, then the
        base's keys it does not state."""
        own = self.own_defaults()
        base = {key: value for key, value in self.base_defaults().items() if key not in own}
        return copy.deepcopy({**own, **base})  # a caller's edits must reach neither the cache nor the plugin's dict

    def own_defaults(self) -> dict[str, Any]:
        """The section as the plugin's YAML (or dict) writes it, without the base's machinery."""
        raw = self.config if isinstance(self.config, dict) else _parsed_yaml(Path(self.config).read_text())
        section = (raw or {}).get(self.kind)
        if section is None:
            raise PluginError(f"plugin {self.plugin or self.name!r}: its config has no '{self.kind}:' section")
        return renamed_keys(self.kind, section, f"plugin {self.plugin or self.name!r}'s config")

    def base_defaults(self) -> dict[str, Any]:
        """The machinery defaults of the classes the half is built on, the nearest base's winning."""
        out: dict[str, Any] = {}
        for klass in self.bases():
            section = (_parsed_yaml(Path(klass.config_defaults).read_text()) or {}).get(self.kind) or {}
            out.update({key: value for key, value in section.items() if key not in out})
        return out

    def bases(self) -> list[type]:
        """The classes in the half's MRO that bring machinery defaults (``config_defaults``), nearest first."""
        return [k for k in getattr(self.cls, "__mro__", ()) if vars(k).get("config_defaults") is not None]

    @property
    def capabilities(self) -> frozenset[str]:
        """What a guidance provides, or what a policy needs."""
        return frozenset(getattr(self.cls, "provides" if self.kind == "guidance" else "needs", frozenset()))


@functools.lru_cache(maxsize=None)
def _parsed_yaml(text: str) -> Any:
    """A plugin YAML's text, parsed once: planning a grid or checking its summaries for drift asks for every
    half's defaults hundreds of times, and parsing dominated that. Keyed on the text, not the path, so an edited
    file (a plugin author iterating in one Python session) is parsed again however soon after."""
    return yaml.safe_load(text)


@dataclass
class BrokenPlugin:
    name: str
    error: str
    detail: str = ""


@dataclass
class Registry:
    guidances: dict[str, HalfSpec] = field(default_factory=dict)
    policies: dict[str, HalfSpec] = field(default_factory=dict)
    broken: list[BrokenPlugin] = field(default_factory=list)
    #: plugin name -> the module it was loaded from (its entry point's, or the registered object's name)
    modules: dict[str, str] = field(default_factory=dict)

    def half(self, kind: str, name: str) -> HalfSpec:
        """The ``kind`` ("guidance" or "policy") half called ``name``; an unknown name is refused in one line
        listing the known ones and any plugin that failed to load (perhaps the one that would have had it)."""
        table = self.guidances if kind == "guidance" else self.policies
        if name not in table:
            known = f"known {'guidances' if kind == 'guidance' else 'policies'}: {', '.join(sorted(table))}"
            broken = ", ".join(f"{b.name}: {b.error}" for b in self.broken)
            raise PluginError(f"unknown {kind} {name!r}; {known}" + (f" (plugins that failed to load: {broken})"
                                                                      if broken else ""))
        return table[name]

    def guidance(self, name: str) -> HalfSpec:
        return self.half("guidance", name)

    def policy(self, name: str) -> HalfSpec:
        return self.half("policy", name)

    def compatible(self, policy: str) -> list[str]:
        """Guidance names that provide everything ``policy`` needs."""
        needs = self.policy(policy).capabilities
        return sorted(g for g, spec in self.guidances.items() if needs <= spec.capabilities)

    def check_pair(self, guidance: str, policy: str, policy_cfg: Mapping[str, Any] | None = None) -> None:
        """Refuse a pairing whose guidance lacks a capability the policy needs, saying what is missing; with the
        policy's config, also what its settings add (:meth:`~modzoo.contract.interfaces.DiffusionPolicy.needs_for`),
        naming the setting and the fix."""
        g, p = self.guidance(guidance), self.policy(policy)
        missing = p.capabilities - g.capabilities
        if missing:
            raise PluginError(
                f"policy {policy!r} needs a guidance providing {sorted(p.capabilities)}, but {guidance!r} provides "
                f"{sorted(g.capabilities)} (missing {sorted(missing)}); compatible guidances: "
                f"{', '.join(self.compatible(policy)) or 'none'}")
        if policy_cfg is not None:
            by = {cap: why for cap, why in p.cls.needs_for(policy_cfg).items() if cap not in g.capabilities}
            if by:
                fit = [n for n, s in sorted(self.guidances.items()) if set(by) <= s.capabilities]
                raise ConfigError(
                    f"{', '.join(sorted(set(by.values())))} needs {sorted(by)} from the guidance, which {guidance!r} "
                    f"does not provide: change that setting, or use a guidance that has it "
                    f"({', '.join(fit) or 'none installed'})")

    def first_party(self) -> "Registry":
        """Only the halves of plugins under ``modzoo.plugins``: what ``registry.yaml`` describes, so that the
        committed file stays current whatever third-party plugins a user has installed."""
        def own(spec: HalfSpec) -> bool:
            return (self.modules.get(spec.plugin, "") + ".").startswith("modzoo.plugins.")
        return Registry({n: s for n, s in self.guidances.items() if own(s)},
                        {n: s for n, s in self.policies.items() if own(s)}, modules=dict(self.modules))

    def as_table(self) -> dict[str, Any]:
        """The registry as plain data: what ``registry.yaml`` holds and ``modzoo list`` prints."""
        def spec_row(s: HalfSpec) -> dict[str, Any]:
            row = {"plugin": s.plugin, "class": f"{s.cls.__module__}.{s.cls.__qualname__}",
                   "config": Path(s.config).name if isinstance(s.config, (str, Path)) else "<inline>",
                   "description": s.description, "paper": s.paper}
            if s.kind == "guidance":
                row["provides"] = sorted(s.capabilities)
            else:
                row["needs"] = sorted(s.capabilities)
                row["compatible_guidance"] = self.compatible(s.name)
            return row
        return {"guidance": {n: spec_row(s) for n, s in sorted(self.guidances.items())},
                "policy": {n: spec_row(s) for n, s in sorted(self.policies.items())}}


_REGISTRY: Registry | None = None
_EXTRA_PLUGINS: list[tuple[str, Any]] = []


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object or module in this process (tests, notebooks) without an entry point."""
    global _REGISTRY
    _EXTRA_PLUGINS.append((name or getattr(plugin, "__name__", repr(plugin)), plugin))
    _REGISTRY = None


def unregister_plugin(name: str) -> None:
    global _REGISTRY
    _EXTRA_PLUGINS[:] = [(n, p) for n, p in _EXTRA_PLUGINS if n != name]
    _REGISTRY = None


def _entry_points() -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name)


def load_registry(refresh: bool = False) -> Registry:
    """Discover every plugin (entry points + :func:`register_plugin`) and index their halves."""
    global _REGISTRY
    if _REGISTRY is not None and not refresh:
        return _REGISTRY
    reg = Registry()
    candidates: list[tuple[str, Any]] = []
    for ep in _entry_points():
        if ep.name in reg.modules:  # the same plugin installed twice: the first is kept
            continue
        reg.modules[ep.name] = ep.module
        try:
            candidates.append((ep.name, ep.load()))
        except Exception as e:  # a broken third-party plugin must not take the others down
            reg.broken.append(BrokenPlugin(ep.name, f"import failed: {type(e).__name__}: {e}",
                                           traceback.format_exc()))
    for name, obj in _EXTRA_PLUGINS:
        reg.modules.setdefault(name, getattr(obj, "__name__", "") if isinstance(obj, ModuleType) else "")
    candidates += _EXTRA_PLUGINS
    for name, obj in candidates:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        try:
            pm.register(obj, name=name)
            halves = [s for hook in (pm.hook.modzoo_guidances, pm.hook.modzoo_policies) for lst in hook() for s in lst]
            for spec in halves:
                _check_spec(spec)
        except Exception as e:
            reg.broken.append(BrokenPlugin(name, f"registration failed: {type(e).__name__}: {e}",
                                           traceback.format_exc()))
            continue
        for spec in halves:
            spec.plugin = name
            table = reg.guidances if spec.kind == "guidance" else reg.policies
            if spec.name in table:
                reg.broken.append(BrokenPlugin(name, f"{spec.kind} {spec.name!r} is already registered by plugin "
                                                     f"{table[spec.name].plugin!r}; kept the first"))
                continue
            spec.cls.algorithm = spec.name
            table[spec.name] = spec
    _REGISTRY = reg
    return reg


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, HalfSpec):
        raise TypeError(f"hooks must return HalfSpec objects, got {type(spec).__name__}")
    base = GuidanceModule if spec.kind == "guidance" else DiffusionPolicy if spec.kind == "policy" else None
    if spec.kind == "":
        raise TypeError(f"{spec.name!r}: {spec.cls!r} subclasses neither modzoo.GuidanceModule nor "
                        f"modzoo.DiffusionPolicy, so it is no half")
    if base is None:
        raise ValueError(f"{spec.name}: kind must be 'guidance' or 'policy', not {spec.kind!r}")
    if not (isinstance(spec.cls, type) and issubclass(spec.cls, base)):
        raise TypeError(f"{spec.kind} {spec.name!r}: {spec.cls!r} does not subclass modzoo.{base.__name__}")
    if isinstance(spec.config, (str, Path)) and not Path(spec.config).is_file():
        raise PluginError(f"{spec.kind} {spec.name!r}: its config file {spec.config} does not exist; a HalfSpec's "
                          f"config is the path of the plugin's YAML (e.g. Path(__file__).with_name('NAME.yaml'), "
                          f"shipped as package data) or a dict")
    spec.default_config()  # parse now, so a broken YAML is reported at discovery
