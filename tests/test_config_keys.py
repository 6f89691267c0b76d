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
FIRST_PARTY = {"guidance": ["dql", "idql"],
               "policy": ["bc", "cfg", "dql", "dtql", "edp", "idql", "qgpo", "sfbc", "srpo"]}


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

    from modzoo import DDPMPolicy
    from modzoo.plugins import bc
    from modzoo.run.config import half_config

    section = half_config(yaml.safe_load(bc.CONFIG.read_text())["policy"])

    class OldSample(DDPMPolicy):
        """A policy written against the older DDPMPolicy.sample(obs, n, model, init_scale)."""

        needs = frozenset()

        def sample(self, obs, n=1, model=None, init_scale=1.0):  # type: ignore[no-untyped-def, override]
            return super().sample(obs, n, model=model, init_scale=init_scale)

    policy = OldSample(11, 3, {**section, "hidden": 16})
    assert policy.act(torch.zeros(2, 11)).shape == (2, 3)
    with pytest.raises(KeyError, match="act_sampler"):
        OldSample(11, 3, {k: v for k, v in section.items() if k != "act_sampler"})
