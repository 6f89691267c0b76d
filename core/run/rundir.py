"""The run directory: its metrics log, its config record and what a resume may change, the space its
checkpoints need, and its ``result.json``."""
from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..errors import AlreadyFinished, ConfigError, StorageError
from .checkpoint import atomic_save, checkpoint_bytes, existing_parent, size_text
from .config import config_diff, to_dict


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN and infinity (nested too) as None, so ``metrics.jsonl`` and ``result.json`` stay
    strict JSON (Python's bare ``NaN`` no other reader accepts)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


class RunLog:
    """``metrics.jsonl`` (when there is a run dir) and the extra sinks of ``run.logger``, fed the same records;
    non-finite values are written as null (the guard names them)."""

    def __init__(self, run_dir: Path | None, sinks: list[Any] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.sinks = list(sinks or [])

    def truncate_after(self, phase: str | None, step: int) -> None:
        """On resume, drop what was logged after the restored state (it is logged again): everything when nothing
        was restored, else the restored phase's later steps (evaluations belong to the policy phase)."""
        if self.path is None or not self.path.exists():
            return
        keep = []
        if phase is not None:
            for line in self.path.read_text().splitlines():
                rec = json.loads(line)
                ph = "policy" if rec.get("phase") == "eval" else rec.get("phase")
                if (ph != phase or rec.get("step", 0) <= step) and not (phase == "guidance" and ph == "policy"):
                    keep.append(line)
        atomic_save("".join(x + "\n" for x in keep), self.path)

    def log(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        clean = finite_or_null(record)
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(clean, allow_nan=False) + "\n")
        except OSError as e:
            raise StorageError(f"could not append to {self.path}: {e.strerror or e}; free space (or fix the "
                               f"directory) and resume with --resume") from None
        for sink in self.sinks:
            sink.write(clean)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


#: run keys a resume may change: none changes a number the run trains
RESUME_MAY_CHANGE = ("run.out", "run.threads", "run.save_every_s", "run.on_nonfinite")


def saved_config(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    """The saved config of the run ``resume`` continues in ``run_dir`` (None: none yet). A finished run is refused
    with :class:`AlreadyFinished` before anything is touched (a resume once retrained it over its results)."""
    if resume and (run_dir / "result.json").exists():
        raise AlreadyFinished(f"run dir {run_dir} holds a finished run (its result.json): --resume has nothing to "
                              f"continue, and no file was changed")
    config = run_dir / "config.yaml"
    if not config.exists():
        return None
    if not resume:
        raise ConfigError(f"run dir {run_dir} already holds a run; pass --resume to continue it or choose "
                          f"another --out (nothing was overwritten)")
    return OmegaConf.to_container(OmegaConf.load(config), resolve=True)


def refuse_changes(saved: dict[str, Any], cfg: DictConfig, schedule: str, run_dir: Path) -> None:
    """Refuse, naming what differs, a resume under another config than ``config.yaml`` (beyond
    :data:`RESUME_MAY_CHANGE` and a ``pretrained`` guidance's settings): no record would show what the rest trained."""
    diff = config_diff(saved, to_dict(cfg), lambda name, old, new: name in RESUME_MAY_CHANGE or (
        schedule == "pretrained" and name.startswith("guidance.") and name != "guidance.name"))
    if diff:
        raise ConfigError(f"--resume of run dir {run_dir} with another config than its config.yaml ({'; '.join(diff)})"
                          f": resume with the run's own settings, or start a new run in another --out")


def open_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Make the run dir, drop temp files of saves killed mid-write, and write the config once (a resumed run keeps
    the record it was checked against)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"could not make run dir {run_dir} (--out): {e.strerror or e}; choose another --out"
        raise StorageError(msg) from None
    for f in run_dir.glob(".*.tmp"):  # never a checkpoint (a save's rename is its last step): only takes space
        if f.is_file():
            f.unlink(missing_ok=True)
    if not (run_dir / "config.yaml").exists():
        atomic_save(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")


def checkpoints_need(run_dir: Path, guidance: GuidanceModule, policy: DiffusionPolicy | None) -> int:
    """About the free bytes the run's checkpoints will take (guidance.pt, policy.pt, train_state.pt, and a save's
    temp copy of the largest), less the files a resumed run already holds."""
    g = checkpoint_bytes(guidance)
    p = checkpoint_bytes(policy) if policy is not None else 0
    files = {"guidance.pt": g, "policy.pt": p, "train_state.pt": g + p}
    on_disk = sum((run_dir / name).stat().st_size for name in files if (run_dir / name).is_file())
    return sum(files.values()) + max(files.values()) - on_disk


def warn_if_short_of_space(run_dir: Path, guidance: GuidanceModule, policy: DiffusionPolicy | None) -> None:
    """Warn before training when the run dir's disk has less free space than the checkpoints need (a full disk
    found at the first save costs the training before it); not an error: the estimate is rough."""
    need = checkpoints_need(run_dir, guidance, policy)
    try:
        free = shutil.disk_usage(existing_parent(run_dir)).free
    except OSError:
        return  # nothing to measure against: the save itself reports a failure
    if free < need:
        warnings.warn(f"run dir {run_dir}: its file system has {size_text(free)} free, but this run's checkpoints "
                      f"need about {size_text(need)} (guidance.pt, policy.pt, train_state.pt and a save's temp "
                      f"copy); training starts anyway, but free space or choose another --out, or a save will fail",
                      stacklevel=3)
