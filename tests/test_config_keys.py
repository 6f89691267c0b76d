"""Every config key a first-party half reads is in its plugin YAML.

A key read with ``cfg.get(key, default)`` but missing from the YAML cannot be overridden (struct mode refuses it),
is not written to a run's ``config.yaml``, and a later session that adds it to the YAML turns every finished run
of a grid stale. Each half is built, fitted, updated and asked to act with a config dict that records its reads.
"""
from __future__ import annotations

import pytest
import yaml

from modzoo.blocks.policy import BehaviourFirstPolicy
from modzoo.bullet.data import load_dataset
from modzoo.contract.registry import load_registry
from modzoo.run.buffer import ReplayBuffer
from modzoo.run.config import half_config

TASK = "bullet-hopper-medium-v0"
FIRST_PARTY = {"guidance": ["dql", "fql", "idql", "ifql", "qgpo"],
               "policy": ["bc", "cfg", "dql", "dtql", "edp", "fbc", "fql", "idql", "ifql", "qgpo", "sfbc", "srpo"]}


class Recording(dict):
    """A config dict that notes every key looked up (``get``, ``[]``, ``in``)."""

    def __init__(self, data: dict, read: set[str]) -> None:
        super().__init__(data)
        self.read = read

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:  # type: ignore[no-untyped-def]
        self.read.add(key)
        return super().__contains__(key)


@pytest.fixture
def recording_halves(monkeypatch):  # type: ignore[no-untyped-def]
    """Halves keep a recording copy of their config (``Half.__init__`` copies it into a plain dict)."""
    import modzoo.contract.interfaces as interfaces
    orig = interfaces.Half.__init__

    def init(self, obs_dim, act_dim, cfg):  # type: ignore[no-untyped-def]
        orig(self, obs_dim, act_dim, cfg)
        if isinstance(cfg, Recording):
            self.cfg = Recording(self.cfg, cfg.read)
    monkeypatch.setattr(interfaces.Half, "__init__", init)


def _build(kind: str, name: str, ds, overrides: dict | None = None):  # type: ignore[no-untyped-def]
    spec = load_registry().half(kind, name)
    cfg = {**half_config(spec.default_config(), TASK), **(overrides or {})}
    read: set[str] = set()
    half = spec.cls(ds.obs_dim, ds.act_dim, Recording(cfg, read))
    half.fit_data(ds)
    return half, set(cfg), read


@pytest.mark.parametrize("kind,name", [(k, n) for k, names in FIRST_PARTY.items() for n in names])
def test_every_key_a_half_reads_is_in_its_yaml(recording_halves, small_dataset_path, kind, name) -> None:
    import warnings
    ds = load_dataset(str(small_dataset_path), task=TASK)
    batch = ReplayBuffer(ds, seed=0).sample(16)
    small = {"hidden": [16, 16]} if kind == "guidance" else {"hidden": 16, "candidates": 4}
    if name == "dtql":
        small["gamma"] = 1.0  # its log-prob term, 0 on locomotion, reads no key of its own but is code all the same
    half, keys, read = _build(kind, name, ds, small)
    if isinstance(half, BehaviourFirstPolicy):  # a two-stage policy: the second update is its second stage
        half.behaviour_steps = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cfg warns that a joint critic moves under its labels
        if kind == "guidance":
            partner = _build("policy", "dql", ds, {"hidden": 16})[0]
            half.update(batch, partner if half.requires_policy else None)
            half.q(batch["observations"], batch["actions"])
        else:
            critic = _build("guidance", "idql", ds, {"hidden": [16, 16]})[0]
            for _ in range(2):
                half.update(batch, critic)
            half.act(batch["observations"][:2], critic)
            half.target_actions(batch["observations"][:2])
    assert not read - keys, f"{kind} {name!r} reads {sorted(read - keys)}, which its YAML lacks"


