"""lab/benchmarks/flow_pilot_cost.py, whose numbers size the hopper pilot (flow-alpha.yaml, flow-pilot.yaml), still
trains and evaluates each arm it prices, so it cannot rot before the pilot's budget is checked again."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "flow_pilot_cost.py"


def test_it_prices_a_joint_and_a_guidance_first_arm(small_dataset_path, tmp_path):
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(SCRIPT), "--dataset", str(small_dataset_path), "--arms", "fql-joint,fql-gf-iql",
                    "--steps", "2", "--episodes", "1", "--json", str(out)], capture_output=True, text=True, check=True)
    rows = {r["arm"]: r for r in json.loads(out.read_text())}
    assert set(rows["fql-joint"]["phases"]) == {"joint"}
    assert set(rows["fql-gf-iql"]["phases"]) == {"guidance", "policy"}
    for r in rows.values():
        assert r["eval"]["env_steps"] >= 1 and r["eval"]["cpu_s_per_1000_step_episode"] > 0
