"""PointMaze_* and AntMaze_*: options ``{"reset_cell": [row, col], "goal_cell": [row, col]}``."""

from __future__ import annotations

from typing import Any

import numpy as np

from student_client.envs.base import EnvAdapter, TaskMismatchError

KEYS = ("reset_cell", "goal_cell")


class MazeAdapter(EnvAdapter):
    """Maze env whose start and goal cells come from the teacher; positions get noise within the cell."""

    @property
    def maze(self) -> Any:
        return self.env.unwrapped.maze

    def _cell(self, options: dict[str, Any], key: str) -> tuple[int, int]:
        value = options[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
            raise TaskMismatchError(f"{key} must be [row, col] integers, got {value!r}")
        row, col = int(value[0]), int(value[1])
        if not (0 <= row < self.maze.map_length and 0 <= col < self.maze.map_width):
            raise TaskMismatchError(f"{key} {value} is outside the {self.maze.map_length}x{self.maze.map_width} maze")
        if self.maze.maze_map[row][col] == 1:
            raise TaskMismatchError(f"{key} {value} is a wall cell")
        return row, col

    def _env_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(KEYS)
        if unknown:
            raise TaskMismatchError(f"unknown maze reset options {sorted(unknown)}; expected {KEYS}")
        return {key: np.array(self._cell(options, key)) for key in KEYS if key in options}

    def _verify(self, options: dict[str, Any]) -> None:
        env = self.env.unwrapped
        agent_xy = env.data.qpos[:2]
        checks = {"reset_cell": agent_xy, "goal_cell": env.goal}
        for key in KEYS:
            if key in options:
                where = tuple(int(v) for v in self.maze.cell_xy_to_rowcol(np.asarray(checks[key])))
                if where != tuple(options[key]):
                    raise TaskMismatchError(f"{key}: asked for {options[key]}, env is at cell {list(where)}")
