"""Schedules end to end on a small collected Bullet dataset: joint, guidance-first, pretrained, resume."""
import json
from types import SimpleNamespace

import pytest
import torch

import modzoo
from modzoo.errors import ConfigError

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
        "run.log_every=5"]


def cfg(g, p, data, out=None, **run):
    run = {"policy_steps": 12, "guidance_steps": 10, "eval_episodes": 2, "device": "cpu", "dataset": str(data),
           "out": str(out) if out else None, **run}
    return modzoo.run_config(g, p, TASK, TINY, **run)


def test_joint_idql_writes_a_complete_run_dir(small_dataset_path, tmp_path):
    res = modzoo.train(cfg("idql", "idql", small_dataset_path, tmp_path / "r"), progress=False)
    d = tmp_path / "r"
    for f in ["config.yaml", "metrics.jsonl", "guidance.pt", "policy.pt", "result.json"]:
        assert (d / f).exists(), f
    assert not (d / "train_state.pt").exists()
    result = json.loads((d / "result.json").read_text())
    assert result["schedule"] == "joint" and result["guidance_steps"] == 12 and result["policy_steps"] == 12
    ev = result["eval"]
    assert len(ev["returns"]) == 2
    # the reported normalized score is the D4RL formula of the reported returns
    assert result["normalized_score"] == pytest.approx(
        sum(modzoo.normalized_score(TASK, r) for r in ev["returns"]) / 2, rel=1e-6)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert any("guidance/value_loss" in x for x in lines) and any("policy/bc_loss" in x for x in lines)
    assert res.normalized_score == pytest.approx(result["normalized_score"])


def test_guidance_first_freezes_guidance_before_policy(small_dataset_path):
    res = modzoo.train(cfg("idql", "dql", small_dataset_path, eval_episodes=0, schedule="guidance-first"),
                       progress=False)
    assert res.guidance.steps == 10 and res.policy.steps == 12
    assert res.guidance.frozen
    assert [p["phase"] for p in res.phases] == ["guidance", "policy"]


def test_policy_dependent_guidance_cannot_go_first(small_dataset_path):
    with pytest.raises(ConfigError, match="only train jointly"):
        modzoo.train(cfg("dql", "dql", small_dataset_path, schedule="guidance-first"), progress=False)
    # the SARSA variant is policy-independent and may
    c = modzoo.run_config("dql", "dql", TASK, [*TINY, "guidance.target_actions=dataset"], policy_steps=12,
                          guidance_steps=10, eval_episodes=0, device="cpu", dataset=str(small_dataset_path),
                          schedule="guidance-first")
    assert modzoo.train(c, progress=False).guidance.frozen


def test_pretrained_reuses_a_saved_guidance(small_dataset_path, tmp_path):
    modzoo.train(cfg("idql", "idql", small_dataset_path, tmp_path / "g", schedule="guidance-first",
                     policy_steps=1, eval_episodes=0), progress=False)
    saved = modzoo.load_checkpoint(tmp_path / "g" / "guidance.pt")
    res = modzoo.train(cfg("idql", "dql", small_dataset_path, tmp_path / "p", schedule="pretrained",
                           guidance_ckpt=str(tmp_path / "g" / "guidance.pt"), eval_episodes=0), progress=False)
    obs, act = torch.randn(4, 15), torch.rand(4, 3)
    torch.testing.assert_close(res.guidance.q(obs, act), saved.q(obs, act))  # unchanged: it was frozen
    assert res.policy.steps == 12


def test_resume_continues_an_interrupted_run(small_dataset_path, tmp_path):
    out = tmp_path / "r"
    c = cfg("idql", "idql", small_dataset_path, out, schedule="guidance-first", save_every=4, eval_every=6,
            eval_episodes=1)

    class Stop(Exception):
        pass

    def interrupt(step, ev):
        raise Stop

    with pytest.raises(Stop):
        modzoo.train(c, progress=False, on_eval=interrupt)  # dies at policy step 6, after the save at step 4
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert (st["phase"], st["step"]) == ("policy", 4)
    with pytest.raises(ConfigError, match="--resume"):
        modzoo.train(c, progress=False)  # refuses to overwrite
    res = modzoo.train(c, progress=False, resume=True)
    assert res.guidance.steps == 10 and res.policy.steps == 12
    # the log has each step once: the lines written after the save at step 4 were dropped and written again
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["phase"], r["step"]) for r in recs]
    assert len(keys) == len(set(keys))
    assert ("eval", 6) in keys and ("policy", 12) in keys
    assert json.loads((out / "result.json").read_text())["policy_steps"] == 12
    # and it ends where the uninterrupted run ends: data order and the halves' noise streams were restored
    whole = modzoo.train(cfg("idql", "idql", small_dataset_path, tmp_path / "whole", schedule="guidance-first",
                             save_every=4, eval_every=6, eval_episodes=1), progress=False)
    for x, y in zip(res.policy.state_dict().values(), whole.policy.state_dict().values()):
        torch.testing.assert_close(x, y)


