"""Each algorithm's distinctive maths on tiny inputs: expectile loss, TD targets, DQL's Q term, selection."""
import pytest
import torch

import modzoo
from modzoo.blocks.critics import expectile_loss
from modzoo.blocks.selection import select_index, selection_probs
from modzoo.plugins.dql import normalized_q_loss

OBS, ACT = 4, 2


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"observations": torch.randn(b, OBS, generator=g), "actions": torch.rand(b, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(b, generator=g), "next_observations": torch.randn(b, OBS, generator=g),
            "terminals": torch.tensor([0.0, 1.0] * (b // 2)), "next_actions": torch.rand(b, ACT, generator=g) * 2 - 1}


def test_expectile_loss_by_hand():
    u = torch.tensor([2.0, -2.0, 0.5])
    torch.testing.assert_close(expectile_loss(u, 0.7), torch.tensor([0.7 * 4, 0.3 * 4, 0.7 * 0.25]))
    # tau = 0.5 is plain halved MSE; the V it fits is the mean. tau > 0.5 pushes V above the mean.
    torch.testing.assert_close(expectile_loss(u, 0.5), 0.5 * u**2)


def test_expectile_fit_lands_above_mean():
    """Minimising the 0.9-expectile loss over a constant gives the 0.9 expectile, above the mean."""
    x = torch.tensor([0.0, 1.0, 2.0, 10.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.05)
    for _ in range(3000):
        opt.zero_grad()
        expectile_loss(x - v, 0.9).mean().backward()
        opt.step()
    # closed form: sum_i w_i (x_i - v) = 0 with w = 0.9 above v, 0.1 below
    w = torch.where(x > v.detach(), 0.9, 0.1)
    assert abs(float((w * (x - v.detach())).sum())) < 1e-3
    assert float(v.detach()) > float(x.mean())


def test_iql_td_target_uses_v_of_next_state(monkeypatch):
    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8], reward_norm="none")
    b = batch()
    seen = {}
    orig = g.td_target
    monkeypatch.setattr(g, "td_target", lambda bt, pol=None: seen.setdefault("target", orig(bt, pol)))
    last = g.value.body[-1]
    with torch.no_grad():  # V(s') = 2 everywhere, and the V step (lr 0) leaves it so
        last.weight.zero_()
        last.bias.fill_(2.0)
    for group in g.v_opt.param_groups:
        group["lr"] = 0.0
    g.update(b)
    expected = b["rewards"] + 0.99 * (1 - b["terminals"]) * 2.0
    torch.testing.assert_close(seen["target"], expected)


def test_iql_reward_scale_from_episode_returns():
    class DS:
        def episode_returns(self):
            import numpy as np
            return np.array([100.0, 600.0, 300.0])

    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8])
    g.prepare(DS())
    assert float(g.reward_scale) == pytest.approx(1000.0 / 500.0)


@pytest.mark.parametrize("mode", ["dataset", "policy"])
def test_dql_td_target(monkeypatch, mode):
    g = modzoo.make_guidance("dql", OBS, ACT, hidden=[8, 8], target_actions=mode)
    b = batch()
    policy_act = torch.full((6, ACT), 0.25)

    class P:
        def target_actions(self, nxt):
            return policy_act[: nxt.shape[0]]

    seen = {}
    orig = g.td_target
    monkeypatch.setattr(g, "td_target", lambda bt, pol=None: seen.setdefault("target", orig(bt, pol)))
    a_next = b["next_actions"] if mode == "dataset" else policy_act
    with torch.no_grad():  # the target net as the TD target sees it: before this update's Polyak step moves it
        q_next = g.critic_target(b["next_observations"], a_next).min(0).values
    g.update(b, P() if mode == "policy" else None)
    expected = b["rewards"] + 0.99 * (1 - b["terminals"]) * q_next
    torch.testing.assert_close(seen["target"], expected)
    assert g.requires_policy == (mode == "policy")


def test_dql_policy_mode_needs_the_policy():
    g = modzoo.make_guidance("dql", OBS, ACT, hidden=[8, 8])
    with pytest.raises(RuntimeError, match="joint"):
        g.update(batch(), None)


def test_dql_q_term_normalization():
    qs = torch.tensor([[1.0, 3.0], [-2.0, -6.0]])  # (E=2, B=2)
    # order (0, 1): -mean(Q0) / mean|Q1| = -2 / 4
    assert float(normalized_q_loss(qs, torch.tensor([0, 1]))) == pytest.approx(-0.5)
    # order (1, 0): -mean(Q1) / mean|Q0| = 4 / 2
    assert float(normalized_q_loss(qs, torch.tensor([1, 0]))) == pytest.approx(2.0)
    # the denominator is detached: gradient flows through the numerator only
    q = qs.clone().requires_grad_(True)
    normalized_q_loss(q, torch.tensor([0, 1])).backward()
    torch.testing.assert_close(q.grad, torch.tensor([[-0.125, -0.125], [0.0, 0.0]]))


def test_dql_actor_gets_gradient_from_guidance():
    """The Q term moves the actor: with eta > 0 the update differs from pure BC on the same noise."""
    torch.manual_seed(0)
    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8])
    p1 = modzoo.make_policy("dql", OBS, ACT, hidden=16, eta=1.0)
    p2 = modzoo.make_policy("dql", OBS, ACT, hidden=16, eta=0.0)
    p2.load_state_dict(p1.state_dict())
    p1.update(batch(), g)
    p2.update(batch(), g)
    diffs = [float((a - b).detach().abs().max()) for a, b in zip(p1.diffusion.parameters(), p2.diffusion.parameters())]
    assert max(diffs) > 0


