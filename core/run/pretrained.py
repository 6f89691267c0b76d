"""A ``pretrained`` run's guidance: loaded from a saved checkpoint, checked against ``--guidance``, and
recorded in the run's config as the checkpoint's own (a new frozen config: the one passed in is not edited)."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from ..contract.interfaces import GuidanceModule
from ..errors import ConfigError
from .checkpoint import load_checkpoint
from .config import derived


def pretrained_guidance(cfg: DictConfig, guidance: GuidanceModule | None, device: torch.device
                        ) -> tuple[GuidanceModule, DictConfig]:
    """The frozen guidance of a ``pretrained`` run (``run.guidance_ckpt`` unless passed in) and the config recording
    it (its own config, path, steps and dataset). Another algorithm than ``--guidance`` is refused, not renamed: that
    name chose the checked pairing and labels the run."""
    source = None
    if guidance is None:
        if not cfg.run.guidance_ckpt:
            raise ConfigError("schedule 'pretrained' needs --guidance-ckpt PATH (a guidance.pt)")
        source = str(cfg.run.guidance_ckpt)
        guidance = load_checkpoint(source, device, kind="guidance")
    asked = cfg.guidance.get("name") if cfg.guidance else None
    if asked and asked != guidance.algorithm:
        raise ConfigError(f"--guidance {asked} does not match {source or 'the guidance passed in'}, which holds a "
                          f"{guidance.algorithm!r} guidance: pass --guidance {guidance.algorithm} (or a {asked} "
                          f"guidance.pt)")
    return guidance, derived(cfg, guidance={"name": guidance.algorithm, **guidance.cfg}, guidance_checkpoint={
        "path": source, "algorithm": guidance.algorithm, "steps": guidance.steps,
        "dataset": dict(getattr(guidance, "dataset_meta", {}) or {})})


def keep_recorded_guidance(cfg: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """On resume, a ``pretrained`` run keeps the guidance its config.yaml records (the resume state holds it)."""
    kept = {"guidance_checkpoint": saved["guidance_checkpoint"]} if saved.get("guidance_checkpoint") else {}
    return derived(cfg, guidance=saved.get("guidance") or {}, **kept)
