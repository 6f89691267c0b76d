"""Runs a user can trust, probe by probe (issue 17: a new user's wrong values, bad paths, kill -9 and a full disk).

Each bad input is one ``error:`` line and exit 2 before the first training step, with no run dir left behind;
each fault during training is one clear line that loses no checkpoint; and what a run dir records is what ran.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import modzoo
import modzoo.run.rundir as rundir
import modzoo.run.training as training
from modzoo.cli import main
from modzoo.plugins.idql import IDQLPolicy, IQLGuidance
from modzoo.run.checkpoint import save_half

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
        "policy.candidates=4"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc, _, err = run_cli(capsys, *argv)
    lines = [x for x in err.strip().splitlines() if x]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_args(data: Path, out: Path, *extra: str, guidance: str = "idql", policy: str = "idql") -> list[str]:
    """``modzoo run`` on the small dataset; ``extra``'s key=value items go after TINY's, so that they win."""
    flags = [x for x in extra if "=" not in x or x.startswith("-")]
    overrides = [x for x in extra if x not in flags]
    return ["run", "--guidance", guidance, "--policy", policy, "--env", TASK, "--dataset", str(data), "--out",
            str(out), "--device", "cpu", "--threads", "1", "--no-progress", "--eval-episodes", "1", *flags, *TINY,
            *overrides]


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training step fails the test: a refusal must come before the first one."""
    def trained(*a: Any, **k: Any) -> None:
        raise AssertionError("a training step ran before the bad value was refused")
    monkeypatch.setattr(IDQLPolicy, "update", trained)
    monkeypatch.setattr(IQLGuidance, "update", trained)


