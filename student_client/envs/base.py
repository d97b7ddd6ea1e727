"""What every environment adapter shares: flat float32 observations and checked resets."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import gymnasium_robotics
import numpy as np

gym.register_envs(gymnasium_robotics)


class TaskMismatchError(ValueError):
    """The reset options are malformed, or the environment did not start where the teacher said."""


class EnvAdapter:
    """Wraps one gymnasium env: ``reset(options)`` applies and verifies the teacher's task.

    Empty options mean the environment's own default start and goal.
    """

    def __init__(self, env_id: str, **make_kwargs: Any) -> None:
        self.env_id = env_id
        self.env = gym.make(env_id, **make_kwargs)
        self.action_space = self.env.action_space
        self.obs_dim = int(self._flatten(self.env.observation_space.sample()).shape[0])
        self.act_dim = int(np.prod(self.action_space.shape))

    def reset(self, options: dict[str, Any] | None = None, seed: int | None = None) -> np.ndarray:
        """Reset on the given task (``{}``/``None``: env default) and return the flat observation."""
        if options:
            env_options = self._env_options(options)
            obs, _ = self.env.reset(seed=seed, options=env_options)
            self._verify(options)
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

    def _env_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the teacher's options and convert them to what the env's reset expects."""
        raise NotImplementedError

    def _verify(self, options: dict[str, Any]) -> None:
        """Raise `TaskMismatchError` unless the env now is in the state ``options`` asked for."""
        raise NotImplementedError
