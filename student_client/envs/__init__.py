"""Environment adapters, one module per family; `make_env` picks the right one."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from student_client.envs import adroit, maze
from student_client.envs.base import EnvAdapter, TaskMismatchError


def family(env_id: str) -> ModuleType:
    """The family module (options check and verification) of a gymnasium-robotics environment id."""
    if env_id.startswith(("PointMaze_", "AntMaze_")):
        return maze
    if env_id.startswith("AdroitHandRelocate"):
        return adroit
    raise ValueError(f"no adapter for {env_id!r}: supported are PointMaze_*, AntMaze_*, AdroitHandRelocate*")


def make_env(env_id: str, **make_kwargs: Any) -> EnvAdapter:
    """The adapter for a gymnasium-robotics environment id."""
    return EnvAdapter(env_id, family(env_id), **make_kwargs)


__all__ = ["EnvAdapter", "TaskMismatchError", "family", "make_env"]
