"""Which critic each first-party policy reads: the guidance's *online* members (``q_ensemble``, ``q_members``) or
its *target* (``q``, ``target_q_ensemble``), in its training loss and when it selects among candidates.

The authors' codes differ here (SRPO differentiates the target critics, DTQL and Diffusion-QL the online ones, and
every one that ranks candidates ranks with the target), and a swap is silent: the runs train and score, a little
differently. So each policy is run against three frozen IQL critics that share everything but one network: a base
one, one whose online critic is replaced and one whose target critic is replaced. A policy reading the online
critic gives the base's numbers (loss, chosen actions) under the new target and other numbers under the new online
critic; a policy reading the target, the reverse; a policy reading neither, the same numbers under all three.
Every policy is built afresh from the same seed for each, so its own random draws are the same each time.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import modzoo
from modzoo.testing.conformance import tiny_overrides

OBS, ACT, B = 5, 2, 64

#: policy -> (critic its loss reads, critic its selection reads); None: it does not read the guidance there.
#: The sources: docs/algorithms.md, each plugin's entry.
EXPECTED: dict[str, tuple[str | None, str | None]] = {
    "bc": (None, None),
    "cfg": ("target", None),      # labels from q (- v); one conditioned sample, no ranking
    "dql": ("online", "target"),  # agents/ql_diffusion.py: actor loss on self.critic, sample_action on critic_target
    "dtql": ("online", "target"),  # agents/dtql.py:144 self.critic.q_min; :184 critic_target.q_min
    "edp": ("online", "target"),
    "fbc": (None, None),
    "fql": ("online", None),      # fql.py:62-79 the online heads; acts with one sample
    "idql": (None, "target"),     # eval_actions ranks with the target critic
    "ifql": (None, "target"),     # ranks with guidance.q: the target of a twin-critic base (IFQL's own q is online)
    "qgpo": ("target", None),     # model.py:176 q0_target; one guided sample
    "sfbc": (None, "target"),
    "srpo": ("target", None),     # SRPO.py:46 q0_target.both; acts with the actor
}

#: the loss a policy's Q term lives in (the rest write ``loss``)
LOSS: dict[str, Callable[[Any, dict[str, torch.Tensor], Any], tuple[torch.Tensor, Any]]] = {
    "srpo": lambda p, b, g: p.actor_loss(b, g),
    "dtql": lambda p, b, g: p.actor_loss(b, g),
    "qgpo": lambda p, b, g: p.energy_loss(b, g),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"observations": torch.randn(B, OBS, generator=g), "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g), "next_observations": torch.randn(B, OBS, generator=g),
            "terminals": torch.zeros(B), "next_actions": torch.rand(B, ACT, generator=g) * 2 - 1}


def _config(kind: str, name: str, **over: Any) -> dict[str, Any]:
    spec = getattr(modzoo.load_registry(), kind)(name)
    cfg = spec.default_config()
    cfg.pop("task_overrides", None)
    cfg.update(tiny_overrides(cfg))
    cfg.update(seed=0, **over)
    return cfg


@torch.no_grad()
def _redraw(module: torch.nn.Module, seed: int) -> None:
    """New weights (std 1, far from the init's scale) for every parameter of ``module``."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g))


def _guidances(name: str = "idql") -> dict[str, modzoo.GuidanceModule]:
    """The base critic, one with a new online critic and one with a new target critic, all else equal."""
    out = {}
    for which in ("base", "online", "target"):
        torch.manual_seed(0)
        g = modzoo.load_registry().guidance(name).cls(OBS, ACT, _config("guidance", name))
        _redraw(g.critic_target, 1)  # the base's target differs from its online critic too
        if which == "online":
            _redraw(g.critic, 2)
        elif which == "target":
            _redraw(g.critic_target, 3)
        out[which] = g.freeze()
    return out


def _policy(name: str) -> modzoo.DiffusionPolicy:
    over: dict[str, Any] = {}
    if name == "qgpo":
        over = {"support_actions": 4, "support_steps": 2, "energy_batch_size": 16}
    if name in ("idql", "sfbc", "edp", "dql", "dtql", "ifql"):
        over["candidates"] = 16  # enough candidates that a different ranking picks other actions
    torch.manual_seed(0)
    return modzoo.load_registry().policy(name).cls(OBS, ACT, _config("policy", name, **over))


def _reads(outputs: dict[str, torch.Tensor]) -> str | None:
    """Which critic ``outputs`` (per guidance variant) follow: 'online', 'target', None (neither) or 'both'."""
    base = outputs["base"]
    moved = {w for w in ("online", "target") if not torch.equal(outputs[w], base)}
    return {frozenset(): None, frozenset({"online"}): "online", frozenset({"target"}): "target"}.get(
        frozenset(moved), "both")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_loss_reads_the_critic_its_authors_read(name):
    batch, guidances = _batch(), _guidances()
    loss = LOSS.get(name, lambda p, b, g: p.loss(b, g))
    outs = {w: loss(_policy(name), batch, g)[0].detach() for w, g in guidances.items()}
    assert _reads(outs) == EXPECTED[name][0], f"{name}'s loss: {outs}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_selection_reads_the_critic_its_authors_read(name):
    obs, guidances = _batch()["observations"], _guidances()
    outs = {w: _policy(name).act(obs, g) for w, g in guidances.items()}
    assert _reads(outs) == EXPECTED[name][1], f"{name}'s act"


def test_the_check_tells_online_from_target():
    """The harness itself: the two perturbed guidances do differ where the policies look."""
    g = _guidances()
    obs, act = _batch()["observations"], _batch()["actions"]
    assert _reads({w: x.q_ensemble(obs, act) for w, x in g.items()}) == "online"
    assert _reads({w: x.target_q_ensemble(obs, act) for w, x in g.items()}) == "target"
    assert _reads({w: x.q(obs, act) for w, x in g.items()}) == "target"


@pytest.mark.parametrize("name", ["dql", "fql", "idql", "qgpo"])
def test_twin_critic_guidances_rank_with_the_target(name):
    """``q`` of every guidance on the twin-critic base is its target's minimum; ``target_q_ensemble`` its target."""
    g = _guidances(name)
    obs, act = _batch()["observations"], _batch()["actions"]
    assert _reads({w: x.q(obs, act) for w, x in g.items()}) == "target"
    assert torch.equal(g["base"].q(obs, act), g["base"].target_q_ensemble(obs, act).min(0).values)


def test_ifql_guidance_ranks_with_its_online_critic():
    """IFQL's acting takes the argmax of the online critics' minimum (ifql.py:122-155), so its ``q`` is online."""
    g = _guidances("ifql")
    obs, act = _batch()["observations"], _batch()["actions"]
    assert _reads({w: x.q(obs, act) for w, x in g.items()}) == "online"
