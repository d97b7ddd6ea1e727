"""PointMaze_* and AntMaze_*: options ``{"reset_cell": [row, col], "goal_cell": [row, col]}``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from student_client.envs.base import TaskMismatchError

KEYS = ("reset_cell", "goal_cell")


def _cell(maze: Any, options: dict[str, Any], key: str) -> tuple[int, int]:
    value = options[key]
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TaskMismatchError(f"{key} must be [row, col] integers, got {value!r}")
    row, col = int(value[0]), int(value[1])
    if not (0 <= row < maze.map_length and 0 <= col < maze.map_width):
        raise TaskMismatchError(f"{key} {value} is outside the {maze.map_length}x{maze.map_width} maze")
    if maze.maze_map[row][col] == 1:
        raise TaskMismatchError(f"{key} {value} is a wall cell")
    return row, col


def env_options(env: gym.Env, options: dict[str, Any]) -> dict[str, Any]:
    """Check the cells (known keys, integers, inside the maze, not a wall) and pass them on."""
    unknown = set(options) - set(KEYS)
    if unknown:
        raise TaskMismatchError(f"unknown maze reset options {sorted(unknown)}; expected {KEYS}")
    return {key: np.array(_cell(env.maze, options, key)) for key in KEYS if key in options}


def verify(env: gym.Env, options: dict[str, Any]) -> None:
    """The agent's xy is inside the reset cell and the goal inside the goal cell (noise stays in the cell)."""
    positions = {"reset_cell": env.data.qpos[:2], "goal_cell": env.goal}
    for key in KEYS:
        if key in options:
            cell = [int(v) for v in env.maze.cell_xy_to_rowcol(np.asarray(positions[key]))]
            if cell != list(options[key]):
                raise TaskMismatchError(f"{key}: asked for {list(options[key])}, env is at cell {cell}")
