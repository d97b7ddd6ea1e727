"""The teacher's reset options applied to an environment: `reset_options` for any trainer, `EnvAdapter` for
the worker (flat float32 observations, checked resets), `step_all` for K envs in lockstep."""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit
from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

import student_client.envs.adroit as adroit
import student_client.envs.maze as maze


def family(env_id: str) -> ModuleType:
    """The family module (options check and verification) of a gymnasium-robotics environment id."""
    if env_id.startswith(("PointMaze_", "AntMaze_")):
        return maze
    if env_id.startswith("AdroitHandRelocate"):
        return adroit
    raise ValueError(f"no adapter for {env_id!r}: supported are PointMaze_*, AntMaze_*, AdroitHandRelocate*")


def same_tasks(env_id: str, other: str) -> bool:
    """Whether the tasks of a preset for `env_id` are tasks of `other` too: the same family, and for mazes the same
    walls (a dense or sparse variant, PointMaze or AntMaze of one layout)."""
    if env_id == other:
        return True
    try:
        own = family(env_id)
        return family(other) is own and (own is not maze or maze.walls(env_id) == maze.walls(other))
    except (ValueError, gym.error.Error):  # no family, or not registered
        return False


def family_of(env: gym.Env) -> ModuleType | None:
    """The family of a made environment, None for an environment of your own."""
    try:
        return family(env.spec.id if env.spec else "")
    except ValueError:
        return None


