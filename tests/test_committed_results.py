"""The committed grid summaries stay valid under the current code.

A report leaves out every summary whose saved config differs from what its grid would run now. A changed
default, a renamed key or a preset edit therefore silently drops finished runs (hours each) from
docs/results*.md: this test turns that into a failure that names the setting, before the change lands.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from modzoo.grid.plan import load_experiment
from modzoo.grid.report import load_summaries, split_stale

ROOT = Path(__file__).resolve().parents[1]
GRIDS = sorted(p for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_no_committed_summary_is_stale_under_the_current_code(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the experiments name their summaries relative to the repository
    exp = load_experiment(str(path))
    if not Path(str(exp.get("summaries", ""))).is_dir():
        pytest.skip(f"{path.name}: no committed summaries")
    kept, stale = split_stale(exp, load_summaries(exp.summaries))
    assert not stale, (f"{path.name}: {len(stale)} committed run summaries no longer match the config their grid "
                       f"runs now, so the report would drop them; restore the setting, or record a new key's old "
                       f"value in modzoo.run.config.ADDED_KEYS: " + "; ".join(stale[:5]))
    assert kept, f"{path.name}: its summaries directory holds no finished run"
