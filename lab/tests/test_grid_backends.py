"""A grid of 4 tiny runs on the local process pool and on a local Ray with 2 CPUs: identical results."""
import json

import pytest
import yaml

from modzoo_lab.grid.runner import run_experiment

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[16,16]", "policy.hidden=16", "policy.batch_size=32", "guidance.batch_size=32",
        "policy.candidates=4"]


def write_exp(tmp_path, data, name, backend, workers=2):
    exp = {"name": name, "out": str(tmp_path / name / "runs"), "summaries": str(tmp_path / name / "sum"),
           "report": str(tmp_path / name / "results.md"), "backend": backend, "workers": workers, "tasks": [TASK],
           "seeds": [0, 1], "ray": {"num_cpus": 2, "cpus_per_run": 1, "gpus_per_run": 0},
           "budget": {"guidance_steps": 3, "policy_steps": 3, "eval_episodes": 2, "threads": 1, "device": "cpu",
                      "dataset": str(data)},
           "arms": {"idql": {"guidance": "idql", "policy": "idql", "schedule": "joint", "overrides": TINY},
                    "mix": {"guidance": "idql", "policy": "dql", "schedule": "guidance-first", "overrides": TINY}}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(exp))
    return p


def scores(tmp_path, name):
    root = tmp_path / name / "runs" / TASK
    return {f"{a}/{s}": json.loads((root / a / f"seed{s}" / "result.json").read_text())["eval"]["returns"]
            for a in ("idql", "mix") for s in (0, 1)}


def test_local_pool_and_ray_agree(tmp_path, small_dataset_path):
    ray = pytest.importorskip("ray")
    local = run_experiment(str(write_exp(tmp_path, small_dataset_path, "local", "local")), log=lambda m: None,
                           report=False)
    assert local["failed"] == 0 and local["runs"] == 4
    try:
        remote = run_experiment(str(write_exp(tmp_path, small_dataset_path, "onray", "ray")), log=lambda m: None,
                                report=False)
    finally:
        ray.shutdown()
    assert remote["failed"] == 0, remote
    a, b = scores(tmp_path, "local"), scores(tmp_path, "onray")
    assert a == b  # the same seeds give the same episodes, whichever backend ran them
    assert a["idql/0"] != a["idql/1"] or a["mix/0"] != a["mix/1"]
    # isolate_runs (the default): every run had a process of its own, on either backend
    import os
    for res in (local, remote):
        pids = [r["pid"] for r in res["results"] if r["status"] == "ok"]
        assert len(pids) == 4 and len(set(pids)) == 4 and os.getpid() not in pids


def test_failed_run_is_retried_once_and_reported(tmp_path, small_dataset_path):
    p = write_exp(tmp_path, small_dataset_path, "bad", "local", workers=1)
    exp = yaml.safe_load(p.read_text())
    # a file that is there but is no HDF5: the grid's checks before it starts see only that it exists, so each
    # run fails in its worker when it reads the data (a bad config would be refused before any run started)
    corrupt = tmp_path / "corrupt.hdf5"
    corrupt.write_bytes(b"not an hdf5 file")
    exp["budget"]["dataset"] = str(corrupt)
    exp["arms"].pop("mix")
    p.write_text(yaml.safe_dump(exp))
    logs = []
    out = run_experiment(str(p), log=logs.append, report=False)
    assert out["failed"] == 2
    assert any("retrying 2 failed job(s) once" in m for m in logs)
    assert sum(m.startswith("FAILED") for m in logs) == 2


def test_a_sigterm_to_the_grid_stops_its_workers(tmp_path, small_dataset_path):
    """`kill` of the grid process used to end it alone: its pool's workers trained on as orphans, holding their
    runs' LOCKs against the next grid. Now they stop with it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from modzoo_lab.grid.runner import lock_holder

    p = write_exp(tmp_path, small_dataset_path, "killed", "local", workers=2)
    exp = yaml.safe_load(p.read_text())
    exp["budget"].update(guidance_steps=10**6, policy_steps=10**6)  # still training when the signal comes
    p.write_text(yaml.safe_dump(exp))
    runs = tmp_path / "killed" / "runs" / TASK
    grid = subprocess.Popen([sys.executable, "-c", "import sys; from modzoo.cli import main; sys.exit(main())",
                             "experiment", str(p)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            workers = [pid for d in runs.glob("*/seed*") if (pid := lock_holder(d))]
            if len(workers) == 2:
                break
            time.sleep(0.5)
        assert len(workers) == 2, "the two runs never started"
        grid.send_signal(signal.SIGTERM)
        assert grid.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 30
        while time.time() < deadline and any(lock_holder(d) for d in runs.glob("*/seed*")):
            time.sleep(0.2)
        for pid in workers:  # gone, not training on
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if grid.poll() is None:
            grid.kill()
        for d in runs.glob("*/seed*"):
            if (pid := lock_holder(Path(d))):
                os.kill(pid, signal.SIGKILL)
