"""Stable-Baselines3 glue: a callback that installs gradient-norm probes on an unmodified SAC/TD3,
and gives `TeacherCurriculumWrapper` the episode-local signals of an unmodified SAC."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from student_client.episode_signals import SACNets, Transitions, local_signals
from student_client.integrations.gym_wrapper import RemoteGradCredit, TeacherCurriculumWrapper
from student_client.probes import GradNormTracker


def replay_tail(buffer: ReplayBuffer, n: int, env_index: int = 0, vec_normalize: VecNormalize | None = None) -> Transitions:
    """The last ``n`` transitions of env ``env_index`` in an SB3 (Dict)ReplayBuffer, as its ``sample`` returns them.

    Every env step adds one row for all envs, so an episode of env i that just ended is the last n
    rows of column i. ``dones`` exclude timeouts, as SB3's sampling does; observations and rewards
    are normalized by ``vec_normalize`` if given.
    """
    n = min(n, buffer.buffer_size if buffer.full else buffer.pos)
    rows = (buffer.pos - n + np.arange(n)) % buffer.buffer_size

    def take(arrays: np.ndarray | dict[str, np.ndarray], rows: np.ndarray) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(arrays, dict):
            obs = buffer._normalize_obs({k: v[rows, env_index] for k, v in arrays.items()}, vec_normalize)
            return {k: buffer.to_torch(v) for k, v in obs.items()}
        return buffer.to_torch(buffer._normalize_obs(arrays[rows, env_index], vec_normalize))

    if getattr(buffer, "optimize_memory_usage", False):  # next observations are the following rows
        next_obs = take(buffer.observations, (rows + 1) % buffer.buffer_size)
    else:
        next_obs = take(buffer.next_observations, rows)
    dones = buffer.dones[rows, env_index] * (1 - buffer.timeouts[rows, env_index])
    rewards = buffer._normalize_reward(buffer.rewards[rows, env_index], vec_normalize)
    return Transitions(take(buffer.observations, rows), buffer.to_torch(buffer.actions[rows, env_index]),
                       buffer.to_torch(rewards), next_obs, buffer.to_torch(dones))


def sb3_nets(model) -> SACNets:
    """An SB3 SAC's networks, temperature and discount as the episode-local losses read them."""

    def stacked(critic: torch.nn.Module):
        return lambda obs, actions: torch.cat(critic(obs, actions), dim=1).T  # (n_critics, B)

    if model.ent_coef_optimizer is not None:
        alpha = float(model.log_ent_coef.detach().exp())
    else:
        alpha = float(model.ent_coef_tensor)
    return SACNets(policy=model.actor.action_log_prob, critics=stacked(model.critic),
                   target_critics=stacked(model.critic_target),
                   actor_params=[p for g in model.actor.optimizer.param_groups for p in g["params"]],
                   critic_params=[p for g in model.critic.optimizer.param_groups for p in g["params"]],
                   alpha=alpha, gamma=model.gamma)


class GradNormCallback(BaseCallback):
    """Hooks ``model.actor.optimizer`` and ``model.critic.optimizer`` into a `GradNormTracker`.

    With ``local_signals`` (SAC only) it also gives each `TeacherCurriculumWrapper` holding this
    tracker, in a ``DummyVecEnv`` (SB3's default for one env), the episode-local signals of its
    episodes (``student_client.episode_signals``), computed on the episode's transitions in the
    replay buffer when the wrapper reports, with a generator seeded by the model's seed.
    """

    def __init__(self, tracker: GradNormTracker, local_signals: bool = True) -> None:
        super().__init__()
        self.tracker = tracker
        self.local_signals = local_signals
        self.generator: torch.Generator | None = None

    def _on_training_start(self) -> None:
        self.tracker.attach(self.model.actor.optimizer, "actor")
        self.tracker.attach(self.model.critic.optimizer, "critic")
        if not (self.local_signals and hasattr(self.model, "ent_coef_optimizer")):
            return
        if self.generator is None:  # once: a second learn() continues the stream
            self.generator = torch.Generator().manual_seed(self.model.seed or 0)
        for i, env in enumerate(getattr(self.training_env, "envs", [])):  # only in-process envs share the model
            while isinstance(env, gym.Wrapper) and not isinstance(env, TeacherCurriculumWrapper):
                env = env.env
            if isinstance(env, TeacherCurriculumWrapper) and env.tracker is self.tracker:
                env.local_signals = partial(self.episode_signals, i)

    def episode_signals(self, env_index: int, steps: int) -> dict[str, float | None]:
        """The local signals of env ``env_index``'s episode of ``steps`` steps, the last in the buffer."""
        episode = replay_tail(self.model.replay_buffer, steps, env_index, self.model._vec_normalize_env)
        return local_signals(sb3_nets(self.model), episode, self.model.batch_size, self.generator).as_dict()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.tracker.detach()


class RemoteGradCreditVecEnv(VecEnvWrapper):
    """A ``SubprocVecEnv`` of `TeacherCurriculumWrapper` envs with exact gradient signals (`RemoteGradCredit`):
    give the model ``CallbackList([GradNormCallback(t) for t in vec_env.credit.trackers])``."""

    def __init__(self, venv) -> None:
        super().__init__(venv)
        # SB3 resets a sub-environment inside the step that ended its episode.
        self.credit = RemoteGradCredit(venv.num_envs, self._deliver, next_step_autoreset=False)

    def _deliver(self, stats: list) -> None:
        for i, env_stats in enumerate(stats):
            if env_stats is not None:
                self.venv.set_attr("grad_mail", env_stats, indices=[i])

    def step_async(self, actions: np.ndarray) -> None:
        self.credit.before_step()
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self.credit.after_step(dones)
        return obs, rewards, dones, infos

    def reset(self):
        self.credit.flush()
        return self.venv.reset()

    def close(self) -> None:
        self.credit.flush()
        self.venv.close()
