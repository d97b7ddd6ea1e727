"""PointMaze_* and AntMaze_*: options ``{"reset_cell": [row, col], "goal_cell": [row, col]}``; several
PointMazes stepped together (`step_point_mazes`)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

from student_client.envs.base import TaskMismatchError

KEYS = ("reset_cell", "goal_cell")


def _cell(maze: Any, options: dict[str, Any], key: str) -> np.ndarray | None:
    """The cell as the env takes it (gymnasium-robotics documents an array; None: a cell it picks at random)."""
    value = options[key]
    if value is None:
        return None
    if isinstance(value, np.ndarray):  # what this function returns: options checked once may be checked again
        value = value.tolist() if value.dtype.kind in "iu" else value
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TaskMismatchError(f"{key} must be [row, col] integers, got {value!r}")
    row, col = int(value[0]), int(value[1])
    if not (0 <= row < maze.map_length and 0 <= col < maze.map_width):
        raise TaskMismatchError(f"{key} {value} is outside the {maze.map_length}x{maze.map_width} maze")
    if maze.maze_map[row][col] == 1:
        raise TaskMismatchError(f"{key} {value} is a wall cell")
    return np.array([row, col])


def walls(env_id: str) -> list[list[bool]]:
    """The wall cells of a registered maze, from its registration (nothing is made)."""
    return [[cell == 1 for cell in row] for row in gym.spec(env_id).kwargs["maze_map"]]


def env_options(env: gym.Env, options: dict[str, Any]) -> dict[str, Any]:
    """Check the cells (known keys, integers, inside the maze, not a wall) and pass them on."""
    unknown = set(options) - set(KEYS)
    if unknown:
        raise TaskMismatchError(f"unknown maze reset options {sorted(unknown)}; expected {KEYS}")
    return {key: _cell(env.maze, options, key) for key in KEYS if key in options}


def remove_model_file(env: gym.Env) -> None:
    """Delete the model file that gymnasium-robotics writes into the temp folder for each maze env it makes
    (`ant_maze<time>.xml`, PointMaze's too) and never deletes: a worker's envs left two a run. MuJoCo has read it
    once the env is made."""
    path = getattr(env, "tmp_xml_file_path", None)
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def verify(env: gym.Env, options: dict[str, Any]) -> None:
    """The agent's xy is inside the reset cell and the goal inside the goal cell (noise stays in the cell)."""
    positions = {"reset_cell": env.data.qpos[:2], "goal_cell": env.goal}
    for key in KEYS:
        if options.get(key) is not None:  # None: the env's own pick
            cell = [int(v) for v in env.maze.cell_xy_to_rowcol(np.asarray(positions[key]))]
            if cell != list(options[key]):
                raise TaskMismatchError(f"{key}: asked for {list(options[key])}, env is at cell {cell}")


def step_point_mazes(mazes: list[PointMazeEnv], actions: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``PointMazeEnv.step`` of each maze with its row of ``actions``: the same physics and values, bit for bit
    (tests/student/test_envs.py holds them to the envs' own steps), with the library's numpy work (clipping,
    norms, observation dicts) done once for all mazes. Returns (observations flattened as (observation,
    achieved_goal, desired_goal) in float32, rewards, terminated, success).

    Left out, as they change nothing: the velocity clip's copy when no velocity is out of bounds, and set_state's
    mj_forward before each step. mj_step recomputes everything that pass computes from the state, and the pass
    writes nothing mj_step reads (not the solver's warm start, which mj_step saves after integrating: a warm
    start changed by 1e-9 would change the next contact step). That is MuJoCo 4.0's behaviour, pinned in
    pyproject.toml; the test compares MuJoCo's whole integration state, warm start included.
    """
    model = mazes[0].point_env.model
    if actions.shape != (len(mazes), model.nu):
        raise ValueError(f"actions of shape {actions.shape} for {len(mazes)} mazes of {model.nu} actuators")
    actions = np.clip(actions, -1.0, 1.0)
    raw = np.empty((len(mazes), 4))  # qpos, qvel: PointEnv's observation
    for i, maze in enumerate(mazes):
        point = maze.point_env
        data = point.data
        if any(not -5.0 <= v <= 5.0 for v in data.qvel.tolist()):  # PointEnv._clip_velocity
            data.qvel[:] = np.clip(data.qvel, -5.0, 5.0)
        data.ctrl[:] = actions[i]  # MujocoEnv._step_mujoco_simulation
        mujoco.mj_step(point.model, data, nstep=point.frame_skip)
        mujoco.mj_rnePostConstraint(point.model, data)
        raw[i, :2], raw[i, 2:] = data.qpos, data.qvel
    goals = np.stack([maze.goal for maze in mazes])
    achieved = raw[:, :2]
    # The library's norms, computed the same ways: compute_reward's along an axis, the success check's by a dot.
    offset = achieved - goals
    distance = np.sqrt(np.add.reduce(offset * offset, axis=-1))
    success = np.array([np.sqrt(row.dot(row)) <= 0.45 for row in offset])
    dense = np.array([maze.reward_type == "dense" for maze in mazes])
    rewards = np.where(dense, np.exp(-distance), (distance <= 0.45).astype(np.float64))
    continuing = np.array([bool(maze.continuing_task) for maze in mazes])  # the library tests its truth
    terminated = success & ~continuing
    observations = np.concatenate([raw, achieved, goals], axis=1, dtype=np.float32)
    for i in np.flatnonzero(success & continuing):  # a continuing task may move its goal (update_goal)
        mazes[i].update_goal(achieved[i].copy())
    return observations, rewards, terminated, success
