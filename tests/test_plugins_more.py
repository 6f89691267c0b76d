"""The plugins beyond IDQL and DQL: each one's distinctive maths on tiny inputs, and every pairing the registry
declares compatible trained and evaluated through the CLI."""
import math
import warnings

import numpy as np
import pytest
import torch

import modzoo
from conftest import random_batch
from modzoo.blocks.diffusion import GaussianDiffusion
from modzoo.blocks.nets import MLPDenoiser
from modzoo.cli import main
from modzoo.plugins.cfg import cfg_combine
from modzoo.plugins.edp import edp_q_loss
from modzoo.plugins.sfbc import sfbc_probs, sfbc_select

OBS, ACT = 4, 2
TASK = "bullet-hopper-medium-v0"



def batch(b=6, seed=0):
    return random_batch(b, seed, OBS, ACT)


class FakeGuidance(modzoo.GuidanceModule):
    """Q(s, a) = sum(a), V(s) = s[0]: known values for label maths. ``provides`` set per instance."""

    def __init__(self, with_v=True):
        super().__init__(OBS, ACT, {})
        self.provides = frozenset({"q", "v"} if with_v else {"q"})
        self.calls = 0

    def update(self, batch, policy=None):
        return {}

    def q_ensemble(self, obs, act):
        self.calls += 1
        return act.sum(-1).expand(2, -1)

    def v(self, obs):
        return obs[:, 0]

    @property
    def frozen(self):
        return True


# ---- registry -------------------------------------------------------------------------------------------------
def test_at_least_five_algorithms_contribute_halves():
    reg = modzoo.load_registry(refresh=True)
    plugins = {s.plugin for s in [*reg.guidances.values(), *reg.policies.values()]}
    assert {"idql", "dql", "bc", "cfg", "sfbc", "edp"} <= plugins
    assert not [b for b in reg.broken if b.name in plugins]


def test_bc_needs_nothing_and_pairs_with_every_guidance():
    reg = modzoo.load_registry()
    assert reg.policies["bc"].capabilities == frozenset()
    assert reg.compatible("bc") == sorted(reg.guidances)


# ---- bc -------------------------------------------------------------------------------------------------------
def test_bc_never_touches_the_guidance():
    p = modzoo.make_policy("bc", OBS, ACT, hidden=16)
    g = FakeGuidance()
    m = p.update(batch(), g)
    assert set(m) == {"bc_loss"} and g.calls == 0
    a = p.act(batch()["observations"], g)  # one candidate: no ranking
    assert a.shape == (6, ACT) and g.calls == 0


# ---- cfg ------------------------------------------------------------------------------------------------------
def test_cfg_combination_formula_by_hand():
    cond, unc = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(cfg_combine(cond, unc, 1.2), torch.tensor([0.5 + 1.2 * 0.5, 1.0 + 1.2 * -3.0]))
    torch.testing.assert_close(cfg_combine(cond, unc, 1.0), cond)  # w = 1: the conditional model
    torch.testing.assert_close(cfg_combine(cond, unc, 0.0), unc)   # w = 0: plain behaviour cloning


def test_cfg_sampling_guide_combines_cond_and_null_predictions():
    p = modzoo.make_policy("cfg", OBS, ACT, hidden=16, guidance_weight=3.0)
    p.label_target.fill_(0.7)
    obs, x = torch.randn(5, OBS), torch.randn(5, ACT)
    t = torch.full((5,), 2, dtype=torch.long)
    net = p.ema_diffusion.model
    guide = p.sampling_guide(p.ema_diffusion, obs)
    with torch.no_grad():
        eps_c = net(x, t, obs, cond=torch.full((5, 1), 0.7), keep=torch.ones(5, dtype=torch.bool))
        eps_u = net(x, t, obs, cond=None)
        torch.testing.assert_close(guide(x, t, obs), eps_u + 3.0 * (eps_c - eps_u))
    # and sample() really goes through it: w = 0 samples the unconditional model
    p0 = modzoo.make_policy("cfg", OBS, ACT, hidden=16, guidance_weight=0.0)
    p0.ema_diffusion.load_state_dict(p.ema_diffusion.state_dict())
    p0.generator = None
    expected = p0.ema_diffusion.sample(obs, generator=torch.Generator().manual_seed(0),
                                       guide=lambda x, t, o: net(x, t, o, cond=None))
    p0.generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(p0.sample(obs, 1)[:, 0], expected)


