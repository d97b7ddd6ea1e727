"""What every environment adapter shares: flat float32 observations and checked resets."""

from __future__ import annotations

from typing import Any, Protocol

import farama_notifications
import gymnasium as gym
import numpy as np

# gymnasium-robotics prints its Adroit reward notice to stderr on import, in every worker's log;
# acl-run says it once and the README names the pinned version instead.
farama_notifications.notifications.pop("gymnasium_robotics", None)
import gymnasium_robotics  # noqa: E402

gym.register_envs(gymnasium_robotics)


class TaskMismatchError(ValueError):
    """The reset options are malformed, or the environment did not start where the teacher said."""


class EnvFamily(Protocol):
    """A family module (``maze``, ``adroit``): how to read and check the teacher's reset options."""

    def env_options(self, env: gym.Env, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the options and convert them to what ``env.reset`` expects; raise `TaskMismatchError`."""

    def verify(self, env: gym.Env, options: dict[str, Any]) -> None:
        """After reset: raise `TaskMismatchError` unless the env is where ``options`` said."""


class EnvAdapter:
    """Wraps one gymnasium env: ``reset(options)`` applies and verifies the teacher's task.

    Empty options mean the environment's own default start and goal.
    """

    def __init__(self, env_id: str, family: EnvFamily, **make_kwargs: Any) -> None:
        self.env_id = env_id
        self.family = family
        self.env = gym.make(env_id, **make_kwargs)
        self.action_space = self.env.action_space
        self.obs_dim = int(self._flatten(self.env.observation_space.sample()).shape[0])
        self.act_dim = int(np.prod(self.action_space.shape))

    def reset(self, options: dict[str, Any] | None = None, seed: int | None = None) -> np.ndarray:
        """Reset on the given task (``{}``/``None``: env default) and return the flat observation."""
        if options:
            env_options = self.family.env_options(self.env.unwrapped, options)
            obs, _ = self.env.reset(seed=seed, options=env_options)
            self.family.verify(self.env.unwrapped, options)
        else:
            obs, _ = self.env.reset(seed=seed)
        return self._flatten(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]:
        """(obs, reward, terminated, truncated, success) of one env step."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._flatten(obs), float(reward), bool(terminated), bool(truncated), bool(info.get("success", False))

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def _flatten(obs: Any) -> np.ndarray:
        if isinstance(obs, dict):
            parts = [obs[k] for k in ("observation", "achieved_goal", "desired_goal") if k in obs]
            return np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in parts])
        return np.asarray(obs, dtype=np.float32).ravel()
