"""SfBC: Offline RL via High-Fidelity Generative Behavior Modeling (Chen, Lu, Ying, Su, Zhu; ICLR 2023).

Policy (a frozen, expressive behaviour model; no Q term in its loss):
    eps_theta <- argmin E[ || eps - eps_theta(sqrt(abar_t) a + sqrt(1 - abar_t) eps, t, s) ||^2 ]
Action selection ("selecting from behaviour candidates"), per state s:
    a_1..a_M ~ mu_theta(. | s)                                    M = 32 candidates
    l_i = min(alpha Q(s, a_i), l_(k) + 40)                        l_(k): the k-th largest logit
    pick k distinct indices by sampling without replacement from softmax(l);  a = mean of the k picked
The cap keeps k candidates with non-vanishing mass, so k draws without replacement stay defined; with
alpha = 100 on a return-normalized Q this is close to averaging the top-k (the released ``_select``).

Guidance: any Q. SfBC's own critic regresses Q on the dataset's discounted Monte-Carlo returns and then
re-labels them by "in-sample planning" with the trained behaviour model over the whole dataset (K iterations).
That needs per-transition returns and a behaviour model trained *before* the critic, an order none of modzoo's
schedules has; the closest fit here is an in-sample critic: ``idql`` (IQL) or ``dql`` with
``guidance.target_actions=dataset`` (SARSA: the Q of the behaviour policy that SfBC's first iteration fits).
"""
from __future__ import annotations

from pathlib import Path

import torch

from modzoo import Batch, DDPMPolicy, GuidanceModule, HalfSpec, Metrics, hookimpl

CONFIG = Path(__file__).with_name("sfbc.yaml")
LOGIT_CAP = 40.0  # ``allowed_max = np.sort(returns)[-num] + 40`` in the released ScoreBase._select


def sfbc_probs(q: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    """Selection probabilities over candidates: softmax of alpha Q capped at the k-th largest logit + 40.

    ``q``: (B, M) candidate values -> (B, M) probabilities.
    """
    logits = alpha * q
    kth = logits.topk(k, dim=1).values[:, -1:]
    return torch.softmax(torch.minimum(logits, kth + LOGIT_CAP), dim=1)


def sfbc_select(candidates: torch.Tensor, q: torch.Tensor, alpha: float, k: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw k distinct candidates per state with :func:`sfbc_probs` and average them: (B, M, A) -> (B, A)."""
    idx = torch.multinomial(sfbc_probs(q, alpha, k), k, replacement=False, generator=generator)  # (B, k)
    picked = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))
    return picked.mean(1)


class SfBCPolicy(DDPMPolicy):
    """Behaviour diffusion; 32 candidates, k=4 drawn by capped softmax(alpha Q) and averaged.

    Behaviour diffusion trained by BC alone; the guidance only ranks its candidates."""

    needs = frozenset({"q"})

    stackable = True

    def loss(self, batch: Batch, guidance: GuidanceModule | None = None) -> tuple[torch.Tensor, Metrics]:
        loss = self.bc_loss(batch)
        return loss, {"bc_loss": loss.detach()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, guidance: GuidanceModule | None = None, n: int | None = None) -> torch.Tensor:
        m = int(n or self.cfg["candidates"])
        cands = self.candidates(obs, m)
        if guidance is None or m == 1:
            return cands[:, 0]
        b = obs.shape[0]
        q = guidance.q(obs.repeat_interleave(m, 0), cands.reshape(b * m, -1)).reshape(b, m)
        k = min(int(self.cfg["select_per_state"]), m)
        return sfbc_select(cands, q, float(self.cfg["alpha"]), k, generator=self.gen())


@hookimpl
def modzoo_policies() -> list[HalfSpec]:
    return [HalfSpec("sfbc", SfBCPolicy, CONFIG, paper="Chen et al. 2023 (SfBC), arXiv:2209.14548")]
