"""Faults during training, each ending in one line that loses nothing (issue 37, items 3 to 5).

- A stop signal (SIGTERM from a scheduler, SIGINT from a terminal) saves the run's resume state at the next step
  boundary and prints the command that continues it; the continued run ends exactly as an uninterrupted one.
- A NaN or Inf in a loss, or in what the policy reads from its guidance, stops the run naming plugin, half, phase,
  step and metric; the last good state stays on disk, no score is written, and metrics.jsonl stays strict JSON.
- An exception in a plugin's code names the plugin, its half, the phase and the step.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch

import modzoo
import modzoo.run.training as training
from modzoo.bullet.data import load_dataset
from modzoo.cli import main
from modzoo.errors import DatasetError, NonFiniteError, PluginFailure
from modzoo.plugins.bc import CONFIG as BC_CONFIG
from modzoo.plugins.bc import DiffusionBCPolicy
from modzoo.plugins.idql import CONFIG as IDQL_CONFIG
from modzoo.plugins.idql import IQLGuidance
from modzoo.run.attribution import half_label
from modzoo.run.checkpoint import load_checkpoint, save_half
from modzoo.run.config import to_dict
from modzoo.run.guard import NonFiniteGuard
from modzoo.run.halves import build_half
from modzoo.run.rundir import RunLog
from modzoo.testing import checkpoint_tensors, synthetic_dataset

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=32", "policy.hidden=32", "policy.batch_size=32",
        "policy.candidates=2"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("stops") / "d.hdf5", transitions=300)


def run_argv(data: Path, out: Path, *extra: str, guidance: str = "idql", policy: str = "idql",
             g_steps: int = 20, p_steps: int = 20) -> list[str]:
    flags = [x for x in extra if "=" not in x or x.startswith("-")]
    overrides = [x for x in extra if x not in flags]
    return ["run", "--guidance", guidance, "--policy", policy, "--env", TASK, "--dataset", str(data), "--out",
            str(out), "--schedule", "guidance-first", "--guidance-steps", str(g_steps), "--policy-steps",
            str(p_steps), "--eval-episodes", "0", "--device", "cpu", "--threads", "1", "--no-progress", *flags,
            *TINY, "run.log_every=1", *overrides]


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def strict_lines(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl read as strict JSON: a bare NaN or Infinity fails the test."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds a bare {name}: not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def state(run: Path) -> dict[str, Any]:
    return torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)


def same_tensors(a: Path, b: Path) -> None:
    for name in ("guidance.pt", "policy.pt"):
        ta = checkpoint_tensors(torch.load(a / name, map_location="cpu", weights_only=True))
        tb = checkpoint_tensors(torch.load(b / name, map_location="cpu", weights_only=True))
        assert ta.keys() == tb.keys() and ta, name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs from the uninterrupted run"


def tiny_guidance() -> Any:
    return build_half("guidance", to_dict(modzoo.run_config("idql", None, TASK, TINY[:2]).guidance), 15, 3)


def metric_lines(run: Path) -> list[dict[str, Any]]:
    return strict_lines(run / "metrics.jsonl")


# ---- stop signals ------------------------------------------------------------------------------------------
DRIVER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import modzoo.run.training as t
    from modzoo.cli import main
    at, sig = int(os.environ["STOP_AT"]), getattr(signal, os.environ["STOP_SIGNAL"])
    step, calls = t._train_step, [0]
    def counted(*a, **k):
        out = step(*a, **k)
        calls[0] += 1
        if calls[0] == at:  # as a scheduler would: the signal arrives while the loop runs
            os.kill(os.getpid(), sig)
        return out
    t._train_step = counted
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(run_argv(data, out)) == 0
    return out


@pytest.mark.parametrize("sig, at, phase, step", [("SIGTERM", 27, "policy", 7), ("SIGINT", 6, "guidance", 6)])
def test_a_stop_signal_saves_at_the_step_boundary_and_the_resumed_run_ends_as_an_uninterrupted_one(
        capsys, data, tmp_path, uninterrupted, sig, at, phase, step):
    out = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    # no step-based or timed save: the signal's own save is all there is, so nothing may be lost
    argv = run_argv(data, out, "run.save_every_s=0")
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STOP_AT": str(at), "STOP_SIGNAL": sig, "OMP_NUM_THREADS": "1"})
    signum = getattr(signal, sig)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 128 + signum == (143 if sig == "SIGTERM" else 130), proc.stderr
    assert len(lines) == 1, proc.stderr
    expected = f"stopped by {sig} at step {step} of 20 of the {phase} phase; its state is saved in {out}; resume with: "
    assert lines[0].startswith(expected), lines[0]
    saved = state(out)
    assert (saved["phase"], saved["step"]) == (phase, step)  # the step in progress finished and was kept
    assert not (out / "result.json").exists() and not (out / "policy.pt").exists()

    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[0] == "modzoo" and command[-len(argv) + 1:] == argv[1:] and "--resume" in command, command
    rc, _, err = cli(capsys, command[1:])
    assert rc == 0, err
    same_tensors(out, uninterrupted)
    assert metric_lines(out) == metric_lines(uninterrupted)  # every step logged once, with the same numbers
    assert not (out / "train_state.pt").exists()


def test_timed_saves_bound_what_a_hard_kill_loses(data, tmp_path, monkeypatch):
    """No handler sees kill -9: what survives is the last save, and run.save_every_s makes one by wall time."""
    clock = [0.0]

    def tick() -> float:
        clock[0] += 1.0  # one "second" per reading: the loop reads the clock once per step
        return clock[0]
    monkeypatch.setattr(training.time, "monotonic", tick)
    calls = [0]
    step = training._train_step

    def killed(*a: Any, **k: Any) -> Any:
        calls[0] += 1
        if calls[0] == 15:
            raise SystemExit("killed")  # nothing after this runs, as after SIGKILL
        return step(*a, **k)
    monkeypatch.setattr(training, "_train_step", killed)
    for seconds, kept in ((4, {4, 8, 12}), (0, None)):
        out = tmp_path / f"every{seconds}"
        cfg = modzoo.run_config("idql", "idql", TASK, TINY, dataset=str(data), schedule="guidance-first",
                                guidance_steps=20, policy_steps=5, eval_episodes=0, device="cpu", out=str(out),
                                save_every_s=seconds)
        calls[0] = 0
        with pytest.raises(SystemExit):
            modzoo.train(cfg, progress=False)
        if kept is None:
            assert not (out / "train_state.pt").exists()  # the old behaviour: the whole phase lost
        else:
            saved = state(out)
            assert saved["phase"] == "guidance" and saved["step"] in kept and 14 - saved["step"] < seconds, saved


def test_resume_where_no_run_was_started_is_one_line(capsys, data, tmp_path):
    missing = tmp_path / "typo"
    rc, _, err = cli(capsys, run_argv(data, missing, "--resume"))
    assert rc == 2 and err.strip().splitlines() == [
        f"error: --resume: run dir {missing} (--out) does not exist, so there is nothing to resume; check --out, or "
        f"drop --resume to start a new run there"], err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = cli(capsys, run_argv(data, empty, "--resume"))
    assert rc == 2 and "holds no run (no config.yaml), so there is nothing to resume" in err and not any(
        empty.iterdir()), err
    rc, _, err = cli(capsys, ["train-guidance", "--guidance", "idql", "--env", TASK, "--dataset", str(data),
                              "--out", str(missing), "--resume", "--steps", "3", "--device", "cpu"])
    assert rc == 2 and "nothing to resume" in err and not missing.exists(), err


def test_no_evaluation_is_said_in_one_line(capsys, data, tmp_path):
    out = tmp_path / "r"
    rc, stdout, _ = cli(capsys, run_argv(data, out, g_steps=2, p_steps=2))
    assert rc == 0
    said = [x for x in stdout.splitlines() if x.startswith("evaluation is off")]
    assert said == [f"evaluation is off (--eval-episodes 0): the run trains and saves policy.pt but plays no episode "
                    f"and reports no score; score it later with `modzoo eval --policy {out / 'policy.pt'}`"]
    assert "normalized_score" not in json.loads((out / "result.json").read_text())


def _raise_strings(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield node.lineno, sub.value


def test_no_error_message_advises_deleting_the_users_files():
    advice = re.compile(r"\b(delete|remove|rm)\b", re.IGNORECASE)
    found = [f"{p.relative_to(ROOT)}:{line}: {text!r}" for base in ("core", "plugins")
             for p in sorted((ROOT / base).rglob("*.py")) for line, text in _raise_strings(p) if advice.search(text)]
    assert not found, found


def test_a_directory_given_as_the_dataset_is_named_as_one(tmp_path):
    with pytest.raises(DatasetError, match="is a directory, not a dataset file: give the .hdf5 file itself"):
        load_dataset(str(tmp_path), task=TASK)


def test_new_run_keys_are_checked_and_old_configs_without_them_resume(capsys, data, tmp_path, monkeypatch):
    for bad, why in (("run.on_nonfinite=ignore", "unknown on_nonfinite 'ignore'; known: stop, warn"),
                     ("run.save_every_s=-1", "must be >= 0")):
        rc, _, err = cli(capsys, run_argv(data, tmp_path / "bad", bad))
        assert rc == 2 and why in err and not (tmp_path / "bad").exists(), err
    # a run dir made before the keys existed: its config.yaml lacks them, and --resume still continues it
    out = tmp_path / "old"
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc, _, _ = cli(capsys, run_argv(data, out, "--eval-episodes", "1", "--eval-every", "5", g_steps=4, p_steps=10))
    assert rc == 130 and (state(out)["phase"], state(out)["step"]) == ("guidance", 4)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text("\n".join(x for x in text.splitlines()
                                               if "save_every_s" not in x and "on_nonfinite" not in x) + "\n")
    monkeypatch.undo()
    rc, _, err = cli(capsys, run_argv(data, out, "--resume", "--eval-episodes", "1", "--eval-every", "5",
                                      g_steps=4, p_steps=10))
    assert rc == 0 and (out / "result.json").exists(), err


# ---- the non-finite guard ----------------------------------------------------------------------------------
class NanGuidance(IQLGuidance):
    """IQL whose value loss turns NaN at its update ``NAN_AT`` (1-based)."""

    NAN_AT = 7

    def value_loss(self, batch: Any, policy: Any = None) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        loss, metrics = super().value_loss(batch, policy)
        if self.calls >= self.NAN_AT:
            loss = loss * float("nan")
            metrics = {**metrics, "value_loss": loss.detach()}
        return loss, metrics


class NanPolicy(DiffusionBCPolicy):
    """Diffusion BC whose loss turns infinite at its update ``NAN_AT`` (stackable: the loss stays a pure function
    of the step count)."""

    NAN_AT = 5

    def loss(self, batch: Any, guidance: Any = None) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        loss, metrics = super().loss(batch, guidance)
        if self.calls >= self.NAN_AT:
            loss = loss * float("inf")
            metrics = {**metrics, **{k: v * float("inf") for k, v in metrics.items() if "loss" in k}}
        return loss, metrics


class RaisingPolicy(DiffusionBCPolicy):
    """Diffusion BC whose loss raises at its third update, as a plugin bug would."""

    def loss(self, batch: Any, guidance: Any = None) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise ValueError("the plugin's own bug")
        return super().loss(batch, guidance)


@pytest.fixture
def test_plugins() -> Iterator[None]:
    modzoo.register_plugin(SimpleNamespace(
        modzoo_guidances=modzoo.hookimpl(lambda: [modzoo.HalfSpec("nanguide", NanGuidance, IDQL_CONFIG)]),
        modzoo_policies=modzoo.hookimpl(lambda: [modzoo.HalfSpec("nanpol", NanPolicy, BC_CONFIG),
                                                 modzoo.HalfSpec("raising", RaisingPolicy, BC_CONFIG)])),
        name="faulty")
    try:
        yield
    finally:
        modzoo.unregister_plugin("faulty")


def test_a_nan_guidance_stops_naming_it_and_keeps_the_last_good_state(capsys, data, tmp_path, test_plugins):
    out = tmp_path / "r"
    rc, _, err = cli(capsys, run_argv(data, out, "run.save_every=4", guidance="nanguide", policy="bc"))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0] == (
        f"error: guidance 'nanguide' (plugin faulty) gave a non-finite guidance/value_loss = nan in the guidance "
        f"phase at step 7; the run stopped, keeping its last good state (guidance phase, step 4, in "
        f"{out / 'train_state.pt'}), and wrote no score; lower the learning rate or fix the plugin's loss, or set "
        f"run.on_nonfinite=warn to train on through it")
    saved = state(out)
    assert (saved["phase"], saved["step"]) == ("guidance", 4)  # the save due at step 8 was never written
    assert all(torch.isfinite(t).all() for t in checkpoint_tensors(saved["guidance"]).values())
    assert not (out / "result.json").exists() and not (out / "guidance.pt").exists()
    records = metric_lines(out)
    assert records[-1]["step"] == 7 and records[-1]["guidance/value_loss"] is None  # logged, as null
    assert all(r["guidance/value_loss"] is not None for r in records[:-1])


def test_a_nan_policy_stops_naming_it(capsys, data, tmp_path, test_plugins):
    out = tmp_path / "r"
    rc, _, err = cli(capsys, run_argv(data, out, "run.log_every=3", policy="nanpol"))
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: policy 'nanpol' (plugin faulty) gave a non-finite policy/bc_loss = inf in the "
                          "policy phase at step 5; the run stopped, keeping its last good state (guidance phase, "
                          "step 20, "), err
    assert not (out / "result.json").exists() and not (out / "policy.pt").exists()
    strict_lines(out / "metrics.jsonl")


@pytest.mark.parametrize("selection, where", [
    # argmax acts on NaN without a word: the loop's probe at the start of the policy phase stops it
    ("argmax", "at the start of the policy phase (step 0); the run stopped before its first save (nothing to resume) "
               "and wrote no score"),
    # softmax dies inside torch already in the probe before training: named, instead of torch's error
    ("softmax", "before training; nothing was trained"),
])
def test_a_guidance_that_answers_nan_is_stopped_before_the_policy_trains_on_it(capsys, data, tmp_path, selection,
                                                                                where):
    """A frozen guidance has no loss left to watch: what the policy reads from it is probed."""
    g = tiny_guidance()
    with torch.no_grad():
        for p in g.parameters():  # online and target critics, V
            p.fill_(float("nan"))
    ckpt = tmp_path / "guidance.pt"
    save_half(g, ckpt, {"name": TASK, "fingerprint": "", "path": ""})
    assert not torch.isfinite(load_checkpoint(ckpt).q(torch.zeros(2, 15), torch.zeros(2, 3))).all()
    out = tmp_path / "r"
    argv = run_argv(data, out, f"policy.selection={selection}", policy="bc")
    argv[argv.index("guidance-first")] = "pretrained"
    rc, _, err = cli(capsys, [*argv, "--guidance-ckpt", str(ckpt)])
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: guidance 'idql' (plugin modzoo) gave a non-finite q(obs, act) = nan on dataset "
                          f"states (policy 'bc' reads it) {where}"), err
    assert not (out / "result.json").exists() and not (out / "policy.pt").exists()


def test_on_nonfinite_warn_trains_on_with_one_warning_and_strict_json(capsys, data, tmp_path, test_plugins):
    out = tmp_path / "r"
    rc, _, err = cli(capsys, run_argv(data, out, "run.on_nonfinite=warn", policy="nanpol", g_steps=3, p_steps=9))
    warned = [x for x in err.splitlines() if x.startswith("warning: policy 'nanpol'")]
    assert rc == 0 and len(warned) == 1 and "policy/bc_loss = inf in the policy phase at step 5" in warned[0], err
    assert "run.on_nonfinite=warn, so training goes on" in warned[0]
    records = [r for r in metric_lines(out) if r["phase"] == "policy"]
    assert [r["step"] for r in records if r["policy/bc_loss"] is None] == [5, 6, 7, 8, 9]
    json.loads((out / "result.json").read_text(), parse_constant=lambda name: pytest.fail(name))


@pytest.mark.parametrize("stack", ["vmap", "lockstep"])
def test_the_guard_watches_stacked_seeds(capsys, data, tmp_path, test_plugins, stack):
    out = tmp_path / "r"
    rc, _, err = cli(capsys, run_argv(data, out, "--seeds", "0,1", "--stack", stack, "run.log_every=4",
                                      policy="nanpol", g_steps=3, p_steps=9))
    assert rc == 2 and err.count("\n") == 1, err
    assert ("error: policy 'nanpol' (plugin faulty) gave a non-finite policy/bc_loss = inf in the policy phase at "
            "step 5 (seed 0); the run stopped, keeping its last good state (guidance phase, step 3, ") in err, err
    for seed in (0, 1):
        strict_lines(out / f"seed{seed}" / "metrics.jsonl")
        assert state(out / f"seed{seed}")["phase"] == "guidance"


def test_the_guard_finds_the_first_bad_step_and_metric():
    guard = NonFiniteGuard()
    guard.observe(1, [{"a": torch.tensor(1.0), "b": torch.tensor([2.0])}, {"a": torch.tensor(0.5)}])
    assert guard.first_bad() is None and not guard.pending  # read, then forgotten
    guard.observe(2, [{"a": torch.tensor(1.0)}, {"a": torch.tensor(float("inf"))}])
    guard.observe(3, [{"a": torch.tensor(float("nan"))}, {"a": torch.tensor(1.0)}])
    bad = guard.first_bad()
    assert (bad.run, bad.step, bad.metric, bad.value) == (1, 2, "a", math.inf)
    guard.observe(4, [{"n": 3, "x": float("nan")}])  # plain numbers are checked on the spot
    bad = guard.first_bad()
    assert (bad.step, bad.metric) == (4, "x") and math.isnan(bad.value)


def test_the_log_writes_non_finite_values_as_null(tmp_path):
    log = RunLog(tmp_path)
    log.log({"phase": "policy", "step": 1, "a": float("nan"), "b": torch.tensor(float("-inf")), "c": 1.5})
    assert strict_lines(tmp_path / "metrics.jsonl") == [{"phase": "policy", "step": 1, "a": None, "b": None,
                                                         "c": 1.5}]


# ---- attributed errors -------------------------------------------------------------------------------------
def test_an_exception_in_a_plugins_loss_is_attributed(capsys, data, tmp_path, test_plugins):
    argv = run_argv(data, tmp_path / "r", policy="raising")
    rc, _, err = cli(capsys, argv)
    assert rc == 2 and err.strip().splitlines() == [
        "error: policy 'raising' (plugin faulty) failed in the policy phase at step 3: ValueError: the plugin's own "
        "bug"], err
    with pytest.raises(PluginFailure) as info:
        main(["--debug", *run_argv(data, tmp_path / "d", policy="raising")])
    assert isinstance(info.value.__cause__, ValueError)
    err = capsys.readouterr().err
    assert err.startswith("error: policy 'raising' (plugin faulty) failed in the policy phase at step 3"), err
    assert f"(raised at {Path(__file__)}:" in err and " in loss)" in err, err


def test_an_error_in_modzoos_own_code_is_not_blamed_on_a_plugin(data, tmp_path, monkeypatch):
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("core bug")
    monkeypatch.setattr(training.ReplayBuffer, "sample", broken)
    with pytest.raises(RuntimeError, match="core bug"):
        main(run_argv(data, tmp_path / "r"))


def test_the_first_party_plugins_are_attributed_to_modzoo():
    assert half_label(tiny_guidance()) == "guidance 'idql' (plugin modzoo)"


def test_nonfinite_error_is_a_modzoo_error():
    assert issubclass(NonFiniteError, modzoo.ModzooError) and issubclass(PluginFailure, modzoo.PluginError)