def test_a_half_reading_a_key_its_yaml_lacks_fails_the_conformance_suite_by_name(tmp_path) -> None:
    """Code reads ``cfg["key"]``: a default missing from the YAML is caught by name, not silently supplied."""
    from modzoo import DDPMPolicy, HalfSpec
    from modzoo.plugins import bc
    from modzoo.testing import ConformanceError, check_policy

    section = yaml.safe_load(bc.CONFIG.read_text())["policy"]
    del section["ema_decay"]

    class ForgotOne(DDPMPolicy):
        """A BC policy whose YAML lost a key DDPMPolicy reads."""

        needs = frozenset()

        def loss(self, batch, guidance=None):  # type: ignore[no-untyped-def]
            loss = self.bc_loss(batch)
            return loss, {"bc_loss": loss.detach()}

    assert HalfSpec("forgot", ForgotOne, {"policy": section}).kind == "policy"  # derived from the base
    with pytest.raises(ConformanceError, match=r"\[construct\] .*'ema_decay'"):
        check_policy(ForgotOne, config=section, workdir=tmp_path, checks=["construct"])


def test_keys_read_only_when_acting_are_required_at_construction_and_old_overrides_still_act() -> None:
    """A YAML without an acting key fails when the half is built, not in the final evaluation; a subclass that
    overrides ``sample`` with the signature it had before the inference samplers keeps acting."""
    import torch

    from modzoo import DDPMPolicy, load_registry
    from modzoo.run.config import half_config

    section = half_config(load_registry().policies["bc"].default_config())  # bc.yaml over DDPMPolicy's machinery

    class OldSample(DDPMPolicy):
        """A policy written against the older DDPMPolicy.sample(obs, n, model, init_scale)."""

        needs = frozenset()

        def sample(self, obs, n=1, model=None, init_scale=1.0):  # type: ignore[no-untyped-def, override]
            return super().sample(obs, n, model=model, init_scale=init_scale)

    policy = OldSample(11, 3, {**section, "hidden": 16})
    assert policy.act(torch.zeros(2, 11)).shape == (2, 3)
    with pytest.raises(KeyError, match="act_sampler"):
        OldSample(11, 3, {k: v for k, v in section.items() if k != "act_sampler"})


def test_a_plugin_yaml_states_only_the_machinery_keys_its_method_changes() -> None:
    """Each key is said once: the machinery defaults live in the base class's YAML (DDPMPolicy's, TwinCriticGuidance's),
    and a first-party plugin's YAML restates one only with another value, so what it holds is its method's."""
    from modzoo import load_registry

    reg = load_registry().first_party()
    restated = []
    for kind, halves in (("guidance", reg.guidances), ("policy", reg.policies)):
        for name, spec in halves.items():
            own = yaml.safe_load(open(spec.config).read())[kind]
            restated += [f"{name}.yaml {kind}.{k}: {v!r}" for k, v in spec.base_defaults().items()
                         if k in own and own[k] == v]
    assert not restated, "at the base's default (drop them from the plugin's YAML):\n" + "\n".join(restated)


def test_a_half_built_on_a_base_gets_its_machinery_defaults_and_overrides_them() -> None:
    """A plugin YAML without the machinery keys still builds (the base's fill in), and a key it states wins."""
    from modzoo import DDPMPolicy, HalfSpec

    class Tiny(DDPMPolicy):
        """A diffusion BC policy whose YAML holds only its method's keys."""

        needs = frozenset()

        def loss(self, batch, guidance):  # type: ignore[no-untyped-def]
            return self.diffusion.loss(batch["actions"], batch["observations"]), {}

    method = {"batch_size": 8, "denoiser": "mlp", "hidden": 16, "depth": 2, "t_dim": 8, "activation": "mish", "T": 3,
              "noise_schedule": "vp", "sampler": "posterior", "loss_reduce": "mean", "lr": 1e-3, "ema_decay": 0.9,
              "ema_every": 1, "ema_start": 0, "act_model": "ema", "candidates": 1, "selection": "argmax",
              "temperature": 1.0, "tau": 0.7, "cond_dim": 0, "grad_norm": 5.0}
    cfg = HalfSpec("tiny", Tiny, {"policy": method}).default_config()
    assert cfg["grad_norm"] == 5.0 and cfg["optimizer"] == "adam" and cfg["obs_norm"] == "none"
    assert list(cfg)[:len(method)] == list(method)  # the plugin's own keys first, in its order
    Tiny(4, 2, cfg)  # every key the base reads is there


