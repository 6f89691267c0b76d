"""The core's layering, read from its source: imports point down the layers, never in a cycle, never at a
private name of another module; and the package face exports one pinned list.

Layers, lowest first (CONTRIBUTING.md, "Where code lives"): the leaf modules ``errors``, ``progress`` and
``version``; ``contract``; ``blocks``; ``bullet``; ``run``; ``testing``; ``cli``; the face
(``modzoo/__init__.py``). A module may import from its own layer and the layers below it. The lab
(``modzoo_lab``: grids, reports, behaviour training) sits above the whole library, which never imports it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modzoo

CORE = Path(modzoo.__file__).resolve().parent
RANK = {"errors": 0, "progress": 0, "version": 0, "contract": 1, "blocks": 2, "bullet": 3, "run": 4, "testing": 5,
        "cli": 6, "__init__": 7}


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["modzoo", *parts])


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every modzoo import in ``path``, function-local too."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "modzoo" or mod.startswith("modzoo."):
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    is_module = ((CORE / Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                                 or (CORE / Path(*sub.split(".")[1:])).is_dir())
                    out.append((sub, "", node.lineno) if is_module else (mod, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("modzoo")]
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


SOURCES = sorted(p for p in CORE.rglob("*.py") if "templates" not in p.parts)
GRAPH = {_module_name(p): _imports(p) for p in SOURCES}


def test_every_core_module_belongs_to_a_layer() -> None:
    unplaced = sorted(m for m in GRAPH if _layer(m) not in RANK and not m.startswith("modzoo.plugins"))
    assert not unplaced, f"modules outside every layer: {unplaced}; put them in one (tests/test_layers.py RANK)"


def test_imports_point_down_the_layers() -> None:
    upward = []
    for mod, imports in GRAPH.items():
        for target, _, line in imports:
            if target.startswith("modzoo.plugins"):
                upward.append(f"{mod}:{line} imports the plugin {target}: the core must not know a plugin")
            elif RANK[_layer(target)] > RANK[_layer(mod)]:
                upward.append(f"{mod}:{line} ({_layer(mod)}) imports {target} ({_layer(target)})")
    assert not upward, "\n".join(upward)


def test_no_private_name_is_imported_across_modules() -> None:
    private = [f"{mod}:{line} imports {name} from {target}" for mod, imports in GRAPH.items()
               for target, name, line in imports if name.startswith("_") and name != "__version__"
               and target != mod]
    assert not private, "\n".join(private)


def _cycles() -> list[list[str]]:
    edges = {m: sorted({t if t in GRAPH else t.rpartition(".")[0] for t, _, _ in imps} & set(GRAPH) - {m})
             for m, imps in GRAPH.items()}
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle_inside_modzoo() -> None:
    # a package's __init__ importing its own modules is how a package exposes them, not a cycle to untangle
    cycles = [c for c in _cycles() if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_violation() -> None:
    """The control: an upward, private, cyclic import written into a scratch graph is caught by each rule."""
    GRAPH["modzoo.contract.fake"] = [("modzoo.run.training", "_private_helper", 1)]
    GRAPH["modzoo.run.training"] = [*GRAPH["modzoo.run.training"], ("modzoo.contract.fake", "", 2)]
    try:
        with pytest.raises(AssertionError, match="contract.fake:1"):
            test_imports_point_down_the_layers()
        with pytest.raises(AssertionError, match="imports _private_helper"):
            test_no_private_name_is_imported_across_modules()
        with pytest.raises(AssertionError, match="modzoo.contract.fake -> modzoo.run.training"):
            test_no_import_cycle_inside_modzoo()
    finally:
        del GRAPH["modzoo.contract.fake"]
        GRAPH["modzoo.run.training"] = GRAPH["modzoo.run.training"][:-1]


PUBLIC_API = [
    "__version__",
    "GuidanceModule", "DiffusionPolicy", "Batch", "Metrics", "HalfSpec", "hookimpl", "Stage", "run_stages",
    "ObsNorm", "obs_norm_enabled",
    "DDPMPolicy", "TwinCriticGuidance",
    "load_registry", "register_plugin", "unregister_plugin",
    "make_guidance", "make_policy", "run_config", "train", "evaluate", "load_checkpoint", "save_half",
    "normalized_score", "load_dataset", "RunResult", "EvalResult",
    "ModzooError", "ConfigError", "PluginError", "DatasetError", "CheckpointError", "EnvError",
]


def test_the_public_api_is_one_pinned_list() -> None:
    """Adding to or removing from ``modzoo.__all__`` is an API change: make it here on purpose, and in the docs."""
    assert modzoo.__all__ == PUBLIC_API
    missing = [n for n in PUBLIC_API if not hasattr(modzoo, n)]
    assert not missing, f"modzoo.__all__ names what modzoo does not define: {missing}"


def test_the_face_defines_nothing_of_its_own() -> None:
    """``modzoo/__init__.py`` only gathers the layers' names: a function or class written there is domain code
    at the package face, where no layer can import it without a cycle."""
    tree = ast.parse((CORE / "__init__.py").read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defined, f"defined in modzoo/__init__.py: {defined}; move them into their layer"


def test_first_party_plugins_use_only_the_public_api_and_the_blocks() -> None:
    """A first-party plugin is written the way a third-party one is: against ``modzoo`` and ``modzoo.blocks``
    (plus ``modzoo.contract.rng`` for its noise), never the trainer, the grid or the CLI."""
    allowed = ("modzoo", "modzoo.blocks.", "modzoo.contract.rng", "modzoo.contract")
    bad = []
    for path in sorted((CORE.parent / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modzoo"):
                names = [a.name for a in node.names]
                ok = (node.module == "modzoo" or node.module.startswith("modzoo.blocks.")
                      or (node.module == "modzoo.contract" and names == ["rng"]))
                if not ok:
                    bad.append(f"{path.name}:{node.lineno} from {node.module} import {', '.join(names)}")
    assert allowed and not bad, "\n".join(bad)


# Units allowed past the limit, with the reason.
LONG_OK: set[tuple[str, str]] = set()
MAX_LINES = 80


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES and (_module_name(path), node.name) not in LONG_OK:
                    long.append(f"{_module_name(path)}.{node.name}: {n} lines")
    assert not long, "split these (or add them to LONG_OK with the reason):\n" + "\n".join(long)


#: The library's size budget (issue #40: a core a newcomer reads in an afternoon). Raise it only on purpose.
CORE_MAX_LINES = 8000


def test_the_core_stays_within_its_line_budget() -> None:
    """Every line of ``core/``'s Python, as ``find core -name '*.py' | xargs cat | wc -l`` counts them."""
    n = sum(len(path.read_text().splitlines()) for path in SOURCES)
    assert n <= CORE_MAX_LINES, (f"core/ is {n} lines, over its budget of {CORE_MAX_LINES}: move lab code to lab/, "
                                 "tighten, or raise CORE_MAX_LINES in tests/test_layers.py on purpose")


