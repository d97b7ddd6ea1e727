"""Uniform replay buffer in preallocated float32 torch tensors, for one student or K in lockstep."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from student_client.sac.device import resolve_device


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor  # 1.0 where the episode terminated (not truncated): no bootstrap


class ReplayBuffer:
    """A ring buffer of transitions; size it to the run: ``min(buffer_size, total_steps)``.

    ``seed`` is one seed, or a list of K seeds for K students stepping in lockstep (an ensemble):
    then ``add`` takes each field with a leading member dimension, every member samples its own
    indices from its own generator, and batches are (K, batch_size, ...).

    Transitions are stored on ``device`` and batches come from there; the indices are drawn on the
    CPU, so that a seed gives the same batches on every device and checkpoints move across devices.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int | list[int] = 0,
                 device: str | torch.device = "cpu") -> None:
        self.members = len(seed) if isinstance(seed, list) else None
        lead = (capacity, self.members) if self.members else (capacity,)
        self.capacity = capacity
        self.device = device = resolve_device(device)
        self.obs = torch.zeros((*lead, obs_dim), dtype=torch.float32, device=device)
        self.next_obs = torch.zeros((*lead, obs_dim), dtype=torch.float32, device=device)
        self.actions = torch.zeros((*lead, act_dim), dtype=torch.float32, device=device)
        self.rewards = torch.zeros(lead, dtype=torch.float32, device=device)
        self.dones = torch.zeros(lead, dtype=torch.float32, device=device)
        self.pos = 0
        self.size = 0
        seeds = seed if self.members else [seed]
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self._member_index = torch.arange(self.members or 1, device=device).unsqueeze(1)

    @property
    def generator(self) -> torch.Generator:
        return self.generators[0]

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float | np.ndarray, next_obs: np.ndarray,
            done: bool | np.ndarray) -> None:
        i = self.pos
        self.obs[i] = torch.from_numpy(obs)
        self.actions[i] = torch.from_numpy(action)
        self.rewards[i] = torch.as_tensor(reward, dtype=torch.float32)
        self.next_obs[i] = torch.from_numpy(next_obs)
        self.dones[i] = torch.as_tensor(done, dtype=torch.float32)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if self.members is None:
            idx = torch.randint(self.size, (batch_size,), generator=self.generator).to(self.device)
        else:  # (members, batch) rows, each member's from its own stream
            idx = torch.stack([torch.randint(self.size, (batch_size,), generator=g) for g in self.generators])
            idx = (idx.to(self.device), self._member_index)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.dones[idx])

    def state_dict(self) -> dict:
        """The filled part only, so checkpoints of young runs stay small."""
        n = self.size
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": n,
            "obs": self.obs[:n].clone(),
            "next_obs": self.next_obs[:n].clone(),
            "actions": self.actions[:n].clone(),
            "rewards": self.rewards[:n].clone(),
            "dones": self.dones[:n].clone(),
            "generator": self.generator.get_state(),
            **({"generators": [g.get_state() for g in self.generators]} if self.members else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"buffer capacity {self.capacity} != checkpoint's {state['capacity']}")
        n = state["size"]
        for key in ("obs", "next_obs", "actions", "rewards", "dones"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.size = state["pos"], n
        for g, s in zip(self.generators, state.get("generators", [state["generator"]])):
            g.set_state(s)