def test_modzoo_config_names_the_layer_each_value_comes_from(capsys) -> None:
    """Base machinery, the plugin's YAML, its task override, a preset, an override: the last layer that set a key
    is the one named, and the values are run_config's."""
    from modzoo.cli.main import main
    from modzoo.run.training import config_sources, run_config

    task = "bullet-walker2d-medium-v0"
    rows = config_sources("dql", "dql", task, ["policy.eta=2.5"])
    got = {k: (v, s) for k, v, s in rows}
    assert got["policy.optimizer"] == ("adam", "base DDPMPolicy")
    assert got["guidance.update_target"] == (True, "base TwinCriticGuidance")
    assert got["policy.ema_decay"] == (0.995, "plugin dql")
    assert got["policy.grad_norm"] == (1.0, f"plugin dql task_overrides[{task!r}]")
    assert got["policy.eta"] == (2.5, "override")
    assert got["run.threads"] == (1, "run default") and got["run.task"] == (task, "argument")
    from omegaconf import OmegaConf
    resolved = OmegaConf.to_container(run_config("dql", "dql", task, ["policy.eta=2.5"]))
    assert {k: v for k, (v, _) in got.items()} == {f"{s}.{k}": v for s in ("run", "guidance", "policy")
                                                    for k, v in resolved[s].items()}
    preset = {k: (v, s) for k, v, s in config_sources("dql", "dql", task, preset="gfdt-authors")}
    assert preset["policy.act_temperature"] == (0.5, "preset gfdt-authors")
    assert preset["policy.temperature"][1] == f"preset task_overrides[{task!r}]"
    assert main(["config", "--guidance", "idql", "--policy", "dql", "--env", task, "policy.eta=2.5"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("policy.eta "))
    assert line.split() == ["policy.eta", "2.5", "override"]


def test_the_noise_schedule_is_named_so_and_its_old_name_still_reads(tmp_path) -> None:
    """"schedule" meant the training plan, the noise schedule and the LR schedule; the policy's noise schedule is
    noise_schedule. An override, a preset or a plugin YAML that says policy.schedule is read under the new name with
    a one-line notice; a saved config.yaml and a checkpoint that say it are read silently (records are not
    rewritten), so old runs neither turn stale nor load with the default schedule."""
    import warnings

    import torch

    import modzoo
    from modzoo.run.checkpoint import read_payload
    from modzoo.run.config import config_diff

    task = "bullet-hopper-medium-v0"
    with pytest.warns(UserWarning, match=r"policy.schedule is now policy.noise_schedule"):
        cfg = modzoo.run_config("idql", "dql", task, ["policy.schedule=cosine"])
    assert cfg.policy.noise_schedule == "cosine" and "schedule" not in cfg.policy
    saved = {s: dict(cfg[s]) for s in ("run", "guidance", "policy")}
    saved["policy"]["schedule"] = saved["policy"].pop("noise_schedule")  # as a config.yaml written before the rename
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_diff(saved, {s: dict(cfg[s]) for s in ("run", "guidance", "policy")}) == []
    policy = modzoo.make_policy("dql", 15, 3, noise_schedule="cosine", hidden=16)
    path = modzoo.save_half(policy, tmp_path / "p.pt")
    payload = read_payload(path)
    payload["config"]["schedule"] = payload["config"].pop("noise_schedule")
    torch.save(payload, path)
    loaded = modzoo.load_checkpoint(path)
    assert loaded.cfg["noise_schedule"] == "cosine" and "schedule" not in loaded.cfg
    torch.testing.assert_close(loaded.diffusion.betas, policy.diffusion.betas)
