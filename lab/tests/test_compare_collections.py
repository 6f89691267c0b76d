"""lab/benchmarks/compare_collections.py lines up the same runs of two collections seed by seed."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_collections.py"
WALKER = "bullet-walker2d-medium-v0"


def summary(root: Path, task: str, arm: str, seed: int, score: float, lengths: list[int],
            unranked: float | None = None) -> None:
    d = root / task / arm / f"seed{seed}"
    d.mkdir(parents=True)
    episodes = [score] * len(lengths)
    (d / "result.json").write_text(json.dumps(
        {"normalized_score": score, "eval": {"normalized": episodes, "lengths": lengths}}))
    (d / "curve.csv").write_text(f"step,normalized_mean\n10,{score / 2}\n20,{score}\n")
    if unranked is not None:
        (d / "swaps.json").write_text(json.dumps({"selection=none": {"normalized": [unranked, unranked]}}))


def run(*args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_rows_pair_the_same_seed_and_the_arm_line_averages_the_differences(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    summary(first, WALKER, "dql-joint", 0, 70.0, [1000, 80], unranked=90.0)
    summary(first, WALKER, "dql-joint", 1, 50.0, [1000, 1000])
    summary(first, WALKER, "dql-joint", 2, 60.0, [1000, 1000])  # not trained again yet
    summary(second, WALKER, "dql-joint", 0, 80.0, [1000, 1000])
    summary(second, WALKER, "dql-joint", 1, 56.0, [60, 1000])
    summary(second, "bullet-hopper-medium-v0", "dql-joint", 0, 100.0, [1000])  # trained once: not one-sided
    proc = run(first, second)
    assert proc.returncode == 0, proc.stderr
    runs_table, arms_table = proc.stdout.split("\n\n")[:2]

    def cells(table: str, seed_or_count: str) -> list[str]:
        [line] = [ln for ln in table.splitlines() if ln.startswith(f"| {WALKER} | dql-joint | {seed_or_count} |")]
        return [c.strip() for c in line.strip("|").split("|")]

    seed0 = cells(runs_table, "0")
    assert seed0[3:10] == ["70.0", "80.0", "10.0", "90.0", "-", "1/2", "0/2"]
    assert seed0[10:] == ["35.0 / 70.0", "40.0 / 80.0"]
    assert cells(runs_table, "1")[3:6] == ["50.0", "56.0", "6.0"]
    assert "| 2 |" not in runs_table  # seed 2 was trained on one collection only
    # seeds 0 and 1 in both: the mean of +10 and +6; the spread over the 3 first seeds and the 2 second ones
    assert cells(arms_table, "2")[3:] == ["8.0", "10.0", f"{(2 * 12.0 ** 2) ** 0.5:.1f}"]
    assert "1 runs are in one collection only: " + f"{WALKER}/dql-joint/seed2 (first)." in proc.stdout
    assert "hopper" not in proc.stdout


def test_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    proc = run(tmp_path / "nowhere", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nowhere'} is not a directory of run summaries (<task>/<arm>/seed<k>/result.json)"]
