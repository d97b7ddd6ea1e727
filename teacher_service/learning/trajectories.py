"""How reported episodes become a teacher's learning batch: trajectories and their reward-to-go.

The batching contract (see `Teacher.horizon` and `Teacher.batch_size`): `horizon` consecutive
rewarded episodes of one student form a trajectory; a teacher is updated once `batch_size` episodes
in complete trajectories wait. The hub stores the grouping; the rule itself lives here.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from teacher_service.learning.teachers.base import Experience


def group_trajectories(open_episodes: list[int], horizon: int) -> list[list[int]]:
    """Split one student's rewarded, not yet grouped episodes (by their sequence numbers) into
    complete trajectories of `horizon` consecutive ones; an incomplete tail stays open."""
    ordered = sorted(open_episodes)
    return [ordered[start : start + horizon] for start in range(0, len(ordered) - horizon + 1, horizon)]


def _trajectories(batch: list[Experience]) -> list[list[int]]:
    """Indices into the batch, one list per trajectory, each in sequence order."""
    by_trajectory: dict[int, list[int]] = defaultdict(list)
    for i, exp in enumerate(batch):
        by_trajectory[exp.trajectory].append(i)
    return [sorted(indices, key=lambda i: batch[i].seq) for indices in by_trajectory.values()]


def reward_to_go(batch: list[Experience]) -> torch.Tensor:
    """Discount-1 reward-to-go within each trajectory, in the batch's order."""
    rtg = [0.0] * len(batch)  # a list, then one tensor: item assignment into a tensor costs microseconds each
    for indices in _trajectories(batch):
        running = 0.0
        for i in reversed(indices):
            running += batch[i].reward
            rtg[i] = running
    return torch.tensor(rtg, dtype=torch.float32)


def positions(batch: list[Experience]) -> torch.Tensor:
    """Each episode's position in its trajectory (0 for the first), in the batch's order."""
    result = [0] * len(batch)
    for indices in _trajectories(batch):
        for position, i in enumerate(indices):
            result[i] = position
    return torch.tensor(result, dtype=torch.float32)
