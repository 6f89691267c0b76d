"""The CLI as a user drives it: list, run (originals and the mix), train-guidance, eval with a swapped guidance,
and one clear line for each kind of bad input."""
import subprocess
import sys

import pytest

from modzoo.cli import main

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64"]


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_both_halves_of_idql_and_dql(capsys):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0
    for line_start in ("│ guidance │ dql", "│ guidance │ idql", "│ policy   │ dql", "│ policy   │ idql"):
        assert line_start in out


@pytest.mark.parametrize("pair", [("idql", "idql"), ("dql", "dql"), ("idql", "dql")])
def test_run_trains_and_evaluates_each_pairing(capsys, small_dataset_path, tmp_path, pair):
    g, p = pair
    rc, out, err = run_cli(capsys, "run", "--guidance", g, "--policy", p, "--env", TASK, "--dataset",
                           str(small_dataset_path), "--policy-steps", "8", "--eval-episodes", "2", "--device", "cpu",
                           "--out", str(tmp_path / "r"), "--no-progress", *TINY)
    assert rc == 0, err
    assert "normalized score:" in out
    assert (tmp_path / "r" / "policy.pt").exists()


def test_saved_guidance_is_reused_at_training_and_at_inference(capsys, small_dataset_path, tmp_path):
    data = str(small_dataset_path)
    rc, out, err = run_cli(capsys, "train-guidance", "--guidance", "idql", "--env", TASK, "--dataset", data,
                           "--steps", "10", "--out", str(tmp_path / "g"), "--no-progress", "--device", "cpu", *TINY[:2])
    assert rc == 0, err
    gpt = tmp_path / "g" / "guidance.pt"
    assert gpt.exists() and not (tmp_path / "g" / "policy.pt").exists()
    rc, out, err = run_cli(capsys, "run", "--guidance", "idql", "--policy", "dql", "--env", TASK, "--dataset", data,
                           "--schedule", "pretrained", "--guidance-ckpt", str(gpt), "--policy-steps", "6",
                           "--eval-episodes", "1", "--out", str(tmp_path / "p"), "--no-progress", "--device", "cpu",
                           *TINY)
    assert rc == 0, err
    # a DQL policy trained with its own joint critic, then ranked at inference by the separately trained IQL critic
    rc, _, err = run_cli(capsys, "run", "--guidance", "dql", "--policy", "dql", "--env", TASK, "--dataset", data,
                         "--policy-steps", "6", "--eval-episodes", "0", "--out", str(tmp_path / "d"),
                         "--no-progress", "--device", "cpu", *TINY)
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "eval", "--policy", str(tmp_path / "d" / "policy.pt"), "--guidance", str(gpt),
                           "--episodes", "2", "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert "guidance: idql" in out and "normalized score:" in out
    # --selection picks the rule the guidance ranks by, whatever the policy was trained with
    import json

    import torch

    from modzoo.run.evaluation import evaluate, load_policy_and_guidance
    got = {}
    for rule in ("argmax", "expectile"):
        rc, out, err = run_cli(capsys, "eval", "--policy", str(tmp_path / "d" / "policy.pt"), "--guidance", str(gpt),
                               "--episodes", "2", "--seed", "3", "--selection", rule, "--json",
                               str(tmp_path / f"{rule}.json"), "--no-progress", "--device", "cpu", "--threads", "1")
        assert rc == 0, err
        got[rule] = json.loads((tmp_path / f"{rule}.json").read_text())["returns"]
    policy, guidance = load_policy_and_guidance(tmp_path / "d" / "policy.pt", gpt, "cpu")
    assert policy.cfg["selection"] == "softmax"  # DQL's own rule, overridden above
    torch.set_num_threads(1)
    policy.cfg["selection"] = "expectile"
    assert list(evaluate(policy, guidance, TASK, episodes=2, seed=3).returns) == got["expectile"]
    assert got["argmax"] != got["expectile"]
    # --temperature sets the softmax's t, as the same evaluation with policy.temperature changed gives
    rc, out, err = run_cli(capsys, "eval", "--policy", str(tmp_path / "d" / "policy.pt"), "--guidance", str(gpt),
                           "--episodes", "2", "--seed", "3", "--selection", "softmax", "--temperature", "0.001",
                           "--json", str(tmp_path / "t.json"), "--no-progress", "--device", "cpu", "--threads", "1")
    assert rc == 0, err
    policy.cfg.update(selection="softmax", temperature=0.001)
    cold = json.loads((tmp_path / "t.json").read_text())["returns"]
    assert list(evaluate(policy, guidance, TASK, episodes=2, seed=3).returns) == cold
    policy.cfg["temperature"] = 1000.0
    assert list(evaluate(policy, guidance, TASK, episodes=2, seed=3).returns) != cold
    pol = ["eval", "--policy", str(tmp_path / "d" / "policy.pt"), "--guidance", str(gpt), "--no-progress",
           "--device", "cpu"]
    assert "add --selection softmax" in _one_line_error(capsys, *pol, "--selection", "argmax", "--temperature", "3")
    for bad in ("0", "-1", "inf", "nan"):
        assert "--temperature must be a positive number" in _one_line_error(capsys, *pol, "--temperature", bad)


