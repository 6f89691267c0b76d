"""A broken experiment YAML is one line naming the file, the key and the fix, before any run dir is made."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modzoo.errors import ConfigError, DatasetError
from modzoo.run.training import run_config
from modzoo_lab.grid.check import read_experiment
from modzoo_lab.grid.plan import load_experiment
from modzoo_lab.grid.runner import run_experiment

TASK = "bullet-hopper-medium-v0"


def _exp(tmp_path: Path, dataset: str | None = None) -> dict:
    return {"name": "chk", "out": str(tmp_path / "runs"), "summaries": str(tmp_path / "summaries"),
            "report": str(tmp_path / "report.md"), "backend": "local", "workers": 1, "isolate_runs": False,
            "tasks": [TASK], "seeds": [0, 1],
            "budget": {"guidance_steps": 4, "policy_steps": 4, "eval_episodes": 1, "threads": 1, "device": "cpu",
                       **({"dataset": dataset} if dataset else {})},
            "arms": {"idql-joint": {"guidance": "idql", "policy": "idql", "schedule": "joint",
                                    "overrides": ["policy.candidates=4", "policy.hidden=16"]},
                     "idql-gf": {"guidance": "idql", "policy": "idql", "schedule": "guidance-first",
                                 "overrides": ["policy.candidates=4", "policy.hidden=16"]}},
            "swaps": {"other_seed": ["idql-joint"]}, "gfdt_pairs": {"idql-gf": "idql-joint"}}


def _write(tmp_path: Path, exp: dict) -> Path:
    path = tmp_path / "chk.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_the_valid_experiment_loads(tmp_path):
    assert load_experiment(str(_write(tmp_path, _exp(tmp_path)))).name == "chk"
    # a GFDT arm paired with the joint arm of the grid it is shown beside, written GRID/ARM
    exp = _exp(tmp_path)
    exp.update(gfdt_pairs={"idql-gf": "gfdt-50k/dql-joint"}, beside={"experiment": "gfdt-50k"})
    assert load_experiment(str(_write(tmp_path, exp))).gfdt_pairs["idql-gf"] == "gfdt-50k/dql-joint"


def test_a_path_that_is_no_experiment_file_says_so_not_unknown_name(tmp_path):
    """A typo in a path used to be reported as an unknown experiment name, listing the shipped ones."""
    other = tmp_path / "notes.txt"
    other.write_text("tasks: []\n")
    for arg, expected in ((str(other), "is not an experiment file: give a .yaml or .yml file"),
                          (str(tmp_path / "gone.yaml"), f"no experiment file {tmp_path / 'gone.yaml'}: check the path"),
                          (str(tmp_path / "gone"), "no experiment file"),
                          ("no-such-grid", "unknown experiment 'no-such-grid'; known: ")):
        with pytest.raises(ConfigError) as e:
            load_experiment(arg)
        assert expected in _one_line(e), arg
    assert "gfdt-50k, " in _one_line(e)  # the name's error lists the shipped experiments


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntasks: [a,\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(str(path))
    msg = _one_line(e)
    assert str(path) in msg and "not valid YAML at line 3" in msg


def test_a_number_in_e_notation_stays_a_number(tmp_path):
    """The file is read by OmegaConf's YAML loader, as before the check: plain PyYAML reads 2.5e-1 as a string."""
    exp = _exp(tmp_path)
    exp["ray"] = {"gpus_per_run": "GPUS"}
    path = _write(tmp_path, exp)
    path.write_text(path.read_text().replace("GPUS", "2.5e-1"))
    assert read_experiment(path).ray.gpus_per_run == 0.25


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="holds a ListConfig, not a mapping"):
        load_experiment(str(path))


