"""Episode-local signals: what SAC's losses say about one episode's own transitions.

SAC's update samples its batch from a replay buffer of every task seen, so the gradient norms of the
training updates during episode k say little about task k. After the episode, with the current networks
and no optimizer step, this module computes, on the episode's N transitions only:

* ``critic_grad_norm_local``: ||d L_Q / d critic||, L_Q = 0.5 sum_i mean_b (Q_i(s_b, a_b) - y_b)^2,
* ``grad_norm_local``:        ||d L_pi / d actor||, L_pi = mean_b (alpha log pi(a~_b|s_b) - min_i Q_i(s_b, a~_b)),
  a~_b ~ pi(s_b) reparameterized,
* ``positive_value_loss``:    (1/N) sum_t max(y_t - min_i Q_i(s_t, a_t), 0) over all N transitions,

with y = r + gamma (1 - terminated) (min_i Q'_i(s', a') - alpha log pi(a'|s')), a' ~ pi(s'), Q' the
target critics: SAC's own losses and TD target (``student_client.sac.agent``). The losses use a batch
of min(N, batch size) transitions drawn without replacement from the episode (all of them when N is
at most the batch size); each norm is of all the group's parameters as one vector, as in ``probes.py``.
Gradients come from ``torch.autograd.grad``: no ``.grad``, parameter or optimizer state changes.
The draws (the batch from the buffer's generator, the actions from the actor's noise) do advance those
random streams, so a run with local signals is reproducible but not the same run as one without.

One implementation, three callers: the worker (``agent_signals``), the Stable-Baselines3 callback
(``student_client.integrations.sb3``) and CleanRL-style trainers (``cleanrl_signals``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from student_client.sac.agent import SAC
from student_client.sac.buffer import ReplayBuffer
from student_client.sac.ensemble import EnsembleSAC

Obs = torch.Tensor | dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalSignals:
    """The three signals of one episode; None before learning starts."""

    grad_norm_local: float | None = None
    critic_grad_norm_local: float | None = None
    positive_value_loss: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class Transitions:
    """An episode's N transitions; ``dones`` is 1 where the episode terminated (no bootstrap)."""

    obs: Obs
    actions: torch.Tensor
    rewards: torch.Tensor  # (N,)
    next_obs: Obs
    dones: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class SACNets:
    """A SAC learner seen through what its losses need.

    ``policy(obs) -> (actions, log_prob)``: reparameterized actions and log pi of shape (B,).
    ``critics`` / ``target_critics(obs, actions) -> Q`` of shape (n_critics, B).
    """

    policy: Callable[[Obs], tuple[torch.Tensor, torch.Tensor]]
    critics: Callable[[Obs, torch.Tensor], torch.Tensor]
    target_critics: Callable[[Obs, torch.Tensor], torch.Tensor]
    actor_params: Sequence[torch.Tensor]
    critic_params: Sequence[torch.Tensor]
    alpha: float
    gamma: float


def _take(obs: Obs, idx: torch.Tensor) -> Obs:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]


