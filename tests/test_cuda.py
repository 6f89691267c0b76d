"""modzoo on a CUDA GPU: every first-party guidance/policy pair trains and acts with its state on the device,
seeds stack there (``--stack auto`` picks vmap on a GPU) with the maths of separate runs, and checkpoints cross
between CUDA and CPU both ways.

``pytest -m cuda`` selects these (the marker is registered in conftest.py); every test skips itself where torch
sees no GPU, so the CPU suite reports them as skipped. Nets are shrunk with ``modzoo.testing.tiny_overrides``
and the data is the simulator-free ``modzoo.testing.synthetic_dataset``: the whole file takes seconds on a GPU.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import modzoo
from modzoo.contract.registry import load_registry
from modzoo.run.checkpoint import load_checkpoint, save_half
from modzoo.run.halves import default_config
from modzoo.run.stacked import train_seeds
from modzoo.testing import checkpoint_tensors, synthetic_dataset, tiny_overrides

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")]

TASK = "bullet-hopper-medium-v0"


def _first_party_pairs() -> list[tuple[str, str]]:
    """Every (guidance, policy) pair ``modzoo list`` offers among the halves this package ships."""
    reg = load_registry()
    ours = lambda spec: spec.cls.__module__.startswith("modzoo.plugins")  # noqa: E731
    return sorted((g, p) for p, spec in reg.policies.items() if ours(spec)
                  for g in reg.compatible(p) if ours(reg.guidances[g]))


PAIRS = _first_party_pairs()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("cuda-data") / f"{TASK}.hdf5", transitions=2000, seed=0)


def _tiny(guidance: str, policy: str | None) -> list[str]:
    out = []
    for kind, name in (("guidance", guidance), ("policy", policy)):
        if name:
            d = default_config(kind, name, TASK)
            d.pop("task_overrides", None)
            out += [f"{kind}.{k}={json.dumps(v)}" for k, v in tiny_overrides(d).items()]
    return out


def _cfg(guidance: str, policy: str | None, data: Path, out: Path, device: str = "cuda", seed: int = 0,
         schedule: str = "joint", extra: list[str] | tuple[str, ...] = (), steps: int = 3) -> Any:
    return modzoo.run_config(guidance, policy, TASK, _tiny(guidance, policy) + list(extra), schedule=schedule,
                             guidance_steps=steps, policy_steps=steps, eval_episodes=0, final_eval=False,
                             device=device, dataset=str(data), out=str(out), seed=seed, log_every=1)


def _train(cfg: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return modzoo.train(cfg, progress=False)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _off_device(half: Any) -> list[str]:
    """Names of the half's tensors that are not on CUDA: parameters, buffers, and optimizer state (except the
    0-dim step counters torch's Adam keeps on the CPU by design)."""
    bad = [f"{n} on {t.device}" for n, t in list(half.named_parameters()) + list(half.named_buffers())
           if t.device.type != "cuda"]
    extra = list(_tensors(half.extra_state())) if not getattr(half, "frozen", False) else []
    bad += [f"optimizer state {tuple(t.shape)} on {t.device}" for t in extra if t.dim() > 0 and t.device.type != "cuda"]
    return bad


@pytest.mark.parametrize("guidance,policy", PAIRS, ids=[f"{g}-{p}" for g, p in PAIRS])
def test_every_first_party_pair_trains_and_acts_on_the_gpu(guidance: str, policy: str, data: Path,
                                                           tmp_path: Path) -> None:
    res = _train(_cfg(guidance, policy, data, tmp_path / "run"))
    assert res.guidance.device.type == "cuda" and res.policy.device.type == "cuda"
    assert _off_device(res.guidance) == [] and _off_device(res.policy) == []
    assert res.policy.gen().device.type == "cuda"  # its noise stream lives with it: no host round trip per draw
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert all(math.isfinite(v) for k, v in rec.items() if k not in ("phase", "step")), rec
    obs = torch.randn(4, res.policy.obs_dim, device="cuda")
    with torch.inference_mode():
        act = res.policy.act(obs, res.guidance)
    assert act.device.type == "cuda" and act.shape == (4, res.policy.act_dim) and torch.isfinite(act).all()


def test_the_pair_list_is_the_registry_s() -> None:
    """Guards the parametrization: a plugin added to the package is added here, not silently left out."""
    reg = load_registry()
    assert len(PAIRS) == sum(len(reg.compatible(p)) for p, s in reg.policies.items()
                             if s.cls.__module__.startswith("modzoo.plugins"))
    assert ("dql", "dql") in PAIRS and ("idql", "idql") in PAIRS


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for name in ("guidance.pt", "policy.pt"):
        ta = checkpoint_tensors(torch.load(a / name, weights_only=True))
        tb = checkpoint_tensors(torch.load(b / name, weights_only=True))
        assert ta.keys() == tb.keys() and len(ta) > 10
        worst = max(worst, max(float((ta[k] - tb[k]).abs().max()) for k in ta))
    return worst


