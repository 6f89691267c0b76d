"""Networks shared by every plugin (denoisers, value nets, time embeddings): a plugin names a net and its widths.
Ensemble critics are one module with batched weights, so a twin Q costs one forward (one ``baddbmm`` per layer).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..contract.normalization import ObsNorm
from ..contract.rng import SeededDropout
from .activations import FastMish

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "mish": FastMish,  # F.mish's values to float32 rounding, ~2x faster on CPU (core/blocks/activations.py)
    "mish_torch": nn.Mish,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # flax's nn.gelu (approximate=True by default): FQL's nets
}


def activation(name: str) -> nn.Module:
    """Look up an activation by its config name (``mish``, ``relu`` ...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def _maybe_norm(obs_dim: int, enabled: bool) -> ObsNorm | None:
    # None, not an identity module: the state dict stays as before obs_norm existed, so old checkpoints load
    return ObsNorm(obs_dim) if enabled else None


def _normed(net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
    """``obs`` through ``net.obs_norm`` where the net has one (:func:`_maybe_norm`)."""
    return obs if net.obs_norm is None else net.obs_norm(obs)


def mlp(in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int, act: str = "mish",
        layer_norm: bool | str = False, linear: Callable[..., nn.Module] = nn.Linear,
        norm: Callable[..., nn.Module] = nn.LayerNorm) -> nn.Sequential:
    """Linear (+LayerNorm) + act per hidden width, then a linear head. ``layer_norm``: False, True (before the
    act) or ``"post"`` (after it, eps 1e-6: FQL). ``linear``/``norm`` make the layers (EnsembleMLP's are batched)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(linear(d, h))
        if layer_norm and layer_norm != "post":
            layers.append(norm(h))
        layers.append(activation(act))
        if layer_norm == "post":
            layers.append(norm(h, eps=1e-6))  # flax's eps, as FQL's ``MLP`` (utils/networks.py:53-57)
        d = h
    layers.append(linear(d, out_dim))
    return nn.Sequential(*layers)


class SinusoidalPosEmb(nn.Module):
    """Fixed sinusoidal embedding of the diffusion step (Diffusion-QL's time embedding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([x.sin(), x.cos()], dim=-1)


class FourierFeatures(nn.Module):
    """Fourier features of t: learnable, std 0.2 (IDQL), or fixed, std 30 (SfBC/QGPO/SRPO's Gaussian projection)."""

    def __init__(self, out_dim: int, std: float = 0.2, learnable: bool = True) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(out_dim // 2, 1) * std, requires_grad=learnable)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t.float().reshape(-1, 1) @ self.kernel.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class Denoiser(nn.Module):
    """``eps = net(x_t, t, obs)``; with ``cond_dim`` > 0 also ``cond`` and ``keep`` (classifier-free guidance)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ConditionEmbedding(nn.Module):
    """Embeds a condition c (e.g. a value label) for classifier-free guidance: (B, emb_dim). Rows where ``keep``
    is False (all when ``cond`` is None) get a learned null token, so "unconditional" is never c = 0."""

    def __init__(self, cond_dim: int, emb_dim: int = 32, act: str = "mish") -> None:
        super().__init__()
        self.cond_dim, self.emb_dim = cond_dim, emb_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, emb_dim * 2), activation(act), nn.Linear(emb_dim * 2, emb_dim))
        self.null = nn.Parameter(torch.randn(emb_dim) * 0.02)

    def forward(self, cond: torch.Tensor | None, keep: torch.Tensor | None, batch: int) -> torch.Tensor:
        null = self.null.expand(batch, self.emb_dim)
        if cond is None:
            return null
        emb = self.mlp(cond.reshape(batch, self.cond_dim))
        if keep is None:
            return emb
        return torch.where(keep.reshape(batch, 1).bool(), emb, null)


class MLPDenoiser(Denoiser):
    """Diffusion-QL's ``MLP``: [a_t, emb(t), s] -> 3x256 Mish -> eps, emb(t) = sinusoidal(t_dim) -> Linear -> Mish
    -> Linear (t_dim 16). ``cond_dim`` > 0 appends a :class:`ConditionEmbedding` (``forward``'s ``cond``, ``keep``);
    with 0 the module is exactly Diffusion-QL's, parameter names included."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, depth: int = 3, t_dim: int = 16,
                 act: str = "mish", cond_dim: int = 0, cond_emb: int = 32, obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = _maybe_norm(obs_dim, obs_norm)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(t_dim), nn.Linear(t_dim, t_dim * 2), activation(act),
                                      nn.Linear(t_dim * 2, t_dim))
        if cond_dim > 0:
            self.label_emb = ConditionEmbedding(cond_dim, cond_emb, act)
        self.net = mlp(act_dim + t_dim + obs_dim + (cond_emb if cond_dim > 0 else 0), [hidden] * depth, act_dim, act)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        parts = [x, self.time_mlp(t), _normed(self, obs)]
        if hasattr(self, "label_emb"):
            parts.append(self.label_emb(cond, keep, x.shape[0]))
        return self.net(torch.cat(parts, dim=-1))

    def chain_context(self, obs: torch.Tensor, T: int) -> tuple[torch.Tensor, ...] | None:
        """The state's and the T steps' shares of the first layer, once per reverse chain: W [a; e_t; s] + b =
        W_a a + W_e e_t + (W_s s + b), so :meth:`chain_step` multiplies only the action columns and the time MLP
        runs on T rows, not T x B (same function up to rounding). None with a condition input."""
        if hasattr(self, "label_emb"):
            return None
        obs, first, t_dim = _normed(self, obs), self.net[0], self.time_mlp[-1].out_features
        a, w = first.in_features - t_dim - obs.shape[-1], first.weight
        steps = F.linear(self.time_mlp(torch.arange(T, device=obs.device)), w[:, a:a + t_dim])
        return w[:, :a], F.linear(obs, w[:, a + t_dim:], first.bias), steps

    def chain_step(self, x: torch.Tensor, t: int, ctx: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``forward(x, full(t), obs)`` given ``chain_context(obs, T)``."""
        w_a, state, steps = ctx
        h = torch.addmm(state + steps[t], x, w_a.t())
        for layer in itertools.islice(self.net, 1, None):
            h = layer(h)
        return h


class ResidualBlock(nn.Module):
    """IDQL's MLPResNet block: x + W2 act(W1 LN(dropout(x))), inner width 4x."""

    def __init__(self, dim: int, dropout: float, act: str) -> None:
        super().__init__()
        self.dropout = SeededDropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 4)
        self.act = activation(act)
        self.fc2 = nn.Linear(dim * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(self.dropout(x)))))


#: the LN-ResNet's time embeddings: IDQL's, or continuous-time codes' ``GaussianFourierProjection(scale=30)``
TIME_EMBEDS: dict[str, dict[str, float | bool]] = {"learned": {"std": 0.2, "learnable": True},
                                                   "gaussian": {"std": 30.0, "learnable": False}}


class LNResNetDenoiser(Denoiser):
    """IDQL's denoiser: Fourier(t) -> MLP(128,128) cond; [cond, s, a_t] -> Dense -> 3 LN-ResNet blocks -> eps."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, blocks: int = 3, dropout: float = 0.1,
                 t_dim: int = 64, cond_hidden: int = 128, act: str = "mish", cond_dim: int = 0,
                 cond_emb: int = 32, obs_norm: bool = False, time_embed: str = "learned") -> None:
        super().__init__()
        self.obs_norm = _maybe_norm(obs_dim, obs_norm)
        if time_embed not in TIME_EMBEDS:
            raise ValueError(f"unknown time_embed {time_embed!r}; known: {', '.join(TIME_EMBEDS)}")
        self.time_enc = FourierFeatures(t_dim, **TIME_EMBEDS[time_embed])
        self.cond = nn.Sequential(nn.Linear(t_dim, cond_hidden), activation(act),
                                  nn.Linear(cond_hidden, cond_hidden))
        if cond_dim > 0:  # classifier-free guidance label, as in MLPDenoiser
            self.label_emb = ConditionEmbedding(cond_dim, cond_emb, act)
        self.inp = nn.Linear(cond_hidden + obs_dim + act_dim + (cond_emb if cond_dim > 0 else 0), hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, dropout, act) for _ in range(blocks)])
        self.act = activation(act)
        self.out = nn.Linear(hidden, act_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.cond(self.time_enc(t)), _normed(self, obs), x]
        if hasattr(self, "label_emb"):
            parts.append(self.label_emb(cond, keep, x.shape[0]))
        h = self.inp(torch.cat(parts, dim=-1))
        return self.out(self.act(self.blocks(h)))

    def chain_context(self, obs: torch.Tensor, T: int) -> tuple[torch.Tensor, ...] | None:
        """As :meth:`MLPDenoiser.chain_context`."""
        if hasattr(self, "label_emb"):
            return None
        obs = _normed(self, obs)
        c = self.cond(self.time_enc(torch.arange(T, device=obs.device)))
        ch, o, w = c.shape[-1], obs.shape[-1], self.inp.weight
        return w[:, ch + o:], F.linear(obs, w[:, ch:ch + o], self.inp.bias), F.linear(c, w[:, :ch])

    def chain_step(self, x: torch.Tensor, t: int, ctx: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``forward(x, full(t), obs)`` given ``chain_context(obs, T)``."""
        w_a, state, steps = ctx
        h = torch.addmm(state + steps[t], x, w_a.t())
        return self.out(self.act(self.blocks(h)))


class DeterministicActor(nn.Module):
    """a = tanh(MLP(s)): a one-step policy with no noise input (SRPO's ``Dirac_Policy``)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int] | tuple[int, ...] = (256, 256),
                 act: str = "relu", obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = _maybe_norm(obs_dim, obs_norm)
        self.net = mlp(obs_dim, hidden, act_dim, act=act)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(_normed(self, obs)))


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)  # the same init as nn.Linear, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """E MLPs with the same shape evaluated together; input (B, in) or (E, B, in), output (E, B, out)."""

    def __init__(self, ensemble: int, in_dim: int, hidden: list[int] | tuple[int, ...], out_dim: int,
                 act: str = "mish", layer_norm: bool | str = False) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.net = mlp(in_dim, hidden, out_dim, act, layer_norm, functools.partial(EnsembleLinear, ensemble),
                       functools.partial(_EnsembleLayerNorm, ensemble))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.ensemble, -1, -1)
        return self.net(x)

    def forward_members(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``forward(x)[idx]`` computing only those members, with no host sync (Diffusion-QL's Q term uses one)."""
        x = x.unsqueeze(0).expand(idx.shape[0], -1, -1)
        for layer in self.net:
            if isinstance(layer, EnsembleLinear):
                x = torch.baddbmm(layer.bias.index_select(0, idx), x, layer.weight.index_select(0, idx))
            elif isinstance(layer, _EnsembleLayerNorm):
                x = (F.layer_norm(x, (layer.dim,), eps=layer.eps) * layer.weight.index_select(0, idx)
                     + layer.bias.index_select(0, idx))
            else:
                x = layer(x)
        return x


class _EnsembleLayerNorm(nn.Module):
    def __init__(self, ensemble: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, dim))
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps) * self.weight + self.bias


