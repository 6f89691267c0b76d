"""Plugin authors' path: `modzoo plugin new` scaffolds a package that passes the conformance suite as generated
and installs with pip; a plugin that fails to import is reported by `modzoo list` without hiding the others."""
import importlib
import importlib.metadata as md
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
import torch

import modzoo
import modzoo.contract.registry
from modzoo.cli import main
from modzoo.cli.plugin import new_plugin
from modzoo.testing import check_plugin

TASK = "bullet-hopper-medium-v0"



@pytest.fixture
def entry_points(monkeypatch):
    """Add entry points to the 'modzoo' group as an installed package would (importlib.metadata is patched)."""
    real = md.entry_points
    extra: list[md.EntryPoint] = []

    def fake(**kw):
        eps = real(**kw)
        return [*eps, *extra] if kw.get("group") == "modzoo" else eps

    def add(ep: md.EntryPoint) -> None:
        extra.append(ep)
        modzoo.contract.registry._REGISTRY = None  # discovery runs again on the next load_registry()

    monkeypatch.setattr(modzoo.contract.registry.md, "entry_points", fake)
    yield add
    modzoo.contract.registry._REGISTRY = None  # rebuilt without them once monkeypatch is undone


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def import_generated(root: Path, name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(root / "src"))
    for mod in [m for m in sys.modules if m.startswith(f"modzoo_{name}")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


# ---- plugin new -----------------------------------------------------------------------------------------------
def test_plugin_new_writes_an_installable_package(capsys, tmp_path):
    rc, out, err = run_cli(capsys, "plugin", "new", "my_algo", "--dir", str(tmp_path))
    assert rc == 0, err
    root = tmp_path / "modzoo-my_algo"
    for rel in ["pyproject.toml", "README.md", "src/modzoo_my_algo/__init__.py", "src/modzoo_my_algo/plugin.py",
                "src/modzoo_my_algo/my_algo.yaml", "tests/test_my_algo.py"]:
        assert (root / rel).is_file(), rel
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["modzoo"] == {"my_algo": "modzoo_my_algo.plugin"}
    assert meta["tool"]["setuptools"]["package-data"] == {"modzoo_my_algo": ["*.yaml"]}
    assert "pip install -e" in out


@pytest.mark.parametrize("kind, halves", [("both", {"guidance", "policy"}), ("guidance", {"guidance"}),
                                          ("policy", {"policy"})])
def test_generated_plugin_passes_the_conformance_suite(tmp_path, monkeypatch, entry_points, kind, halves):
    name = f"gen_{kind}"
    root = new_plugin(name, tmp_path, kind)
    import_generated(root, name, monkeypatch)
    entry_points(md.EntryPoint(name=name, value=f"modzoo_{name}.plugin", group="modzoo"))
    reports = check_plugin(name, workdir=tmp_path / "check")
    assert {r.kind for r in reports.values()} == halves
    reg = modzoo.load_registry()
    assert (name in reg.guidances) == ("guidance" in halves) and (name in reg.policies) == ("policy" in halves)


def test_generated_halves_train_through_the_cli(capsys, tmp_path, monkeypatch, entry_points, small_dataset_path):
    root = new_plugin("clialgo", tmp_path)
    import_generated(root, "clialgo", monkeypatch)
    entry_points(md.EntryPoint(name="clialgo", value="modzoo_clialgo.plugin", group="modzoo"))
    rc, out, _ = run_cli(capsys, "list")
    assert "│ guidance │ clialgo" in out and "│ policy   │ clialgo" in out
    rc, out, err = run_cli(capsys, "run", "--guidance", "clialgo", "--policy", "clialgo", "--env", TASK,
                           "--dataset", str(small_dataset_path), "--schedule", "guidance-first",
                           "--guidance-steps", "3", "--policy-steps", "3", "--eval-episodes", "1", "--device", "cpu",
                           "--out", str(tmp_path / "r"), "--no-progress", "guidance.hidden=[32,32]",
                           "policy.hidden=32", "policy.candidates=2")
    assert rc == 0, err
    assert "normalized score:" in out


@pytest.mark.parametrize("argv, message", [
    (["My-Algo"], "not a lower-case identifier"),
    (["class"], "not a lower-case identifier"),
    (["idql"], "already registered"),
    (["ok_name", "--kind", "critic"], "invalid choice"),
])
def test_plugin_new_refuses_bad_names(capsys, tmp_path, argv, message):
    if "--kind" in argv:
        with pytest.raises(SystemExit):
            main(["plugin", "new", *argv, "--dir", str(tmp_path)])
        assert message in capsys.readouterr().err
        return
    rc, out, err = run_cli(capsys, "plugin", "new", *argv, "--dir", str(tmp_path))
    assert rc == 2 and message in err
    assert not any(tmp_path.iterdir())


def test_plugin_new_does_not_overwrite(capsys, tmp_path):
    assert run_cli(capsys, "plugin", "new", "twice", "--dir", str(tmp_path))[0] == 0
    marker = tmp_path / "modzoo-twice" / "src" / "modzoo_twice" / "plugin.py"
    marker.write_text("# my edits\n")
    rc, _, err = run_cli(capsys, "plugin", "new", "twice", "--dir", str(tmp_path))
    assert rc == 2 and "already exists" in err
    assert marker.read_text() == "# my edits\n"


# ---- broken plugins in `modzoo list` ----------------------------------------------------------------------------
def test_list_reports_a_plugin_that_fails_to_import(capsys, tmp_path, monkeypatch, entry_points):
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry_points(md.EntryPoint(name="ghost", value="modzoo_no_such_module_xyz", group="modzoo"))
    entry_points(md.EntryPoint(name="explodes", value="explodes_on_import", group="modzoo"))
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    assert "broken plugin ghost: import failed: ModuleNotFoundError: No module named 'modzoo_no_such_module_xyz'" in out
    assert "broken plugin explodes: import failed: RuntimeError: boom at import" in out
    for half in ("│ guidance │ idql", "│ policy   │ cfg", "│ policy   │ sfbc"):  # the others still load
        assert half in out
    # and a run naming a missing half says which plugins failed to load
    with pytest.raises(modzoo.PluginError, match="ghost: import failed"):
        modzoo.load_registry().policy("ghost")


# ---- the example external package (examples/modzoo-awr) ---------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "modzoo-awr"


@pytest.fixture
def awr(monkeypatch, entry_points):
    """examples/modzoo-awr as if pip-installed: its src on sys.path and its entry point in the 'modzoo' group."""
    import_generated(EXAMPLE, "awr", monkeypatch)
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    for name, value in meta["project"]["entry-points"]["modzoo"].items():
        entry_points(md.EntryPoint(name=name, value=value, group="modzoo"))
    return importlib.import_module("modzoo_awr.plugin")


def test_example_plugin_is_listed_and_passes_the_suite(capsys, tmp_path, awr):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0 and "│ policy   │ awr  │ awr    │ guidance: idql" in out
    report = check_plugin("awr", workdir=tmp_path)["policy:awr"]
    assert report.passed[-1] == "env" and list(report.skipped) == ["stacked"]  # awr is not stackable


def test_registry_file_describes_first_party_plugins_whatever_else_is_installed(capsys, tmp_path, awr):
    """registry.yaml is modzoo's own: a user's installed plugins (awr's policy, a guidance registered in-process)
    are listed live by `modzoo list`, and neither --check nor the test of the committed file may break on them;
    --write writes first-party halves only (no third-party guidance among a policy's compatible ones either)."""
    from types import SimpleNamespace

    from modzoo.cli.main import registry_yaml_text
    from modzoo.plugins.idql import CONFIG, IQLGuidance

    class ThirdQ(IQLGuidance):
        pass

    modzoo.register_plugin(SimpleNamespace(modzoo_guidances=modzoo.hookimpl(
        lambda: [modzoo.HalfSpec("thirdq", ThirdQ, CONFIG, "guidance")])), name="thirdq")
    try:
        reg = modzoo.load_registry()
        assert "awr" in reg.policies and "thirdq" in reg.guidances and "thirdq" in reg.compatible("dql")
        committed = Path(__file__).resolve().parents[1] / "registry.yaml"
        assert registry_yaml_text() == committed.read_text()
        rc, out, err = run_cli(capsys, "registry", "--check", "--path", str(committed))
        assert rc == 0 and "is current" in out, err
        rc, _, err = run_cli(capsys, "registry", "--check", "--path", str(tmp_path / "r.yaml"))
        assert rc == 2 and "r.yaml does not exist" in err and "out of date" not in err
        rc, _, err = run_cli(capsys, "registry", "--write", "--path", str(tmp_path / "no" / "r.yaml"))
        assert rc == 2 and f"its folder {tmp_path / 'no'} does not exist" in err
        rc, _, err = run_cli(capsys, "registry", "--write", "--path", str(tmp_path / "r.yaml"))
        assert rc == 0, err
        written = (tmp_path / "r.yaml").read_text()
        assert written == committed.read_text() and "awr" not in written and "thirdq" not in written
        rc, out, _ = run_cli(capsys, "list")
        assert "│ policy   │ awr" in out and "│ guidance │ thirdq" in out
    finally:
        modzoo.unregister_plugin("thirdq")


def test_example_plugin_weights_by_hand(awr):
    q, v = torch.tensor([1.0, 0.0, 5.0]), torch.tensor([0.0, 0.5, 0.0])
    torch.testing.assert_close(awr.awr_weights(q, v, 3.0, 100.0),
                               torch.tensor([math.exp(3.0), math.exp(-1.5), 100.0]))


def test_example_plugin_runs_through_the_cli_and_bad_pairs_are_refused(capsys, tmp_path, awr, small_dataset_path):
    common = ["--env", TASK, "--dataset", str(small_dataset_path), "--device", "cpu", "--no-progress",
              "guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64"]
    rc, out, err = run_cli(capsys, "run", "--guidance", "idql", "--policy", "awr", "--schedule", "guidance-first",
                           "--guidance-steps", "3", "--policy-steps", "3", "--eval-episodes", "1",
                           "--out", str(tmp_path / "r"), *common)
    assert rc == 0, err
    assert "normalized score:" in out
    rc, out, err = run_cli(capsys, "eval", "--policy", str(tmp_path / "r" / "policy.pt"), "--episodes", "1",
                           "--no-progress", "--device", "cpu")
    assert rc == 0 and "policy: awr; guidance: idql" in out, err
    rc, out, err = run_cli(capsys, "run", "--guidance", "dql", "--policy", "awr", "--out", str(tmp_path / "bad"),
                           *common)
    assert rc == 2
    assert "policy 'awr' needs a guidance providing ['q', 'v'], but 'dql' provides ['q'] (missing ['v'])" in err
    assert "compatible guidances: idql" in err
    assert not (tmp_path / "bad" / "policy.pt").exists()


# ---- a real install into a temporary virtual environment --------------------------------------------------------
def temp_venv(path: Path) -> Path:
    """A venv that sees this environment's packages (modzoo, torch) through a .pth, so pip installs only the
    plugin there and the project's own environment is left untouched."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_modzoo_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return py


def pip_install_editable(py: Path, package: Path) -> None:
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                           str(package)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_generated_package_installs_with_pip_and_its_tests_pass(tmp_path):
    root = new_plugin("pipalgo", tmp_path)
    py = temp_venv(tmp_path / "venv")
    pip_install_editable(py, root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([str(py), "-m", "modzoo.cli", "list"], capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout
    assert "│ guidance │ pipalgo" in out and "│ policy   │ pipalgo" in out and "broken" not in out
    proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
def test_example_package_installs_with_pip_and_runs_from_the_cli(tmp_path, small_dataset_path):
    py = temp_venv(tmp_path / "venv")
    pip_install_editable(py, EXAMPLE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([str(py), "-m", "modzoo.cli", "run", "--guidance", "idql", "--policy", "awr", "--env", TASK,
                           "--dataset", str(small_dataset_path), "--policy-steps", "3", "--eval-episodes", "1",
                           "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r"), "policy.hidden=32",
                           "guidance.hidden=[32,32]"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0 and "normalized score:" in proc.stdout, proc.stdout + proc.stderr
