"""Random draws that work both for one seed and for several seeds trained as one stacked ensemble.

Every random number a training step uses (diffusion time steps and noise, the reverse chain's noise, Diffusion-QL's
critic order, dropout masks) is drawn here from the half's own ``torch.Generator``. When seeds are stacked
(:mod:`modzoo.run.stacked`) the step runs once under ``torch.func.vmap`` over the seed axis, and the generator is a
:class:`StackedGenerator` holding every seed's own generator: a draw takes one sample per seed, from that seed's
generator, in the order a lone run would draw it, and hands the step one batched tensor. So a stacked seed sees
the very numbers it would see alone, which is what makes stacked and separate runs agree (tests/test_stacked.py).

The batched tensor is built with ``torch._C._functorch._add_batch_dim``, functorch's own (private) wrapper for
a tensor batched along a vmap level; tests/test_stacked.py fails loudly if a torch upgrade changes it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

Shape = Sequence[int]


class StackedGenerator:
    """K per-seed generators standing in for one generator inside a vmap over the seed axis.

    ``level`` is the vmap level of the seed axis, set by the stacked trainer when it enters the vmapped step.
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ValueError("StackedGenerator needs at least one generator")
        self.generators = list(generators)
        self.level: int | None = None

    @property
    def device(self) -> torch.device:
        return self.generators[0].device

    def draw(self, fn: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        """``fn(g)`` for every seed's generator, as one tensor batched along the seed axis."""
        if self.level is None:
            raise RuntimeError("a StackedGenerator draws only inside the stacked trainer's vmapped step")
        with torch._C._DisableFuncTorch():  # plain draws, outside every transform
            stacked = torch.stack([fn(g) for g in self.generators])
        return torch._C._functorch._add_batch_dim(stacked, 0, self.level)


Gen = torch.Generator | StackedGenerator | None


def _draw(generator: Gen, fn: Callable[[torch.Generator | None], torch.Tensor]) -> torch.Tensor:
    if isinstance(generator, StackedGenerator):
        return generator.draw(fn)
    return fn(generator)


def randn(shape: Shape, generator: Gen = None, device: torch.device | str | None = None) -> torch.Tensor:
    return _draw(generator, lambda g: torch.randn(tuple(shape), device=device, generator=g))


def rand(shape: Shape, generator: Gen = None, device: torch.device | str | None = None) -> torch.Tensor:
    return _draw(generator, lambda g: torch.rand(tuple(shape), device=device, generator=g))


def randint(high: int, shape: Shape, generator: Gen = None, device: torch.device | str | None = None
            ) -> torch.Tensor:
    """Integers uniform in [0, high)."""
    return _draw(generator, lambda g: torch.randint(0, high, tuple(shape), device=device, generator=g))


def randperm(n: int, generator: Gen = None, device: torch.device | str | None = None) -> torch.Tensor:
    return _draw(generator, lambda g: torch.randperm(n, device=device, generator=g))


class SeededDropout(nn.Module):
    """Dropout (same maths as ``nn.Dropout``) whose mask comes from ``generator``, which the owning half sets to
    its own noise stream, instead of torch's global RNG: a run's masks then depend on its seed alone, and each
    seed of a stacked ensemble (:mod:`modzoo.run.stacked`) drops exactly the units it would drop alone."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: Gen = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = rand(x.shape, self.generator, x.device) >= self.p
        return x * keep / (1 - self.p)