@pytest.mark.parametrize("guidance,policy,schedule", [("dql", "dql", "joint"), ("idql", "idql", "guidance-first")])
def test_stacked_seeds_on_the_gpu_train_as_they_would_alone(guidance: str, policy: str, schedule: str, data: Path,
                                                            tmp_path: Path) -> None:
    """``--stack auto`` on a GPU is vmap; each stacked seed matches the seed trained alone on the same GPU to float
    rounding (the tolerances of tests/test_stacked.py), while two seeds differ far beyond them."""
    seeds = (0, 1, 2)
    cfg = lambda tag, s: _cfg(guidance, policy, data, tmp_path / f"{tag}{s}", seed=s, schedule=schedule,  # noqa
                              steps=6)
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_seeds([cfg("together", s) for s in seeds], mode="auto", progress=False, log=lines.append)
    assert any("stack mode vmap" in line for line in lines), lines
    for s in seeds:
        _train(cfg("alone", s))
    for s in seeds:
        together, alone = _metrics(tmp_path / f"together{s}"), _metrics(tmp_path / f"alone{s}")
        assert [(m["phase"], m["step"]) for m in together] == [(m["phase"], m["step"]) for m in alone]
        for mt, ma in zip(together, alone):
            for key in ma:
                if key not in ("phase", "step"):
                    assert mt[key] == pytest.approx(ma[key], rel=1e-4, abs=1e-5), (s, mt["step"], key)
        assert _max_diff(tmp_path / f"together{s}", tmp_path / f"alone{s}") < 1e-4
        result = json.loads((tmp_path / f"together{s}" / "result.json").read_text())
        assert result["phases"][-1]["stack"] == "vmap"
    assert _max_diff(tmp_path / "alone0", tmp_path / "alone1") > 1e-2


def test_a_checkpoint_saved_on_the_gpu_loads_on_cpu_and_back(data: Path, tmp_path: Path) -> None:
    """CUDA -> CPU: every state tensor bit-exact, the same Q to float rounding, and the CPU copy acts and
    evaluates; CPU -> CUDA: the loaded halves live on the GPU with the same values."""
    res = _train(_cfg("idql", "dql", data, tmp_path / "run"))
    g_cpu = load_checkpoint(tmp_path / "run" / "guidance.pt", "cpu", kind="guidance")
    p_cpu = load_checkpoint(tmp_path / "run" / "policy.pt", "cpu", kind="policy")
    for live, loaded in ((res.guidance, g_cpu), (res.policy, p_cpu)):
        want, got = live.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys()
        for k in want:
            assert got[k].device.type == "cpu" and torch.equal(want[k].cpu(), got[k]), k
    obs, act = torch.randn(8, g_cpu.obs_dim), torch.rand(8, g_cpu.act_dim) * 2 - 1
    torch.testing.assert_close(g_cpu.q(obs, act), res.guidance.q(obs.cuda(), act.cuda()).cpu(), rtol=1e-5, atol=1e-5)
    ev = modzoo.evaluate(p_cpu, g_cpu, TASK, episodes=1, seed=0)
    assert math.isfinite(ev.mean)

    save_half(p_cpu, tmp_path / "cpu-policy.pt", getattr(p_cpu, "dataset_meta", {}))
    p_gpu = load_checkpoint(tmp_path / "cpu-policy.pt", "cuda", kind="policy")
    assert _off_device(p_gpu) == []
    for k, v in p_cpu.state_dict().items():
        assert torch.equal(p_gpu.state_dict()[k].cpu(), v), k
    with torch.inference_mode():
        a = p_gpu.act(obs[:2].cuda(), res.guidance)
    assert a.device.type == "cuda" and torch.isfinite(a).all()


def test_a_gpu_run_evaluates_and_resumes_on_the_gpu(data: Path, tmp_path: Path) -> None:
    """The resume state written on the GPU (CUDA generator states included) continues there, to the same end as
    an uninterrupted run."""
    full = _train(_cfg("dql", "dql", data, tmp_path / "full", steps=6))
    cfg = _cfg("dql", "dql", data, tmp_path / "cut", steps=6, extra=["run.save_every=3"])
    # stop after the state at step 3 is saved: a run that raises from its logger at step 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modzoo.run import training

        real = training._Logger.log

        def stop(self: Any, record: dict[str, Any]) -> None:
            real(self, record)
            if record.get("step") == 4:
                raise KeyboardInterrupt
        training._Logger.log = stop  # type: ignore[method-assign]
        try:
            with pytest.raises(KeyboardInterrupt):
                modzoo.train(cfg, progress=False)
        finally:
            training._Logger.log = real  # type: ignore[method-assign]
        resumed = modzoo.train(cfg, progress=False, resume=True)
    assert resumed.policy.steps == full.policy.steps == 6
    assert _max_diff(tmp_path / "cut", tmp_path / "full") < 1e-6
    obs = torch.randn(2, resumed.policy.obs_dim, device="cuda")
    with torch.inference_mode():
        assert resumed.policy.act(obs, resumed.guidance).device.type == "cuda"
