"""Choosing one of a policy's candidates with a guidance's values, by the papers' three rules: ``argmax`` (IDQL's
``eval_actions``), ``softmax`` (i ~ softmax(temperature Q): Diffusion-QL's temperature 1, the GFDT authors'
per-task ones) and ``expectile`` (IDQL's implicit policy: i ~ w / sum w, w_i = tau if Q_i > V else 1 - tau).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

RULES = ("argmax", "softmax", "expectile")
#: what each rule reads from the guidance beyond Q: a policy that selects declares it (``config_needs``)
RULE_NEEDS: dict[str, frozenset[str]] = {"expectile": frozenset({"v"})}


def selection_probs(rule: str, q: torch.Tensor, v: torch.Tensor | None = None, *, temperature: float = 1.0,
                    tau: float = 0.7) -> torch.Tensor:
    """The (B, N) distribution ``rule`` draws from (argmax: one-hot): how greedy a selection is."""
    if rule == "argmax":
        return torch.nn.functional.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
    if rule == "softmax":
        return torch.softmax(q * temperature, dim=1)
    if rule == "expectile":
        if v is None:
            raise ValueError("expectile selection needs V(s): use a guidance that provides 'v'")
        probs = torch.where(q - v[:, None] > 0, tau, 1 - tau)
        return probs / probs.sum(dim=1, keepdim=True)
    raise ValueError(f"unknown selection rule {rule!r}; known: {list(RULES)}")


def select_index(rule: str, q: torch.Tensor, v: torch.Tensor | None = None, *, temperature: float = 1.0,
                 tau: float = 0.7, generator: torch.Generator | None = None) -> torch.Tensor:
    """Index of the chosen candidate per state. ``q``: (B, N) values; ``v``: (B,) for ``expectile``."""
    if rule == "argmax":  # no draw: the generator's stream is left as it is
        return q.argmax(dim=1)
    probs = selection_probs(rule, q, v, temperature=temperature, tau=tau)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def candidate_q(candidates: torch.Tensor, obs: torch.Tensor, guidance) -> torch.Tensor:
    """Q of every (B, N, A) candidate at its state, (B, N): what every rule ranks by."""
    b, n, a = candidates.shape
    obs_rep = obs.unsqueeze(1).expand(b, n, obs.shape[-1]).reshape(b * n, -1)
    return guidance.q(obs_rep, candidates.reshape(b * n, a)).reshape(b, n)


def select_with_guidance(candidates: torch.Tensor, obs: torch.Tensor, guidance, rule: str, *,
                         temperature: float = 1.0, tau: float = 0.7,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """One of (B, N, A) candidates per state by ``rule``: (B, A). A rule the guidance cannot drive (``expectile``
    without V) is refused, not silently replaced while the config records it."""
    missing = RULE_NEEDS.get(rule, frozenset()) - frozenset(guidance.provides)
    if missing:
        raise ConfigError(f"selection {rule!r} needs {sorted(missing)} from the guidance, which "
                          f"{guidance.algorithm!r} does not provide (it provides {sorted(guidance.provides)}): select "
                          f"by argmax or softmax (policy.selection, --selection), or rank with a guidance that has it")
    q = candidate_q(candidates, obs, guidance)
    v = guidance.v(obs) if rule == "expectile" else None
    idx = select_index(rule, q, v, temperature=temperature, tau=tau, generator=generator)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), idx]
