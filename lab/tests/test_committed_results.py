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
