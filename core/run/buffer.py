"""Offline batches sampled on the training device: the dataset moves there once; a batch is one ``randint`` and one
gather per field with the buffer's own generator (each seed its own data order, no host sync in a step).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def next_actions(observations: np.ndarray, actions: np.ndarray, next_observations: np.ndarray) -> np.ndarray:
    """The dataset's next action a'_i = a_{i+1} where row i+1 continues row i's episode (s'_i == s_{i+1}).
    Elsewhere a_i is repeated: a truncated episode's last row, whose next action is not in the data (SARSA-style
    critics then bootstrap from (s', a_i), a one-row approximation). A terminal row gets the next episode's first
    action, as d4rl's ``qlearning_transitions`` gives it that s'; (1 - d) zeroes the target, so it is never used."""
    nxt = actions.copy()
    if len(actions) > 1:
        cont = np.all(np.isclose(next_observations[:-1], observations[1:], atol=1e-6), axis=1)
        nxt[:-1][cont] = actions[1:][cont]
    return nxt


class ReplayBuffer:
    """An offline dataset as device tensors, sampled uniformly with replacement."""

    def __init__(self, dataset: Any, device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        arrays = {k: getattr(dataset, k) for k in ("observations", "actions", "rewards", "next_observations",
                                                   "terminals")}
        arrays["next_actions"] = next_actions(dataset.observations, dataset.actions, dataset.next_observations)
        self.data = {k: torch.as_tensor(np.asarray(v, dtype=np.float32), device=self.device)
                     for k, v in arrays.items()}
        self.size = len(dataset.observations)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))

    def with_seed(self, seed: int) -> "ReplayBuffer":
        """A buffer over the same device tensors with its own generator: seeds in one process share the data."""
        other = object.__new__(ReplayBuffer)
        other.device, other.data, other.size = self.device, self.data, self.size
        other.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        return other

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=self.generator)
        return {k: v.index_select(0, idx) for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