def test_runs_are_reproducible_under_a_seed(small_dataset_path):
    a = modzoo.train(cfg("idql", "dql", small_dataset_path, eval_episodes=0), progress=False)
    b = modzoo.train(cfg("idql", "dql", small_dataset_path, eval_episodes=0), progress=False)
    for x, y in zip(a.policy.parameters(), b.policy.parameters()):
        torch.testing.assert_close(x, y)
    c = modzoo.train(cfg("idql", "dql", small_dataset_path, eval_episodes=0, seed=1), progress=False)
    assert any(not torch.equal(x, y) for x, y in zip(a.policy.parameters(), c.policy.parameters()))


@pytest.mark.parametrize("g, p, schedule", [("dql", "dql", "joint"), ("idql", "fql", "guidance-first")])
def test_interim_evaluations_leave_training_bit_for_bit_unchanged(small_dataset_path, g, p, schedule):
    """A grid may evaluate more often than another it is compared with (every 5k against every 10k) only if the
    evaluations draw on nothing the updates draw on: both halves' parameters end the same to the bit."""
    runs = [modzoo.train(cfg(g, p, small_dataset_path, schedule=schedule, eval_every=every, eval_episodes=2,
                             final_eval=False), progress=False) for every in (0, 4)]
    assert [ph.get("evals", 0) for ph in runs[1].phases if ph["phase"] != "guidance"] == [2]  # at 4 and 8
    for half in ("guidance", "policy"):
        for x, y in zip(getattr(runs[0], half).state_dict().values(), getattr(runs[1], half).state_dict().values()):
            assert torch.equal(x, y)


def test_phase_time_leaves_out_interim_evaluations_and_survives_a_resume(small_dataset_path, tmp_path,
                                                                         monkeypatch):
    """A phase's wall_s is the cost of its updates: interim evaluations are timed apart (eval_wall_s, evals), and
    a resumed run adds the time spent before the interruption instead of starting its clock again. The same for
    its CPU time (cpu_s), which counts computing, not waiting: the updates here spin, the evaluations sleep."""
    import time

    import modzoo.run.training as training
    from modzoo.plugins.idql import IDQLPolicy

    real_eval, real_update = training.evaluate, IDQLPolicy.update
    update_walls: list[float] = []  # every update's own wall time, those lost to the interruption too

    def slow_eval(*a, **k):
        time.sleep(1.0)
        return real_eval(*a, **k)

    def slow_update(self, *a, **k):
        w0, t0 = time.perf_counter(), time.process_time()
        while time.process_time() - t0 < 0.05:  # 50 ms of this process's CPU, however busy the machine
            pass
        out = real_update(self, *a, **k)
        update_walls.append(time.perf_counter() - w0)
        return out
    monkeypatch.setattr(training, "evaluate", slow_eval)
    monkeypatch.setattr(IDQLPolicy, "update", slow_update)

    class Stop(Exception):
        pass

    def interrupt(step, ev):
        if step == 8:
            raise Stop
    out = tmp_path / "r"
    c = cfg("idql", "idql", small_dataset_path, out, schedule="guidance-first", save_every=6, eval_every=4,
            eval_episodes=1)
    with pytest.raises(Stop):
        modzoo.train(c, progress=False, on_eval=interrupt)  # evals at 4 and 8, saved at 6, dies at 8
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert (st["phase"], st["step"]) == ("policy", 6) and st["phase_time"]["evals"] == 1
    assert st["phase_time"]["train_s"] >= 6 * 0.05 and st["phase_time"]["eval_s"] >= 1.0
    assert st["phase_time"]["train_cpu_s"] >= 6 * 0.05
    modzoo.train(c, progress=False, resume=True)  # steps 7-12 again, with the eval at 8
    policy = [p for p in json.loads((out / "result.json").read_text())["phases"] if p["phase"] == "policy"]
    assert len(policy) == 1
    p = policy[0]
    assert p["steps"] == 12 and p["resumed_at"] == 6 and p["evals"] == 2
    assert p["wall_s"] >= 12 * 0.05  # the 6 steps before the interruption are counted
    assert p["eval_wall_s"] >= 2 * 1.0
    # the evaluations' 2 s of sleep are not training: wall_s is the updates' own time (a load on the machine
    # stretches them, not this bound) and the loop's little beside them, well under one evaluation's sleep
    assert p["wall_s"] < sum(update_walls) + 1.0
    assert p["cpu_s"] >= 12 * 0.05  # the spinning updates before the interruption count too
    assert p["eval_cpu_s"] < p["eval_wall_s"] - 1.9  # two seconds of sleep in the evaluations are no CPU


