"""Gradient-norm probes: the signals a student reports to its teacher.

For one episode with updates t = 1..N and a parameter group's gradient vector g_t (all its
parameters as one vector):

* ``mean``    = (1/N) sum_t ||g_t||   (the paper's "average gradient per time-step")
* ``episode`` = ||(1/N) sum_t g_t||   (the paper's "overall episode gradient")

The running sum of g_t is kept in tensors of our own, updated with ``add_``: the paper's code kept
*views* of ``.grad``, which the next ``zero_grad`` overwrote (defect 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GradStats:
    """Gradient statistics of one episode; ``None`` when the episode had no update."""

    mean: float | None
    episode: float | None
    updates: int


class GradNormAccumulator:
    """Accumulates ||g_t|| and sum_t g_t over the updates of one episode for a set of parameters.

    With ``members=K`` the parameters hold K independent models stacked along their first dimension
    (an ensemble of students): member k's gradient vector is the k-th slice of every parameter, and
    each member has its own statistics (``pop(k)``).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], members: int | None = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.members = members or 1
        like = self.params[0] if self.params else torch.empty(0)  # statistics on the parameters' device
        size = sum(p.numel() for p in self.params) // self.members
        self._grad_sum = torch.zeros(self.members, size, dtype=like.dtype, device=like.device)
        self._grad = torch.empty_like(self._grad_sum)  # this update's gradient, copied out of .grad
        self._norm_sum = torch.zeros(self.members, dtype=torch.float64, device=like.device)
        self._updates = [0] * self.members

    @property
    def updates(self) -> int:
        """Updates recorded since member 0's last ``pop``."""
        return self._updates[0]

    @torch.no_grad()
    def record(self) -> None:
        """Record the gradients now in ``.grad`` as one update (call after backward, before zeroing)."""
        k = self.members
        grads = [p.grad.reshape(k, -1) if p.grad is not None else p.new_zeros(k, p.numel() // k)
                 for p in self.params]
        flat = torch.cat(grads, dim=1, out=self._grad)  # (members, size): later changes to .grad cannot reach it
        self._norm_sum += torch.linalg.vector_norm(flat, dim=1)
        self._grad_sum += flat
        self._updates = [n + 1 for n in self._updates]

    @torch.no_grad()
    def pop(self, member: int = 0) -> GradStats:
        """Return this episode's statistics (of ``member``) and start its new episode."""
        n = self._updates[member]
        if n == 0:
            return GradStats(None, None, 0)
        mean = float(self._norm_sum[member]) / n
        episode = float(torch.linalg.vector_norm(self._grad_sum[member])) / n
        self._grad_sum[member].zero_()
        self._norm_sum[member].zero_()
        self._updates[member] = 0
        return GradStats(mean, episode, n)


class GradNormTracker:
    """Gradient-norm probes for external trainers (e.g. Stable-Baselines3), by optimizer hooks.

    ``attach(optimizer, name)`` records each ``optimizer.step()`` as one update of that optimizer's
    parameters, through a step pre-hook, so the trainer's code stays unmodified. Parameters without
    a gradient at a step count as zero. ``pop()`` returns and resets the statistics of every
    attached group, e.g. at the end of an episode.
    """

    def __init__(self) -> None:
        self.groups: dict[str, GradNormAccumulator] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def attach(self, optimizer: torch.optim.Optimizer, name: str) -> None:
        """Record every step of ``optimizer`` under ``name`` (e.g. "actor", "critic"). Attached again to the same
        parameters (the SB3 callback does at each ``learn()``), the running episode keeps the updates recorded so
        far."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        acc = self.groups.get(name)
        if acc is None or [id(p) for p in acc.params] != [id(p) for p in params if p.requires_grad]:
            acc = self.groups[name] = GradNormAccumulator(params)
        if name in self._handles:  # one hook per name: a learn() that raised left its hook
            self._handles.pop(name).remove()
        self._handles[name] = optimizer.register_step_pre_hook(lambda opt, args, kwargs: acc.record())

    def attach_module(self, module: torch.nn.Module, name: str) -> GradNormAccumulator:
        """Track ``module``'s parameters; the caller marks each update with ``record()`` on the result."""
        acc = GradNormAccumulator(module.parameters())
        self.groups[name] = acc
        return acc

    def pop(self) -> dict[str, GradStats]:
        """Statistics since the last ``pop`` for each attached group."""
        return {name: acc.pop() for name, acc in self.groups.items()}

    def detach(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
