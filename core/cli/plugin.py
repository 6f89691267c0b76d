"""``modzoo plugin new NAME``: scaffold a plugin package (``modzoo-NAME/``: its pyproject with the entry point, the
halves and their hooks, their YAML, a conformance test, a README) that installs with ``pip install -e`` and passes
:mod:`modzoo.testing` as generated, so an author starts from green and changes one loss at a time (CONTRIBUTING.md,
"Writing a plugin in your own package"). The files are ``modzoo/cli/templates``, filled by :class:`string.Template`.
"""
from __future__ import annotations

import argparse
import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from ..contract.registry import load_registry
from ..errors import ConfigError
from ..version import __version__

KINDS = ("guidance", "policy", "both")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def check_name(name: str) -> None:
    """A plugin name is a Python identifier in lower case (it names the package ``modzoo_NAME`` and the entry
    point) and must not shadow a plugin that is already registered (the registry keeps the first)."""
    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise ConfigError(f"plugin name {name!r} is not a lower-case identifier (letters, digits, '_', starting with "
                          f"a letter), e.g. my_algo")
    reg = load_registry()
    taken = ({s.plugin for s in [*reg.guidances.values(), *reg.policies.values()]} | set(reg.guidances)
             | set(reg.policies))
    if name in taken:
        raise ConfigError(f"a plugin or half named {name!r} is already registered ({', '.join(sorted(taken))}); "
                          f"choose another name")


def new_plugin(name: str, directory: str | Path = ".", kind: str = "both", force: bool = False) -> Path:
    """Write the package for plugin ``name`` under ``directory``/modzoo-``name``; returns that path."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    check_name(name)
    root = Path(directory).expanduser() / f"modzoo-{name}"
    if root.exists() and any(root.iterdir()) and not force:
        raise ConfigError(f"{root} already exists and is not empty; choose another --dir (nothing was written)")
    package = f"modzoo_{name}"
    has_g, has_p = kind in ("guidance", "both"), kind in ("policy", "both")
    names = (["Batch", "HalfSpec"] + (["DiffusionPolicy", "TwinCriticGuidance"] if has_g else [])
             + (["DDPMPolicy", "GuidanceModule", "Metrics"] if has_p else []))
    imports = ["import torch", "", f"from modzoo import {', '.join(sorted(names))}, hookimpl"]
    fields = {
        "name": name, "package": package, "Class": "".join(part.capitalize() for part in name.split("_") if part),
        "modzoo_version": __version__, "kinds": {"both": "guidance + policy"}.get(kind, kind),
        "imports": "\n".join(imports), "example_guidance": name if has_g else "idql",
        "example_policy": name if has_p else "idql",
    }

    def fill(template: str) -> str:
        return Template(resources.files("modzoo.cli").joinpath("templates", template).read_text()).substitute(fields)

    code, config = fill("plugin_head.py.tmpl"), fill("config_head.yaml.tmpl")
    if has_g:
        code += fill("plugin_guidance.py.tmpl")
        config += fill("config_guidance.yaml.tmpl")
    if has_p:
        code += fill("plugin_policy.py.tmpl")
        config += ("\n" if has_g else "") + fill("config_policy.yaml.tmpl")
    files = {"pyproject.toml": fill("pyproject.toml.tmpl"), "README.md": fill("README.md.tmpl"),
             f"src/{package}/__init__.py": fill("init.py.tmpl"), f"src/{package}/plugin.py": code,
             f"src/{package}/{name}.yaml": config, f"tests/test_{name}.py": fill("test_plugin.py.tmpl")}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cmd_plugin_new(args: argparse.Namespace) -> int:
    root = new_plugin(args.name, args.dir, args.kind, force=args.force)
    print(f"created {root}")
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        print(f"  {p.relative_to(root)}")
    steps = [(f"pip install -e {root}", f"registers the entry point '{args.name}' in the 'modzoo' group"),
             ("modzoo list", f"shows the {args.name} half/halves and what they pair with"),
             (f"pytest {root / 'tests'}", f"the conformance suite (or: pytest --modzoo-plugin={args.name})")]
    width = max(len(c) for c, _ in steps)
    print("next (see CONTRIBUTING.md, 'Writing a plugin in your own package'):")
    for cmd, why in steps:
        print(f"  {cmd:<{width}}  # {why}")
    return 0


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``modzoo plugin ...`` to the main parser's subcommands."""
    p = sub.add_parser("plugin", help="tools for plugin authors (plugin new)")
    psub = p.add_subparsers(dest="plugin_command", required=True)
    n = psub.add_parser("new", help="create a plugin package that passes the conformance suite as generated")
    n.add_argument("name", help="plugin name: a lower-case identifier, e.g. my_algo")
    n.add_argument("--dir", default=".", help="where to create modzoo-NAME/ (default: the current directory)")
    n.add_argument("--kind", default="both", choices=KINDS, help="which halves to scaffold (default both)")
    n.add_argument("--force", action="store_true", help="write into an existing, non-empty modzoo-NAME/")
    n.set_defaults(func=cmd_plugin_new)