def test_a_run_killed_in_its_final_evaluation_resumes_without_a_second_phase_record(small_dataset_path, tmp_path,
                                                                                      monkeypatch):
    import modzoo.run.training as training
    real_eval = training.evaluate
    calls = []

    class Stop(Exception):
        pass

    def dies_in_the_final_eval(*a, **k):
        calls.append(k)
        if "progress" in k and len([c for c in calls if "progress" in c]) == 1:
            raise Stop  # _finish's evaluation, the first time only
        return real_eval(*a, **k)
    monkeypatch.setattr(training, "evaluate", dies_in_the_final_eval)
    out = tmp_path / "r"
    c = cfg("idql", "idql", small_dataset_path, out, schedule="guidance-first", eval_episodes=1)
    with pytest.raises(Stop):
        modzoo.train(c, progress=False)
    modzoo.train(c, progress=False, resume=True)
    phases = [p["phase"] for p in json.loads((out / "result.json").read_text())["phases"]]
    assert phases == ["guidance", "policy", "eval"]


def test_seeds_evaluate_from_disjoint_start_states(monkeypatch):
    """Episodes pooled across a cell's seeds must be distinct starts: run seed s uses env seeds base(s) + i."""
    import modzoo.run.evaluation as evaluation
    from modzoo.run.training import evaluate
    seen = {}
    monkeypatch.setattr(evaluation, "evaluate_policy", lambda act, task, episodes, seed, progress: seen.setdefault(
        seed, set(range(seed, seed + episodes))))
    p = modzoo.make_policy("idql", 15, 3, hidden=16)
    for s in range(5):
        evaluate(p, None, TASK, episodes=50, seed=s)
    starts = [x for v in seen.values() for x in v]
    assert len(seen) == 5 and len(starts) == len(set(starts)) == 250


def test_resume_refuses_data_that_changed_under_the_run(small_dataset_path, tmp_path):
    out = tmp_path / "r"
    c = cfg("idql", "idql", small_dataset_path, out, schedule="guidance-first", save_every=4, eval_every=6,
            eval_episodes=1)

    class Stop(Exception):
        pass

    def interrupt(step, ev):
        raise Stop
    with pytest.raises(Stop):
        modzoo.train(c, progress=False, on_eval=interrupt)
    st = torch.load(out / "train_state.pt", weights_only=True)
    st["guidance"]["dataset"]["fingerprint"] = "deadbeef"  # as if the file was re-collected since
    torch.save(st, out / "train_state.pt")
    with pytest.raises(ConfigError, match=r"trained on other data .*\(fingerprint deadbeef vs "):
        modzoo.train(c, progress=False, resume=True)
    assert (out / "train_state.pt").exists()  # nothing saved was lost


def test_evaluation_is_reproducible_and_leaves_the_training_stream_alone(small_dataset_path):
    from modzoo.run.training import evaluate
    p = modzoo.make_policy("dql", 15, 3, hidden=16)
    g = modzoo.make_guidance("dql", 15, 3, hidden=[16, 16])
    before = p.gen().get_state()
    a = evaluate(p, g, TASK, episodes=2, seed=3)
    assert torch.equal(p.gen().get_state(), before)  # the policy's own stream did not move
    b = evaluate(p, g, TASK, episodes=2, seed=3)
    assert a.returns.tolist() == b.returns.tolist()  # same seed, same episodes, same candidates


# ---- the shape probe before training ------------------------------------------------------------------------------
from modzoo.plugins.bc import CONFIG as BC_CONFIG  # noqa: E402
from modzoo.plugins.bc import DiffusionBCPolicy  # noqa: E402


class FlatSample(DiffusionBCPolicy):
    """sample returns (B, A), not (B, n, A): found otherwise only by the final evaluation, after all training."""

    updates = 0

    def sample(self, obs, n=1, *args, **kwargs):
        return super().sample(obs, n, *args, **kwargs)[:, 0]

    def update(self, batch, guidance=None):
        FlatSample.updates += 1
        return super().update(batch, guidance)


