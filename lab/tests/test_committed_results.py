"""The committed grid summaries stay valid under the current code, and the committed reports are theirs.

A report leaves out every summary whose saved config differs from what its grid would run now. A changed
default, a renamed key or a preset edit therefore silently drops finished runs (hours each) from
docs/results*.md: this test turns that into a failure that names the setting, before the change lands.

A report is generated, never typed, but only when someone regenerates it: a change to the report code, to a
findings file or to the summaries can leave docs/results*.md saying something the committed data no longer does.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from modzoo_lab.grid.plan import load_experiment
from modzoo_lab.grid.report import load_summaries, report_text, split_stale

ROOT = Path(__file__).resolve().parents[2]
GRIDS = sorted(p for p in (ROOT / "lab" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_no_committed_summary_is_stale_and_the_committed_report_is_regenerated(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # the experiments name their summaries relative to the repository
    exp = load_experiment(str(path))
    if not Path(str(exp.get("summaries", ""))).is_dir():
        pytest.skip(f"{path.name}: no committed summaries")
    kept, stale = split_stale(exp, load_summaries(exp.summaries))
    assert not stale, (f"{path.name}: {len(stale)} committed run summaries no longer match the config their grid "
                       f"runs now, so the report would drop them; restore the setting, or record a new key's old "
                       f"value in modzoo.run.config.ADDED_KEYS: " + "; ".join(stale[:5]))
    assert kept, f"{path.name}: its summaries directory holds no finished run"
    report = Path(str(exp.report))
    img_rel = os.path.relpath(report.parent / "results" / str(exp.name), report.parent)
    text = report_text(exp, tmp_path, img_rel) + "\n"  # as write_report writes it, plots aside
    assert report.is_file() and report.read_text() == text, (
        f"{report} is not what `modzoo experiment {exp.name} --report-only` writes from the committed summaries "
        "and findings under the current code: regenerate it and commit it")


# The README's results tables quote the reports' final scores: which report each of its rows comes from.
README_ROWS = {"idql-joint": "docs/results-50k.md", "idql-gf": "docs/results-50k.md",
               "dql-joint": "docs/results-50k.md", "dql-gf-iql": "docs/results-50k.md",
               "dql-gf-sarsa": "docs/results-50k-sarsa.md",
               "fql-joint": "docs/results-flow-pilot.md", "fql-gf-iql": "docs/results-flow-pilot.md"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def _table(lines: list[str], head: int) -> list[list[str]]:
    rows = []
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    return rows


def _final_scores(report: Path) -> dict[str, list[str]]:
    """Each arm's "mean ± std" per task: a several-task report's "All tasks" table (the seed counts in brackets
    dropped), or a one-task report's score table (its across-seeds mean and std)."""
    lines = report.read_text().splitlines()
    if "## All tasks" in lines:
        start = lines.index("## All tasks")
        head = next(i for i in range(start, len(lines)) if lines[i].startswith("| arm |"))
        return {arm: [c.split(" (")[0] for c in cells] for arm, *cells in _table(lines, head)}
    head = next(i for i, line in enumerate(lines) if line.startswith("| arm | guidance | policy | schedule |"))
    return {r[0]: [f"{r[5]} ± {r[6]}"] for r in _table(lines, head)}


def test_the_readmes_results_table_quotes_the_committed_reports():
    """A regenerated report (new runs collected, a stale run dropped) must not leave the README quoting old numbers."""
    readme = (ROOT / "README.md").read_text().splitlines()
    quoted = {}
    for line in readme:
        if line.startswith("| `") and "`:" in line:
            arm = line.split("`")[1]
            if arm in README_ROWS:
                quoted[arm] = _cells(line)[1:]
    assert set(quoted) == set(README_ROWS), f"README rows missing: {sorted(set(README_ROWS) - set(quoted))}"
    for arm, doc in README_ROWS.items():
        assert quoted[arm] == _final_scores(ROOT / doc)[arm], (
            f"README's `{arm}` row is not {doc}'s: copy the report's cells into README.md")