class EnsembleQ(nn.Module):
    """E state-action critics Q_i(s, a) in one forward: returns (E, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int] | tuple[int, ...], ensemble: int = 2,
                 act: str = "relu", layer_norm: bool | str = False, obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = _maybe_norm(obs_dim, obs_norm)
        self.body = EnsembleMLP(ensemble, obs_dim + act_dim, hidden, 1, act=act, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([_normed(self, obs), act], dim=-1)).squeeze(-1)

    def members(self, obs: torch.Tensor, act: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Q of the members ``idx`` only: (len(idx), B), equal to ``forward(obs, act)[idx]``."""
        return self.body.forward_members(torch.cat([_normed(self, obs), act], dim=-1), idx).squeeze(-1)


class ValueNet(nn.Module):
    """State value V(s): returns (B,)."""

    def __init__(self, obs_dim: int, hidden: list[int] | tuple[int, ...], act: str = "relu",
                 layer_norm: bool | str = False, obs_norm: bool = False) -> None:
        super().__init__()
        self.obs_norm = _maybe_norm(obs_dim, obs_norm)
        self.body = mlp(obs_dim, hidden, 1, act=act, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(_normed(self, obs)).squeeze(-1)


INITS = ("torch", "flax")
_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]: flax divides it out


def init_(module: nn.Module, scheme: str = "torch") -> nn.Module:
    """Re-initialise ``module``'s linear layers in place as the method's own code does: ``torch`` keeps torch's
    U(+-1/sqrt(fan_in)) (Diffusion-QL); ``flax`` is IDQL's jaxrl5: xavier-uniform weights, zero biases, and flax's
    truncated lecun-normal inside each ResNet block. A JAX method rebuilt with torch's init starts elsewhere (a
    256 -> 3 head's xavier bound is 2.4x torch's) and trains differently at first (docs/algorithms.md, "Shared")."""
    if scheme == "torch":
        return module
    if scheme != "flax":
        raise ValueError(f"unknown init {scheme!r}; known: {list(INITS)}")
    inner = {id(layer) for block in module.modules() if isinstance(block, ResidualBlock)
             for layer in (block.fc1, block.fc2)}
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                if id(m) in inner:
                    std = math.sqrt(1.0 / m.in_features) / _TRUNC_STD
                    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, EnsembleLinear):  # weight (E, in, out): xavier per member
                _, fan_in, fan_out = m.weight.shape
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.uniform_(-bound, bound)
                m.bias.zero_()
    return module
