"""The speed work (docs/performance.md) must not change the maths: each fast path against the plain one."""
from __future__ import annotations

import copy
import types

import torch

import modzoo
from modzoo.contract.interfaces import DiffusionPolicy

OBS, ACT, B = 5, 2, 32


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"observations": torch.randn(B, OBS, generator=g), "actions": torch.rand(B, ACT, generator=g) * 2 - 1,
            "rewards": torch.randn(B, generator=g), "next_observations": torch.randn(B, OBS, generator=g),
            "terminals": torch.zeros(B), "next_actions": torch.rand(B, ACT, generator=g) * 2 - 1}


def _plain_optimize(self: DiffusionPolicy, loss: torch.Tensor) -> None:
    """DDPMPolicy.optimize as it was before: backward into every leaf the loss reaches."""
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    modzoo.contract.stages.clip_grad(self.diffusion.parameters(), self.cfg.get("grad_norm", 0.0))
    self.opt.step()
    if self.sched is not None:
        self.sched.step()
    self.ema.step(self.ema_diffusion, self.diffusion, self.steps)
    self._steps += 1


def _plain_update(self: DiffusionPolicy, batch: dict[str, torch.Tensor], guidance=None) -> dict:  # type: ignore[no-untyped-def]
    self.train()
    loss, metrics = self.loss(batch, guidance)
    _plain_optimize(self, loss)
    return metrics


def test_dql_actor_step_leaves_the_critic_grads_alone_and_equals_the_full_backward() -> None:
    torch.manual_seed(0)
    g1 = modzoo.make_guidance("dql", OBS, ACT, hidden=[16, 16])
    p1 = modzoo.make_policy("dql", OBS, ACT, hidden=16, grad_norm=1.0)
    g2, p2 = copy.deepcopy(g1), copy.deepcopy(p1)
    p2.update = types.MethodType(_plain_update, p2)
    for step in range(3):
        batch = _batch(step)
        g1.update(batch, p1)
        g2.update(batch, p2)
        critic_grads = [p.grad.clone() for p in g1.critic.parameters()]
        p1.update(batch, g1)
        p2.update(batch, g2)
        # the Q term's backward no longer reaches the critic's weights ...
        assert all(torch.equal(a, p.grad) for a, p in zip(critic_grads, g1.critic.parameters()))
        assert not all(torch.equal(a, p.grad) for a, p in zip(critic_grads, g2.critic.parameters()))
    # ... and the actor (and so the next critic targets) came out exactly as with the full backward
    for a, b in zip(p1.state_dict().values(), p2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(g1.state_dict().values(), g2.state_dict().values()):
        assert torch.equal(a, b)


def test_fused_optimizers_equal_the_per_tensor_loop() -> None:
    """make_optimizer's fused Adam/AdamW: the same steps as torch's default implementation (float rounding)."""
    for name, cls, wd in (("adam", torch.optim.Adam, 0.0), ("adamw", torch.optim.AdamW, 0.01)):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 32), torch.nn.Mish(), torch.nn.Linear(32, 3))
        ref, init = copy.deepcopy(net), copy.deepcopy(net)
        opt = modzoo.blocks.utils.make_optimizer(net.parameters(), name, lr=1e-2, weight_decay=wd)
        assert opt.defaults.get("fused")  # this torch (>= 2.4) has the CPU kernel
        ref_opt = cls(ref.parameters(), lr=1e-2, weight_decay=wd, foreach=False)
        for step in range(20):
            x = torch.randn(16, 7, generator=torch.Generator().manual_seed(step))
            for m, o in ((net, opt), (ref, ref_opt)):
                o.zero_grad(set_to_none=True)
                m(x).square().mean().backward()
                o.step()
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        assert (net[0].weight - init[0].weight).abs().max() > 1e-2  # the steps did move the weights