def interrupt_at_first_interim_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a kill would: the run stops at its first interim evaluation, after its resume state was saved."""
    def killed(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "evaluate", killed)


# ---- one validation pass before any work ---------------------------------------------------------------------
@pytest.mark.parametrize("extra, key", [
    (["policy.selection=maxx"], "policy.selection"),
    (["policy.T=abc"], "policy.T"),
    (["--guidance-steps", "-5", "--policy-steps", "-3"], "run.guidance_steps"),
    (["--policy-steps", "-3"], "run.policy_steps"),
    (["--policy-steps", "0"], "run.policy_steps"),
    (["policy.candidates=0"], "policy.candidates"),
    (["policy.sampler=ddim"], "policy.sampler"),
    (["policy.noise_schedule=sigmoid"], "policy.noise_schedule"),
    (["guidance.obs_norm=zscore"], "guidance.obs_norm"),
    (["guidance.expectile=1.5"], "guidance.expectile"),
    (["--eval-every", "2", "--eval-episodes", "0"], "run.eval_episodes"),
])
def test_a_bad_config_value_is_one_line_naming_its_key_before_training(capsys, small_dataset_path, tmp_path,
                                                                       no_training, extra, key):
    msg = one_line_error(capsys, *run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "4", *extra))
    assert f"config key {key}" in msg
    assert not (tmp_path / "r").exists()  # a refused run leaves nothing behind


@pytest.mark.parametrize("guidance, policy, extra, key", [
    ("fql", "fql", ["policy.flow_steps=0"], "policy.flow_steps"),  # zero Euler steps: the policy would act on noise
    ("fql", "fql", ["policy.alpha=-1"], "policy.alpha"),  # a negative weight pushes the student off its teacher
    ("idql", "fbc", ["policy.flow_steps=-2"], "policy.flow_steps"),
    ("dql", "dql", ["policy.eta=-1"], "policy.eta"),
    ("qgpo", "qgpo", ["guidance.support_actions=0"], "guidance.support_actions"),
    ("idql", "sfbc", ["policy.alpha=-1"], "policy.alpha"),  # a negative inverse temperature picks the worst
])
def test_a_plugins_own_key_out_of_range_is_one_line_before_training(capsys, small_dataset_path, tmp_path,
                                                                    no_training, guidance, policy, extra, key):
    msg = one_line_error(capsys, *run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "4", *extra,
                                           guidance=guidance, policy=policy))
    assert f"config key {key}" in msg
    assert not (tmp_path / "r").exists()


def test_guidance_first_needs_guidance_steps(capsys, small_dataset_path, tmp_path, no_training):
    msg = one_line_error(capsys, *run_args(small_dataset_path, tmp_path / "r", "--schedule", "guidance-first",
                                           "--guidance-steps", "0", "--policy-steps", "4"))
    assert "run.guidance_steps" in msg and "> 0" in msg


def eval_refusal(capsys: pytest.CaptureFixture[str], tmp_path: Path, algorithm: str, *flags: str) -> str:
    """The one-line error of ``modzoo eval`` on a small untrained ``algorithm`` policy with ``flags``."""
    save_half(modzoo.make_policy(algorithm, 15, 3, hidden=16), tmp_path / "policy.pt", {"name": TASK})
    return one_line_error(capsys, "eval", "--policy", str(tmp_path / "policy.pt"), *flags, "--no-progress",
                          "--device", "cpu")


def test_eval_refuses_zero_candidates(capsys, tmp_path):
    assert "--candidates" in eval_refusal(capsys, tmp_path, "idql", "--candidates", "0")


@pytest.mark.parametrize("flag", [["--sampler", "ddim"], ["--sample-steps", "3"], ["--ddim-eta", "0.5"]])
def test_eval_refuses_a_chain_flag_on_a_flow_policy(capsys, tmp_path, flag):
    """A flow policy has no reverse chain: the flag used to be ignored and a score printed as if it had applied."""
    msg = eval_refusal(capsys, tmp_path, "fql", *flag)
    assert flag[0] in msg and "'fql'" in msg


def test_eval_refuses_a_selection_with_one_candidate(capsys, tmp_path):
    """With one candidate per state a selection rule has nothing to choose: it used to print the unranked score."""
    msg = eval_refusal(capsys, tmp_path, "fql", "--selection", "softmax")
    assert "--selection" in msg and "--candidates" in msg


def test_eval_refuses_candidates_for_a_policy_that_has_none(capsys, tmp_path):
    """SRPO acts with its deterministic actor and has no candidates setting: --candidates 8 used to be ignored."""
    msg = eval_refusal(capsys, tmp_path, "srpo", "--candidates", "8")
    assert "--candidates has no effect on policy 'srpo'" in msg
    # its behaviour diffusion keeps the chain's settings, but never acts with them
    msg = eval_refusal(capsys, tmp_path, "srpo", "--sampler", "ddim")
    assert "--sampler has no effect on policy 'srpo'" in msg


# ---- --out problems --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_out_under_proc_is_one_line(capsys, small_dataset_path, no_training):
    msg = one_line_error(capsys, *run_args(small_dataset_path, Path("/proc/modzoo-forbidden"), "--policy-steps", "2"))
    assert "/proc/modzoo-forbidden" in msg and "--out" in msg


def test_out_an_existing_file_is_one_line_and_leaves_the_file_alone(capsys, small_dataset_path, tmp_path,
                                                                    no_training):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    msg = one_line_error(capsys, *run_args(small_dataset_path, f, "--policy-steps", "2"))
    assert str(f) in msg and "existing file" in msg
    assert f.read_text() == "mine"
    msg = one_line_error(capsys, *run_args(small_dataset_path, f / "run", "--policy-steps", "2"))
    assert f"{f} is a file" in msg


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be written in: by its permissions, or for root (whom permissions do not stop) a
    read-only tmpfs mounted there."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("root ignores directory permissions, and this machine cannot mount a read-only tmpfs")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_out_in_a_read_only_directory_is_one_line(capsys, small_dataset_path, read_only_dir, no_training):
    msg = one_line_error(capsys, *run_args(small_dataset_path, read_only_dir / "run", "--policy-steps", "2"))
    assert str(read_only_dir / "run") in msg and "writable" in msg
    assert not (read_only_dir / "run").exists()


# ---- records that cannot lie: a pretrained guidance ------------------------------------------------------------
@pytest.fixture
def idql_guidance(capsys, small_dataset_path, tmp_path) -> Path:
    """An idql guidance.pt trained a few steps with a 32x32 critic (not idql's default 256x256)."""
    rc, _, err = run_cli(capsys, "train-guidance", "--guidance", "idql", "--env", TASK, "--dataset",
                         str(small_dataset_path), "--steps", "3", "--out", str(tmp_path / "g"), "--no-progress",
                         "--device", "cpu", "--threads", "1", *TINY[:2])
    assert rc == 0, err
    return tmp_path / "g" / "guidance.pt"


def test_a_guidance_checkpoint_of_another_algorithm_is_refused(capsys, small_dataset_path, tmp_path,
                                                               idql_guidance):
    msg = one_line_error(capsys, *run_args(small_dataset_path, tmp_path / "p", "--schedule", "pretrained",
                                           "--guidance-ckpt", str(idql_guidance), "--policy-steps", "2",
                                           guidance="dql", policy="dql"))
    assert "--guidance dql" in msg and "'idql'" in msg and "--guidance idql" in msg
    assert not (tmp_path / "p").exists()


def test_a_pretrained_run_records_the_guidance_that_trained_it(capsys, small_dataset_path, tmp_path,
                                                               idql_guidance):
    from omegaconf import OmegaConf
    args = run_args(small_dataset_path, tmp_path / "p", "--schedule", "pretrained", "--guidance-ckpt",
                    str(idql_guidance), "--policy-steps", "2", policy="dql")
    args = [a for a in args if not a.startswith("guidance.")]  # the defaults for idql say 256x256 and batch 256
    rc, _, err = run_cli(capsys, *args)
    assert rc == 0, err
    ckpt = torch.load(idql_guidance, weights_only=True)
    cfg = OmegaConf.to_container(OmegaConf.load(tmp_path / "p" / "config.yaml"))
    assert cfg["guidance"] == {"name": "idql", **ckpt["config"]} and cfg["guidance"]["hidden"] == [32, 32]
    assert cfg["guidance_checkpoint"]["dataset"]["fingerprint"] == ckpt["dataset"]["fingerprint"]
    res = json.loads((tmp_path / "p" / "result.json").read_text())
    assert res["guidance"] == "idql" and res["guidance_checkpoint"]["config"] == ckpt["config"]
    assert res["guidance_checkpoint"]["dataset"]["fingerprint"] == ckpt["dataset"]["fingerprint"]
    assert res["guidance_checkpoint"]["steps"] == ckpt["steps"] == 3


def test_a_pretrained_run_resumes_with_the_guidance_it_recorded(small_dataset_path, tmp_path, idql_guidance,
                                                                monkeypatch):
    """A grid resumes with a config built again from the arm (its guidance section the defaults): the record
    keeps the checkpoint's guidance, and the resume is not refused for a guidance the overrides never built."""
    def cfg() -> Any:
        return modzoo.run_config("idql", "dql", TASK, TINY[2:], schedule="pretrained",
                                 guidance_ckpt=str(idql_guidance), policy_steps=12, save_every=4, eval_every=6,
                                 eval_episodes=1, device="cpu", dataset=str(small_dataset_path),
                                 out=str(tmp_path / "p"))
    interrupt_at_first_interim_eval(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        modzoo.train(cfg(), progress=False)
    monkeypatch.undo()
    recorded = (tmp_path / "p" / "config.yaml").read_text()
    modzoo.train(cfg(), progress=False, resume=True)
    assert (tmp_path / "p" / "config.yaml").read_text() == recorded
    res = json.loads((tmp_path / "p" / "result.json").read_text())
    assert res["policy_steps"] == 12 and res["guidance_checkpoint"]["config"]["hidden"] == [32, 32]


# ---- --resume ----------------------------------------------------------------------------------------------------
def test_resume_of_a_finished_run_changes_no_file_and_says_so(capsys, small_dataset_path, tmp_path):
    args = run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "3")
    assert run_cli(capsys, *args)[0] == 0
    before = snapshot(tmp_path / "r")
    rc, out, err = run_cli(capsys, *run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "3", "--resume"))
    assert rc == 0, err
    assert "finished" in out and "no file was changed" in out
    assert snapshot(tmp_path / "r") == before
    with pytest.raises(modzoo.errors.AlreadyFinished):  # the library says so too, as an exception
        modzoo.train(modzoo.run_config("idql", "idql", TASK, TINY, out=str(tmp_path / "r"), device="cpu",
                                       dataset=str(small_dataset_path)), progress=False, resume=True)
    assert snapshot(tmp_path / "r") == before