def _grad_norm(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


def local_signals(nets: SACNets, episode: Transitions, batch_size: int,
                  generator: torch.Generator | None = None) -> LocalSignals:
    """The episode-local signals of ``episode`` (see the module docstring); ``generator`` draws the batch."""
    n = len(episode)
    if n == 0:
        return LocalSignals()
    with torch.no_grad():
        next_actions, next_log_prob = nets.policy(episode.next_obs)
        next_q = nets.target_critics(episode.next_obs, next_actions).min(0).values
        y = episode.rewards + nets.gamma * (1 - episode.dones) * (next_q - nets.alpha * next_log_prob.reshape(-1))
        value_loss = (y - nets.critics(episode.obs, episode.actions).min(0).values).clamp_min(0).mean()
    idx = torch.arange(n) if n <= batch_size else torch.randperm(n, generator=generator)[:batch_size]
    obs = _take(episode.obs, idx)
    q = nets.critics(obs, episode.actions[idx])
    critic_loss = 0.5 * (q - y[idx]).square().mean(1).sum()
    actions, log_prob = nets.policy(obs)
    actor_loss = (nets.alpha * log_prob.reshape(-1) - nets.critics(obs, actions).min(0).values).mean()
    return LocalSignals(grad_norm_local=_grad_norm(actor_loss, nets.actor_params),
                        critic_grad_norm_local=_grad_norm(critic_loss, nets.critic_params),
                        positive_value_loss=float(value_loss))


# ---------------------------------------------------------------- callers


def agent_signals(agent: SAC, buffer: ReplayBuffer, steps: int, member: int | None = None) -> LocalSignals:
    """The worker's: the last ``steps`` transitions of ``buffer``, the agent's batch size and the buffer's generator.

    A single SAC; or member k (``member=k``) of an ``EnsembleSAC`` and its ensemble buffer: computed as a
    single SAC with member k's weights, transitions and random streams (buffer and actor noise) would.
    """
    if member is not None:
        return _member_signals(agent, buffer, steps, member)
    if agent.members is not None:
        raise ValueError("agent_signals needs a single SAC, or member=k for an ensemble")
    idx = _tail(buffer, steps)
    episode = Transitions(buffer.obs[idx], buffer.actions[idx], buffer.rewards[idx], buffer.next_obs[idx],
                          buffer.dones[idx])
    return local_signals(_nets(agent), episode, agent.config.batch_size, buffer.generator)


def _member_signals(agent: EnsembleSAC, buffer: ReplayBuffer, steps: int, k: int) -> LocalSignals:
    idx = _tail(buffer, steps)
    # On the CPU, where agent.member(k) is, whatever the ensemble's device.
    episode = Transitions(*(field[idx, k].cpu() for field in (buffer.obs, buffer.actions, buffer.rewards,
                                                               buffer.next_obs, buffer.dones)))
    noise = agent.actor.generators[k]
    # A single student draws its actor noise from torch's stream: member k's generator plays that part.
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(noise.get_state())
        signals = local_signals(_nets(agent.member(k)), episode, agent.config.batch_size, buffer.generators[k])
        noise.set_state(torch.get_rng_state())
    return signals


def _tail(buffer: ReplayBuffer, steps: int) -> torch.Tensor:
    """Indices of the buffer's last ``steps`` transitions (at most its size), oldest first."""
    n = min(steps, buffer.size)
    return (buffer.pos - n + torch.arange(n)) % buffer.capacity


def _nets(agent: SAC) -> SACNets:
    return SACNets(policy=agent.actor.sample, critics=agent.critic, target_critics=agent.critic_target,
                   actor_params=list(agent.actor.parameters()), critic_params=list(agent.critic.parameters()),
                   alpha=float(agent.alpha), gamma=agent.config.gamma)


def cleanrl_signals(actor: torch.nn.Module, qfs: Sequence[torch.nn.Module], qf_targets: Sequence[torch.nn.Module],
                    alpha: float, gamma: float, episode: Transitions, batch_size: int,
                    generator: torch.Generator | None = None) -> LocalSignals:
    """For CleanRL's ``sac_continuous_action.py`` and trainers shaped like it.

    ``cleanrl_signals(actor, [qf1, qf2], [qf1_target, qf2_target], alpha, args.gamma, episode,
    args.batch_size, generator) -> LocalSignals``, where ``actor.get_action(obs)`` returns
    ``(action, log_prob, mean)``, each ``qf(obs, action)`` returns Q of shape (B, 1), and ``episode``
    holds the episode's transitions (``Transitions``; from CleanRL's Stable-Baselines3 replay buffer use
    ``student_client.integrations.sb3.replay_tail(rb, episode_length)``). The critic loss is SAC's
    0.5 sum_i MSE_i, as in our agent and SB3: CleanRL's own loss (sum_i MSE_i) has twice this gradient.
    Call it after the episode's last update; ``LocalSignals.as_dict()`` goes into the report's Signals.
    """

    def stacked(nets: Sequence[torch.nn.Module]) -> Callable[[Obs, torch.Tensor], torch.Tensor]:
        return lambda obs, actions: torch.stack([qf(obs, actions).reshape(-1) for qf in nets])

    nets = SACNets(policy=lambda obs: actor.get_action(obs)[:2], critics=stacked(qfs), target_critics=stacked(qf_targets),
                   actor_params=list(actor.parameters()), critic_params=[p for qf in qfs for p in qf.parameters()],
                   alpha=float(alpha), gamma=gamma)
    return local_signals(nets, episode, batch_size, generator)