@pytest.mark.parametrize("edit, expected", [
    (lambda e: e.update(seed=e.pop("seeds")), "unknown key 'seed' (did you mean 'seeds'?)"),
    (lambda e: e.pop("arms"), "missing 'arms'"),
    (lambda e: e.update(tasks=["bullet-hoper-medium-v0"]), "tasks: unknown task or robot 'bullet-hoper-medium-v0'"),
    (lambda e: e.update(seeds=[0, 0]), "seeds: 0 is listed twice"),
    (lambda e: e.update(seeds=["0"]), "'seeds' must be a list of non-negative integers"),
    (lambda e: e["arms"]["idql-gf"].update(overide=["policy.hidden=8"]),
     "arms.idql-gf: unknown key 'overide' (did you mean 'overrides'?)"),
    (lambda e: e["arms"]["idql-gf"].pop("policy"), "arms.idql-gf: 'policy' must name a plugin"),
    (lambda e: e["arms"]["idql-gf"].update(overrides="policy.hidden=8"), "arms.idql-gf.overrides must be a list"),
    (lambda e: e["swaps"].update(other_seeds=["idql-gf"]), "swaps: unknown key 'other_seeds'"),
    (lambda e: e.update(gfdt_pairs={"idql-gf": "idql-jont"}), "gfdt_pairs: 'idql-jont' is not an arm"),
    (lambda e: e.update(gfdt_pairs={"idql-gf": "gfdt-50k/dql-joint"}),
     "gfdt_pairs: 'gfdt-50k/dql-joint' names another grid's arm; only the `beside` experiment's can be paired, as "
     "NAME/ARM with beside: {experiment: NAME}"),
    (lambda e: e.update(gfdt_pairs={"idql-gf": "gfdt-5k/dql-joint"}, beside={"experiment": "gfdt-50k"}),
     "as 'gfdt-50k/ARM'"),
    (lambda e: e.update(reference={"dir": "x", "arm": "dql-joint"}), "reference.arm: 'dql-joint' is not an arm"),
    (lambda e: e.update(beside={"experiment": "no-such-grid"}), "beside: unknown experiment 'no-such-grid'"),
    (lambda e: e.update(beside={"experiment": "gfdt-50k", "at_steps": "yes"}), "'beside' must be {experiment: NAME, "
                                                                           "at_steps: true|false}"),
    (lambda e: e.update(beside={"experiment": "gfdt-50k", "at_step": True}), "'beside' must be {experiment: NAME, "),
    (lambda e: e.update(workers=0), "workers: 0 must be a whole number"),
])
def test_a_bad_key_or_shape_is_one_line_naming_it(tmp_path, edit, expected):
    exp = _exp(tmp_path)
    edit(exp)
    with pytest.raises(ConfigError) as e:
        load_experiment(str(_write(tmp_path, exp)))
    assert expected in _one_line(e)


def test_an_arm_whose_config_cannot_build_is_refused_before_any_run_starts(tmp_path, small_dataset_path):
    exp = _exp(tmp_path, dataset=str(small_dataset_path))
    exp["arms"]["idql-gf"]["overrides"].append("policy.nokey=3")
    with pytest.raises(ConfigError) as e:
        run_experiment(str(_write(tmp_path, exp)), log=lambda m: None)
    msg = _one_line(e)
    assert f"arm 'idql-gf' on {TASK}: unknown config key 'policy.nokey'" in msg
    assert not (tmp_path / "runs").exists()  # the valid arm did not train either


def test_a_misspelt_budget_key_is_refused_not_dropped(tmp_path):
    """``budget: {polcy_steps: N}`` used to be recorded in config.yaml while the run trained the default 1000."""
    exp = _exp(tmp_path)
    exp["budget"]["polcy_steps"] = exp["budget"].pop("policy_steps")
    with pytest.raises(ConfigError, match="unknown config key 'run.polcy_steps'; keys in 'run': .*policy_steps"):
        load_experiment(str(_write(tmp_path, exp)))
    with pytest.raises(ConfigError, match="run.polcy_steps"):
        run_config("idql", "idql", TASK, polcy_steps=50000)
    assert run_config("idql", "idql", TASK, policy_steps=7).run.policy_steps == 7


def test_a_missing_dataset_stops_the_grid_before_its_first_run(tmp_path):
    exp = _exp(tmp_path, dataset=str(tmp_path / "nope.hdf5"))
    with pytest.raises(DatasetError) as e:
        run_experiment(str(_write(tmp_path, exp)), log=lambda m: None)
    msg = _one_line(e)
    assert "nope.hdf5 does not exist" in msg and "no run was started" in msg
    assert not (tmp_path / "runs").exists()


def test_status_and_report_need_no_dataset(tmp_path):
    """The dataset check is for training only: a report regenerates on a machine without the data."""
    exp = _exp(tmp_path, dataset=str(tmp_path / "nope.hdf5"))
    summary = run_experiment(str(_write(tmp_path, exp)), log=lambda m: None, train=False)
    assert summary["failed"] == 0 and (tmp_path / "report.md").exists()


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_is_refused_before_anything_runs(capsys, tmp_path, workers):
    """--workers 0 used to fall back to the experiment's own count, and -1 ran the grid on one worker."""
    from modzoo.cli.main import main

    path = _write(tmp_path, _exp(tmp_path))
    assert main(["experiment", str(path), "--workers", workers]) == 2
    assert f"--workers {workers}: give at least 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
