"""Where a grid stands, read from its run dirs without touching them (``modzoo experiment NAME --status``).

A grid that runs for many hours across sessions is looked at far more often than it is started: which runs have
finished and with what score, which one a worker is training now and at which step, which were interrupted and
will resume, which failed or went stale.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from .plan import RunSpec, config_drift, finished_elsewhere, is_finished, plan, recorded_swaps, stale_runs, swap_jobs
from .runner import lock_holder
from .summary import BEFORE, RECORD

STATES = ("finished", "running", "interrupted", "failed", "stale", "not started")


def _last_records(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last training record of ``metrics.jsonl`` (its phase and step) and its last interim evaluation,
    each None before the first."""
    path = run_dir / "metrics.jsonl"
    last = last_eval = None
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.strip():
            rec = json.loads(line)
            if rec.get("phase") in ("guidance", "policy"):
                last = rec
            elif rec.get("phase") == "eval" and "normalized_mean" in rec:
                last_eval = rec
    return last, last_eval


def run_status(s: RunSpec, summary: Path | None = None) -> dict[str, Any]:
    """``{"key", "state", "detail", "spec", "last", "result"}`` of one run: its state (one of :data:`STATES`), what
    goes with it (the score, the step it is at, the error, the drifted setting), its spec, its last training record
    (None unless it has started and not finished) and its ``result.json`` (None unless finished), which
    :func:`seconds_left` prices from without reading the run dir again. ``summary``: the summary folder of a run
    finished elsewhere (:func:`~modzoo_lab.grid.plan.summary_only_runs`), read in place of its absent run dir."""
    out = Path(s.out)
    row = {"key": s.key, "state": "not started", "detail": "", "spec": s, "last": None, "result": None}
    if summary is not None:
        result = json.loads((summary / "result.json").read_text())
        score = result.get("normalized_score")
        return {**row, "state": "finished", "result": result,
                "detail": ("" if score is None else f"normalized {score:.1f} ")
                + "(summary only: trained elsewhere, no checkpoints here)"}
    drift = config_drift(s)
    if drift:
        return {**row, "state": "stale", "detail": drift[0] + (f" (+{len(drift) - 1} more)" if len(drift) > 1 else "")}
    if is_finished(out):
        result = json.loads((out / "result.json").read_text())
        score = result.get("normalized_score")
        return {**row, "state": "finished", "detail": ("" if score is None else f"normalized {score:.1f}")
                + _rebuilt(out), "result": result}
    (last, last_eval), pid = _last_records(out), lock_holder(out)
    row["last"] = last
    at = f"{last['phase']} step {last['step']}" if last else "starting"
    if last_eval is not None:  # how a long run is doing, not only how far it is
        at += f", evaluated {last_eval['normalized_mean']:.1f} at step {last_eval['step']}"
    if (out / BEFORE).exists():
        at += " (rebuilding: its committed summary stands until it finishes)"
    if pid is not None:
        return {**row, "state": "running", "detail": f"{at} (pid {pid})"}
    if (out / "FAILED").exists():
        return {**row, "state": "failed", "detail": (out / "FAILED").read_text().strip().splitlines()[0]}
    if last or (out / "train_state.pt").exists():
        return {**row, "state": "interrupted", "detail": f"{at}; resumes there"}
    return row


def _rebuilt(out: Path) -> str:
    """How a finished rebuild compared with its committed summary, for the detail column."""
    if not (out / RECORD).exists():
        return " (rebuilt: not yet compared)" if (out / BEFORE).exists() else ""
    rec = json.loads((out / RECORD).read_text())
    return (" (rebuilt: reproduces its committed summary)" if rec["reproduced"]
            else f" (rebuilt: DIFFERS from its committed summary: {rec['differences'][0]})")