def test_null_token_ignores_the_condition_and_differs_from_any_label():
    net = MLPDenoiser(OBS, ACT, hidden=16, cond_dim=1)
    x, t, obs = torch.randn(3, ACT), torch.zeros(3, dtype=torch.long), torch.randn(3, OBS)
    dropped = torch.zeros(3, dtype=torch.bool)
    a = net(x, t, obs, cond=torch.tensor([[0.0], [5.0], [-5.0]]), keep=dropped)
    b = net(x, t, obs, cond=torch.tensor([[1.0], [2.0], [3.0]]), keep=dropped)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, net(x, t, obs))  # cond=None: every row unconditional
    zero = net(x, t, obs, cond=torch.zeros(3, 1), keep=~dropped)
    assert not torch.allclose(zero, a)  # label 0 is a value, not "no label"


def test_denoisers_without_a_condition_are_unchanged():
    """cond_dim defaults to 0: parameter names (so old checkpoints) and the input layer are Diffusion-QL's."""
    net = MLPDenoiser(OBS, ACT, hidden=16)
    assert not any("label" in k for k in net.state_dict())
    assert net.net[0].in_features == ACT + 16 + OBS


def test_cfg_condition_dropout_rate():
    p = modzoo.make_policy("cfg", OBS, ACT, hidden=16, p_uncond=0.25, batch_size=4000)
    seen = []
    real = p.diffusion.training_terms

    def spy(x0, obs, generator=None, **kw):
        seen.append(kw["keep"].clone())
        return real(x0, obs, generator=generator, **kw)

    p.diffusion.training_terms = spy
    m = p.update(batch(4000), FakeGuidance())
    keep = seen[0]
    # 4000 Bernoulli(0.75) draws: 3 sigma is about 0.02
    assert abs(float(keep.float().mean()) - 0.75) < 0.03
    assert float(m["kept"]) == pytest.approx(float(keep.float().mean()))
    p1 = modzoo.make_policy("cfg", OBS, ACT, hidden=16, p_uncond=0.0)
    p1.diffusion.training_terms = spy
    p1.update(batch(50), FakeGuidance())
    assert bool(seen[-1].all())


def test_cfg_labels_from_the_guidance():
    b = batch(200)
    u = b["actions"].sum(-1) - b["observations"][:, 0]  # Q - V of FakeGuidance
    p = modzoo.make_policy("cfg", OBS, ACT, hidden=16, target_quantile=0.9)
    g = FakeGuidance(with_v=True)
    assert p.signal_kind(g) == "advantage"
    torch.testing.assert_close(p.value_signal(g, b["observations"], b["actions"]), u)
    p.observe(u)  # the first batch sets the statistics exactly
    z = (u - u.mean()) / u.std(unbiased=False)
    torch.testing.assert_close(p.label(u, "advantage")[:, 0], z)
    assert p.target_label() == pytest.approx(float(torch.quantile(z, 0.9)), abs=1e-5)
    # a second batch moves them by stats_momentum (an EMA)
    u2 = u + 10
    p.observe(u2)
    assert float(p.label_mean) == pytest.approx(float(u.mean()) * 0.995 + float(u2.mean()) * 0.005, rel=1e-5)
    # CFGRL's optimality label: o = 1[A > 0], sampled at o = 1
    po = modzoo.make_policy("cfg", OBS, ACT, hidden=16, label="optimality")
    po.observe(u)
    torch.testing.assert_close(po.label(u, "advantage")[:, 0], (u > 0).float())
    assert po.target_label() == 1.0
    # a guidance without V: the signal is Q; asking for the advantage is refused
    gq = FakeGuidance(with_v=False)
    assert p.signal_kind(gq) == "q"
    pa = modzoo.make_policy("cfg", OBS, ACT, hidden=16, signal="advantage")
    with pytest.raises(ValueError, match="needs a guidance with V"):
        pa.update(b, gq)


def test_cfg_label_statistics_are_saved(tmp_path):
    p = modzoo.make_policy("cfg", OBS, ACT, hidden=16)
    p.update(batch(64), FakeGuidance())
    modzoo.save_half(p, tmp_path / "p.pt")
    q = modzoo.load_checkpoint(tmp_path / "p.pt")
    assert bool(q.label_seen) and q.target_label() == pytest.approx(p.target_label())