def _one_line_error(capsys, *argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = [x for x in err.strip().splitlines() if x]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_bad_inputs_get_one_clear_line(capsys, small_dataset_path, tmp_path):
    data = str(small_dataset_path)
    base = ["--env", TASK, "--dataset", data, "--policy-steps", "2", "--no-progress", "--device", "cpu"]
    msg = _one_line_error(capsys, "run", "--guidance", "iqll", "--policy", "dql", *base)
    assert "known guidances: dql, fql, idql, ifql, qgpo" in msg
    msg = _one_line_error(capsys, "run", "--guidance", "idql", "--policy", "dql", *base, "policy.etaa=1")
    assert "policy.etaa" in msg
    msg = _one_line_error(capsys, "run", "--guidance", "idql", "--policy", "dql", "--env", TASK, "--dataset",
                          str(tmp_path / "missing.hdf5"), "--no-progress")
    assert "missing.hdf5" in msg
    bad = tmp_path / "policy.pt"
    bad.write_bytes(b"garbage")
    msg = _one_line_error(capsys, "eval", "--policy", str(bad), "--no-progress")
    assert "corrupt" in msg
    msg = _one_line_error(capsys, "run", "--guidance", "dql", "--policy", "dql", *base, "--schedule",
                          "guidance-first", "--out", str(tmp_path / "refused"))
    assert "only train jointly" in msg
    assert not (tmp_path / "refused").exists()  # a refused run leaves nothing behind
    msg = _one_line_error(capsys, "run", "--guidance", "idql", "--policy", "dql", *base, "--schedule", "pretrained")
    assert "--guidance-ckpt" in msg


def explode_in_plugin_code(cfg):
    raise ValueError(f"hidden is {cfg['hidden']}, this plugin wants 3 layers")


def test_debug_shows_the_plugin_frame_of_a_constructor_error(capsys, tmp_path):
    """A plugin constructor's ValueError is one ConfigError line; with --debug the traceback reaches into the
    plugin's own code (the frame that raised), not only the builder that reworded it."""
    import traceback
    from types import SimpleNamespace

    import modzoo
    from modzoo.errors import ConfigError
    from modzoo.plugins.bc import CONFIG, DiffusionBCPolicy
    from modzoo.testing import synthetic_dataset

    class Picky(DiffusionBCPolicy):
        def __init__(self, obs_dim, act_dim, cfg):
            explode_in_plugin_code(cfg)

    modzoo.register_plugin(SimpleNamespace(modzoo_policies=modzoo.hookimpl(
        lambda: [modzoo.HalfSpec("picky", Picky, CONFIG, "policy")])), name="picky")
    argv = ["run", "--guidance", "idql", "--policy", "picky", "--env", TASK, "--dataset",
            str(synthetic_dataset(tmp_path / "d.hdf5", transitions=200)), "--device", "cpu", "--no-progress"]
    try:
        rc, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "a"))
        assert rc == 2 and err.count("\n") == 1 and "policy 'picky' rejected its config: hidden is" in err, err
        with pytest.raises(ConfigError) as info:
            main(["--debug", *argv, "--out", str(tmp_path / "b")])
        shown = "".join(traceback.format_exception(info.value))
        assert "explode_in_plugin_code" in shown and "this plugin wants 3 layers" in shown, shown
    finally:
        modzoo.unregister_plugin("picky")


