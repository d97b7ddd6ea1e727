"""K independent SAC students in one set of networks: the seeds become a batch dimension.

Every layer of the actor, the critics and the target critics holds the K members' weights, so one
update of all K runs one batched matmul per layer (``SAC`` of agent.py with ``members=K``). The
losses are summed over members, so member k's gradients, Adam moments and temperature are exactly
those of a single SAC fed member k's batches. Small networks on a CPU are bound by per-operation
overhead, which the K members share.

Member k starts as a single SAC built after ``torch.manual_seed(seeds[k])`` and draws its actor
noise from its own generator, which continues torch's stream from there: a member behaves like a
single student with that seed, up to float rounding. ``member_state_dict``/``load_members``
convert to and from single-SAC states.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from student_client.sac.agent import SAC, SACConfig


def _member_slice(ens: torch.Tensor, like: torch.Tensor, k: int, members: int) -> torch.Tensor:
    """Member k's part of an ensemble tensor (members first), as a view in the layout of ``like``."""
    part = ens.view(members, -1)[k]
    if ens.dim() == 3 and like.dim() == 2:  # nn.Linear's weight is (out, in), EnsembleLinear's (in, out)
        return part.view(ens.shape[1:]).t()
    return part.view(like.shape)


class EnsembleSAC(SAC):
    """``len(seeds)`` independent SAC students trained together; batches are (K, batch_size, ...)."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: np.ndarray, action_high: np.ndarray,
                 config: SACConfig, seeds: list[int], probes: bool = True, device: str | torch.device = "cpu") -> None:
        super().__init__(obs_dim, act_dim, action_low, action_high, config, probes=probes, members=len(seeds),
                         device=device)
        states, generators = [], []
        for seed in seeds:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                # on the CPU: a seed gives the same initial weights on every device
                self._single = SAC(obs_dim, act_dim, action_low, action_high, config, probes=False)
                states.append(self._single.state_dict())
                generators.append(torch.Generator().set_state(torch.get_rng_state()))
        self.load_members(states)
        self.actor.generators = generators

    def _pairs(self, single: SAC) -> list[tuple[nn.Module, nn.Module, str]]:
        return [(self.actor, single.actor, "actor"), (self.critic, single.critic, "critic"),
                (self.critic_target, single.critic_target, "critic_target")]

    def _optimizers(self, single: SAC) -> list[tuple[torch.optim.Optimizer, torch.optim.Optimizer, str]]:
        pairs = [(self.actor_optimizer, single.actor_optimizer, "actor_optimizer"),
                 (self.critic_optimizer, single.critic_optimizer, "critic_optimizer")]
        if self.auto_alpha:
            pairs.append((self.alpha_optimizer, single.alpha_optimizer, "alpha_optimizer"))
        return pairs

    @staticmethod
    def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def member_state_dict(self, k: int) -> dict:
        """Member k as a single SAC's ``state_dict`` (copies of its slices)."""
        members, single = self.members, self._single
        state = single.state_dict()
        for ens, one, key in self._pairs(single):
            buffers = dict(one.named_buffers())
            state[key] = {name: (value.clone() if name in buffers else
                                 _member_slice(value, one.state_dict()[name], k, members).clone())
                          for name, value in ens.state_dict().items()}
        for ens, one, key in self._optimizers(single):
            opt_state = ens.state_dict()
            like = self._params(one)
            state[key] = {"param_groups": opt_state["param_groups"], "state": {
                i: {name: _member_slice(v, like[i], k, members).clone() if v.dim() else v.clone()
                    for name, v in entry.items()}
                for i, entry in opt_state["state"].items()}}
        state["log_alpha"] = self.log_alpha.detach()[k].clone()
        return state

    @torch.no_grad()
    def load_members(self, states: list[dict]) -> None:
        """Set member k from ``states[k]``, a single SAC's ``state_dict``; all at the same update count."""
        members, single = self.members, self._single
        if len(states) != members:
            raise ValueError(f"{len(states)} states for {members} members")
        for ens, one, key in self._pairs(single):
            buffers = dict(one.named_buffers())
            for name, value in ens.state_dict().items():
                for k, state in enumerate(states):
                    if name in buffers:
                        value.copy_(state[key][name])
                    else:
                        _member_slice(value, state[key][name], k, members).copy_(state[key][name])
        for ens, one, key in self._optimizers(single):
            params, like = self._params(ens), self._params(one)
            stacked = {}
            for i, entry in states[0][key]["state"].items():
                stacked[i] = {}
                for name, v in entry.items():
                    if v.dim() == 0:  # Adam's step count, shared by the members
                        if any(not torch.equal(s[key]["state"][i][name], v) for s in states):
                            raise ValueError(f"members are at different {key} steps")
                        stacked[i][name] = v.clone()
                    else:
                        t = stacked[i][name] = torch.empty_like(params[i])
                        for k, state in enumerate(states):
                            _member_slice(t, like[i], k, members).copy_(state[key]["state"][i][name])
            ens.load_state_dict({"param_groups": states[0][key]["param_groups"], "state": stacked})
        for k, state in enumerate(states):
            self.log_alpha[k].copy_(state["log_alpha"])
        self.alpha = self.log_alpha.detach().exp()

    def member(self, k: int) -> SAC:
        """Member k as a single SAC on the CPU (copies of its weights, optimizers and temperature), e.g. to
        measure it; the same SAC object is reloaded by every call."""
        self._single.load_state_dict(self.member_state_dict(k))
        return self._single

    def state_dict(self) -> dict:
        return {"members": [self.member_state_dict(k) for k in range(self.members)],
                "generators": [g.get_state() for g in self.actor.generators]}

    def load_state_dict(self, state: dict) -> None:
        self.load_members(state["members"])
        for g, s in zip(self.actor.generators, state["generators"]):
            g.set_state(s)