def test_cfg_warns_when_labels_come_from_a_moving_critic():
    p = modzoo.make_policy("cfg", OBS, ACT, hidden=16)
    g = modzoo.make_guidance("idql", OBS, ACT, hidden=[8, 8])
    with pytest.warns(UserWarning, match="moving critic"):
        p.update(batch(), g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.update(batch(), g)  # once only
        p2 = modzoo.make_policy("cfg", OBS, ACT, hidden=16)
        p2.update(batch(), g.freeze())  # a frozen guidance: no warning


@pytest.mark.parametrize("label", ["normalized", "optimality"])
def test_cfg_guided_samples_favour_high_value_actions(label):
    """Data: a = +0.5 or -0.5 with equal odds, advantage A = a. Unguided (w = 0) samples keep both modes; guided
    at c* (w = 1) they come from the high-advantage mode: the policy improvement CFG is for."""

    class AdvIsAction(FakeGuidance):
        def q_ensemble(self, obs, act):
            return act[:, 0].expand(2, -1)

        def v(self, obs):
            return torch.zeros(obs.shape[0])

    torch.manual_seed(0)
    p = modzoo.make_policy("cfg", OBS, 1, hidden=32, lr=3e-3, ema_decay=0.9, label=label)
    g, gen = AdvIsAction(), torch.Generator().manual_seed(0)
    for _ in range(150):
        obs = torch.randn(128, OBS, generator=gen)
        a = torch.where(torch.rand(128, 1, generator=gen) < 0.5, 0.5, -0.5)
        p.update({"observations": obs, "actions": a}, g)
    obs = torch.randn(400, OBS, generator=gen)
    high = {}
    for w in (0.0, 1.0):
        p.cfg["guidance_weight"] = w
        high[w] = float((p.sample(obs, 1)[:, 0, 0] > 0).float().mean())
    assert high[1.0] > 0.9 and high[1.0] > high[0.0] + 0.3, high


# ---- edp ------------------------------------------------------------------------------------------------------
def test_edp_action_approximation_by_hand():
    d = GaussianDiffusion(MLPDenoiser(OBS, ACT, hidden=8), ACT, T=100, schedule="linear_scaled")
    betas = np.linspace(1e-3, 0.2, 100)  # guided-diffusion's linear schedule scaled to T = 100
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), abar, rtol=1e-5)
    x_t = torch.tensor([[0.3, -0.2], [0.05, 0.1]])
    eps = torch.tensor([[0.5, 1.0], [-0.2, 0.4]])
    t = torch.tensor([0, 40])
    expect = np.array([(x_t[i].numpy() - math.sqrt(1 - abar[k]) * eps[i].numpy()) / math.sqrt(abar[k])
                       for i, k in enumerate([0, 40])])
    got = d.predict_x0(x_t, t, eps, clip=False)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-5)
    np.testing.assert_allclose(d.predict_x0(x_t, t, eps).numpy(), np.clip(expect, -1, 1), rtol=1e-5)
    # with the true noise the approximation recovers the clean action exactly
    a0, noise, tt = torch.rand(4, ACT) * 2 - 1, torch.randn(4, ACT), torch.tensor([0, 10, 50, 99])
    torch.testing.assert_close(d.predict_x0(d.q_sample(a0, tt, noise), tt, noise), a0, atol=1e-4, rtol=0)


def test_linear_scaled_schedule_refuses_short_chains():
    with pytest.raises(ValueError, match="T > 20"):
        GaussianDiffusion(MLPDenoiser(OBS, ACT, hidden=8), ACT, T=10, schedule="linear_scaled")


def test_edp_q_loss_by_hand():
    q = torch.tensor([1.0, -3.0], requires_grad=True)
    loss = edp_q_loss(q, 2.0)  # lambda = 2 / mean|q| = 1; -lambda * mean q = 1
    assert float(loss.detach()) == pytest.approx(1.0)
    loss.backward()  # lambda is a constant: d/dq = -lambda / B
    torch.testing.assert_close(q.grad, torch.tensor([-0.5, -0.5]))


def test_edp_update_never_runs_the_reverse_chain():
    """EDP's point: the Q term is read off the training forward pass, not a T-step sample."""
    p = modzoo.make_policy("edp", OBS, ACT, hidden=16)
    g = modzoo.make_guidance("dql", OBS, ACT, hidden=[8, 8], target_actions="dataset").freeze()

    def forbidden(*a, **k):
        raise AssertionError("EDP must not sample the chain in update")

    p.diffusion.sample = forbidden
    p.diffusion.p_step = forbidden
    before = [x.clone() for x in p.diffusion.parameters()]
    m = p.update(batch(), g)
    assert {"bc_loss", "q_loss", "actor_loss"} <= set(m)
    assert float(m["actor_loss"]) == pytest.approx(float(m["bc_loss"]) + float(m["q_loss"]), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, p.diffusion.parameters()))