def test_resume_with_a_changed_override_is_refused_with_the_difference(capsys, small_dataset_path, tmp_path,
                                                                       monkeypatch):
    args = run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "12", "--eval-every", "6",
                    "run.save_every=4")
    resume_args = run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "12", "--eval-every", "6",
                           "--resume", "run.save_every=4")
    interrupt_at_first_interim_eval(monkeypatch)
    assert run_cli(capsys, *args)[0] == 130
    monkeypatch.undo()
    before = snapshot(tmp_path / "r")
    msg = one_line_error(capsys, *resume_args, "policy.lr=0.001")
    assert "policy.lr: 0.0003 -> 0.001" in msg
    assert snapshot(tmp_path / "r") == before
    rc, _, err = run_cli(capsys, *resume_args)  # the same settings resume
    assert rc == 0, err
    assert (tmp_path / "r" / "config.yaml").read_bytes() == before["config.yaml"][0]
    assert json.loads((tmp_path / "r" / "result.json").read_text())["policy_steps"] == 12


# ---- saving ------------------------------------------------------------------------------------------------------
def test_temp_files_of_an_interrupted_save_are_removed_at_the_next_start(small_dataset_path, tmp_path,
                                                                         monkeypatch):
    c = modzoo.run_config("idql", "idql", TASK, TINY, policy_steps=12, save_every=4, eval_every=6, eval_episodes=1,
                          device="cpu", dataset=str(small_dataset_path), out=str(tmp_path / "r"))
    interrupt_at_first_interim_eval(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        modzoo.train(c, progress=False)
    monkeypatch.undo()
    left = [tmp_path / "r" / ".train_state.pt.k1ll3d.tmp", tmp_path / "r" / ".policy.pt.x8y9.tmp"]
    for f in left:
        f.write_bytes(b"")  # what kill -9 during torch.save leaves
    modzoo.train(c, progress=False, resume=True)
    assert not any(f.exists() for f in left)
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(capsys, small_dataset_path,
                                                                             tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_fills_up(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        calls.append(f)
        if len(calls) > 1:  # the resume state at step 4 fits; the one at step 8 does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", disk_fills_up)
    msg = one_line_error(capsys, *run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "12",
                                           "run.save_every=4"))
    monkeypatch.undo()
    state = tmp_path / "r" / "train_state.pt"
    assert f"could not save {state}" in msg and os.strerror(errno.ENOSPC) in msg
    assert re.search(r"it needs about [0-9.]+ (KB|MB) in ", msg)
    assert torch.load(state, weights_only=True)["step"] == 4  # the previous checkpoint is still there, whole
    assert not list((tmp_path / "r").glob(".*.tmp"))


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_write_that_stops_part_way_in_torchs_writer_is_one_line(tmp_path):
    """The real failure, not a mock: with a file size limit, torch's zip writer stops part-way and raises its own
    RuntimeError (``unexpected pos``), as on a full disk; the message names the file and the space needed."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from modzoo.run.checkpoint import atomic_save
        from modzoo.errors import StorageError
        atomic_save({{"w": torch.zeros(100)}}, {str(tmp_path / "c.pt")!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            atomic_save({{"w": torch.zeros(1_000_000)}}, {str(tmp_path / "c.pt")!r})
        except StorageError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"could not save {tmp_path / 'c.pt'}" in proc.stdout and "needs about 3.8 MB" in proc.stdout
    assert torch.load(tmp_path / "c.pt", weights_only=True)["w"].shape == (100,)  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_too_little_free_space_is_one_warning_line_before_training_and_the_run_goes_on(capsys, small_dataset_path,
                                                                                     tmp_path, monkeypatch):
    real_usage, updates = shutil.disk_usage, []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=10_000))
    real_update = IQLGuidance.update

    def update(self: IQLGuidance, *a: Any, **k: Any) -> Any:
        if not updates:
            updates.append(capsys.readouterr().err)  # what was said before the first training step
        return real_update(self, *a, **k)
    monkeypatch.setattr(IQLGuidance, "update", update)
    rc, _, err = run_cli(capsys, *run_args(small_dataset_path, tmp_path / "r", "--policy-steps", "2"))
    assert rc == 0, err
    warned = [x for x in updates[0].splitlines() if x]
    assert len(warned) == 1 and warned[0].startswith(f"warning: run dir {tmp_path / 'r'}: its file system has "
                                                     f"9.8 KB free, but this run's checkpoints need about "), warned
    assert "warning" not in err and (tmp_path / "r" / "result.json").exists()


def test_the_free_space_estimate_is_the_size_of_the_checkpoints_a_run_writes(small_dataset_path, tmp_path):
    """From parameter counts before the first step, optimizer state included: the files as written, plus the temp
    copy of train_state.pt (the largest, both halves) a save writes beside it. And no warning with room to spare."""
    c = modzoo.run_config("idql", "idql", TASK, TINY, policy_steps=3, eval_episodes=0, device="cpu",
                          dataset=str(small_dataset_path), out=str(tmp_path / "r"), schedule="joint")
    run = training.setup_run(c, None, False, None)
    need = rundir.checkpoints_need(tmp_path / "fresh", run.guidance, run.policy)
    shutil.rmtree(tmp_path / "r")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        modzoo.train(c, progress=False)
    written = sum((tmp_path / "r" / f).stat().st_size for f in ("guidance.pt", "policy.pt"))
    # the two files, then train_state.pt holding both halves again, then the temp copy of its next save
    assert 0.98 < need / (3 * written) < 1.02


def test_the_policy_is_saved_before_the_final_evaluation(small_dataset_path, tmp_path, monkeypatch):
    real_eval = training.evaluate

    def crashes_in_the_final_eval(*a: Any, **k: Any) -> Any:
        if "progress" in k:  # _finish's call; interim evaluations pass no progress
            raise RuntimeError("the evaluation crashed")
        return real_eval(*a, **k)
    monkeypatch.setattr(training, "evaluate", crashes_in_the_final_eval)
    c = modzoo.run_config("idql", "idql", TASK, TINY, policy_steps=6, eval_episodes=1, device="cpu",
                          dataset=str(small_dataset_path), out=str(tmp_path / "r"))
    with pytest.raises(RuntimeError, match="crashed"):
        modzoo.train(c, progress=False)
    assert modzoo.load_checkpoint(tmp_path / "r" / "policy.pt").steps == 6  # no training was lost
    assert (tmp_path / "r" / "train_state.pt").exists() and not (tmp_path / "r" / "result.json").exists()


# ---- modzoo eval -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("trained, dims, env, env_dims", [
    ("bullet-walker2d-medium-v0", (22, 6), TASK, "15/3"),
    (TASK, (15, 3), "bullet-walker2d-medium-v0", "22/6"),
])
def test_eval_on_an_env_of_other_dims_names_both(capsys, tmp_path, trained, dims, env, env_dims):
    save_half(modzoo.make_policy("idql", *dims, hidden=16), tmp_path / "policy.pt", {"name": trained})
    msg = one_line_error(capsys, "eval", "--policy", str(tmp_path / "policy.pt"), "--env", env, "--episodes", "1",
                         "--no-progress", "--device", "cpu")
    assert (f"trained on {trained} (obs/act dims {dims[0]}/{dims[1]})" in msg
            and f"{env} has obs/act dims {env_dims}" in msg)


def test_a_policy_moved_out_of_its_run_dir_says_it_found_no_guidance(capsys, tmp_path):
    torch.manual_seed(0)
    save_half(modzoo.make_policy("idql", 15, 3, hidden=16, candidates=8), tmp_path / "moved" / "policy.pt",
              {"name": TASK})
    rc, out, err = run_cli(capsys, "eval", "--policy", str(tmp_path / "moved" / "policy.pt"), "--episodes", "1",
                           "--no-progress", "--device", "cpu", "--threads", "1")
    assert rc == 0, err
    assert "no guidance found" in err and "one sample per state" in err and "8 candidates" in err
    assert "normalized score:" in out


# ---- progress ----------------------------------------------------------------------------------------------------
def test_progress_off_a_terminal_is_a_few_plain_lines(capsys, small_dataset_path):
    c = modzoo.run_config("idql", "idql", TASK, TINY, policy_steps=40, eval_episodes=1, device="cpu",
                          dataset=str(small_dataset_path))
    modzoo.train(c, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("policy (joint):")]
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("policy (joint): 40/40")
    assert any(x.startswith(f"eval {TASK}: 1/1") for x in err.splitlines())


@pytest.mark.parametrize("extra,says", [
    (["policy.behaviour_steps=1.5"], "as a fraction of the policy phase must be in [0, 1)"),
    (["policy.behaviour_steps=4"], "leaves none of the 4 policy steps to the actor"),
    (["policy.sampler=eps_clip"], "discrete-chain sampler"),
])
def test_a_two_stage_policy_refuses_a_split_or_sampler_it_cannot_run(capsys, small_dataset_path, tmp_path, monkeypatch,
                                                                     extra, says):
    """An SRPO run whose behaviour stage would take the whole phase (the actor then never trains, and the untrained
    actor is evaluated), or whose continuous-time model is given a DDPM sampler, stops in one line, before work."""
    from modzoo.plugins.srpo import SRPOPolicy
    monkeypatch.setattr(SRPOPolicy, "update", lambda *a, **k: pytest.fail("trained before refusing"))
    argv = ["run", "--guidance", "idql", "--policy", "srpo", "--env", TASK, "--dataset", str(small_dataset_path),
            "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--policy-steps", "4",
            "policy.hidden=16", *extra]
    msg = one_line_error(capsys, *argv)
    assert says in msg and "policy." in msg
    assert not (tmp_path / "r").exists()
