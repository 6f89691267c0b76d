"""lab/benchmarks/selection_peak.py replays a run's final evaluation exactly, so its weights describe that
evaluation."""
import json
import subprocess
import sys
from pathlib import Path

import modzoo

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[32,32]", "guidance.batch_size=64", "policy.hidden=32", "policy.batch_size=64",
        "policy.selection=softmax", "policy.temperature=3.0", "policy.candidates=8"]
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "selection_peak.py"


def test_the_replay_is_the_runs_final_evaluation_and_every_guidance_gets_rows(small_dataset_path, tmp_path):
    out = tmp_path / "run"
    cfg = modzoo.run_config("dql", "dql", TASK, TINY, policy_steps=6, eval_episodes=3, device="cpu",
                            dataset=str(small_dataset_path), out=str(out), schedule="joint")
    modzoo.train(cfg, progress=False)
    lengths = json.loads((out / "result.json").read_text())["eval"]["lengths"]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--also", str(out / "guidance.pt"),
                           "--early", "5"], capture_output=True, text=True, check=True)
    text = proc.stdout
    assert "the replay matches the run's final evaluation episode for episode" in text
    assert f"fell {sum(n < 1000 for n in lengths)}/3" in text
    # the same critic passed again through --also weights the same candidates the same way
    own = [r.split()[2:] for r in text.splitlines() if r.startswith("own (dql)")]
    also = [r.split()[2:] for r in text.splitlines() if r.startswith(f"{tmp_path.name}/run (dql)")]
    assert own and own == also
    ess = [float(r[-4]) for r in own]
    assert all(1.0 <= e <= 8.0 for e in ess)  # between a certain choice and a uniform one over 8 candidates