class WideAct(DiffusionBCPolicy):
    """act returns one column too many."""

    def act(self, obs, guidance=None, n=None):
        a = super().act(obs, guidance, n)
        return torch.cat([a, a[:, :1]], 1)


@pytest.fixture
def misshapen():
    modzoo.register_plugin(SimpleNamespace(modzoo_policies=modzoo.hookimpl(lambda: [
        modzoo.HalfSpec("flatsample", FlatSample, BC_CONFIG, "policy"),
        modzoo.HalfSpec("wideact", WideAct, BC_CONFIG, "policy")])), name="misshapen")
    yield
    modzoo.unregister_plugin("misshapen")


@pytest.mark.parametrize("policy, message", [
    ("flatsample", r"policy 'flatsample' \(plugin 'misshapen'\): sample\(obs, 2\) on 2 dataset states returned "
                   r"shape \(2, 3\), expected \(2, 2, 3\)"),
    ("wideact", r"policy 'wideact' \(plugin 'misshapen'\): act\(obs, guidance\) on 2 dataset states returned "
                r"shape \(2, 4\), expected \(2, 3\)"),
])
def test_a_misshapen_policy_is_refused_before_any_training(small_dataset_path, tmp_path, misshapen, policy,
                                                           message):
    FlatSample.updates = 0
    with pytest.raises(modzoo.PluginError, match=message) as info:
        modzoo.train(cfg("idql", policy, small_dataset_path, tmp_path / "r", schedule="guidance-first"),
                     progress=False)
    assert "\n" not in str(info.value)
    assert FlatSample.updates == 0 and not (tmp_path / "r").exists()  # no step, no run dir


def test_the_shape_probe_leaves_every_random_stream_and_mode_as_it_found_them(small_dataset_path):
    """The probe samples and acts, which draws noise: every stream it touched is put back (a stream made lazily
    by it is dropped again), so a run with the probe trains to the very numbers it did without one."""
    from modzoo.bullet.data import load_dataset
    from modzoo.run.guard import probe_policy
    data = load_dataset(str(small_dataset_path), task=TASK)
    policy = modzoo.make_policy("idql", 15, 3, hidden=16, candidates=4)
    guidance = modzoo.make_guidance("idql", 15, 3, hidden=[16, 16]).eval()
    assert policy.generator is None  # the probe's sampling creates the policy's stream
    guidance_state = guidance.gen().get_state()
    torch.manual_seed(5)
    global_state = torch.get_rng_state()
    modes = [m.training for m in [*policy.modules(), *guidance.modules()]]
    buffers = [b.clone() for b in policy.buffers()]
    probe_policy(policy, guidance, data)
    assert policy.generator is None and all(getattr(m, "generator", None) is None for m in policy.modules())
    assert torch.equal(guidance.gen().get_state(), guidance_state)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert [m.training for m in [*policy.modules(), *guidance.modules()]] == modes
    assert all(torch.equal(a, b) for a, b in zip(buffers, policy.buffers()))
    policy.gen()
    before = policy.generator.get_state()
    probe_policy(policy, guidance, data)
    assert torch.equal(policy.generator.get_state(), before)  # an existing stream is rewound, not replaced


def test_the_config_a_run_records_is_the_frozen_one_it_was_built_as(small_dataset_path, tmp_path):
    """run_config validates, fills what follows from the run (the halves' seeds, LR horizons) and freezes: an edit
    after validation is refused instead of running unchecked, and config.yaml is that object. A hand-built config is
    validated and filled by train on a copy: the caller's object is not edited."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ReadonlyConfigError

    c = cfg("idql", "idql", small_dataset_path, tmp_path / "r", seed=3, eval_episodes=0)
    assert OmegaConf.is_readonly(c) and c.policy.seed == 3 and c.policy.lr_decay_steps == 12
    with pytest.raises(ReadonlyConfigError):
        c.policy.candidates = 2
    modzoo.train(c, progress=False)
    assert OmegaConf.load(tmp_path / "r" / "config.yaml") == c
    loose = OmegaConf.create(OmegaConf.to_container(cfg("idql", "idql", small_dataset_path, tmp_path / "s", seed=4,
                                                           eval_episodes=0)))
    loose.policy.lr_decay_steps, loose.policy.seed = None, 0  # as a hand-written config would leave them
    modzoo.train(loose, progress=False)
    assert loose.policy.lr_decay_steps is None and not OmegaConf.is_readonly(loose)
    saved = OmegaConf.load(tmp_path / "s" / "config.yaml")
    assert saved.policy.lr_decay_steps == 12 and saved.policy.seed == 4
