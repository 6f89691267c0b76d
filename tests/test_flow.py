"""Flow policies (modzoo.blocks.flow; the fql, ifql and fbc plugins): the maths a wrong port of FQL gets wrong.

Each check is run on the right implementation and, where a known-wrong variant exists (a detached Q term, the
distillation loss reaching the flow, clipping at every Euler step, the right-end-point Euler grid, independent
noise for teacher and student, Polyak from the post-update critic, ...), on that variant too, which must fail it:
``expect(ok, check)`` asserts that ``check`` passes when ``ok`` and raises AssertionError otherwise.
Halves are built from their YAML with tiny widths, without the registry; only the conformance test at the end
needs the plugins registered, and registers them in-process when their entry points are not installed.
"""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from torch import nn

import modzoo
from conftest import random_batch
from modzoo.blocks import flow as flowmod
from modzoo.blocks.flow import FlowMLP, euler, flow_matching_loss, flow_path
from modzoo.plugins import fbc, fql, ifql

PLUGINS = Path(fql.__file__).parent
OBS, ACT, B = 5, 3, 16


def expect(ok: bool, check: Callable[[], None]) -> None:
    """``check()`` passes for the right implementation and fails (AssertionError) for a known-wrong one."""
    if ok:
        check()
    else:
        with pytest.raises(AssertionError):
            check()


def cfg(plugin: str, kind: str, **over) -> dict:
    """The plugin's defaults (its YAML over the base's machinery), smaller nets, ``over`` on top."""
    spec = {"guidance": modzoo.load_registry().guidances, "policy": modzoo.load_registry().policies}[kind][plugin]
    d = spec.default_config()
    d.pop("task_overrides")
    d.update(hidden=[32, 32]) if kind == "guidance" else d.update(hidden=32, depth=2)
    d.update(over)
    return d


def build(cls, plugin: str, kind: str, seed: int = 0, **over):
    torch.manual_seed(seed)
    return cls(OBS, ACT, cfg(plugin, kind, **over))


def batch(seed: int = 0, b: int = B) -> dict[str, torch.Tensor]:
    return random_batch(b, seed, OBS, ACT)


