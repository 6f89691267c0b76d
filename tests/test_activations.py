"""The fast Mish must be F.mish in values and gradients, since ``mish`` in every config now maps to it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modzoo.blocks.activations import FastMish, mish
from modzoo.blocks.nets import MLPDenoiser, activation


def _wide(dtype: torch.dtype) -> torch.Tensor:
    """-100..100 densely (both tails, where exp overflows or tanh(softplus) rounds to 1), plus extremes."""
    x = torch.linspace(-100, 100, 200_001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([-1e4, -30.5, -20.25, 0.0, 20.25, 30.5, 1e4], dtype=torch.float64)])
    return x.to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_values_and_gradients_match_torch_mish(dtype: torch.dtype, tol: float) -> None:
    x = _wide(dtype).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y = mish(x)
    assert y.grad_fn is not None and "MishEager" in type(y.grad_fn).__name__  # the hand-written backward
    g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    y.backward(g)
    yr = F.mish(xr)
    yr.backward(g)
    torch.testing.assert_close(y, yr, atol=tol, rtol=0)
    torch.testing.assert_close(x.grad, xr.grad, atol=tol, rtol=0)
    big = x.detach().abs() > 20
    assert big.sum() > 1000  # the large-|x| tails are really covered
    torch.testing.assert_close(x.grad[big], xr.grad[big], atol=tol, rtol=0)


def test_relative_precision_in_the_negative_tail() -> None:
    """Where mish(x) ~ x e^x is tiny, the result keeps its relative precision (no 1 - (1 - tiny))."""
    x = torch.linspace(-80, -5, 2001)
    ref = F.mish(x.double())
    assert ((mish(x).double() - ref) / ref).abs().max() < 1e-6


def test_extremes_behave_like_torch() -> None:
    x = torch.tensor([float("-inf"), float("inf"), float("nan"), -1e30, 1e30, -104.0, 104.0], requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    mish(x).sum().backward()
    F.mish(xr).sum().backward()
    torch.testing.assert_close(mish(x.detach()), F.mish(x.detach()), equal_nan=True)
    torch.testing.assert_close(x.grad, xr.grad, equal_nan=True)


def test_no_grad_path_equals_grad_path() -> None:
    x = torch.randn(64, 256) * 5
    with torch.inference_mode():
        a = mish(x)
    b = mish(x.clone().requires_grad_(True)).detach()
    assert torch.equal(a, b)
    assert torch.equal(mish(x), a)  # no grad needed: same values without recording a graph


def test_higher_order_and_torch_func() -> None:
    """create_graph, forward-mode and torch.func (vmap over per-seed gradients) give F.mish's derivatives."""
    x = (torch.randn(40, dtype=torch.float64) * 6).requires_grad_(True)
    g1, = torch.autograd.grad(mish(x).sum(), x, create_graph=True)
    g2, = torch.autograd.grad(g1.sum(), x)
    h1, = torch.autograd.grad(F.mish(x).sum(), x, create_graph=True)
    h2, = torch.autograd.grad(h1.sum(), x)
    torch.testing.assert_close(g1, h1)
    torch.testing.assert_close(g2, h2)
    xs = x.detach().reshape(4, 10)
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(lambda v: mish(v).sum()))(xs),
                               torch.func.vmap(torch.func.grad(lambda v: F.mish(v).sum()))(xs))
    torch.testing.assert_close(torch.func.hessian(lambda v: mish(v).sum())(xs[0]),
                               torch.func.hessian(lambda v: F.mish(v).sum())(xs[0]))
    assert torch.autograd.gradcheck(mish, (x.detach()[:12].clone().requires_grad_(True),))


def test_config_mish_is_the_fast_one_and_nets_agree() -> None:
    """``mish`` in a config builds FastMish; ``mish_torch`` keeps nn.Mish; the same weights give the same
    outputs and gradients either way (state dicts are interchangeable: Mish has no parameters)."""
    assert isinstance(activation("mish"), FastMish)
    assert isinstance(activation("mish_torch"), nn.Mish)
    torch.manual_seed(0)
    fast = MLPDenoiser(15, 3, act="mish")
    slow = MLPDenoiser(15, 3, act="mish_torch")
    slow.load_state_dict(fast.state_dict())
    x, t, s = torch.randn(256, 3), torch.randint(0, 5, (256,)), torch.randn(256, 15) * 3
    outs = []
    for net in (fast, slow):
        net.zero_grad()
        out = net(x, t, s)
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_first_use_under_inference_mode_then_training() -> None:
    """The cached constants made on first use inside inference mode still serve a later training step."""
    from modzoo.blocks import activations
    activations._CONSTS.clear()
    with torch.inference_mode():
        mish(torch.randn(8, 8, dtype=torch.float64))
    x = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    mish(x).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    F.mish(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_forward_mode_ad_outside_torch_func() -> None:
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(50, dtype=torch.float64) * 6
    t = torch.randn(50, dtype=torch.float64)
    out = []
    for fn in (mish, F.mish):
        with fwAD.dual_level():
            y = fn(fwAD.make_dual(x.clone().requires_grad_(True), t))
            out.append(fwAD.unpack_dual(y).tangent)
    torch.testing.assert_close(out[0], out[1])


def test_large_tensors_are_processed_in_slices_with_the_same_result() -> None:
    """Above _SLICE_ABOVE elements the work is sliced (cache-sized passes): same values and gradients as
    F.mish, including a size that is no multiple of the slice and a non-contiguous input."""
    from modzoo.blocks.activations import _CHUNK, _SLICE_ABOVE
    for x0 in (torch.randn(_SLICE_ABOVE + 3 * _CHUNK + 123) * 6, (torch.randn(500, 700) * 6).t()):
        assert x0.numel() > _SLICE_ABOVE
        x = x0.clone().requires_grad_(True) if x0.is_contiguous() else x0.detach().requires_grad_(True)
        xr = x0.detach().clone().requires_grad_(True)
        g = torch.randn(x0.shape)
        y = mish(x)
        y.backward(g)
        F.mish(xr).backward(g)
        torch.testing.assert_close(y, F.mish(xr.detach()), atol=1e-5, rtol=0)
        torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=0)
        with torch.inference_mode():
            torch.testing.assert_close(mish(x0), y.detach(), atol=0, rtol=0)


def test_fast_backward_under_vmap_of_grad_matches_torch_mish_for_large_tensors() -> None:
    """The stacked-seed trainer's path: vmap(grad(...)) inside first_order(), per-seed tensors above the
    slicing threshold (IDQL's 4x-wide residual blocks at batch 256+)."""
    from torch.func import grad, vmap

    from modzoo.blocks.activations import _SLICE_ABOVE, first_order, mish

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, _SLICE_ABOVE // 512 + 8, 512, generator=g) * 3
    w = torch.randn(2, 512, generator=g)

    def f(xk: torch.Tensor, wk: torch.Tensor, act) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return (act(xk * wk) * wk).sum()

    with first_order():
        fast = vmap(grad(lambda xk, wk: f(xk, wk, mish), argnums=1))(x, w)
    ref = vmap(grad(lambda xk, wk: f(xk, wk, torch.nn.functional.mish), argnums=1))(x, w)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-3)