def test_selection_rules():
    q = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    assert select_index("argmax", q).tolist() == [1, 2]
    g = torch.Generator().manual_seed(0)
    # expectile: weights tau where Q > V else 1 - tau; with V between the values the frequencies are 0.7 vs 0.3
    v = torch.tensor([1.5])
    qq = torch.tensor([[1.0, 2.0]]).expand(20000, 2)
    idx = select_index("expectile", qq, v.expand(20000), tau=0.7, generator=g)
    assert abs(float(idx.float().mean()) - 0.7) < 0.02
    # softmax with temperature: p(1) = e^1 / (1 + e^1)
    idx = select_index("softmax", qq, temperature=1.0, generator=g)
    assert abs(float(idx.float().mean()) - torch.sigmoid(torch.tensor(1.0)).item()) < 0.02
    with pytest.raises(ValueError, match="V"):
        select_index("expectile", q)


def test_selection_probs_are_the_distribution_select_index_draws_from():
    q = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    assert selection_probs("argmax", q).tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    p = selection_probs("softmax", q, temperature=0.5)
    assert torch.allclose(p, torch.softmax(0.5 * q, dim=1)) and torch.allclose(p.sum(1), torch.ones(2))
    p = selection_probs("expectile", q, torch.tensor([1.5, 0.5]), tau=0.7)
    assert torch.allclose(p[0], torch.tensor([0.3, 0.7, 0.7]) / 1.7)
    for rule, v in (("softmax", None), ("expectile", torch.tensor([1.5, 0.5]))):
        drawn = select_index(rule, q, v, temperature=0.5, generator=torch.Generator().manual_seed(3))
        probs = selection_probs(rule, q, v, temperature=0.5)
        assert torch.equal(drawn, torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))[:, 0])


def test_idql_policy_ignores_guidance_in_training():
    torch.manual_seed(0)
    p1 = modzoo.make_policy("idql", OBS, ACT, hidden=16, dropout=0.0)
    p2 = modzoo.make_policy("idql", OBS, ACT, hidden=16, dropout=0.0)
    p2.load_state_dict(p1.state_dict())
    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8])
    p1.update(batch(), g)
    p2.update(batch(), None)
    for a, b in zip(p1.parameters(), p2.parameters()):
        torch.testing.assert_close(a, b)


def test_twin_critic_is_one_batched_forward_of_two_members():
    g = modzoo.make_guidance("dql", OBS, ACT, hidden=[8, 8])
    b = batch()
    qs = g.q_ensemble(b["observations"], b["actions"])
    assert qs.shape == (2, 6)
    assert not torch.allclose(qs[0], qs[1])  # independently initialised members
    torch.testing.assert_close(g.q(b["observations"], b["actions"]),
                               g.critic_target(b["observations"], b["actions"]).min(0).values)


def test_frozen_guidance_passes_action_gradients_only():
    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8]).freeze()
    assert g.frozen and g.q_opt is None and g.v_opt is None
    a = torch.zeros(3, ACT, requires_grad=True)
    g.q_ensemble(torch.randn(3, OBS), a).sum().backward()
    assert a.grad is not None and all(p.grad is None for p in g.parameters())


def test_idql_starts_from_jaxrl5s_initialisation():
    """IDQL's nets start as its flax code's do: xavier-uniform kernels and zero biases, the ResNet blocks' inner
    layers truncated lecun-normal; targets and EMA copies start equal to the live nets; DQL keeps torch's init."""
    import math

    from modzoo.blocks.nets import EnsembleLinear, ResidualBlock

    torch.manual_seed(0)
    g = modzoo.make_guidance("idql", OBS, ACT)
    p = modzoo.make_policy("idql", OBS, ACT)
    linears = [m for net in (g.critic, g.value, p.diffusion) for m in net.modules()
               if isinstance(m, (torch.nn.Linear, EnsembleLinear))]
    assert len(linears) > 10 and all(torch.count_nonzero(m.bias) == 0 for m in linears)
    inner = {id(layer) for b in p.diffusion.modules() if isinstance(b, ResidualBlock) for layer in (b.fc1, b.fc2)}
    assert len(inner) == 6
    for m in linears:
        w = m.weight
        fan_in, fan_out = (w.shape[1], w.shape[2]) if w.dim() == 3 else (w.shape[1], w.shape[0])
        if id(m) in inner:  # truncated at 2 std of sqrt(1/fan_in)/0.8796; its std is sqrt(1/fan_in)
            std = math.sqrt(1 / fan_in) / 0.87962566103423978
            assert w.abs().max() <= 2 * std + 1e-6
            assert abs(w.std().item() - math.sqrt(1 / fan_in)) < 0.05 * math.sqrt(1 / fan_in)
        else:
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound + 1e-6 and w.abs().max() > 0.9 * bound
    for live, copy in ((g.critic, g.critic_target), (p.diffusion, p.ema_diffusion)):
        for a, b in zip(live.parameters(), copy.parameters()):
            assert torch.equal(a, b)
    dql = modzoo.make_guidance("dql", OBS, ACT)
    assert all(torch.count_nonzero(m.bias) > 0 for m in dql.critic.modules() if isinstance(m, EnsembleLinear))
    from modzoo.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown init 'xavier'; known: \\['torch', 'flax'\\]"):
        modzoo.make_guidance("idql", OBS, ACT, init="xavier")
