"""The resume state of an unfinished run (``train_state.pt``): both halves, the buffer's sampling state, the
halves' noise streams, and where in which phase it stopped."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..contract.interfaces import DiffusionPolicy, GuidanceModule
from ..errors import ConfigError
from .buffer import ReplayBuffer
from .checkpoint import build_from_payload


def generator_state(half: Any) -> torch.Tensor:
    gen = half.gen()
    if not isinstance(gen, torch.Generator):  # a stacked twin's is not saved; the runs' own halves are
        raise TypeError("resume state is written from each run's own halves")
    return gen.get_state()


def restore(state_path: Path, dataset: Any, device: torch.device, buffer: ReplayBuffer) -> tuple[
        GuidanceModule, DiffusionPolicy | None, str | None, int, list[dict[str, Any]], dict[str, float]]:
    """An interrupted run as ``train_state.pt`` left it: both halves, its phase and step, finished phases' records
    and the time spent in the current phase; the buffer's and halves' generators are set as they were."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    was = (st["guidance"].get("dataset") or {}).get("fingerprint")
    if was and was != dataset.fingerprint:
        raise ConfigError(f"run dir {state_path.parent} was trained on other data than "
                          f"{dataset.path or dataset.name} holds now (fingerprint {was} vs {dataset.fingerprint}); "
                          f"resuming would mix the two. Start it again in another --out, or restore that dataset")
    guidance = build_from_payload(st["guidance"], state_path, device)
    policy = build_from_payload(st["policy"], state_path, device) if st.get("policy") else None
    buffer.load_state_dict(st["buffer"])
    for key, half in (("guidance", guidance), ("policy", policy)):
        state = st.get("generators", {}).get(key)
        if half is not None and state is not None:
            half.gen().set_state(state)
    return (guidance, policy, st["phase"], int(st["step"]), list(st.get("phases", [])),
            dict(st.get("phase_time") or {}))