def test_the_library_never_imports_the_lab() -> None:
    """``core/`` and ``plugins/`` are what a user installs: an import of ``modzoo_lab`` anywhere in them, at module
    level or inside a function, would make the library need the lab."""
    library = [*SOURCES, *sorted((CORE.parent / "plugins").glob("*.py"))]
    bad = [f"{p.relative_to(CORE.parent)}:{node.lineno}" for p in library for node in ast.walk(ast.parse(p.read_text()))
           if isinstance(node, (ast.Import, ast.ImportFrom))
           and any((n or "").split(".")[0] == "modzoo_lab"
                   for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]))]
    assert not bad, "the library imports the lab at: " + ", ".join(bad)


def test_every_library_module_imports_and_the_cli_builds_without_the_lab() -> None:
    """The same, at run time: with ``modzoo_lab`` made unimportable, every module of the library imports and the
    CLI builds its parser with all the library's commands (the lab's are simply absent)."""
    import subprocess
    import sys

    modules = sorted(m for m in GRAPH if not m.endswith("__main__"))
    probe = ("import sys; sys.modules['modzoo_lab'] = None\n"
             "import importlib\n"
             f"for m in {modules!r}: importlib.import_module(m)\n"
             "from modzoo.cli.main import build_parser\n"
             "cmds = build_parser()._subparsers._group_actions[0].choices\n"
             "print(sorted(cmds))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "data" in out.stdout and "experiment" not in out.stdout
