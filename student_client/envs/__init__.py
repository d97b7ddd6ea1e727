"""Environment adapters, one module per family; `make_env` picks the right one."""

from __future__ import annotations

from student_client.envs.base import EnvAdapter, TaskMismatchError


def make_env(env_id: str, **make_kwargs) -> EnvAdapter:
    """The adapter for a gymnasium-robotics environment id."""
    if env_id.startswith(("PointMaze_", "AntMaze_")):
        from student_client.envs.maze import MazeAdapter

        return MazeAdapter(env_id, **make_kwargs)
    if env_id.startswith("AdroitHandRelocate"):
        from student_client.envs.adroit import AdroitRelocateAdapter

        return AdroitRelocateAdapter(env_id, **make_kwargs)
    raise ValueError(f"no adapter for {env_id!r}: supported are PointMaze_*, AntMaze_*, AdroitHandRelocate*")


__all__ = ["EnvAdapter", "TaskMismatchError", "make_env"]
