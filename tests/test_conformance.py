"""modzoo.testing: every first-party plugin passes the conformance suite, and the suite catches broken halves
(each broken variant below violates one rule of the contract and must fail exactly that check)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import modzoo
from modzoo.plugins.bc import DiffusionBCPolicy
from modzoo.plugins.idql import IQLGuidance
from modzoo.testing import ConformanceError, check_guidance, check_plugin, check_policy, synthetic_dataset


def first_party():
    reg = modzoo.load_registry(refresh=True)
    return sorted({s.plugin for s in [*reg.guidances.values(), *reg.policies.values()]
                   if s.cls.__module__.startswith("modzoo.plugins.")})


@pytest.mark.parametrize("plugin", first_party())
def test_first_party_plugin_passes_the_suite(plugin, tmp_path):
    reports = check_plugin(plugin, workdir=tmp_path)
    assert reports
    reg = modzoo.load_registry()
    for r in reports.values():
        expected = {"construct", "shapes", "update", "determinism", "checkpoint", "learns", "trains", "schedules",
                    "stacked"}
        if r.kind == "policy":
            expected |= {"env", "pairs"}
        claims = reg.half(r.kind, r.name).cls.stackable
        assert set(r.passed) == expected - ({"stacked"} if not claims else set())
        assert set(r.skipped) == ({"stacked"} if not claims else set())


class UnstackedPolicy(DiffusionBCPolicy):
    """Keeps the contract but does not claim it can train as stacked seeds."""

    stackable = False


def test_stacked_check_of_an_unstackable_half_is_skipped_with_why(tmp_path):
    """Nothing was checked, so nothing may read as passed: the report (and check_plugin's) says skipped, and why."""
    report = check_policy(UnstackedPolicy, config=BC_CFG, checks=["construct", "stacked"], workdir=tmp_path)
    assert report.passed == ["construct"]
    assert list(report.skipped) == ["stacked"] and "stackable = True" in report.skipped["stacked"]
    assert "stacked" in check_plugin("cfg", checks=["stacked"], workdir=tmp_path / "cfg")["policy:cfg"].skipped


def test_synthetic_dataset_is_a_valid_d4rl_file(tmp_path):
    from modzoo.bullet.data import load_dataset
    p = synthetic_dataset(tmp_path / "s.hdf5", transitions=500)
    ds = load_dataset(str(p), task="bullet-hopper-medium-v0")
    assert (ds.obs_dim, ds.act_dim) == (15, 3) and len(ds) == 490  # a timeout's last row is dropped, per episode
    assert abs(ds.actions).max() <= 1


# ---- the suite fails broken halves, naming the check ------------------------------------------------------------
BC_CFG = {**modzoo.load_registry().policy("bc").default_config()}
BC_CFG.pop("task_overrides")
IQL_CFG = {**modzoo.load_registry().guidance("idql").default_config()}
IQL_CFG.pop("task_overrides")


class LyingPolicy(DiffusionBCPolicy):
    """Says it does not use the guidance in training, then does."""

    def update(self, batch, guidance=None):
        out = super().update(batch, guidance)
        guidance.q(batch["observations"], batch["actions"])
        return out


class LazyPolicy(DiffusionBCPolicy):
    """Counts steps and reports a loss but never steps its optimizer."""

    def update(self, batch, guidance=None):
        loss = self.bc_loss(batch)
        self._steps += 1
        return {"bc_loss": loss.detach()}


class FlatSamplePolicy(DiffusionBCPolicy):
    """Returns (B, A) from sample instead of (B, n, A)."""

    def sample(self, obs, n=1, model=None):
        return super().sample(obs, n, model)[:, 0]


class UndeclaredVPolicy(DiffusionBCPolicy):
    """Ranks with V(s) but declares needs = {"q"} (its parent's): it would be offered with dql, which has no V."""

    needs = frozenset({"q"})

    def act(self, obs, guidance=None, n=None):
        if guidance is not None:
            guidance.v(obs)
        return super().act(obs, guidance, n)


class Opaque:
    pass


class PicklingGuidance(IQLGuidance):
    """Puts an arbitrary object into its checkpoint, which weights_only loading refuses."""

    def extra_state(self):
        return {**super().extra_state(), "helper": Opaque()}


class NoisyGuidance(IQLGuidance):
    """Draws target noise from an unseeded generator: not reproducible under a seed."""

    def rewards(self, batch):
        g = torch.Generator()
        g.seed()
        return super().rewards(batch) + 0.1 * torch.randn(batch["rewards"].shape, generator=g)


class DivergingPolicy(DiffusionBCPolicy):
    """Trains normally, until its loss turns NaN at update 150: past what every other check runs."""

    def update(self, batch, guidance=None):
        metrics = super().update(batch, guidance)
        return {**metrics, "bc_loss": torch.tensor(float("nan"))} if self.steps >= 150 else metrics


class GlobalNoisePolicy(DiffusionBCPolicy):
    """Claims it can train as stacked seeds, but adds noise from torch's global RNG, which every stacked seed
    would share (a lone run's global RNG is seeded by its own seed)."""

    stackable = True

    def loss(self, batch, guidance=None):
        loss, metrics = super().loss(batch, guidance)
        loss = loss + 0.1 * torch.randn(()).abs()
        return loss, {**metrics, "bc_loss": loss.detach()}


@pytest.mark.parametrize("cls, kind, cfg, check, message, unbroken", [
    (LyingPolicy, "policy", BC_CFG, "update", "uses_guidance_in_training = False", ["construct", "checkpoint"]),
    (LazyPolicy, "policy", BC_CFG, "learns", "did not lower 'bc_loss'", ["construct", "update", "checkpoint"]),
    (FlatSamplePolicy, "policy", BC_CFG, "shapes", r"sample\(obs, 3\) has shape \(5, 3\), expected \(5, 3, 3\)",
     ["construct", "update"]),
    (PicklingGuidance, "guidance", IQL_CFG, "checkpoint", "weights_only", ["construct", "update", "determinism"]),
    (NoisyGuidance, "guidance", IQL_CFG, "determinism", "same seed", ["construct", "update", "checkpoint"]),
    (GlobalNoisePolicy, "policy", BC_CFG, "stacked", "stacked but", ["construct", "update", "learns"]),
    (DivergingPolicy, "policy", BC_CFG, "trains", r"'bc_loss' is not finite \(nan\) at update 150 of 200",
     ["construct", "update", "learns", "checkpoint"]),
    (LyingPolicy, "policy", BC_CFG, "stacked", "overrides update", ["construct", "checkpoint"]),
    (UndeclaredVPolicy, "policy", BC_CFG, "shapes", r"called guidance\.v\(\).*needs \['q'\].*'v'",
     ["construct", "update", "learns"]),
])
def test_suite_fails_a_broken_half_on_the_right_check(tmp_path, cls, kind, cfg, check, message, unbroken):
    run = check_policy if kind == "policy" else check_guidance
    with pytest.raises(ConformanceError, match=rf"\[{check}\].*{message}"):
        run(cls, config=cfg, checks=[check], workdir=tmp_path)
    # the same class passes the checks it does not break, and the temporary registration is gone afterwards
    assert run(cls, config=cfg, checks=unbroken, workdir=tmp_path / "ok").passed == unbroken
    assert cls.__name__.lower() not in modzoo.load_registry().policies
    assert cls.__name__.lower() not in modzoo.load_registry().guidances


def test_unknown_plugin_names_the_known_ones():
    with pytest.raises(ConformanceError, match="no plugin or half named 'nope'.*idql"):
        check_plugin("nope")


# ---- the pytest plugin ----------------------------------------------------------------------------------------
def test_pytest_option_runs_the_suite_per_check(tmp_path):
    """`pytest --modzoo-plugin=NAME` (the pytest11 entry point): one item per check; a failing check is reported
    by name. conftest.py registers a broken plugin in the subprocess, as a plugin author's own tests might."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        from types import SimpleNamespace
        import modzoo
        from modzoo.plugins.bc import CONFIG, DiffusionBCPolicy

        class Lazy(DiffusionBCPolicy):
            def update(self, batch, guidance=None):
                self._steps += 1
                return {"bc_loss": self.bc_loss(batch).detach()}

        modzoo.register_plugin(SimpleNamespace(modzoo_policies=modzoo.hookimpl(
            lambda: [modzoo.HalfSpec("lazy", Lazy, CONFIG, "policy")])), name="lazy")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--modzoo-plugin=bc",
                           "--modzoo-plugin=lazy", "-k", "not schedules and not env and not stacked"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 failed, 15 passed, 6 deselected" in out, out
    assert "modzoo[policy:lazy:learns]" in out and "did not lower 'bc_loss'" in out


def test_pytest_option_skips_what_a_half_does_not_claim(tmp_path):
    """cfg's policy is not stackable: its stacked item is a pytest skip carrying the reason, not a pass."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "--modzoo-plugin=cfg", "-k", "stacked"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "1 skipped" in out and "passed" not in out, out
    assert "stackable = True" in out, out


BROKEN_CONFTEST = """
import importlib.metadata as md
from pathlib import Path
from types import SimpleNamespace
import modzoo
import modzoo.contract.registry as registry
from modzoo.plugins.bc import DiffusionBCPolicy

real = registry._entry_points
registry._entry_points = lambda: [*real(), md.EntryPoint(name="ghost", value="explodes_on_import", group="modzoo")]
modzoo.register_plugin(SimpleNamespace(modzoo_policies=modzoo.hookimpl(lambda: [modzoo.HalfSpec(
    "typo", DiffusionBCPolicy, Path(__file__).with_name("tpyo.yaml"), "policy")])), name="typo")
"""


@pytest.mark.parametrize("plugin, rc, messages", [
    # a plugin that fails to import: one failed item, with the error and the plugin's own frame
    ("ghost", 1, ["1 failed", "modzoo[plugin:ghost:load]", "boom at import", "explodes_on_import.py"]),
    # a HalfSpec naming a YAML file that is not there: one failed item naming the file
    ("typo", 1, ["1 failed", "modzoo[plugin:typo:load]", "tpyo.yaml does not exist"]),
    # a misspelt name: a usage error naming the known plugins
    ("bcc", 4, ["--modzoo-plugin=bcc", "no plugin or half named 'bcc'", "idql"]),
])
def test_pytest_option_reports_a_broken_or_unknown_plugin_without_internalerror(tmp_path, plugin, rc, messages):
    (tmp_path / "conftest.py").write_text(BROKEN_CONFTEST)
    (tmp_path / "explodes_on_import.py").write_text("raise RuntimeError('boom at import')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--modzoo-plugin={plugin}"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc and "INTERNALERROR" not in out, out
    for m in messages:
        assert m in out, out


def test_the_pytest_option_runs_the_kit_alone_from_inside_a_project(tmp_path):
    """Started in a project with tests of its own (one failing), ``--modzoo-plugin`` runs the kit's items and none
    of the project's, once."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mine.py").write_text("def test_mine():\n    assert False\n")
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ntestpaths = ['tests']\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--modzoo-plugin=bc",
                           "-k", "construct or shapes"], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "2 passed" in out and "test_mine" not in out, out
