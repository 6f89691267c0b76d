"""Several seeds of one arm trained in one process; with ``vmap``, as one stacked ensemble with the maths of separate
runs: each stage's loss runs once for all K seeds under ``vmap(grad(loss))`` on *twin* halves whose every tensor has
a leading seed axis (how and why: docs/performance.md, "Many seeds in one process"). The per-seed halves stay the
truth outside the step: :meth:`StackedStepper.sync` copies the twins back before an evaluation or a checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..blocks.activations import first_order
from ..bullet.data import load_dataset
from ..contract.interfaces import DiffusionPolicy, GuidanceModule, Half
from ..contract.registry import load_registry
from ..contract.rng import StackedGenerator
from ..contract.stages import Stage, clip_per_seed, finish_step
from ..errors import ConfigError
from .checkpoint import tree_map
from .training import ActiveRun, RunResult, Stepper, setup_run, train, train_group


def stackable(guidance: type | None, policy: type | None) -> str | None:
    """None when halves of these classes can train stacked, else the reason they cannot."""
    for kind, cls in (("guidance", guidance), ("policy", policy)):
        if cls is None:
            continue
        if not cls.stackable:
            return f"{kind} {cls.algorithm!r} does not declare stackable=True (its update is not written as stages)"
        # A subclass that rewrites update() inherits the claim but not its truth: the stacked step runs stages()
        for base in cls.__mro__:
            if "stackable" in base.__dict__:
                break
            if "update" in base.__dict__:
                return (f"{kind} {cls.algorithm!r}: {base.__name__} overrides update(), which a stacked step would "
                        f"skip (it runs stages()); set stackable = False there, or move the change into loss()")
    return None


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if leaf in owner._parameters:
        owner._parameters[leaf].data = value  # same Parameter object: optimizers built over it stay valid
    else:
        owner._buffers[leaf] = value


def make_twin(halves: list[Half]) -> Half:
    """A half like ``halves[0]`` whose every parameter, buffer and optimizer state is the K seeds' stacked, keeping
    each seed's generator."""
    lead = halves[0]
    twin = type(lead)(lead.obs_dim, lead.act_dim, lead.cfg).to(lead.device)
    per_seed = [dict(h.named_parameters()) | dict(h.named_buffers()) for h in halves]
    for name in list(dict(twin.named_parameters())) + list(dict(twin.named_buffers())):
        _set_tensor(twin, name, torch.stack([p[name].detach() for p in per_seed]).clone())
    if isinstance(lead, GuidanceModule) and lead.frozen:
        twin.freeze()
    else:
        # tensors with a shape gain a leading seed axis; a scalar (a step count) is the same for every seed
        twin.load_extra_state(tree_map(lambda ts: torch.stack(ts) if ts[0].dim() > 0 else ts[0].clone(),
                                    [h.extra_state() for h in halves]))
    twin.use_generator(StackedGenerator([h.gen() for h in halves]))
    twin.train(lead.training)
    return twin


@torch.no_grad()
def unstack_into(twin: Half, halves: list[Half]) -> None:
    """Copy each seed's slice of the twin (modules and optimizer state) back into its own half."""
    tensors = dict(twin.named_parameters()) | dict(twin.named_buffers())
    extra = None if (isinstance(twin, GuidanceModule) and twin.frozen) else twin.extra_state()
    for k, h in enumerate(halves):
        own = dict(h.named_parameters()) | dict(h.named_buffers())
        for name, t in tensors.items():
            own[name].copy_(t[k])
        if extra is not None:
            h.load_extra_state(tree_map(lambda ts: ts[0][k].clone() if ts[0].dim() > 0 else ts[0].clone(), [extra]))