def _costs(result: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """A finished run's cost by clock, ``{"wall": ..., "cpu": ...}``: each as (the whole run: every phase's updates
    and interim evaluations, summed across resumes, and the final evaluation; its final evaluation per episode,
    None if it recorded none)."""
    phases = result.get("phases", [])
    final = [p for p in phases if p.get("phase") == "eval" and p.get("episodes")]
    out_: dict[str, tuple[float, float | None]] = {}
    for clock, run_key, eval_key in (("wall", "wall_s", "eval_wall_s"), ("cpu", "cpu_s", "eval_cpu_s")):
        total = sum(float(p.get(run_key) or 0.0) + float(p.get(eval_key) or 0.0) for p in phases)
        episode = float(final[-1].get(run_key) or 0.0) / int(final[-1]["episodes"]) if final else None
        out_[clock] = (total, episode)
    return out_


def _done_fraction(s: RunSpec, last: dict[str, Any] | None) -> float:
    """How much of a started run's updates are done, from its last training record."""
    first = int(s.run.get("guidance_steps", 0)) if s.schedule == "guidance-first" else 0
    total = first + int(s.run.get("policy_steps", 0))
    if not last or total <= 0:
        return 0.0
    done = int(last["step"]) + (first if last["phase"] == "policy" else 0)
    return min(done / total, 1.0)


def _priced(samples: dict[tuple[str, str], list[float]], arm: str, task: str) -> float | None:
    """The mean of the samples of this arm and task, else of this arm, else of all; None without any."""
    same = (samples.get((arm, task)) or [v for (a, _), vs in samples.items() if a == arm for v in vs]
            or [v for vs in samples.values() for v in vs])
    return sum(same) / len(same) if same else None


def seconds_left(rows: list[dict[str, Any]], swaps: dict[str, Any]) -> dict[str, float] | None:
    """An estimate of the run time the grid has left, ``{"wall": s, "cpu": s}``, from its finished runs' own.

    Each unfinished run is priced at the mean of the finished runs of its arm and task (else of its arm, else of
    all), less the part it has done. Each pending swap evaluation is priced as its episodes at the per-episode
    cost of the swaps of the same kind and arm that recorded theirs, else of the final evaluations of its policy's
    arm (the same policy and candidate count, another critic); a ``selection=none`` swap samples one candidate
    instead of ranking many, so it is priced only from swaps of its own kind. Wall time is what the finished runs
    met on the machine as it was shared then; CPU time is the floor, a core each. None before any run has
    finished. A run to rebuild (``prior``: its committed ``result.json``) is priced at its own recorded cost, and
    that cost prices the others too. Failed and stale runs are left out, as a grid does not redo them. ``rows``
    and ``swaps``: :func:`grid_status`'s, so no file is read again."""
    runs: dict[str, dict[tuple[str, str], list[float]]] = {"wall": {}, "cpu": {}}
    episodes: dict[str, dict[tuple[str, str], list[float]]] = {"wall": {}, "cpu": {}}
    for row in rows:
        s = row["spec"]
        if row["state"] == "finished" or row.get("prior"):
            for clock, (total, episode) in _costs(row["result"] or row["prior"]).items():
                runs[clock].setdefault((s.arm, s.task), []).append(total)
                if episode is not None:
                    episodes[clock].setdefault((s.arm, s.task), []).append(episode)
    if not runs["wall"]:
        return None
    arm_of = {row["spec"].out: row["spec"].arm for row in rows}
    swapped: dict[str, dict[tuple[str, str], list[float]]] = {"wall": {}, "cpu": {}}  # by (arm label, task)
    pending = []
    for j, rec in swaps["jobs"]:
        kind = f"{arm_of.get(j['policy_run'], '')} {j['label']}"
        if rec is None:
            pending.append((kind, j))
        elif "wall_s" in rec and rec.get("episodes"):
            for clock in swapped:
                swapped[clock].setdefault((kind, j["task"]), []).append(float(rec[f"{clock}_s"]) / rec["episodes"])
    left = {"wall": 0.0, "cpu": 0.0}
    for clock in left:
        for row in rows:
            if row.get("prior"):  # a run to rebuild, at its own recorded cost
                left[clock] += _costs(row["prior"])[clock][0]
            elif row["state"] in ("running", "interrupted", "not started"):
                s = row["spec"]
                left[clock] += _priced(runs[clock], s.arm, s.task) * (1.0 - _done_fraction(s, row["last"]))
        for kind, j in pending:
            if any(k == kind for k, _ in swapped[clock]):  # this kind's, of its task else of any task
                episode = _priced(swapped[clock], kind, j["task"])
            elif j["label"] == "selection=none":
                continue
            else:
                episode = _priced(episodes[clock], arm_of.get(j["policy_run"], ""), j["task"])
            left[clock] += (episode or 0.0) * int(j["episodes"])
    return left


def format_time_left(left: dict[str, float], workers: int) -> str:
    wall, cpu, workers = left["wall"] / 3600, left["cpu"] / 3600, max(workers, 1)
    return (f"time left: about {wall:.1f} h of runs at the finished runs' wall times, {cpu:.1f} h at their CPU "
            f"times (a core each): about {cpu / workers:.1f}-{wall / workers:.1f} h on {workers} "
            f"worker{'s' if workers > 1 else ''}")


def grid_status(exp: DictConfig, rebuild: bool = False, rebuild_only: Sequence[str] = ()
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every run's status (:func:`run_status`), and the swap evaluations the experiment asks for: how many, how
    many are done (recorded in their policy runs' ``swaps.json``, or in the summary of a run finished elsewhere),
    how many can never run here (``swaps_unpaired``: not done, and a run they pair has no checkpoints here), and each
    other job with its record (None while pending). ``rebuild``: as a grid run with ``--rebuild`` would see it, the
    runs finished elsewhere that it would train again counted as not started, and the swaps their summaries record
    as done (carried over when the rebuild reproduces the run); ``rebuild_only``: with only the rebuilds whose keys
    match these patterns."""
    specs = plan(exp)
    rebuild = rebuild or bool(rebuild_only)
    kept, summaries, _ = finished_elsewhere(exp, specs, stale_runs(specs) if rebuild else None, rebuild_only)
    rows = [run_status(s, kept.get(s.out)) for s in specs]
    for row in rows:  # a run to rebuild: what it cost where it first trained prices it
        if row["spec"].out in summaries and row["spec"].out not in kept and row["state"] == "not started":
            row["prior"] = json.loads((summaries[row["spec"].out] / "result.json").read_text())
    recorded: dict[str, dict[str, Any]] = {}  # each policy run's swaps.json, read once
    jobs, unpaired = [], 0
    for j in swap_jobs(exp):
        if j["policy_run"] not in recorded:
            recorded[j["policy_run"]] = recorded_swaps(j["policy_run"], summaries)
        rec = recorded[j["policy_run"]].get(j["label"])
        if rec is None and {j["policy_run"], j["guidance_run"]} & set(kept):
            unpaired += 1  # pending for good: a summary-only run's checkpoints are not here
            continue
        jobs.append((j, rec))
    done = sum(rec is not None for _, rec in jobs)
    return rows, {"swaps": len(jobs) + unpaired, "swaps_done": done, "swaps_unpaired": unpaired, "jobs": jobs}


def format_status(name: str, rows: list[dict[str, Any]], swaps: dict[str, Any]) -> str:
    counts = {state: sum(r["state"] == state for r in rows) for state in STATES}
    width = max((len(r["key"]) for r in rows), default=0)
    lines = [f"{r['key']:<{width}}  {r['state']:<11}  {r['detail']}".rstrip() for r in rows]
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    unpaired = swaps.get("swaps_unpaired", 0)
    lines.append(f"experiment {name}: {len(rows)} runs: {summary}; swaps {swaps['swaps_done']} of {swaps['swaps']}"
                 + (f" ({unpaired} cannot run here: they pair a run trained elsewhere)" if unpaired else ""))
    return "\n".join(lines)
