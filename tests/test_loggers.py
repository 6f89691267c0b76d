"""TensorBoard and W&B receive the same step-aligned scalars as metrics.jsonl (run.logger)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import modzoo
from modzoo.errors import ConfigError

TASK = "bullet-hopper-medium-v0"
TINY = ["guidance.hidden=[16,16]", "guidance.batch_size=32", "policy.hidden=16", "policy.batch_size=32",
        "run.log_every=5"]


def _cfg(data: Path, out: Path, logger: str, **run):  # type: ignore[no-untyped-def]
    return modzoo.run_config("idql", "bc", TASK, [*TINY, f"run.logger={logger}"], guidance_steps=20, policy_steps=20,
                             eval_every=10, eval_episodes=1, device="cpu", dataset=str(data), out=str(out),
                             schedule="guidance-first", **run)


def _jsonl(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _tensorboard(run: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{phase: {tag: [(step, value), ...]}} read back from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for phase_dir in sorted((run / "tensorboard").iterdir()):
        acc = EventAccumulator(str(phase_dir))
        acc.Reload()
        out[phase_dir.name] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    return out


def test_tensorboard_events_hold_the_losses_and_scores_of_the_jsonl(small_dataset_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "tb"
    modzoo.train(_cfg(small_dataset_path, run, "jsonl,tensorboard"), progress=False)
    tb, rows = _tensorboard(run), _jsonl(run)
    assert set(tb) == {"guidance", "policy"}
    for row in rows:
        phase = "policy" if row["phase"] == "eval" else row["phase"]
        for key, value in row.items():
            if key in ("phase", "step"):
                continue
            tag = f"eval/{key}" if row["phase"] == "eval" else key
            assert (row["step"], pytest.approx(value, rel=1e-6)) in tb[phase][tag], (phase, tag, row["step"])
    assert any(t.endswith("_loss") for t in tb["guidance"]) and any(t.endswith("_loss") for t in tb["policy"])
    # the final evaluation (step 20) and the interim one (step 10) are both there
    assert [s for s, _ in tb["policy"]["eval/normalized_mean"]] == [10, 20]


def test_a_resumed_run_shows_each_step_once_in_tensorboard(small_dataset_path: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    import modzoo.plugins.bc as bc

    run, calls = tmp_path / "r", []
    real = bc.DiffusionBCPolicy.update

    def dies_at_step_13(self, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(bc.DiffusionBCPolicy, "update", dies_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        modzoo.train(_cfg(small_dataset_path, run, "tensorboard", save_every=10), progress=False)
    monkeypatch.setattr(bc.DiffusionBCPolicy, "update", real)
    modzoo.train(_cfg(small_dataset_path, run, "tensorboard", save_every=10), progress=False, resume=True)
    steps = [s for s, _ in _tensorboard(run)["policy"]["policy/bc_loss"]]
    assert steps == [5, 10, 15, 20]  # 15 was not logged before the kill; 11-12 never reached a log line
    assert steps == [r["step"] for r in _jsonl(run) if r["phase"] == "policy"]


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (LevelDB's log format behind a 7-byte W&B header: blocks
    of 32 KiB, each record a 7-byte header and a full, first, middle or last fragment)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf, out = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        chunk, pos = data[pos + 7: pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            buf = chunk
        else:
            buf += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def test_wandb_offline_run_gets_the_same_step_aligned_scalars_and_the_config(small_dataset_path: Path,
                                                                             tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wb"
    modzoo.train(_cfg(small_dataset_path, run, "wandb"), progress=False)
    (file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(file)
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    rows = _jsonl(run)
    assert len(history) == len(rows)
    for row, logged in zip(rows, history):  # same order, same values, on the phase's own step axis
        phase = "policy" if row["phase"] == "eval" else row["phase"]
        assert logged[f"{phase}_step"] == row["step"]
        for key, value in row.items():
            if key not in ("phase", "step"):
                assert logged[f"eval/{key}" if row["phase"] == "eval" else key] == pytest.approx(value, rel=1e-6)
    (config,) = [r.run.config for r in records if r.WhichOneof("record_type") == "run"]
    sections = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in config.update}
    assert sections["run"]["task"] == TASK and sections["guidance"]["expectile"] == 0.7
    assert sections["policy"]["name"] == "bc"


def test_an_unknown_or_missing_logger_is_refused_before_training(small_dataset_path: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="run.logger: unknown 'tensorbord'"):
        _cfg(small_dataset_path, tmp_path / "x", "tensorbord")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the 'wandb' package: pip install 'modzoo\[wandb\]'"):
        _cfg(small_dataset_path, tmp_path / "y", "wandb")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_logger_flag_writes_tensorboard_events(small_dataset_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from modzoo.cli import main

    out = tmp_path / "cli"
    rc = main(["run", "--guidance", "idql", "--policy", "bc", "--env", TASK, "--dataset", str(small_dataset_path),
               "--policy-steps", "10", "--eval-episodes", "1", "--device", "cpu", "--out", str(out), "--no-progress",
               "--logger", "tensorboard", *TINY])
    assert rc == 0
    assert "policy/bc_loss" in _tensorboard(out)["policy"]
    assert modzoo.run_config("idql", "bc", TASK, logger="tensorboard").run.logger == "tensorboard"
