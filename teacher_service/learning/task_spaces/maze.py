"""PointMaze_* and AntMaze_*: every (reset cell, goal cell) pair of distinct free cells."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from teacher_service.learning.task_spaces.base import DiscreteSpace


def is_maze(env_id: str) -> bool:
    return env_id.startswith(("PointMaze_", "AntMaze_"))


@lru_cache(maxsize=None)
def maze_map(env_id: str) -> tuple[tuple[int, ...], ...]:
    """The maze layout registered for this id (1 = wall), read from gymnasium-robotics' registry."""
    import farama_notifications
    import gymnasium as gym

    farama_notifications.notifications.pop("gymnasium_robotics", None)  # its Adroit notice: see README
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown environment id {env_id!r}") from exc
    layout = spec.kwargs.get("maze_map")
    if layout is None:
        raise ValueError(f"{env_id!r} registers no maze_map")
    # Cells marked 'r', 'g' or 'c' are free cells with a role in the default reset; the env only forbids 1.
    return tuple(tuple(1 if cell == 1 else 0 for cell in row) for row in layout)


@lru_cache(maxsize=None)
def shortest_paths(env_id: str) -> dict[tuple[int, int], dict[tuple[int, int], int]]:
    """Shortest path length in cells between every two free cells of the maze (breadth-first search)."""
    layout = maze_map(env_id)
    free = {(r, c) for r, row in enumerate(layout) for c, cell in enumerate(row) if cell == 0}
    table = {}
    for start in free:
        dist, queue = {start: 0}, deque([start])
        while queue:
            r, c = queue.popleft()
            for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if nxt in free and nxt not in dist:
                    dist[nxt] = dist[(r, c)] + 1
                    queue.append(nxt)
        table[start] = dist
    return table


def free_cells(env_id: str) -> list[tuple[int, int]]:
    return [(r, c) for r, row in enumerate(maze_map(env_id)) for c, cell in enumerate(row) if cell == 0]


def free_goal_cell(env_id: str, goal_cell: Sequence[int]) -> tuple[int, int]:
    goal = (int(goal_cell[0]), int(goal_cell[1]))
    if goal not in free_cells(env_id):
        raise ValueError(f"goal_cell {list(goal)} is not a free cell of {env_id}")
    return goal


def layout_with_goal(env_id: str, goal_cell: Sequence[int]) -> list[list[int | str]]:
    """The maze layout with its goal fixed at `goal_cell` ('g'), for gym.make(env_id, maze_map=...): the env's
    own reset then puts the goal there and the start in any other free cell."""
    goal = free_goal_cell(env_id, goal_cell)
    return [["g" if (r, c) == goal else cell for c, cell in enumerate(row)] for r, row in enumerate(maze_map(env_id))]


def maze_task_space(env_id: str, goal_cell: Sequence[int] | None = None) -> DiscreteSpace:
    """Every pair of distinct free cells; with `goal_cell`, only the pairs ending there (the teacher picks a start)."""
    free = free_cells(env_id)
    goals = free
    if goal_cell is not None:
        goals = [free_goal_cell(env_id, goal_cell)]
    # A goal in the start cell is solved at step 0 and teaches nothing, so such pairs are left out.
    pairs = [(start, goal) for start, goal in itertools.product(free, goals) if start != goal]
    return DiscreteSpace(
        names=[f"({s[0]},{s[1]})->({g[0]},{g[1]})" for s, g in pairs],
        values=np.array([[*s, *g] for s, g in pairs], dtype=np.float64),
        options=[{"reset_cell": list(s), "goal_cell": list(g)} for s, g in pairs],
        summary={
            "env_id": env_id,
            "maze_map": [list(row) for row in maze_map(env_id)],
            "free_cells": [list(cell) for cell in free],
            "coordinates": ["reset_row", "reset_col", "goal_row", "goal_col"],
            "goal_cell": None if goal_cell is None else list(goals[0]),
        },
    )


def maze_target_task(env_id: str, options: Any) -> dict[str, list[int]]:
    """`options` as a maze target task: exactly reset_cell and goal_cell, two distinct free cells."""
    if not isinstance(options, dict) or set(options) != {"reset_cell", "goal_cell"}:
        raise ValueError("a maze target task is {'reset_cell': [row, col], 'goal_cell': [row, col]}")
    free = set(free_cells(env_id))
    cells = {}
    for key, value in options.items():
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"{key} must be [row, col] integers, got {value!r}")
        if tuple(value) not in free:
            raise ValueError(f"{key} {value} is not a free cell of {env_id}")
        cells[key] = list(value)
    if cells["reset_cell"] == cells["goal_cell"]:
        raise ValueError("reset_cell and goal_cell must differ (a goal in the start cell is solved at step 0)")
    return {"reset_cell": cells["reset_cell"], "goal_cell": cells["goal_cell"]}


def farthest_pairs(env_id: str, space: DiscreteSpace, count: int) -> list[dict[str, list[int]]]:
    """The reset options of the `count` tasks of a maze space whose cells are farthest apart by shortest
    path (ties in task order); pairs with no path between them are left out."""
    paths = shortest_paths(env_id)
    distances = []
    for index, options in enumerate(space.options):
        distance = paths[tuple(options["reset_cell"])].get(tuple(options["goal_cell"]))
        if distance is not None:
            distances.append((-distance, index))
    if count > len(distances):
        raise ValueError(f"farthest: {count} pairs asked, the task space has {len(distances)} connected pairs")
    return [space.options[index] for _, index in sorted(distances)[:count]]