# ---- 1. the flow-matching oracle: a Dirac behaviour policy and its exact velocity -------------------------------
W = torch.randn(OBS, ACT, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def dirac(obs: torch.Tensor) -> torch.Tensor:
    return torch.tanh(obs @ W.to(obs.dtype))


def exact_velocity(obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v*(s, x, t) = (a*(s) - x) / (1 - t): the flow that carries every x_t to a*(s) on the linear path."""
    return (dirac(obs) - x) / (1 - t)


def swapped_path(x0, x1, t):  # x_t = t x0 + (1 - t) x1: the interpolation the wrong way round
    return t * x0 + (1 - t) * x1, x1 - x0


def negated_target(x0, x1, t):
    return (1 - t) * x0 + t * x1, x0 - x1


@pytest.mark.parametrize("path,ok", [(flow_path, True), (swapped_path, False), (negated_target, False)])
def test_flow_matching_loss_is_zero_at_the_exact_velocity(monkeypatch, path, ok):
    monkeypatch.setattr(flowmod, "flow_path", path)
    obs = torch.randn(256, OBS, dtype=torch.float64)
    loss = flow_matching_loss(exact_velocity, obs, dirac(obs), torch.Generator().manual_seed(0))
    expect(ok, lambda: float(loss) < 1e-12 or _raise(f"loss {float(loss)}"))


def _raise(msg: str) -> None:
    raise AssertionError(msg)


@pytest.mark.parametrize("k", [1, 2, 10, 32])
def test_euler_reaches_a_dirac_target_exactly_for_every_k(k):
    obs = torch.randn(64, OBS, dtype=torch.float64)
    z = torch.randn(64, ACT, dtype=torch.float64)
    out = euler(exact_velocity, obs, z, k)
    assert torch.allclose(out, dirac(obs), atol=1e-12, rtol=0)


# ---- 2. the Euler grid and the single clip ---------------------------------------------------------------------
def euler_right_end_points(velocity, obs, x, steps):  # t = (i + 1) / K: another integrator
    for i in range(steps):
        x = x + velocity(obs, x, torch.full_like(x[:, :1], (i + 1) / steps)) / steps
    return x.clamp(-1, 1)


def euler_clip_every_step(velocity, obs, x, steps):  # the Dasyud port's sampler
    for i in range(steps):
        x = (x + velocity(obs, x, torch.full_like(x[:, :1], i / steps)) / steps).clamp(-1, 1)
    return x


@pytest.mark.parametrize("sampler,ok", [(euler, True), (euler_right_end_points, False)])
def test_euler_uses_left_end_points(sampler, ok):
    """v(t) = t from x = 0 integrates to sum_i (i/K)/K = (K-1)/(2K): 0.45 for K = 10 (right end points: 0.55)."""
    obs, z = torch.zeros(2, OBS), torch.zeros(2, ACT)
    out = sampler(lambda s, x, t: t.expand_as(x), obs, z, 10)
    expect(ok, lambda: torch.testing.assert_close(out, torch.full_like(out, 0.45)))


@pytest.mark.parametrize("sampler,ok", [(euler, True), (euler_clip_every_step, False)])
def test_euler_clips_once_after_the_last_step(sampler, ok):
    """v = +4 for t < 0.5, -4 after, K = 10, from 0: the path leaves the box and comes back to 0; clipping at
    every step returns -1. A constant velocity c gives clip(z + c)."""
    obs, z = torch.zeros(2, OBS), torch.zeros(2, ACT)
    out = sampler(lambda s, x, t: torch.where(t < 0.5, 4.0, -4.0).expand_as(x), obs, z, 10)
    expect(ok, lambda: torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0))
    z = torch.tensor([[0.5, -0.2, 0.0]])
    c = torch.tensor([[0.7, -0.3, 0.4]])
    torch.testing.assert_close(euler(lambda s, x, t: c, obs[:1], z, 10), (z + c).clamp(-1, 1))


# ---- the networks are the reference's ----------------------------------------------------------------------------
def test_velocity_mlp_is_the_reference_architecture():
    net = FlowMLP(OBS, ACT, [64, 64])
    linears = [m for m in net.net if isinstance(m, nn.Linear)]
    assert linears[0].in_features == OBS + ACT + 1  # [s, x, raw t]: no time embedding
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)  # zero biases
    bound = math.sqrt(6 / (linears[0].in_features + 64))  # Glorot-uniform
    w = float(linears[0].weight.detach().abs().max())
    assert 0.9 * bound < w <= bound
    gelu = [m for m in net.net if isinstance(m, nn.GELU)]
    assert len(gelu) == 2 and all(g.approximate == "tanh" for g in gelu)
    assert not any(isinstance(m, nn.LayerNorm) for m in net.net)  # actor_layer_norm=False
    assert FlowMLP(OBS, ACT, [64], time=False).net[0].in_features == OBS + ACT  # the one-step policy


def test_critic_has_layer_norm_after_gelu_with_flax_eps():
    g = build(fql.FQLGuidance, "fql", "guidance")
    layers = list(g.critic.body.net)
    kinds = [type(m).__name__ for m in layers]
    assert kinds[:3] == ["EnsembleLinear", "GELU", "_EnsembleLayerNorm"]
    assert layers[2].eps == 1e-6
    assert kinds[-1] == "EnsembleLinear"
    assert g.num_q == 2 and not torch.equal(g.critic.body.net[0].weight[0], g.critic.body.net[0].weight[1])
    for p, q in zip(g.critic.parameters(), g.critic_target.parameters()):
        assert torch.equal(p, q)  # the target starts as an exact copy


# ---- 3. distillation: the same noise for teacher and student, no gradient into the flow ----------------------
class TeacherAsStudent(nn.Module):
    """A student that is the teacher's own function of the noise it is given (or of fresh noise)."""

    def __init__(self, policy, fresh: bool) -> None:
        super().__init__()
        self.policy, self.fresh = [policy], fresh

    def forward(self, obs, z):
        p = self.policy[0]
        if self.fresh:
            z = torch.randn_like(z)
        return euler(p.flow, obs, z, int(p.cfg["flow_steps"]))


@pytest.mark.parametrize("fresh,ok", [(False, True), (True, False)])
def test_distillation_is_zero_when_the_student_is_the_teacher(fresh, ok):
    p = build(fql.FQLPolicy, "fql", "policy")
    p.actor = TeacherAsStudent(p, fresh)
    _, metrics = p.loss(batch(), None)
    expect(ok, lambda: float(metrics["distill_loss"]) == 0.0 or _raise(f"L_D = {float(metrics['distill_loss'])}"))


def leaky_teacher(monkeypatch) -> None:
    """The Dasyud port: the teacher's Euler run with gradients and not detached."""
    def euler_with_grad(*args):
        with torch.enable_grad():
            return euler(*args)
    monkeypatch.setattr(fql, "euler", euler_with_grad)
    monkeypatch.setattr(fql, "distillation_loss", lambda s, t: (s - t).square().mean())


@pytest.mark.parametrize("leak", [False, True])
def test_distillation_sends_no_gradient_into_the_flow(monkeypatch, leak):
    if leak:
        leaky_teacher(monkeypatch)
    p = build(fql.FQLPolicy, "fql", "policy")
    monkeypatch.setattr(p, "bc_loss", lambda b: torch.zeros(()))  # L_D alone (no guidance: no Q term)
    loss, _ = p.loss(batch(), None)
    loss.backward()
    flow_grad = sum(float(q.grad.abs().sum()) for q in p.flow.parameters() if q.grad is not None)
    assert sum(float(q.grad.abs().sum()) for q in p.actor.parameters()) > 0
    expect(not leak, lambda: flow_grad == 0.0 or _raise(f"|grad flow| = {flow_grad}"))


# ---- 4. gradient isolation -----------------------------------------------------------------------------------------
def joint_pair(**policy_over):
    g = build(fql.FQLGuidance, "fql", "guidance")
    p = build(fql.FQLPolicy, "fql", "policy", seed=1, **policy_over)
    return g, p


def test_the_actor_step_leaves_the_critic_untouched():
    """Joint training hands the policy a critic that is still training (parameters require grad): the actor's
    step must neither compute gradients for it nor move it."""
    g, p = joint_pair()
    before = [q.detach().clone() for q in g.critic.parameters()]
    p.update(batch(), g)
    assert all(q.grad is None for q in g.critic.parameters())
    assert all(torch.equal(a, q) for a, q in zip(before, g.critic.parameters()))
    # what the stage prevents: a plain backward of the same actor loss does reach the critic
    loss, _ = p.loss(batch(), g)
    loss.backward()
    assert sum(float(q.grad.abs().sum()) for q in g.critic.parameters()) > 0


@pytest.mark.parametrize("detach", [False, True])
def test_the_q_term_reaches_the_one_step_policy(monkeypatch, detach):
    """With alpha = 0 and the BC loss removed, only the Q term is left: the one-step policy's gradient must be
    non-zero. A port that detaches Q (the Dasyud bug) trains the actor on BC and distillation only."""
    if detach:
        orig = fql.q_term
        monkeypatch.setattr(fql, "q_term", lambda qs, normalize: orig(qs.detach(), normalize))
    g, p = joint_pair(alpha=0.0)
    monkeypatch.setattr(p, "bc_loss", lambda b: torch.zeros(()))
    loss, _ = p.loss(batch(), g.freeze())
    if loss.requires_grad:
        loss.backward()
    grad = sum(float(q.grad.abs().sum()) for q in p.actor.parameters() if q.grad is not None)
    expect(not detach, lambda: grad > 0 or _raise("the Q term sends no gradient to the one-step policy"))


def test_the_critic_step_leaves_the_policy_untouched_and_the_target_is_not_trained():
    g, p = joint_pair()
    before = [q.detach().clone() for q in p.parameters()]
    g.update(batch(), p)
    assert all(q.grad is None for q in p.parameters())
    assert all(torch.equal(a, q) for a, q in zip(before, p.parameters()))
    trained = {id(q) for group in g.q_opt.param_groups for q in group["params"]}
    assert not trained & {id(q) for q in g.critic_target.parameters()}
    assert all(not q.requires_grad for q in g.critic_target.parameters())
    assert all(q.grad is None for q in g.critic_target.parameters())


# ---- 5. target arithmetic -------------------------------------------------------------------------------------------
class StubCritic(nn.Module):
    """Returns the constant pair (q1, q2) for every row: (2, B)."""

    def __init__(self, q1: float, q2: float) -> None:
        super().__init__()
        self.q = torch.tensor([q1, q2])
        self.w = nn.Parameter(torch.zeros(()))  # a parameter, so the loss has a graph
        self.body = SimpleNamespace(ensemble=2)  # what TwinCriticGuidance.num_q reads

    def forward(self, obs, act):
        return (self.q[:, None] + self.w + 0 * act.sum(-1)).expand(2, obs.shape[0])


@pytest.mark.parametrize("q_agg,agg", [("mean", lambda a, b: (a + b) / 2), ("min", min)])
def test_td_target_aggregates_the_target_heads(q_agg, agg):
    g = build(fql.FQLGuidance, "fql", "guidance", q_agg=q_agg, target_actions="dataset")
    g.critic_target = StubCritic(1.0, 3.0)
    b = batch()
    b["terminals"][: B // 2] = 1.0
    y = g.td_target(b)
    m = 1 - b["terminals"]
    torch.testing.assert_close(y, b["rewards"] + 0.99 * m * agg(1.0, 3.0))
    torch.testing.assert_close(y[: B // 2], b["rewards"][: B // 2])  # m = 0: y = r


def test_critic_loss_is_the_mean_over_heads():
    """L_Q = (MSE_1 + MSE_2) / 2 (fql.py:36-37), half of the sum the twin-critic base (and IFQL) use."""
    g = build(fql.FQLGuidance, "fql", "guidance", target_actions="dataset")
    g.critic, g.critic_target = StubCritic(1.0, 3.0), StubCritic(0.5, 2.5)
    b = batch()
    y = b["rewards"] + 0.99 * (1 - b["terminals"]) * 1.5
    loss, _ = g.q_loss(b)
    torch.testing.assert_close(loss, ((1.0 - y) ** 2).mean() / 2 + ((3.0 - y) ** 2).mean() / 2)


class StubGuidance:
    """Answers q_ensemble with two fixed heads; q (the ranking value) with their minimum."""

    provides = frozenset({"q"})

    def __init__(self, q1: float, q2: float, scale: float = 1.0) -> None:
        self.q1, self.q2, self.scale = q1, q2, scale

    def q_ensemble(self, obs, act):
        s = act.sum(-1)  # Q depends on the action, so the Q term has a gradient
        return self.scale * torch.stack([self.q1 + s, self.q2 + 2 * s])

    def q(self, obs, act):
        return self.q_ensemble(obs, act).min(0).values


@pytest.mark.parametrize("use_min", [False, True])
def test_the_actor_q_is_the_mean_of_the_online_heads(monkeypatch, use_min):
    if use_min:  # a port that takes q_agg (or the guidance's min) in the actor too
        monkeypatch.setattr(fql, "q_term", lambda qs, normalize: (-qs.min(0).values.mean(), qs.min(0).values))
    p = build(fql.FQLPolicy, "fql", "policy")
    p.actor = nn.Module()
    p.actor.forward = lambda obs, z: torch.zeros_like(z)  # a = 0: Q = (q1, q2)
    _, metrics = p.loss(batch(), StubGuidance(1.0, 5.0))
    expect(not use_min, lambda: torch.testing.assert_close(metrics["q"], torch.tensor(3.0)))


# ---- 6. normalize_q_loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, False])
def test_normalize_q_loss_makes_the_gradient_scale_free(normalize):
    a = torch.full((B, ACT), 0.1, requires_grad=True)
    grads = []
    for k in (1.0, 100.0):
        qs = StubGuidance(1.0, 5.0, scale=k).q_ensemble(None, a)
        loss, _ = fql.q_term(qs, normalize)
        if normalize:
            torch.testing.assert_close(loss, torch.tensor(-1.0))  # all Q > 0
        (grad,) = torch.autograd.grad(loss, a)
        grads.append(grad)
    if normalize:
        torch.testing.assert_close(grads[0], grads[1])
    else:
        torch.testing.assert_close(grads[1], 100 * grads[0])


# ---- 7. Polyak from the pre-update critic ---------------------------------------------------------------------------
def _polyak_case(cls, plugin: str, when: str, expected: str) -> None:
    tau = 0.5  # a large rate, so one Adam step (~lr) tells the two formulas apart well above float rounding
    g = build(cls, plugin, "guidance", polyak_from=when, polyak=tau,
              **({"target_actions": "dataset"} if plugin == "fql" else {}))
    with torch.no_grad():  # a target that differs from the critic, so pre and post differ visibly
        for q in g.critic_target.parameters():
            q.add_(0.1)
    pre = [q.detach().clone() for q in g.critic.parameters()]
    tgt = [q.detach().clone() for q in g.critic_target.parameters()]
    g.update(batch())
    post = list(g.critic.parameters())
    src = pre if expected == "pre_update" else post
    for new, s, old in zip(g.critic_target.parameters(), src, tgt):
        torch.testing.assert_close(new, tau * s + (1 - tau) * old, rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(pre, post))  # the step moved the critic


@pytest.mark.parametrize("cls,plugin", [(fql.FQLGuidance, "fql"), (ifql.IFQLGuidance, "ifql")])
@pytest.mark.parametrize("when", ["pre_update", "post_update"])
def test_polyak_averages_the_pre_update_critic(cls, plugin, when):
    """The reference (fql.py:113-120,130): target <- tau theta_before_step + (1 - tau) target. The documented
    alternative (post_update, the torchrl and flow-rl ports') computes the other formula and fails this one."""
    _polyak_case(cls, plugin, when, when)  # each setting does what it says
    expect(when == "pre_update", lambda: _polyak_case(cls, plugin, when, "pre_update"))


# ---- IFQL ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss,ok", [(ifql.expectile_loss, True), (lambda u, e: ifql.expectile_loss(u, 1 - e), False)])
def test_expectile_0_9_of_a_coin_is_0_9(loss, ok):
    """Q in {0, 1} with equal probability: the 0.9-expectile minimizer is V = 0.9 (swapped weights: 0.1)."""
    v = torch.linspace(0, 1, 1001)
    q = torch.tensor([0.0, 1.0])
    best = v[loss(q[None, :] - v[:, None], 0.9).mean(1).argmin()]
    expect(ok, lambda: torch.testing.assert_close(best, torch.tensor(0.9)))


def test_ifql_losses_by_hand():
    """L_V on the TARGET critics' min, L_Q towards r + gamma (1 - d) V(s') with V before the step, heads summed."""
    g = build(ifql.IFQLGuidance, "ifql", "guidance")
    g.critic, g.critic_target = StubCritic(1.0, 3.0), StubCritic(0.5, 2.5)
    b = batch()
    b["terminals"][:3] = 1.0
    with torch.no_grad():
        v, v_next = g.value(b["observations"]), g.value(b["next_observations"])
    loss, m = g.losses(b)
    u = 0.5 - v
    v_loss = (torch.where(u >= 0, 0.9, 0.1) * u ** 2).mean()
    y = b["rewards"] + 0.99 * (1 - b["terminals"]) * v_next
    q_loss = ((1.0 - y) ** 2).mean() + ((3.0 - y) ** 2).mean()
    torch.testing.assert_close(m["value_loss"], v_loss)
    torch.testing.assert_close(m["critic_loss"], q_loss)
    torch.testing.assert_close(loss, v_loss + q_loss)


def test_ifql_picks_the_argmax_of_the_online_min_for_every_state(monkeypatch):
    g = build(ifql.IFQLGuidance, "ifql", "guidance")
    p = build(ifql.IFQLPolicy, "ifql", "policy")
    cands = torch.rand(4, 32, ACT) * 2 - 1  # 4 states, 32 candidates each
    monkeypatch.setattr(p, "candidates", lambda obs, n: cands[:, :n])
    obs = torch.randn(4, OBS)
    with torch.no_grad():
        g.critic_target.body.net[0].weight.mul_(-1)  # the target ranks differently from the online critic
        q = g.critic(obs[:, None].expand(4, 32, OBS).reshape(-1, OBS), cands.reshape(-1, ACT)).min(0).values
    best = cands[torch.arange(4), q.view(4, 32).argmax(1)]
    torch.testing.assert_close(p.act(obs, g), best)


# ---- acting -------------------------------------------------------------------------------------------------------
def test_fql_acts_with_the_one_step_policy_and_fresh_noise():
    p = build(fql.FQLPolicy, "fql", "policy")
    obs = torch.randn(6, OBS)
    gen_state = p.gen().get_state()
    a1 = p.act(obs, StubGuidance(0.0, 0.0))
    p.gen().set_state(gen_state)
    z = torch.randn(6, ACT, generator=p.gen())
    torch.testing.assert_close(a1, p.actor(obs, z).clamp(-1, 1).detach())
    assert not torch.equal(p.act(obs), a1)  # stochastic: a fresh z at every call


def test_fbc_acts_with_one_euler_sample():
    p = build(fbc.FlowBCPolicy, "fbc", "policy")
    obs = torch.randn(6, OBS)
    gen_state = p.gen().get_state()
    a = p.act(obs)
    p.gen().set_state(gen_state)
    z = torch.randn(6, ACT, generator=p.gen())
    torch.testing.assert_close(a, euler(p.flow, obs, z, 10).detach())


def test_fql_guidance_on_dataset_actions_trains_guidance_first(tmp_path):
    from modzoo.testing import check_guidance
    check_guidance("fql", overrides={"target_actions": "dataset"}, workdir=tmp_path, checks=["schedules"])
    assert not build(fql.FQLGuidance, "fql", "guidance", target_actions="dataset").requires_policy
    assert build(fql.FQLGuidance, "fql", "guidance").requires_policy


def test_an_ema_flow_where_configured_is_averaged_untrained_and_sampled_from():
    """ema_decay > 0 keeps an EMA copy of the flow (off in the three plugins' defaults, as in the reference)."""
    assert build(fbc.FlowBCPolicy, "fbc", "policy").ema_flow is None
    p = build(fbc.FlowBCPolicy, "fbc", "policy", ema_decay=0.75)
    init = [q.detach().clone() for q in p.flow.parameters()]
    p.update(batch())
    for e, i, q in zip(p.ema_flow.parameters(), init, p.flow.parameters()):
        torch.testing.assert_close(e, 0.75 * i + 0.25 * q.detach())
    trained = {id(q) for group in p.opt.param_groups for q in group["params"]}
    assert not trained & {id(q) for q in p.ema_flow.parameters()}
    obs = torch.randn(4, OBS)
    state = p.gen().get_state()
    a = p.sample(obs, 1)[:, 0]
    p.gen().set_state(state)
    torch.testing.assert_close(a, euler(p.ema_flow, obs, torch.randn(4, ACT, generator=p.gen()), 10))