def test_dql_q_term_on_two_members_equals_the_ensemble_loss() -> None:
    """DQLPolicy's Q term through ``q_members`` (critic i with a graph, j without) gives the same update as
    ``normalized_q_loss`` on the full ensemble forward; members() equals forward()[idx] also with LayerNorm."""
    torch.manual_seed(0)
    g1 = modzoo.make_guidance("dql", OBS, ACT, hidden=[16, 16], num_q=3, layer_norm=True)
    p1 = modzoo.make_policy("dql", OBS, ACT, hidden=16)
    g2, p2, p0 = copy.deepcopy(g1), copy.deepcopy(p1), copy.deepcopy(p1)
    g2.q_members = None  # the generic path: q_ensemble + normalized_q_loss
    batch = _batch(1)
    obs, act = batch["observations"], batch["actions"]
    idx = torch.tensor([2, 0])
    torch.testing.assert_close(g1.q_members(obs, act, idx), g1.q_ensemble(obs, act)[idx])
    for step in range(3):
        m1, m2 = p1.update(_batch(step), g1), p2.update(_batch(step), g2)
        torch.testing.assert_close(m1["q_loss"], m2["q_loss"])
    for a, b in zip(p1.state_dict().values(), p2.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(p1.diffusion.model.net[0].weight, p0.diffusion.model.net[0].weight)  # it trained


def test_chain_context_steps_equal_the_plain_denoiser_and_sampler() -> None:
    """chain_context/chain_step (the state's and time's share of the first layer computed once per chain) give
    forward()'s eps at every step, and the sampler the same actions and gradients as without them."""
    from modzoo.blocks.diffusion import GaussianDiffusion
    from modzoo.blocks.nets import LNResNetDenoiser, MLPDenoiser

    torch.manual_seed(0)
    obs = torch.randn(B, OBS) * 2
    for net in (MLPDenoiser(OBS, ACT, hidden=32), LNResNetDenoiser(OBS, ACT, hidden=32, dropout=0.0)):
        x = torch.randn(B, ACT)
        ctx = net.chain_context(obs, 5)
        for t in range(5):
            torch.testing.assert_close(net.chain_step(x, t, ctx), net(x, torch.full((B,), t), obs))
        d = GaussianDiffusion(net, ACT, T=5, sampler="posterior")
        plain = copy.deepcopy(d)
        plain.model.chain_context = lambda *a: None  # the per-step forward path
        outs = []
        for model in (d, plain):
            model.zero_grad()
            a = model.sample(obs, generator=torch.Generator().manual_seed(3))
            a.square().sum().backward()
            outs.append((a.detach(), [p.grad for p in model.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0])
        for ga, gb in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    cond = MLPDenoiser(OBS, ACT, hidden=32, cond_dim=1)
    assert cond.chain_context(obs, 5) is None  # condition inputs keep the plain path


class _HostRead(RuntimeError):
    pass


def _no_host_reads(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make every way of reading a tensor's value on the host raise (on a GPU each would be a sync)."""
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise _HostRead("host read of a tensor inside a training step")
    for name in ("item", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, boom)


def test_training_steps_read_nothing_back_to_the_host(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The joint DQL step and the IQL/IDQL updates run without host reads of tensors (the EMA schedule counts
    steps on the host; metrics stay tensors), so on a GPU they queue without syncing."""
    torch.manual_seed(0)
    pairs = [(modzoo.make_guidance("dql", OBS, ACT, hidden=[16, 16]),
              modzoo.make_policy("dql", OBS, ACT, hidden=16, ema_start=1, ema_every=2)),
             (modzoo.make_guidance("idql", OBS, ACT, hidden=[16, 16], reward_norm="none"),
              modzoo.make_policy("idql", OBS, ACT, hidden=16))]
    for g, p in pairs:
        g.update(_batch(0), p)
        p.update(_batch(0), g)  # first step may read the counter once
    with monkeypatch.context() as m:
        _no_host_reads(m)
        for g, p in pairs:
            for step in range(4):
                g.update(_batch(step), p)
                p.update(_batch(step), g)
    assert all(p.steps == 5 and g.steps == 5 for g, p in pairs)
    # the check itself works: a host read does raise inside the context
    with monkeypatch.context() as m:
        _no_host_reads(m)
        try:
            int(torch.ones(()))
        except _HostRead:
            pass
        else:
            raise AssertionError("host reads are not intercepted")


def test_host_step_count_follows_loads_and_fills() -> None:
    """The host-side count the EMA schedule uses is re-read when the counter changes outside optimize."""
    p = modzoo.make_policy("dql", OBS, ACT, hidden=16)
    p.update(_batch(0))
    assert p._host_steps() == 1
    p._steps.fill_(1000)
    assert p._host_steps() == 1000
    q = modzoo.make_policy("dql", OBS, ACT, hidden=16)
    q.update(_batch(0))
    q.update(_batch(1))
    q.load_state_dict(p.state_dict())
    assert q._host_steps() == 1000
