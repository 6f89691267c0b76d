"""lab/benchmarks/reference_idql.py's pure-python glue (no JAX needed): modzoo's transitions in d4rl's
qlearning_dataset form, the JSON the report reads, and the report's second reference section. One end-to-end check
runs only where the reference's venv is this interpreter (jax and an IDQL checkout present)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_idql.py"
REF_DIR = Path(os.environ.get("IDQL_REFERENCE_DIR", "/work/ref/idql"))


def _module():
    spec = importlib.util.spec_from_file_location("reference_idql", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_script_imports_without_jax_and_feeds_d4rl_shaped_float32_arrays():
    mod = _module()
    n = 5
    ds = SimpleNamespace(observations=np.arange(n * 3, dtype=np.float64).reshape(n, 3),
                         actions=np.ones((n, 2)), next_observations=np.zeros((n, 3)),
                         rewards=np.arange(n, dtype=np.float64).reshape(n, 1), terminals=np.array([0, 0, 1, 0, 0]))
    arrays = mod.qlearning_arrays(ds)
    assert set(arrays) == {"observations", "actions", "next_observations", "rewards", "terminals"}
    assert all(v.dtype == np.float32 and len(v) == n for v in arrays.values())
    assert arrays["rewards"].shape == (n,) and arrays["terminals"].tolist() == [0, 0, 1, 0, 0]


def test_the_json_has_the_diffusion_ql_references_shape():
    mod = _module()
    ev = SimpleNamespace(normalized_mean=51.5, normalized_std=2.0, mean=1000.0, lengths=[900, 1100])
    pt = mod.curve_point(10000, ev, 3)
    assert pt == {"step": 10000, "normalized_mean": 51.5, "normalized_std": 2.0, "return_mean": 1000.0,
                  "mean_length": 1000.0, "episodes": 3}
    out = mod.result_json("t", 0, 50000, 3, 20, [pt], "abc", {"jax": "0.4.21"}, "7582571")
    for key in ("task", "seed", "steps", "episodes", "curve", "dataset"):  # what report._reference_check reads
        assert key in out
    assert out["dataset"] == {"fingerprint": "abc"} and out["reference"] == "idql" and out["final_episodes"] == 20
    assert out["config"]["critic_hyperparam"] == 0.7 and out["config"]["N"] == 64 and out["config"]["T"] == 5
    json.dumps(out)


def test_the_report_shows_the_idql_reference_beside_the_diffusion_ql_one(tmp_path):
    from omegaconf import OmegaConf

    from modzoo_lab.grid.check import check_structure
    from modzoo_lab.grid.report import RunSummary, _reference_check
    mod = _module()
    dql, idql = tmp_path / "dql", tmp_path / "idql"
    dql.mkdir()
    idql.mkdir()
    (dql / "t.json").write_text(json.dumps({"task": "t", "seed": 0, "episodes": 10, "curve": [
        {"step": 20, "normalized_mean": 8.9, "normalized_std": 3.6, "mean_length": 105.8}]}))
    ev = SimpleNamespace(normalized_mean=40.0, normalized_std=1.0, mean=1.0, lengths=[500])
    curve = [mod.curve_point(10, ev, 3), mod.curve_point(20, ev, 20)]
    (idql / "t-seed0.json").write_text(json.dumps(mod.result_json("t", 0, 20, 3, 20, curve, "f", {}, None)))
    exp = OmegaConf.create({"budget": {"policy_steps": 20, "eval_every": 10}, "tasks": ["t"],
                            "reference": [{"dir": str(dql), "arm": "dql-joint"},
                                          {"dir": str(idql), "arm": "idql-joint", "code": "idql"}],
                            "arms": {"dql-joint": {}, "idql-joint": {"preset": "gfdt-authors"}}})
    runs = [RunSummary("t", "dql-joint", 0, {}, [(20, 7.0)]),
            RunSummary("t", "idql-joint", 0, {}, [(10, 30.0), (20, 45.5)])]
    lines = _reference_check(exp, runs)
    text = " ".join(lines)
    assert "## Reference check: the authors' Diffusion-QL on the same data" in lines
    assert "## Reference check: the authors' IDQL on the same data" in lines
    assert "| t | 0 | 20 | 8.9 ± 3.6 | 106 | 7.0 |" in lines  # the Diffusion-QL section is as before
    assert "| t | 0 | 10 | 40.0 ± 1.0 | 500 | 30.0 |" in lines
    assert "| t | 0 | 20 (20) | 40.0 ± 1.0 | 500 | 45.5 |" in lines  # the final evaluation's episodes, named
    assert "python lab/benchmarks/reference_idql.py" in text and "--episodes 3 --final-episodes 20 " in text
    assert "`idql-joint` run of the same seed under preset gfdt-authors" in text
    # the checker takes a list and a code, and refuses an unknown code
    base = {"name": "x", "out": "o", "summaries": "s", "report": "r", "tasks": ["bullet-hopper-medium-v0"],
            "seeds": [0], "budget": {"policy_steps": 20},
            "arms": {"idql-joint": {"guidance": "idql", "policy": "idql"}}}
    check_structure(OmegaConf.create({**base, "reference": [{"dir": "d", "arm": "idql-joint", "code": "idql"}]}), "x")
    with pytest.raises(Exception, match="reference.code"):
        check_structure(OmegaConf.create({**base, "reference": {"dir": "d", "arm": "idql-joint", "code": "x"}}), "x")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("jax", "flax", "optax", "gym"))
                    or not (REF_DIR / "jaxrl5").is_dir(),
                    reason="needs the reference's venv (jax, flax) and an IDQL checkout (docs/lab/runbook.md)")
def test_a_few_steps_resume_to_the_same_numbers(tmp_path):
    data = tmp_path / "h.hdf5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(Path(sys.executable).parent / "modzoo"), "data", "collect", "bullet-hopper-medium-v0",
                    "--transitions", "2000", "--out", str(data)], check=True, env=env, capture_output=True)
    base = [sys.executable, str(SCRIPT), "--reference-dir", str(REF_DIR), "--task", "bullet-hopper-medium-v0",
            "--dataset", str(data), "--eval-every", "2", "--episodes", "1", "--seed", "0"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    subprocess.run(base + ["--steps", "4", "--json", f"{whole}.json"], check=True, env=env, capture_output=True)
    subprocess.run(base + ["--steps", "2", "--state", f"{part}.state"], check=True, env=env, capture_output=True)
    subprocess.run(base + ["--steps", "4", "--state", f"{part}.state", "--json", f"{part}.json"], check=True,
                   env=env, capture_output=True)
    curves = [json.loads(Path(f"{p}.json").read_text())["curve"] for p in (whole, part)]
    assert curves[0] == curves[1]
