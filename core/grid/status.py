"""Where a grid stands, read from its run dirs without touching them (``modzoo experiment NAME --status``).

A grid that runs for many hours across sessions is looked at far more often than it is started: which runs have
finished and with what score, which one a worker is training now and at which step, which were interrupted and
will resume, which failed or went stale.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .plan import RunSpec, config_drift, is_finished, plan, swap_jobs
from .runner import lock_holder

STATES = ("finished", "running", "interrupted", "failed", "stale", "not started")


def _last_record(run_dir: Path) -> dict[str, Any] | None:
    """The last training record of ``metrics.jsonl`` (its phase and step), None before the first."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("phase") in ("guidance", "policy"):
                last = rec
    return last


def run_status(s: RunSpec) -> dict[str, Any]:
    """``{"key", "state", "detail"}`` of one run: its state (one of :data:`STATES`) and what goes with it (the
    score, the step it is at, the error, the drifted setting)."""
    out = Path(s.out)
    row = {"key": s.key, "state": "not started", "detail": ""}
    drift = config_drift(s)
    if drift:
        return {**row, "state": "stale", "detail": drift[0] + (f" (+{len(drift) - 1} more)" if len(drift) > 1 else "")}
    if is_finished(out):
        score = json.loads((out / "result.json").read_text()).get("normalized_score")
        return {**row, "state": "finished", "detail": "" if score is None else f"normalized {score:.1f}"}
    last, pid = _last_record(out), lock_holder(out)
    at = f"{last['phase']} step {last['step']}" if last else "starting"
    if pid is not None:
        return {**row, "state": "running", "detail": f"{at} (pid {pid})"}
    if (out / "FAILED").exists():
        return {**row, "state": "failed", "detail": (out / "FAILED").read_text().strip().splitlines()[0]}
    if last or (out / "train_state.pt").exists():
        return {**row, "state": "interrupted", "detail": f"{at}; resumes there"}
    return row


def grid_status(exp: DictConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every run's status, and the swap evaluations done (recorded in their policy runs' ``swaps.json``) out of
    those the experiment asks for."""
    rows = [run_status(s) for s in plan(exp)]
    jobs = swap_jobs(exp)
    done = 0
    for j in jobs:
        path = Path(j["policy_run"]) / "swaps.json"
        if path.exists() and j["label"] in json.loads(path.read_text()):
            done += 1
    return rows, {"swaps": len(jobs), "swaps_done": done}


def format_status(name: str, rows: list[dict[str, Any]], swaps: dict[str, int]) -> str:
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    width = max((len(r["key"]) for r in rows), default=0)
    lines = [f"{r['key']:<{width}}  {r['state']:<11}  {r['detail']}".rstrip() for r in rows]
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines.append(f"experiment {name}: {len(rows)} runs: {summary}; swaps {swaps['swaps_done']} of {swaps['swaps']}")
    return "\n".join(lines)
