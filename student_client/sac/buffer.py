"""Uniform replay buffer in preallocated float32 torch tensors, for one student or K in lockstep."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from student_client.sac.device import resolve_device


FIELDS = ("obs", "next_obs", "actions", "rewards", "dones")  # what a checkpoint of a buffer holds, row by row


def fitted(state: dict, capacity: int) -> dict:
    """A buffer's ``state_dict`` for a buffer of `capacity` rows. A buffer is sized to its run (``min(buffer_size,
    steps)``), so a run resumed with a larger ``--steps`` has a larger one: the checkpoint's rows go to its start,
    oldest first, the newest `capacity` of them if it is smaller. The same capacity: the state as it is (the rows
    where they were, so that a resumed run samples what the uninterrupted one would)."""
    if state["capacity"] == capacity:
        return state
    order = torch.cat([torch.arange(state["pos"], state["size"]), torch.arange(0, state["pos"])])[-capacity:]
    return {**state, "capacity": capacity, "pos": len(order) % capacity, "size": len(order),
            **{key: state[key][order] for key in FIELDS}}


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

    Transitions are stored on ``device`` as rows (observation, action, next observation, reward,
    done) of one tensor, so that a batch is one indexing; the fields are views of it. The indices
    are drawn on the CPU, so that a seed gives the same batches on every device and checkpoints
    move across devices.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int | list[int] = 0,
                 device: str | torch.device = "cpu") -> None:
        self.members = len(seed) if isinstance(seed, list) else None
        lead = (capacity, self.members) if self.members else (capacity,)
        self.capacity = capacity
        self.device = resolve_device(device)
        self._widths = (obs_dim, act_dim, obs_dim, 1, 1)
        self.rows = torch.zeros((*lead, 2 * obs_dim + act_dim + 2), dtype=torch.float32, device=self.device)
        self.obs, self.actions, self.rewards, self.next_obs, self.dones = self._fields(self.rows)
        self.pos = 0
        self.size = 0
        seeds = seed if self.members else [seed]
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self._index = torch.empty((len(seeds), 0), dtype=torch.int64)  # reused between samples of one size
        self._member_index = torch.arange(self.members or 1, device=self.device).unsqueeze(1)

    def _fields(self, rows: torch.Tensor) -> Batch:
        obs, actions, next_obs, rewards, dones = rows.split(self._widths, dim=-1)
        return Batch(obs, actions, rewards.squeeze(-1), next_obs, dones.squeeze(-1))

    @property
    def generator(self) -> torch.Generator:
        return self.generators[0]

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float | np.ndarray, next_obs: np.ndarray,
            done: bool | np.ndarray) -> None:
        row = np.concatenate([obs, action, next_obs, np.stack([reward, done], axis=-1)], axis=-1, dtype=np.float32)
        self.rows[self.pos] = torch.from_numpy(row)  # one copy (to the device)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if self._index.shape[1] != batch_size:
            self._index = torch.empty((len(self.generators), batch_size), dtype=torch.int64)
        for row, g in zip(self._index.unbind(), self.generators):  # each member's rows from its own stream
            row.random_(0, self.size, generator=g)  # randint's values, without its argument parsing
        idx = self._index.to(self.device)
        return self._fields(self.rows[idx[0]] if self.members is None else self.rows[idx, self._member_index])

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
        state = fitted(state, self.capacity)
        n = state["size"]
        for key in FIELDS:
            getattr(self, key)[:n] = state[key]
        self.pos, self.size = state["pos"], n
        for g, s in zip(self.generators, state.get("generators", [state["generator"]])):
            g.set_state(s)