def test_edp_q_term_moves_the_approximated_action_uphill():
    """With only the Q term (a huge alpha swamps BC), the approximated action climbs Q = -(a - 0.5)^2."""

    class Bowl(FakeGuidance):
        def q_ensemble(self, obs, act):
            return (-(act - 0.5) ** 2).sum(-1).expand(2, -1)

    p = modzoo.make_policy("edp", OBS, ACT, hidden=32, alpha=100.0, lr=1e-3, grad_norm=0.0)
    b = batch(128)
    gen = torch.Generator().manual_seed(3)

    def mean_q():
        t = torch.randint(0, p.diffusion.T, (128,), generator=gen)
        noise = torch.randn(128, ACT, generator=gen)
        x_t = p.diffusion.q_sample(b["actions"], t, noise)
        with torch.no_grad():
            a0 = p.diffusion.predict_x0(x_t, t, p.diffusion.model(x_t, t, b["observations"]))
        return float((-(a0 - 0.5) ** 2).sum(-1).mean())

    q0 = mean_q()
    for _ in range(30):
        p.update(b, Bowl())
    assert mean_q() > q0 + 0.1


# ---- sfbc -----------------------------------------------------------------------------------------------------
def test_sfbc_selection_weights_by_hand():
    q = torch.tensor([[0.0, 0.1, 0.5, 1.0]])
    # alpha Q = [0, 10, 50, 100]; the 2nd largest is 50, so logits are capped at 90
    logits = np.array([0.0, 10.0, 50.0, 90.0])
    expect = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(sfbc_probs(q, 100.0, 2).numpy()[0], expect, rtol=1e-5)
    # without the cap the top candidate would hold all the mass (e^-50) and a 2nd distinct draw would be
    # impossible; with it the runner-up keeps e^-40
    assert float(sfbc_probs(q, 100.0, 2)[0, 2]) == pytest.approx(math.exp(-40), rel=1e-3)
    # small alpha: plain softmax(alpha Q)
    torch.testing.assert_close(sfbc_probs(q, 0.5, 1), torch.softmax(0.5 * q, 1))


def test_sfbc_select_draws_distinct_candidates_and_averages_them():
    cands = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.2, -0.2], [-1.0, 0.5]]])
    q = torch.tensor([[0.0, 10.0, 9.0, -5.0]])
    # alpha 100, k = 2: the two best are drawn (the others are e^-100 below), their mean is returned
    out = sfbc_select(cands, q, 100.0, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.4]]))
    # k = M: every candidate once, whatever the weights
    torch.testing.assert_close(sfbc_select(cands, q, 100.0, 4), cands.mean(1))


def test_sfbc_act_ranks_its_candidates_with_the_guidance():
    p = modzoo.make_policy("sfbc", OBS, ACT, hidden=16, candidates=16, select_per_state=1)
    g = FakeGuidance()  # Q = sum(a): the selected action is the candidate with the largest sum
    obs = torch.randn(3, OBS)
    p.generator = torch.Generator().manual_seed(5)
    cands = p.sample(obs, 16)
    p.generator = torch.Generator().manual_seed(5)
    a = p.act(obs, g)
    best = cands[torch.arange(3), cands.sum(-1).argmax(1)]
    torch.testing.assert_close(a, best)


# ---- every compatible pair trains and evaluates -----------------------------------------------------------------
def _pairs():
    reg = modzoo.load_registry(refresh=True)
    return [(g, p) for p in sorted(reg.policies) for g in reg.compatible(p)]


def _tiny(policy):
    spec = modzoo.load_registry().policy(policy)
    d = spec.default_config()
    over = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64"]
    if "T" in d:  # a short chain: 3 DDPM steps, or 3 solver steps of a continuous-time model
        over += ["policy.T=3"] if d["noise_schedule"] == "vp_sde" else ["policy.T=3", "policy.noise_schedule=vp"]
    if d.get("candidates", 1) > 1:
        over.append("policy.candidates=4")
    if "select_per_state" in d:
        over.append("policy.select_per_state=2")
    return over


@pytest.mark.parametrize("pair", _pairs(), ids=lambda p: f"{p[0]}+{p[1]}")
def test_every_compatible_pair_trains_and_evaluates(capsys, small_dataset_path, tmp_path, pair):
    g, p = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cfg's joint-schedule note
        rc = main(["run", "--guidance", g, "--policy", p, "--env", TASK, "--dataset", str(small_dataset_path),
                   "--policy-steps", "4", "--eval-episodes", "1", "--device", "cpu", "--out", str(tmp_path / "r"),
                   "--no-progress", *_tiny(p)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "normalized score:" in out
    assert (tmp_path / "r" / "policy.pt").exists() and (tmp_path / "r" / "result.json").exists()
