"""Plugin discovery, the registry file, pairing rules and config handling."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import modzoo
from modzoo.contract.registry import HalfSpec, load_registry
from modzoo.errors import ConfigError, PluginError

ROOT = Path(__file__).resolve().parents[1]


def test_first_party_plugins_come_through_entry_points():
    import importlib.metadata as md
    names = {ep.name for ep in md.entry_points(group="modzoo")}
    assert {"idql", "dql"} <= names
    reg = load_registry(refresh=True)
    assert {"idql", "dql"} <= set(reg.guidances) and {"idql", "dql"} <= set(reg.policies)
    assert reg.guidances["idql"].plugin == "idql"


def test_registry_yaml_is_current():
    from modzoo.cli.main import registry_yaml_text
    assert (ROOT / "registry.yaml").read_text() == registry_yaml_text(), (
        "registry.yaml is stale: run `modzoo registry --write`")


class NeedsV(modzoo.DiffusionPolicy):
    needs = frozenset({"q", "v"})

    def update(self, batch, guidance=None):
        return {}

    def sample(self, obs, n=1):
        return torch.zeros(obs.shape[0], n, self.act_dim)

    def act(self, obs, guidance=None, n=None):
        return torch.zeros(obs.shape[0], self.act_dim)


def test_incompatible_pair_is_refused_with_what_is_missing():
    plugin = SimpleNamespace(modzoo_policies=modzoo.hookimpl(
        lambda: [HalfSpec("needs_v", NeedsV, {"policy": {}}, "policy", "test policy")]))
    modzoo.register_plugin(plugin, name="needs_v_plugin")
    try:
        reg = load_registry()
        assert reg.compatible("needs_v") == ["idql", "ifql"]
        with pytest.raises(PluginError, match=r"missing \['v'\].*compatible guidances: idql, ifql"):
            reg.check_pair("dql", "needs_v")
        reg.check_pair("idql", "needs_v")
    finally:
        modzoo.unregister_plugin("needs_v_plugin")


@pytest.fixture
def needs_v():
    """A policy that needs V, registered for the test: first-party guidance dql (Q only) does not fit it."""
    plugin = SimpleNamespace(modzoo_policies=modzoo.hookimpl(
        lambda: [HalfSpec("needs_v", NeedsV, {"policy": {"batch_size": 4}}, "policy", "test policy")]))
    modzoo.register_plugin(plugin, name="needs_v_plugin")
    yield "needs_v"
    modzoo.unregister_plugin("needs_v_plugin")


@pytest.mark.parametrize("seeds", [[], ["--seeds", "0,1"]])
def test_misfit_pair_is_refused_before_the_dataset_is_read(capsys, tmp_path, needs_v, seeds):
    """The pairing is a setting, refused with the other settings: a missing dataset (or env) must not hide it,
    nor cost the load of a real one first, with one seed or several."""
    from modzoo.cli.main import main
    rc = main(["run", "--guidance", "dql", "--policy", needs_v, "--env", "bullet-hopper-medium-v0", "--dataset",
               str(tmp_path / "no-such-file.hdf5"), "--device", "cpu", "--out", str(tmp_path / "r"), *seeds])
    err = capsys.readouterr().err
    assert rc == 2
    assert "policy 'needs_v' needs a guidance providing ['q', 'v'], but 'dql' provides ['q']" in err, err
    assert "no-such-file" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(PluginError, match=r"missing \['v'\]"):
        modzoo.run_config("dql", needs_v, "bullet-hopper-medium-v0", dataset=str(tmp_path / "no-such-file.hdf5"))


def test_broken_plugin_is_reported_and_does_not_stop_the_others():
    def boom():
        raise RuntimeError("kaboom")

    modzoo.register_plugin(SimpleNamespace(modzoo_guidances=modzoo.hookimpl(boom)), name="broken_one")
    modzoo.register_plugin(SimpleNamespace(modzoo_guidances=modzoo.hookimpl(
        lambda: [HalfSpec("notaclass", int, {"guidance": {}}, "guidance")])), name="wrong_type")
    try:
        reg = load_registry()
        errors = {b.name: b.error for b in reg.broken}
        assert "kaboom" in errors["broken_one"]
        assert "does not subclass" in errors["wrong_type"]
        assert {"idql", "dql"} <= set(reg.guidances)
    finally:
        modzoo.unregister_plugin("broken_one")
        modzoo.unregister_plugin("wrong_type")


def test_unknown_plugin_lists_known_ones():
    with pytest.raises(PluginError, match="known guidances: dql, fql, idql, ifql, qgpo"):
        load_registry().guidance("iqll")


def test_misspelt_key_is_an_error_naming_it():
    cfg = modzoo.run_config("idql", "dql", "bullet-hopper-medium-v0")
    assert cfg.policy.eta == 1.0
    with pytest.raises(ConfigError, match="policy.etta"):
        modzoo.run_config("idql", "dql", "bullet-hopper-medium-v0", ["policy.etta=2"])
    with pytest.raises(ConfigError, match="key=value"):
        modzoo.run_config("idql", "dql", "bullet-hopper-medium-v0", ["policy.eta"])
    cfg = modzoo.run_config("idql", "dql", "bullet-hopper-medium-v0", ["policy.eta=2.5", "run.eval_every=7"])
    assert cfg.policy.eta == 2.5 and cfg.run.eval_every == 7


def test_task_overrides_apply_per_task():
    """Diffusion-QL clips gradients per task (gn): walker2d-medium 1.0, hopper-medium-replay 4.0."""
    assert modzoo.run_config("dql", "dql", "bullet-walker2d-medium-v0").policy.grad_norm == 1.0
    assert modzoo.run_config("dql", "dql", "bullet-hopper-medium-replay-v0").guidance.grad_norm == 4.0
    assert "task_overrides" not in modzoo.run_config("dql", "dql", "bullet-hopper-medium-v0").policy


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="unknown schedule 'sideways'; known: joint, guidance-first, pretrained"):
        modzoo.run_config("idql", "idql", "bullet-hopper-medium-v0", schedule="sideways")


def test_make_half_rejects_unknown_kwargs():
    with pytest.raises(ConfigError, match="no config keys"):
        modzoo.make_policy("dql", 3, 2, etaa=1.0)


@pytest.mark.parametrize("guidance,policy,setting", [("dql", "idql", "policy.selection=expectile"),
                                                     ("fql", "dql", "policy.selection=expectile"),
                                                     ("dql", "cfg", "policy.signal=advantage")])
def test_a_setting_that_needs_v_is_refused_with_a_guidance_without_it_before_any_data(guidance, policy, setting,
                                                                                      tmp_path, capsys):
    """No silent fallback: the setting, the guidance and the fix in one line, in under a second, before the
    dataset (which does not exist here) is looked at, and no run dir is made."""
    import time

    from modzoo.cli.main import main

    t0 = time.perf_counter()
    with pytest.raises(modzoo.ConfigError, match=rf"{re.escape(setting)} needs \['v'\] from the guidance, which "
                                                 rf"'{guidance}' does not provide.*idql"):
        modzoo.run_config(guidance, policy, "bullet-hopper-medium-v0", [setting], dataset=str(tmp_path / "none.h5"))
    assert time.perf_counter() - t0 < 1.0
    assert main(["run", "--guidance", guidance, "--policy", policy, "--env", "bullet-hopper-medium-v0", "--dataset",
                 str(tmp_path / "none.h5"), "--out", str(tmp_path / "r"), setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting in err[0] and "none.h5" not in err[0]  # the setting, not the missing data
    assert not (tmp_path / "r").exists()
    modzoo.run_config("idql", policy, "bullet-hopper-medium-v0", [setting])  # a guidance with V takes it


def test_acting_by_a_rule_the_guidance_cannot_drive_is_refused_not_replaced() -> None:
    """expectile with a Q-only guidance used to act by argmax while the config said expectile."""
    import torch

    from modzoo.blocks.selection import select_with_guidance

    class QOnly:
        algorithm, provides = "qonly", frozenset({"q"})

        def q(self, obs, act):  # type: ignore[no-untyped-def]
            return act.sum(-1)

    cands, obs = torch.rand(2, 4, 3), torch.rand(2, 5)
    with pytest.raises(modzoo.ConfigError, match="selection 'expectile' needs \\['v'\\].*'qonly'"):
        select_with_guidance(cands, obs, QOnly(), "expectile")
    chosen = select_with_guidance(cands, obs, QOnly(), "argmax")
    assert torch.equal(chosen, cands[torch.arange(2), cands.sum(-1).argmax(1)])
