"""A ``pretrained`` run's guidance: loaded from a saved checkpoint, checked against ``--guidance``, and
recorded in the run's config as the checkpoint's own."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from ..contract.interfaces import GuidanceModule
from ..errors import ConfigError
from .checkpoint import load_checkpoint


def pretrained_guidance(cfg: DictConfig, guidance: GuidanceModule | None, device: torch.device) -> GuidanceModule:
    """The frozen guidance of a ``pretrained`` run (loaded from ``run.guidance_ckpt`` unless passed in), with the
    run config made to record it.

    A checkpoint of another algorithm than ``--guidance`` is refused, not renamed: that name chose the pairing
    that was checked and labels the run (its default out dir, result.json), so accepting it would make the command
    say one thing and the run do another. The guidance's config, though, is the checkpoint's own, whatever the
    defaults and overrides for that name say: config.yaml and result.json record it, with the checkpoint's path,
    steps and training data (:func:`record_pretrained`).
    """
    r = cfg.run
    source = None
    if guidance is None:
        if not r.guidance_ckpt:
            raise ConfigError("schedule 'pretrained' needs --guidance-ckpt PATH (a guidance.pt)")
        source = str(r.guidance_ckpt)
        guidance = load_checkpoint(source, device, kind="guidance")
    asked = cfg.guidance.get("name") if cfg.guidance else None
    if asked and asked != guidance.algorithm:
        raise ConfigError(f"--guidance {asked} does not match {source or 'the guidance passed in'}, which holds a "
                          f"{guidance.algorithm!r} guidance: pass --guidance {guidance.algorithm} (or a {asked} "
                          f"guidance.pt)")
    record_pretrained(cfg, guidance, source)
    return guidance


def record_pretrained(cfg: DictConfig, guidance: GuidanceModule, source: str | None) -> None:
    """The ``guidance`` section becomes the loaded guidance's own algorithm and config, and ``guidance_checkpoint``
    says where it came from and on which data it trained (its dataset fingerprint)."""
    with open_dict(cfg):
        cfg.guidance = {"name": guidance.algorithm, **guidance.cfg}
        cfg.guidance_checkpoint = {"path": source, "algorithm": guidance.algorithm, "steps": guidance.steps,
                                   "dataset": dict(getattr(guidance, "dataset_meta", {}) or {})}


def keep_recorded_guidance(cfg: DictConfig, saved: dict[str, Any]) -> None:
    """On resume, a ``pretrained`` run keeps the guidance its config.yaml records (the checkpoint is not read
    again: the resume state holds the guidance), so result.json says the same."""
    with open_dict(cfg):
        cfg.guidance = saved.get("guidance") or {}
        if saved.get("guidance_checkpoint"):
            cfg.guidance_checkpoint = saved["guidance_checkpoint"]