def test_existing_run_is_never_overwritten(capsys, small_dataset_path, tmp_path):
    args = ["run", "--guidance", "idql", "--policy", "idql", "--env", TASK, "--dataset", str(small_dataset_path),
            "--policy-steps", "3", "--eval-episodes", "0", "--out", str(tmp_path / "r"), "--no-progress",
            "--device", "cpu", *TINY]
    assert run_cli(capsys, *args)[0] == 0
    before = (tmp_path / "r" / "policy.pt").read_bytes()
    msg = _one_line_error(capsys, *args)
    assert "--resume" in msg
    assert (tmp_path / "r" / "policy.pt").read_bytes() == before


def test_console_script_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "modzoo.cli", "run", "--guidance", "nope", "--policy", "dql",
                           "--env", TASK], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown guidance 'nope'")
    assert "Traceback" not in proc.stderr


def test_seeds_give_one_run_dir_each_equal_to_a_single_run(capsys, small_dataset_path, tmp_path):
    common = ["run", "--guidance", "idql", "--policy", "dql", "--env", TASK, "--dataset", str(small_dataset_path),
              "--policy-steps", "3", "--eval-episodes", "1", "--no-progress", "--device", "cpu", *TINY]
    assert run_cli(capsys, *common, "--seeds", "0,1", "--out", str(tmp_path / "multi"))[0] == 0
    assert run_cli(capsys, *common, "--seed", "1", "--out", str(tmp_path / "single"))[0] == 0
    import json
    multi = json.loads((tmp_path / "multi" / "seed1" / "result.json").read_text())
    single = json.loads((tmp_path / "single" / "result.json").read_text())
    assert multi["eval"]["returns"] == single["eval"]["returns"]
    assert (tmp_path / "multi" / "seed0" / "policy.pt").exists()
    assert "distinct" in _one_line_error(capsys, *common, "--seeds", "1,1", "--out", str(tmp_path / "x"))


def test_demo_resamples_for_idql_and_the_user_override_wins():
    """The demo's short run uses IDQL's implicit-policy resampling (argmax over a half-trained critic collapses
    it, README), any other policy keeps its own rule, and a user's override comes last and wins."""
    from modzoo.cli.main import demo_overrides
    from modzoo.run.training import run_config

    def selection(policy: str, user: list[str]) -> str:
        return run_config("idql", policy, "bullet-hopper-medium-v0", demo_overrides(policy, user)).policy.selection
    assert selection("idql", []) == "expectile"
    assert selection("idql", ["policy.selection=argmax"]) == "argmax"
    assert selection("dql", []) == "softmax"
    assert run_config("idql", "idql", "bullet-hopper-medium-v0").policy.selection == "argmax"  # library default


def test_the_commands_the_demo_prints_run_as_printed_on_the_data_it_made(capsys, tmp_path, monkeypatch):
    """After the demo a user types what it printed: each command must work on the demo's own file, with no full
    dataset anywhere, and a command that names only the task must not take the demo's file for D4RL's."""
    import shlex
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc, out, err = run_cli(capsys, "demo", "--transitions", "2000", "--guidance-steps", "3", "--policy-steps", "4",
                           "--eval-every", "2", "--eval-episodes", "1", "--out", str(tmp_path / "demo"),
                           "--no-progress", "--device", "cpu", "--threads", "1", *TINY, "policy.candidates=4")
    assert rc == 0, err
    data = tmp_path / "cache" / "modzoo" / f"{TASK}-demo-2000.hdf5"
    assert data.exists() and not (tmp_path / "d4rl").exists()
    assert "policy step 2: normalized score " in out and "the data's own episodes: normalized " in out
    commands = [line.strip() for line in out.splitlines() if line.startswith("  modzoo ")]
    assert [shlex.split(c)[1] for c in commands] == ["data", "eval", "run"]
    smaller = {"eval": ["--episodes", "1"],  # the same commands on a test's budget (the last flag wins)
               "run": ["--policy-steps", "2", "--eval-episodes", "1", "--out", str(tmp_path / "next"),
                       "--no-progress", *TINY[2:]]}
    for command in commands:
        argv = shlex.split(command)[1:]
        rc, out, err = run_cli(capsys, *argv, *smaller.get(argv[0], []))
        assert rc == 0, (command, err)
    assert (tmp_path / "next" / "policy.pt").exists()
    msg = _one_line_error(capsys, "data", "info", TASK)
    assert f"dataset {TASK} not found at " in msg and f"the small dataset `modzoo demo` made is {data}" in msg


