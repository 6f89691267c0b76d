"""Where a run's scalars go besides ``metrics.jsonl``: TensorBoard and W&B, named by ``run.logger``, each fed the
jsonl's very records and keyed by phase, since steps restart at every phase (docs/runs.md, "Where the curves go").
"""
from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..errors import ConfigError
from .config import to_dict

SINKS = ("jsonl", "tensorboard", "wandb")  # each extra sink's package has its name


def logger_names(value: str | None) -> list[str]:
    """The sinks a ``run.logger`` value names (``"jsonl,tensorboard"`` -> both), checked against :data:`SINKS`."""
    names = [n.strip() for n in str(value or "jsonl").split(",") if n.strip()]
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ConfigError(f"run.logger: unknown {', '.join(map(repr, unknown))}; use a comma-separated list of "
                          f"{', '.join(SINKS)} (jsonl is always written)")
    return names


def check_available(value: str | None) -> None:
    """Refuse, before any work, a sink whose package is not installed (one line naming the extra to install)."""
    for name in logger_names(value):
        if name != "jsonl" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"run.logger={name} needs the {name!r} package: pip install 'modzoo[{name}]' "
                              f"(or drop {name} from run.logger)")


def _scalars(record: dict[str, Any]) -> tuple[str, int, dict[str, float]]:
    """(phase, step, {tag: value}) of a record; an evaluation's are ``eval/...`` of the policy phase."""
    phase, step = str(record.get("phase")), int(record.get("step", 0))
    values = {k: float(v) for k, v in record.items() if k not in ("phase", "step") and isinstance(v, (int, float))}
    if phase == "eval":
        return "policy", step, {f"eval/{k}": v for k, v in values.items()}
    return phase, step, values


class TensorBoardSink:
    """Scalars to ``<run dir>/tensorboard/<phase>``, the config as text. A resumed run purges its phase's events
    after the step it resumes from, as ``metrics.jsonl`` drops its lines, so each step shows once."""

    def __init__(self, run_dir: Path, cfg: DictConfig, resumed_at: tuple[str, int] | None = None) -> None:
        self.root, self.cfg, self.resumed_at = run_dir / "tensorboard", cfg, resumed_at
        self.writers: dict[str, Any] = {}

    def _writer(self, phase: str) -> Any:
        if phase not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            purge = self.resumed_at[1] + 1 if self.resumed_at and self.resumed_at[0] == phase else None
            w = SummaryWriter(log_dir=str(self.root / phase), flush_secs=30, purge_step=purge)
            w.add_text("config", "```\n" + json.dumps(to_dict(self.cfg), indent=1, default=str) + "\n```")
            self.writers[phase] = w
        return self.writers[phase]

    def write(self, record: dict[str, Any]) -> None:
        phase, step, values = _scalars(record)
        w = self._writer(phase)
        for tag, value in values.items():
            w.add_scalar(tag, value, step)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class WandbSink:
    """Scalars to a W&B run (``run.wandb_project``); its id is kept in the run dir for a resume to continue."""

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        import wandb

        id_file = run_dir / "wandb-id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=str(cfg.run.get("wandb_project") or "modzoo"), id=run_id, resume="allow",
                              dir=str(run_dir), name=run_dir.name, config=to_dict(cfg), reinit="create_new")
        for phase in ("guidance", "policy"):
            self.run.define_metric(f"{phase}_step")
        for pattern, step in (("guidance/*", "guidance_step"), ("policy/*", "policy_step"), ("eval/*", "policy_step")):
            self.run.define_metric(pattern, step_metric=step)

    def write(self, record: dict[str, Any]) -> None:
        phase, step, values = _scalars(record)
        # a joint run's policy phase also carries the critic's guidance/* numbers: they follow the policy steps
        self.run.log({**values, f"{phase}_step": step, **({"guidance_step": step} if phase == "policy" and any(
            k.startswith("guidance/") for k in values) else {})})

    def close(self) -> None:
        self.run.finish()


def open_sinks(run_dir: Path | None, cfg: DictConfig, resumed_at: tuple[str, int] | None = None) -> list[Any]:
    """The extra sinks of ``run.logger`` (none without a run dir); ``resumed_at``: a resume's (phase, step)."""
    names = logger_names(cfg.run.get("logger")) if run_dir is not None else []
    return ([TensorBoardSink(run_dir, cfg, resumed_at)] if "tensorboard" in names else []) + (
        [WandbSink(run_dir, cfg)] if "wandb" in names else [])
