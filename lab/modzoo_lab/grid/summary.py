"""A run's summary (the small files the report reads, committed where the checkpoints are not) and what happens
when a run is trained again while its summary already stands.

A grid's summaries outlive the machine that trained it; its checkpoints do not. A swap that pairs a run finished
on a machine since gone needs that run's checkpoints, so the run is trained again: a *rebuild*. Seeded runs
reproduce across machines, but a rebuild must not take that on trust, nor lose the committed record on the way.
So the record is set aside in the run dir before the first step (:func:`set_aside`), the retrained run is compared
with it when it finishes (:func:`conclude`), and

- when the two agree, the swaps the record holds were evaluated on the same policy: they are carried over, marked
  ``before_rebuild``, instead of being evaluated again;
- when they differ, the summary takes the run as it now is (its checkpoints are what every later swap evaluates),
  and the committed record is kept beside it in ``before-rebuild/``, never overwritten.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from .plan import BEFORE, RunSpec, config_drift

SUMMARY_FILES = ("result.json", "swaps.json", "config.yaml")  # with curve.csv, made from metrics.jsonl
RECORD = "rebuild.json"  # how a rebuild compares with that summary


def curve_csv(run_dir: Path) -> str | None:
    """The evaluation curve of a run dir's ``metrics.jsonl`` as the summary's ``curve.csv`` text."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["step", "normalized_mean", "normalized_std", "return_mean"])
    for r in rows:
        if r.get("phase") == "eval":
            w.writerow([r["step"], r["normalized_mean"], r["normalized_std"], r["return_mean"]])
    return buf.getvalue()


def write_summary(s: RunSpec) -> None:
    """Copy the small files the report needs (never the checkpoints) into the summaries folder, after concluding a
    rebuild (:func:`conclude`) if the run was one."""
    if not s.summaries:
        return
    src, dst = Path(s.out), Path(s.summaries)
    rebuild = conclude(s)
    dst.mkdir(parents=True, exist_ok=True)
    if rebuild is not None and not rebuild["reproduced"]:
        if not (dst / BEFORE).exists():  # the committed record, beside the run it no longer describes
            shutil.copytree(src / BEFORE, dst / BEFORE)
        if not (src / "swaps.json").exists():  # its swaps were of the other policy; they are in before-rebuild/
            (dst / "swaps.json").unlink(missing_ok=True)
    for name in (*SUMMARY_FILES, RECORD):  # the config: which settings made these numbers
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    curve = curve_csv(src)
    if curve is not None:
        (dst / "curve.csv").write_bytes(curve.encode())  # csv's \r\n line ends, byte for byte


def set_aside(s: RunSpec) -> bool:
    """Before a run trains from its first step while its summary stands: copy that summary into the run dir's
    ``before-rebuild/``, which training and summaries never write. True when the run is a rebuild (set aside now
    or before an interruption: the first copy is the one kept)."""
    out = Path(s.out)
    if (out / BEFORE).exists():
        return True
    summary = Path(s.summaries) if s.summaries else None
    if summary is None or (out / "config.yaml").exists() or not (summary / "result.json").exists():
        return False
    tmp = out / f"{BEFORE}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (*SUMMARY_FILES, "curve.csv"):
        if (summary / name).exists():
            shutil.copyfile(summary / name, tmp / name)
    tmp.rename(out / BEFORE)  # whole or not at all: a kill mid-copy leaves only the .tmp
    return True