def test_printed_commands_start_modzoo_as_the_user_did(tmp_path, monkeypatch):
    """After `bash .ci/install` modzoo is .venv/bin/modzoo, not on PATH: a printed `modzoo ...` would not run."""
    from modzoo.cli.main import _program
    exe = tmp_path / ".venv" / "bin" / "modzoo"
    exe.parent.mkdir(parents=True)
    exe.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [".venv/bin/modzoo", "demo"])
    assert _program() == ".venv/bin/modzoo"
    monkeypatch.setattr(sys, "argv", [str(exe), "demo"])
    assert _program() == ".venv/bin/modzoo"
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(exe.parent))
    assert _program() == "modzoo"
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/site-packages/pytest/__main__.py"])
    assert _program() == "modzoo"


def test_overrides_may_follow_a_flag_and_anything_else_is_still_refused(capsys) -> None:
    from modzoo.cli.main import build_parser, parse

    parser = build_parser()
    args = parse(parser, ["experiment", "gfdt-50k", "--status", "out=/tmp/x", "seeds=[0]"])
    assert args.status and args.name == "gfdt-50k" and args.overrides == ["out=/tmp/x", "seeds=[0]"]
    with pytest.raises(SystemExit):
        parse(parser, ["experiment", "gfdt-50k", "--status", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides takes none
        parse(parser, ["list", "x=1"])


NEW_POLICIES = {"qgpo": ["policy.T=3", "policy.support_steps=2", "policy.energy_batch_size=8"],
                "srpo": ["policy.T=3", "policy.actor_batch_size=16"],
                "dtql": ["policy.candidates=8"]}


def test_the_one_step_and_energy_guided_policies_train_on_a_saved_iql_critic(capsys, small_dataset_path, tmp_path):
    """QGPO, SRPO and DTQL each train on the frozen IQL critic of one train-guidance run (``--schedule pretrained``)
    through both of their stages, and their checkpoints evaluate with that critic through ``modzoo eval``."""
    data = str(small_dataset_path)
    rc, _, err = run_cli(capsys, "train-guidance", "--guidance", "idql", "--env", TASK, "--dataset", data,
                         "--steps", "10", "--out", str(tmp_path / "g"), "--no-progress", "--device", "cpu", *TINY[:2])
    assert rc == 0, err
    gpt = str(tmp_path / "g" / "guidance.pt")
    for name, extra in NEW_POLICIES.items():
        out_dir = tmp_path / name
        rc, out, err = run_cli(capsys, "run", "--guidance", "idql", "--policy", name, "--env", TASK, "--dataset",
                               data, "--schedule", "pretrained", "--guidance-ckpt", gpt, "--policy-steps", "6",
                               "--eval-episodes", "1", "--out", str(out_dir), "--no-progress", "--device", "cpu",
                               *TINY, *extra)
        assert rc == 0, f"{name}: {err}"
        assert "normalized score:" in out
        metrics = (out_dir / "metrics.jsonl").read_text()
        second = {"qgpo": "cep_loss", "srpo": "actor_loss", "dtql": "actor_loss"}[name]
        assert second in metrics, f"{name} never reached its second stage"
        if name in ("qgpo", "srpo"):  # the split, a fraction in the YAML, is recorded as the step count that ran
            import yaml
            saved = yaml.safe_load((out_dir / "config.yaml").read_text())["policy"]["behaviour_steps"]
            assert saved == {"qgpo": 2, "srpo": 4}[name]
        rc, out, err = run_cli(capsys, "eval", "--policy", str(out_dir / "policy.pt"), "--guidance", gpt,
                               "--episodes", "1", "--no-progress", "--device", "cpu")
        assert rc == 0, f"{name}: {err}"
        assert "guidance: idql" in out and "normalized score:" in out
