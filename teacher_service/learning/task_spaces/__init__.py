"""Task spaces: from a gymnasium-robotics preset, or a user's own discrete list or box."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np

from teacher_service.learning.task_spaces.adroit import ADROIT_RELOCATE_ID, adroit_relocate_task_space
from teacher_service.learning.task_spaces.base import BoxSpace, DiscreteSpace, TaskSpace
from teacher_service.learning.task_spaces.maze import farthest_pairs, is_maze, maze_target_task, maze_task_space
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace, PresetTaskSpace, TargetSpec, TaskSpaceSpec

__all__ = ["BoxSpace", "DiscreteSpace", "TaskSpace", "ambiguity", "build_task_space", "resolve_target"]


def build_task_space(spec: TaskSpaceSpec) -> TaskSpace:
    """Build a task space; raises ValueError with a message for the user if the spec is unusable."""
    if isinstance(spec, PresetTaskSpace):
        if is_maze(spec.env_id):
            return maze_task_space(spec.env_id, spec.goal_cell)
        if spec.goal_cell is not None:
            raise ValueError("goal_cell is for maze presets (PointMaze_*, AntMaze_*) only")
        if spec.env_id == ADROIT_RELOCATE_ID:
            return adroit_relocate_task_space()
        raise ValueError(
            f"no preset for {spec.env_id!r}: presets are PointMaze_*, AntMaze_* and {ADROIT_RELOCATE_ID}; "
            "use a 'discrete' or 'box' task space for other environments"
        )
    if isinstance(spec, DiscreteTaskSpace):
        names = [t.name for t in spec.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        dims = {len(t.values) for t in spec.tasks if t.values is not None}
        if len(dims) > 1 or (dims and any(t.values is None for t in spec.tasks)):
            raise ValueError("either every task gives 'values' of one length, or none does")
        values = (
            np.array([t.values for t in spec.tasks], dtype=np.float64)
            if dims
            else np.arange(len(names), dtype=np.float64)[:, None]
        )
        options = [t.reset_options or {"task": t.name} for t in spec.tasks]
        return DiscreteSpace(names, values, options)
    if isinstance(spec, BoxTaskSpace):
        if len(spec.low) != len(spec.high):
            raise ValueError("low and high must have the same length")
        if any(lo >= hi for lo, hi in zip(spec.low, spec.high)):
            raise ValueError("every low must be below its high")
        names = spec.names or [f"x{i}" for i in range(len(spec.low))]
        if len(names) != len(spec.low):
            raise ValueError("names must have one entry per dimension")
        key = spec.option_key
        return BoxSpace(spec.low, spec.high, names, partial(options_under, key), partial(values_under, key))
    raise ValueError(f"unknown task space {spec!r}")


def ambiguity(space: TaskSpace) -> str | None:
    """Why a new task space would be ambiguous, if it is: two tasks of a discrete space that reset the environment the
    same way (`a` given `{"task": "b"}` beside a `b` given none: a proposal of one would train the student on the
    other), or two dimensions of a box by one name. Checked when a curriculum is created, not when a stored one is
    loaded, which would then fail every request of a curriculum made before."""
    seen: dict[str, str] = {}
    if isinstance(space, DiscreteSpace):
        for name, options in zip(space.names, space.options):
            first = seen.setdefault(json.dumps(_equal_alike(options), sort_keys=True), name)
            if first != name:
                return (f"tasks {first!r} and {name!r} have the same reset options: a proposal of one would reset the "
                        "environment to the other")
    elif len(set(space.names)) != len(space.names):
        return "names must be distinct, one per dimension"
    return None


def _equal_alike(value: Any) -> Any:
    """`value` with the numbers that Python (an environment's `==`, `options in space.options`) takes for equal
    written alike: 1, 1.0, True; 0.0 and -0.0."""
    if isinstance(value, dict):
        return {key: _equal_alike(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_equal_alike(item) for item in value]
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    return value


# A box's point as reset options {option_key: [values]}: functions, not lambdas, so that a space pickles (the
# teacher update worker gets the service's spaces, serving/update_worker.py).
def options_under(key: str, values: np.ndarray) -> dict[str, Any]:
    return {key: [float(x) for x in values]}


def values_under(key: str, options: dict[str, Any]) -> Any:
    return options[key]


def resolve_target(spec: TaskSpaceSpec, space: TaskSpace, target: TargetSpec) -> list[dict[str, Any]]:
    """The reset options of a curriculum's target tasks; ValueError with a message for the user if the
    target does not fit its task space (see wire.TargetSpec for what each kind of space accepts)."""
    maze = isinstance(spec, PresetTaskSpace) and is_maze(spec.env_id)
    if target.farthest is not None:
        if not maze:
            raise ValueError("farthest is for maze presets (PointMaze_*, AntMaze_*) only; give 'tasks' instead")
        return farthest_pairs(spec.env_id, space, target.farthest)
    resolved = []
    for i, options in enumerate(target.tasks):
        try:
            if maze:
                resolved.append(maze_target_task(spec.env_id, options))
            elif isinstance(space, DiscreteSpace):
                if options not in space.options:
                    raise ValueError("not the reset_options of any task of this discrete task space")
                resolved.append(options)
            else:
                space.values_of_options(options)
                resolved.append(options)
        except ValueError as exc:
            raise ValueError(f"tasks[{i}]: {exc}") from exc
    return resolved