def differences(s: RunSpec, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """How a finished rebuild's record (``new``: its ``result.json``) differs from the one set aside (``old``):
    empty when it reproduces it (the same config, data, curve and final returns, float for float). Timings and
    dates are not compared."""
    out, before = Path(s.out), Path(s.out) / BEFORE
    if not (before / "config.yaml").exists():
        diffs = ["config: the committed summary has none"]
    else:
        diffs = [f"config: {d}" for d in config_drift(s, before / "config.yaml")]
    fp = [(r.get("dataset") or {}).get("fingerprint") for r in (old, new)]
    if fp[0] != fp[1]:
        diffs.append(f"dataset: fingerprint {fp[0]} -> {fp[1]}")
    for key in ("guidance_steps", "policy_steps"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    old_curve = (before / "curve.csv").read_bytes().decode() if (before / "curve.csv").exists() else None
    new_curve = curve_csv(out)
    if old_curve != new_curve:
        diffs.append("curve: " + _first_curve_difference(old_curve, new_curve))
    was, now = old.get("eval") or {}, new.get("eval") or {}
    if was.get("returns") != now.get("returns"):
        changed = sum(a != b for a, b in zip(was.get("returns") or [], now.get("returns") or []))
        diffs.append(f"final evaluation: {changed} of {len(now.get('returns') or [])} returns differ "
                     f"(normalized {_score(old)} -> {_score(new)})")
    return diffs


def _score(result: dict[str, Any]) -> str:
    score = result.get("normalized_score")
    return "n/a" if score is None else f"{score:.1f}"


def _first_curve_difference(old: str | None, new: str | None) -> str:
    if old is None or new is None:
        return f"{'none' if old is None else 'one'} committed, {'none' if new is None else 'one'} now"
    a, b = old.splitlines()[1:], new.splitlines()[1:]
    for x, y in zip(a, b):
        if x != y:
            return f"step {x.split(',')[0]}: {x} -> {y}"
    return f"{len(a)} points -> {len(b)}"


def conclude(s: RunSpec) -> dict[str, Any] | None:
    """Compare a finished rebuild with the summary set aside, once, and write the outcome to ``rebuild.json``;
    None when the run is no rebuild. When it reproduces that summary, the summary's swaps are carried into the run
    dir's ``swaps.json`` (marked ``before_rebuild``; a swap evaluated here since wins)."""
    out = Path(s.out)
    if not (out / BEFORE / "result.json").exists() or not (out / "result.json").exists():
        return None
    if (out / RECORD).exists():
        return json.loads((out / RECORD).read_text())
    old = json.loads((out / BEFORE / "result.json").read_text())
    new = json.loads((out / "result.json").read_text())
    diffs = differences(s, old, new)
    record: dict[str, Any] = {"reproduced": not diffs, "differences": diffs,
                              "before": {"normalized_score": old.get("normalized_score"),
                                         "finished": old.get("finished")},
                              "after": {"normalized_score": new.get("normalized_score"),
                                        "finished": new.get("finished")},
                              "swaps_carried": []}
    old_swaps = out / BEFORE / "swaps.json"
    if not diffs and old_swaps.exists():
        carried = {k: {**v, "before_rebuild": True} for k, v in json.loads(old_swaps.read_text()).items()}
        now = update_swaps(out, lambda done: {**carried, **done})  # a swap of this run may already be writing
        record["swaps_carried"] = sorted(set(carried) - set(now))
    tmp = out / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out / RECORD)
    return record


def update_swaps(run_dir: Path, merge: Callable[[dict[str, Any]], dict[str, Any]],
                 copy_to: Path | None = None) -> dict[str, Any]:
    """Rewrite a run dir's ``swaps.json`` as ``merge`` of what it holds, under the run's swaps lock, and copy it to
    the summaries folder ``copy_to``; returns what it held before. Two workers may finish two swaps of the same
    policy run together, or a swap and a rebuild's carry-over, and a plain read-modify-write would drop one."""
    with open(run_dir / "swaps.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = run_dir / "swaps.json"
        before = json.loads(path.read_text()) if path.exists() else {}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merge(before), indent=2))
        tmp.replace(path)
        if copy_to is not None:
            copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy_to / "swaps.json")
    return before


def reproduced(run_dir: str | Path) -> bool | None:
    """Whether a run dir's rebuild reproduced its committed summary; None when it is no finished rebuild."""
    path = Path(run_dir) / RECORD
    return bool(json.loads(path.read_text())["reproduced"]) if path.exists() else None
