"""PointMaze_* and AntMaze_*: every (reset cell, goal cell) pair of distinct free cells."""

from __future__ import annotations

import itertools
from collections import deque
from functools import lru_cache

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


def maze_task_space(env_id: str) -> DiscreteSpace:
    layout = maze_map(env_id)
    free = [(r, c) for r, row in enumerate(layout) for c, cell in enumerate(row) if cell == 0]
    # A goal in the start cell is solved at step 0 and teaches nothing, so such pairs are left out.
    pairs = [(start, goal) for start, goal in itertools.product(free, free) if start != goal]
    return DiscreteSpace(
        names=[f"({s[0]},{s[1]})->({g[0]},{g[1]})" for s, g in pairs],
        values=np.array([[*s, *g] for s, g in pairs], dtype=np.float64),
        options=[{"reset_cell": list(s), "goal_cell": list(g)} for s, g in pairs],
        summary={
            "env_id": env_id,
            "maze_map": [list(row) for row in layout],
            "free_cells": [list(cell) for cell in free],
            "coordinates": ["reset_row", "reset_col", "goal_row", "goal_col"],
        },
    )
