"""Checkpoints of one half: metadata + state, written atomically, read with ``weights_only=True`` (loading runs no
code). The metadata lets a saved guidance pair with another policy safely: dims must match, another dataset warns.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..contract.interfaces import DiffusionPolicy, GuidanceModule, Half
from ..contract.registry import load_registry, renamed_keys
from ..errors import CheckpointError, StorageError
from ..version import __version__
from .config import ADDED_KEYS, half_config

FORMAT = "modzoo.half/1"
REQUIRED = ("format", "kind", "algorithm", "obs_dim", "act_dim", "config", "state")


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (a ``str`` as text, else ``torch.save``) beside ``path``, then rename: a crash or full disk never
    harms ``path``; a failure is one :class:`StorageError` naming the space needed (torch's message does not)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _save_error(path, obj, e) from None
    os.close(fd)
    try:
        if isinstance(obj, str):
            Path(tmp).write_text(obj)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch's zip writer reports a failed write (no space, an I/O error) as a RuntimeError, not an OSError
        if isinstance(e, OSError) or isinstance(e, RuntimeError) and any(x in str(e) for x in (
                "inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")):
            raise _save_error(path, obj, e) from None
        raise


def payload_bytes(obj: Any) -> int:
    """About the bytes ``torch.save`` writes for ``obj``: its tensors' storages (each once) plus a rough allowance."""
    storages: dict[int, int] = {}

    def walk(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return 0
        if isinstance(x, dict):
            return sum(walk(k) + walk(v) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        if isinstance(x, (bytes, str)):
            return len(x)
        return 16
    return walk(obj) + sum(storages.values()) + 4096


#: what ``torch.save`` adds per tensor (zip header, padding, pickle entry): an allowance only small nets notice
TENSOR_RECORD_BYTES = 300


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """About the bytes of ``module``'s trained checkpoint, before the first step: its state plus Adam's two moments
    per trainable parameter (allocated only at the first step)."""
    state = list(module.state_dict().values())
    trainable = [p for p in module.parameters() if p.requires_grad]
    data = sum(t.numel() * t.element_size() for t in state) + 2 * sum(p.numel() * p.element_size() for p in trainable)
    return data + TENSOR_RECORD_BYTES * (len(state) + 2 * len(trainable)) + 4096


def size_text(n: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _save_error(path: Path, obj: Any, e: BaseException) -> StorageError:
    need = len(obj.encode()) if isinstance(obj, str) else payload_bytes(obj)
    if isinstance(e, OSError):
        reason = e.strerror or _first_line(e)
    else:
        reason = f"the write stopped part-way, as on a full disk or an I/O error (torch: {_first_line(e, 80)})"
    try:
        free = f", {size_text(shutil.disk_usage(existing_parent(path.parent)).free)} free now"
    except OSError:
        free = ""
    return StorageError(f"could not save {path}: {reason}; it needs about {size_text(need)} in {path.parent}{free}. "
                        f"What was on disk is unchanged: free space (or fix the directory) and run again (a run "
                        f"continues from its last saved state with --resume)")


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a directory not made yet will take its space from."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def half_payload(module: Half, dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild ``module`` in another process."""
    return {"format": FORMAT, "kind": "guidance" if isinstance(module, GuidanceModule) else "policy",
            "algorithm": type(module).algorithm, "obs_dim": module.obs_dim, "act_dim": module.act_dim,
            "config": module.cfg, "steps": module.steps, "frozen": bool(getattr(module, "frozen", False)),
            "dataset": dict(dataset or {}), "modzoo_version": __version__,
            "state": {k: v.detach().cpu() for k, v in module.state_dict().items()}, "extra": module.extra_state()}


def save_half(module: Half, path: str | Path, dataset: dict[str, Any] | None = None) -> Path:
    """Write a trained half to ``path`` as one file that :func:`load_checkpoint` rebuilds without executing code:
    kind, algorithm, dims, config, step count, weights, optimizer state and ``dataset`` (``{"name", "fingerprint",
    "path"}`` of its training data, which a later pairing is checked against). Atomic: a crash keeps the old file."""
    atomic_save(half_payload(module, dataset), path)
    return Path(path)


def _first_line(e: BaseException, limit: int = 160) -> str:
    """An exception's first sentence (torch's reader writes several), or its first words and "..." past
    ``limit``: what fits inside another sentence."""
    lines = str(e).strip().splitlines()
    if not lines:
        return "no message"
    first = re.split(r"(?<=[.!?])\s+", lines[0].strip(), maxsplit=1)[0].rstrip(".")
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint file's payload, with one clear error for every way it can be wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the guidance.pt/policy.pt of a run dir")
    if path.is_dir():
        inside = " or ".join(str(p) for p in (path / "guidance.pt", path / "policy.pt") if p.is_file())
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; pass "
                              f"{inside or 'the guidance.pt/policy.pt of a run dir'}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fix = "re-create it by training again (modzoo train-guidance / modzoo run)"
        # a truncated torch file: torch's first zip entry (``<archive>/data.pkl``, after the 30-byte header), no index
        with path.open("rb") as f:
            head = f.read(30 + 256)
        if head.startswith(b"PK\x03\x04") and b"/data.pkl" in head[30:] and not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {path} is truncated: its {path.stat().st_size} bytes are the start of "
                                  f"a torch checkpoint whose end is missing, as a save or copy leaves when it stops "
                                  f"part-way; copy it again from where it came from, or {fix}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a modzoo checkpoint ({type(e).__name__}: "
                              f"{_first_line(e)}); {fix}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a modzoo half checkpoint (format "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r},"
                              f" expected {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it is truncated or from another tool")
    return payload


def build_from_payload(payload: dict[str, Any], path: str | Path = "<memory>",
                       device: torch.device | str = "cpu") -> GuidanceModule | DiffusionPolicy:
    reg = load_registry()
    spec = reg.half(payload["kind"], payload["algorithm"])
    config = _complete_config(spec, payload["kind"], payload["config"])
    module = spec.cls(payload["obs_dim"], payload["act_dim"], config)
    try:
        module.load_state_dict(payload["state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit {payload['kind']} {payload['algorithm']!r} as built "
                              f"from its own config ({_first_line(e)}); it was written by an "
                              f"incompatible version of that plugin") from None
    module.to(device)
    if payload.get("frozen") and isinstance(module, GuidanceModule):
        module.freeze()
    else:
        module.load_extra_state(tree_map(lambda ts: ts[0].to(device), [payload.get("extra", {})]))
    module.dataset_meta = dict(payload.get("dataset", {}))  # type: ignore[attr-defined]
    return module


def _complete_config(spec: Any, kind: str, saved: dict[str, Any]) -> dict[str, Any]:
    """The config to rebuild a saved half with: saved keys (renamed to now), and for newer keys (halves read
    ``cfg[key]``) the value that keeps the old behaviour (:data:`~modzoo.run.config.ADDED_KEYS`), else the default."""
    saved = renamed_keys(kind, saved)
    defaults = half_config(spec.default_config())
    added = {name: v for k, v in ADDED_KEYS.items() if k.startswith(f"{kind}.")
             and (name := k.partition(".")[2]) in defaults}
    return {**defaults, **added, **saved}


def tree_map(fn: Callable[[list[torch.Tensor]], Any], values: list[Any]) -> Any:
    """``fn`` of the tensors at each place of equally shaped state trees (one per stacked seed, or one alone); any
    other value (a learning rate) is taken from the first."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return fn(values)
    if isinstance(first, dict):
        return {k: tree_map(fn, [v[k] for v in values]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(tree_map(fn, [v[i] for v in values]) for i in range(len(first)))
    return first


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                    kind: str | None = None) -> GuidanceModule | DiffusionPolicy:
    """Rebuild a guidance or policy from a :func:`save_half` file on ``device``, with its weights, step count and
    optimizer state; its plugin must be installed (the file names it; no code is read from the file). ``kind``
    ("guidance" or "policy") refuses the other kind with one line."""
    payload = read_payload(path)
    if kind is not None and payload["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {payload['kind']} ({payload['algorithm']}), "
                              f"but a {kind} was expected")
    return build_from_payload(payload, path, device)


def check_guidance_fits(guidance: GuidanceModule, obs_dim: int, act_dim: int, fingerprint: str | None = None,
                        dataset_name: str | None = None) -> None:
    """Refuse a guidance with other dims; warn when it was trained on another dataset."""
    if (guidance.obs_dim, guidance.act_dim) != (obs_dim, act_dim):
        raise CheckpointError(f"guidance {guidance.algorithm!r} was trained for obs/act dims "
                              f"{guidance.obs_dim}/{guidance.act_dim}, but the policy has {obs_dim}/{act_dim}: use a "
                              f"guidance trained on the same task")
    meta = getattr(guidance, "dataset_meta", {}) or {}
    theirs = meta.get("fingerprint")
    if fingerprint and theirs and theirs != fingerprint:
        warnings.warn(f"guidance was trained on dataset {meta.get('name')!r} (fingerprint {theirs}) but is used with "
                      f"{dataset_name!r} (fingerprint {fingerprint}): guidance swapping is only expected to work on "
                      f"the same data distribution", stacklevel=2)