class _Pair(nn.Module):
    """Both twins under one module, so ``functional_call`` can swap all their tensors for one seed's slices."""

    def __init__(self, guidance: Half, policy: Half | None) -> None:
        super().__init__()
        self.guidance = guidance
        self.policy = policy

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class StackedStepper(Stepper):
    """Takes one step for K seeds at once (see the module docstring)."""

    mode = "vmap"

    def __init__(self, runs: list[ActiveRun]) -> None:
        super().__init__(runs)
        self.g_twin = make_twin([run.guidance for run in runs])
        self.p_twin = make_twin([run.policy for run in runs]) if runs[0].policy is not None else None
        self.pair = _Pair(self.g_twin, self.p_twin)
        self.gens = [t.generator for t in (self.g_twin, self.p_twin) if t is not None]
        # every stacked tensor keeps its identity for the whole run, so its name is looked up once, not per stage
        self.named = list(self.pair.named_parameters()) + list(self.pair.named_buffers())
        self.names = {id(t): n for n, t in self.named}

    def _stage(self, stage: Stage, batch: dict[str, torch.Tensor], other: Any) -> dict[str, torch.Tensor]:
        """One stage for all seeds: each seed's gradient of its own loss, under vmap, then one optimizer step."""
        trained = {self.names[id(p)]: p.detach() for p in stage.params()}
        rest = {n: t.detach() for n, t in self.named if n not in trained}

        def per_seed(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                     b: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
            level = torch._C._functorch.maybe_current_level()
            for g in self.gens:
                g.level = level
            try:
                return grad(lambda p, s, x: functional_call(self.pair, (p, s), (stage.loss, x, other)),
                            has_aux=True)(params, state, b)
            finally:
                for g in self.gens:
                    g.level = None

        with first_order():  # only first derivatives are taken here: Mish's fast backward applies
            grads, metrics = vmap(per_seed, randomness="same")(trained, rest, batch)
        params = stage.params()
        for p in params:
            p.grad = grads[self.names[id(p)]]
        if stage.grad_norm and stage.grad_norm > 0:
            clip_per_seed([p.grad for p in params], stage.grad_norm)
        finish_step(stage)
        return metrics

    def step(self, kind: str, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
        twin, other = ((self.p_twin, self.g_twin) if kind == "policy"
                       else (self.g_twin, self.p_twin if kind == "joint" else None))
        batch = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}
        metrics: dict[str, torch.Tensor] = {}
        if isinstance(twin, DiffusionPolicy):
            twin.train()
        for stage in twin.stages():
            metrics.update(self._stage(stage, batch, other))
        if hasattr(twin, "count_step"):
            twin.count_step()
        else:
            twin._steps += 1
        return [{name: v[i] for name, v in metrics.items()} for i in range(len(batches))]

    def sync(self) -> None:
        unstack_into(self.g_twin, [run.guidance for run in self.runs])
        if self.p_twin is not None:
            unstack_into(self.p_twin, [run.policy for run in self.runs])

    def frozen_guidance(self) -> None:
        self.g_twin.freeze()


STACK_MODES = ("auto", "vmap", "lockstep", "off")


def train_seeds(cfgs: list[Any], dataset: Any = None, *, mode: str = "auto", progress: bool = True,
                resume: bool = False, log: Callable[[str], None] | None = None) -> list[RunResult]:
    """Train ``cfgs`` (equal but for ``run.seed`` and ``run.out``) in one process, each run dir as a lone run writes
    it. ``mode``: ``vmap`` (:class:`StackedStepper`), ``lockstep`` (in turn, one dataset copy), ``off`` (one run
    after another), ``auto``: ``vmap`` on a GPU, else (slower on a CPU, or halves that cannot stack) ``lockstep``."""
    if mode not in STACK_MODES:
        raise ConfigError(f"unknown stack mode {mode!r}; known: {', '.join(STACK_MODES)}")
    if not cfgs:
        return []
    say, c0 = log or (lambda _msg: None), cfgs[0]
    if dataset is None:
        dataset = load_dataset(c0.run.dataset or c0.run.task, task=c0.run.task)
    if mode == "off" or len(cfgs) == 1:
        return [train(cfg, dataset, progress=progress, resume=resume) for cfg in cfgs]
    why = stackable(*(load_registry().half(kind, c0[kind].name).cls if c0[kind] and c0[kind].get("name") else None
                      for kind in ("guidance", "policy")))
    if mode == "vmap" and why:  # refused before any run dir is made
        raise ConfigError(f"cannot stack seeds with vmap: {why}; use --stack lockstep or off")
    lead = setup_run(c0, dataset, resume, None)
    runs = [lead] + [setup_run(cfg, dataset, resume, None, share=lead.buffer) for cfg in cfgs[1:]]
    apart = [run for run in runs[1:] if (run.plan, run.phase, run.start_step) !=
             (lead.plan, lead.phase, lead.start_step)]
    if apart:
        where = ", ".join(f"{run.run_dir}: {run.phase or 'start'} step {run.start_step}" for run in [lead, *apart])
        if mode != "auto":
            raise ConfigError(f"cannot train these seeds together: they stopped at different points ({where}); "
                              f"use --stack off to resume them one after another")
        say(f"seeds stopped at different points ({where}): resuming them one after another")
        return [train_group([run], Stepper([run]), progress)[0] for run in runs]
    # the halves actually built (a pretrained guidance comes from its checkpoint) decide as well
    why = why or stackable(type(lead.guidance), type(lead.policy) if lead.policy is not None else None)
    if mode == "vmap" and why:
        raise ConfigError(f"cannot stack seeds with vmap: {why}; use --stack lockstep or off")
    if mode == "auto":
        mode = "vmap" if lead.device.type == "cuda" and not why else "lockstep"
    say(f"{len(runs)} seeds in one process, stack mode {mode}")
    stepper = StackedStepper(runs) if mode == "vmap" else Stepper(runs)
    return train_group(runs, stepper, progress)
