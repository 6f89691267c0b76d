"""A faster Mish for the CPU, equal to ``torch.nn.functional.mish`` to float32 rounding (tests/test_activations.py).

Why: on a CPU ``F.mish`` and its backward cost more than the matmuls of the 3x256 MLP they sit in (docs/performance.md).
Rewritten with the sigmoid, which torch vectorizes well (no exp to overflow; w ~ 2 s keeps precision for x << 0):

    s = sigmoid(x),   w = s (2 - s),   tanh(softplus(x)) = w / (2 - w),   mish(x) = x w / (2 - w)
    mish'(x) = tanh(sp) + x s sech^2(sp),   sech^2(sp) = 4 (1 - s)^2 / (2 - w)^2  (no cancellation for x > ~8)

Only CPU float32/float64 take it (CUDA's ``F.mish`` is one fused kernel). It works under ``torch.func`` transforms,
with ``create_graph=True`` and in forward-mode AD: higher derivatives are rebuilt from differentiable ops.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_CONSTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _consts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached 0-dim 1 and 2 of x's dtype and device: a Python number is converted per call (docs/performance.md)."""
    key = (x.dtype, x.device)
    c = _CONSTS.get(key)
    if c is None:
        with torch.inference_mode(False):  # plain tensors even if first made under inference mode
            c = _CONSTS[key] = (torch.ones((), dtype=x.dtype, device=x.device),
                                torch.full((), 2.0, dtype=x.dtype, device=x.device))
    return c


def _parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, d, r) = (sigmoid(x), 2 - w, tanh(softplus(x))), with in-place ops on fresh tensors only."""
    two = _consts(x)[1]
    s = torch.sigmoid(x)
    w = torch.sub(two, s).mul_(s)  # s (2 - s)
    d = torch.sub(two, w)
    return s, d, w.div_(d)


# Tensors above _SLICE_ABOVE elements go in _CHUNK slices that stay in L2 (256 KB of float32): it pays on the
# many-candidate selection's activations only (docs/performance.md, "Mish on its own" and "Each change kept").
_CHUNK = 1 << 16
_SLICE_ABOVE = 1 << 18


def _parts_into(x: torch.Tensor, s: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> None:
    """``_parts`` written into given tensors shaped like x."""
    two = _consts(x)[1]
    torch.sigmoid(x, out=s)
    torch.sub(two, s, out=r).mul_(s)
    torch.sub(two, r, out=d)
    r.div_(d)


def _mish_nograd(x: torch.Tensor) -> torch.Tensor:
    if x.numel() <= _SLICE_ABOVE:
        _, _, r = _parts(x)
        return r.mul_(x)
    xf = x.reshape(-1)
    y = torch.empty_like(xf)
    for i in range(0, xf.numel(), _CHUNK):
        xc = xf[i:i + _CHUNK]
        _, _, r = _parts(xc)
        torch.mul(r, xc, out=y[i:i + _CHUNK])
    return y.view(x.shape)


def _derivative(x: torch.Tensor) -> torch.Tensor:
    """mish'(x) from differentiable out-of-place ops (the path ``create_graph=True`` takes)."""
    s = torch.sigmoid(x)
    w = s * (2 - s)
    d = 2 - w
    v = (1 - s) / d
    return w / d + 4 * x * s * v * v


_first_order = threading.local()  # .active: inside first_order() on this thread


@contextlib.contextmanager
def first_order() -> Iterator[None]:
    """Promise that Mish's backward is not differentiated again in this block, even under ``torch.func.grad``
    (which runs backwards with grad mode on): it then reuses the forward's terms (about 3x less work)."""
    prev, _first_order.active = getattr(_first_order, "active", False), True
    try:
        yield
    finally:
        _first_order.active = prev


def _backward(g: torch.Tensor, x: torch.Tensor, s: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """g mish'(x) from the forward's s, 2 - w and tanh(softplus) (flat, sliced, when x is large)."""
    if torch.is_grad_enabled() and not getattr(_first_order, "active", False):
        # create_graph=True (also every torch.func.grad backward, unless under first_order()): differentiable
        return g * _derivative(x)
    one = _consts(x)[0]
    if x.numel() <= _SLICE_ABOVE or _functorch_active():  # (slicing into ``out=`` does not compose with vmap)
        v = torch.sub(one, s).div_(d)  # (1 - s) / (2 - w)
        return torch.addcmul(r, v.mul_(v).mul_(s), x, value=4) * g
    xf, gf = x.reshape(-1), g.reshape(-1)
    out = torch.empty_like(xf)
    for i in range(0, xf.numel(), _CHUNK):
        sl = slice(i, i + _CHUNK)
        v = torch.sub(one, s[sl]).div_(d[sl])
        torch.mul(torch.addcmul(r[sl], v.mul_(v).mul_(s[sl]), xf[sl], value=4), gf[sl], out=out[sl])
    return out.view(x.shape)


class _MishEager(torch.autograd.Function):
    """Mish in the classic Function style, cheaper than ``setup_context`` (docs/performance.md): outside torch.func."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def, override]
        ctx.save_for_forward(x)
        if x.numel() <= _SLICE_ABOVE:
            s, d, r = _parts(x)
            ctx.save_for_backward(x, s, d, r)
            return x * r
        xf = x.reshape(-1)
        y, s, d, r = (torch.empty_like(xf) for _ in range(4))
        for i in range(0, xf.numel(), _CHUNK):
            sl = slice(i, i + _CHUNK)
            _parts_into(xf[sl], s[sl], d[sl], r[sl])
            torch.mul(xf[sl], r[sl], out=y[sl])
        ctx.save_for_backward(x, s, d, r)
        return y.view(x.shape)

    @staticmethod
    def jvp(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def, override]
        return _derivative(ctx.saved_tensors[0]) * t

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def, override]
        return _backward(g, *ctx.saved_tensors)


# is a torch.func transform running? (a torch without the check always takes the transform-safe Function)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


class _MishFunction(torch.autograd.Function):
    """Mish for torch.func (``setup_context`` style); ``forward`` also returns :func:`_parts` for the backward."""

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        s, d, r = _parts(x)
        return x * r, s, d, r

    @staticmethod
    def vmap(info, in_dims, x):  # type: ignore[no-untyped-def, override]
        """Elementwise: one call on the stacked tensor (all stacked seeds in one pass), not functorch's rule."""
        return _MishFunction.apply(x), (in_dims[0],) * 4

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def, override]
        (x,) = inputs
        _, s, d, r = output
        ctx.mark_non_differentiable(s, d, r)
        ctx.set_materialize_grads(False)  # no zero tensors for the three helper outputs
        ctx.save_for_backward(x, s, d, r)
        ctx.save_for_forward(x)

    @staticmethod
    def jvp(ctx, t: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors  # forward-mode AD (e.g. torch.func.hessian's forward-over-reverse)
        return _derivative(x) * t, None, None, None

    @staticmethod
    def backward(ctx, g: torch.Tensor | None, *_: torch.Tensor | None) -> torch.Tensor | None:  # type: ignore[override]
        return None if g is None else _backward(g, *ctx.saved_tensors)


def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish, x tanh(softplus(x)): the fast CPU form where it applies, ``F.mish`` elsewhere."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return F.mish(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _MishFunction.apply(x)[0] if _functorch_active() else _MishEager.apply(x)
    return _mish_nograd(x)


class FastMish(nn.Module):
    """Drop-in for ``nn.Mish`` (no parameters, same state dict) computing :func:`mish`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)