def reset_options(env: gym.Env, options: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``env.reset(options=...)`` accepts for a proposal's ``reset_options``.

    Checked and converted for the preset families (maze cells as integer arrays; Adroit's
    ``initial_state_dict`` values as float64 arrays, as the raw env needs), passed through unchanged
    for an environment of your own; None for empty options (the environment's default task).
    Raises `TaskMismatchError` for options the environment cannot take.
    """
    if not options:
        return None
    own = family_of(env)
    return own.env_options(env.unwrapped, options) if own else options


def verify_reset(env: gym.Env, options: dict[str, Any] | None) -> None:
    """After ``env.reset``: raise `TaskMismatchError` unless a preset environment is where ``options`` said."""
    own = family_of(env)
    if own and options:
        own.verify(env.unwrapped, options)


class EnvAdapter:
    """Wraps one gymnasium env: ``reset(options)`` applies and verifies the teacher's task.

    Empty options mean the environment's own default start and goal.
    """

    def __init__(self, env_id: str, **make_kwargs: Any) -> None:
        own = family(env_id)  # a supported id, or ValueError before the env is made
        self.env_id = env_id
        self.env = gym.make(env_id, **make_kwargs)
        if own is maze:
            maze.remove_model_file(self.env.unwrapped)
        self.action_space = self.env.action_space
        self.obs_dim = int(self._flatten(self.env.observation_space.sample()).shape[0])
        self.act_dim = int(np.prod(self.action_space.shape))
        self._made = self.env
        self._wrappers, self._point_maze = _layers(self.env)
        self._maze_step_ready = False

    def reset(self, options: dict[str, Any] | None = None, seed: int | None = None) -> np.ndarray:
        """Reset on the given task (``{}``/``None``: env default) and return the flat observation."""
        obs, _ = self.env.reset(seed=seed, options=reset_options(self.env, options))
        verify_reset(self.env, options)
        return self._flatten(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, bool]:
        """(obs, reward, terminated, truncated, success) of one env step."""
        if self._steps_with_maze_step():
            obs, reward, terminated, truncated, success = _step_mazes([self], np.asarray(action)[None])
            return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), bool(success[0])
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._flatten(obs), float(reward), bool(terminated), bool(truncated), bool(info.get("success", False))

    def _steps_with_maze_step(self) -> bool:
        """Whether `step_point_mazes` may stand for ``self.env.step`` now: the env made here (not replaced), a
        PointMaze with a reward it knows, no rendering, under gymnasium.make's wrappers once those have nothing
        left to check (a reset done, the env checker's checks of the first steps done: both stay done); until
        then the wrappers step it, and raise what they raise."""
        if self.env is not self._made:
            return False
        if not self._maze_step_ready and self._point_maze is not None:
            maze = self._point_maze
            self._maze_step_ready = (maze.render_mode is None and maze.reward_type in ("dense", "sparse")
                                     and all(map(_has_nothing_to_check, self._wrappers)))
        return self._maze_step_ready

    def _count_step(self) -> bool:
        """The wrappers' part of a step that `step_point_mazes` did: TimeLimit's count; whether it truncates."""
        truncated = False
        for wrapper in self._wrappers:
            if isinstance(wrapper, TimeLimit):
                wrapper._elapsed_steps += 1
                truncated |= wrapper._elapsed_steps >= wrapper._max_episode_steps
        return truncated

    def close(self) -> None:
        self.env.close()

    @staticmethod
    def _flatten(obs: Any) -> np.ndarray:
        if isinstance(obs, dict):  # one concatenate that also casts: ~1 us less per env step than casting each part
            return np.concatenate([np.ravel(obs[k]) for k in ("observation", "achieved_goal", "desired_goal")
                                   if k in obs], dtype=np.float32)
        return np.asarray(obs, dtype=np.float32).ravel()


def _layers(env: gym.Env) -> tuple[list[gym.Wrapper], PointMazeEnv | None]:
    """The wrappers around a PointMaze whose wrappers are all of gymnasium.make's (TimeLimit, OrderEnforcing,
    PassiveEnvChecker), and the PointMaze; ([], None) for any other env."""
    wrappers = []
    while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
        wrappers.append(env)
        env = env.env
    return (wrappers, env) if type(env) is PointMazeEnv else ([], None)


def _has_nothing_to_check(wrapper: gym.Wrapper) -> bool:
    if isinstance(wrapper, OrderEnforcing):
        return wrapper._has_reset
    if isinstance(wrapper, PassiveEnvChecker):
        return wrapper.checked_step and wrapper.checked_data_reuse
    return True


def _step_mazes(envs: Sequence[EnvAdapter], actions: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`step_all` of PointMazes ready for `maze.step_point_mazes` (`EnvAdapter._steps_with_maze_step`)."""
    obs, rewards, terminated, success = maze.step_point_mazes([env._point_maze for env in envs], actions)
    return obs, rewards, terminated, np.array([env._count_step() for env in envs]), success


def step_all(envs: Sequence[EnvAdapter], actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One step of each env (each once) with its row of ``actions``: (observations (K, obs_dim) float32, rewards
    float64, terminated, truncated, success), K each, what each env's `EnvAdapter.step` gives. PointMazes step
    together (`maze.step_point_mazes`), the others one by one."""
    actions = np.asarray(actions)
    if not envs or len(actions) != len(envs) or len({id(env) for env in envs}) != len(envs):
        raise ValueError(f"step_all takes distinct envs, at least one, and one action each: {len(actions)} actions "
                         f"for {len(envs)} envs")
    if all(env._steps_with_maze_step() for env in envs):
        return _step_mazes(envs, actions)
    obs, rewards, terminated, truncated, success = zip(*(env.step(action) for env, action in zip(envs, actions)))
    return (np.stack(obs), np.array(rewards, dtype=np.float64), np.array(terminated), np.array(truncated),
            np.array(success))


class EnvArgumentsError(ValueError):
    """The environment refused keyword arguments given to `make_env` (gym.make's TypeError)."""


def make_env(env_id: str, **make_kwargs: Any) -> EnvAdapter:
    """The adapter for a gymnasium-robotics environment id."""
    try:
        return EnvAdapter(env_id, **make_kwargs)
    except TypeError as exc:
        if not make_kwargs:
            raise
        raise EnvArgumentsError(f"{env_id} does not take {make_kwargs}: {exc}") from exc
