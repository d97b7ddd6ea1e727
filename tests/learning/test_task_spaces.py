"""Task spaces' pure parts: a maze with a fixed goal, and a curriculum's target resolved against its space."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from teacher_service.learning.task_spaces import build_task_space, resolve_target
from teacher_service.learning.task_spaces.maze import shortest_paths
from teacher_service.wire import BoxTaskSpace, DiscreteTaskSpace, PresetTaskSpace, TargetSpec

MEDIUM = "PointMaze_Medium-v3"


def resolve(spec, **target):
    return resolve_target(spec, build_task_space(spec), TargetSpec(**target))


def test_farthest_pairs_are_in_decreasing_shortest_path_order_and_all_pairs_at_most():
    spec = PresetTaskSpace(env_id=MEDIUM)
    paths = shortest_paths(MEDIUM)
    size = build_task_space(spec).size
    everything = resolve(spec, farthest=size)
    distances = [paths[tuple(o["reset_cell"])][tuple(o["goal_cell"])] for o in everything]
    assert distances == sorted(distances, reverse=True) and len(everything) == size
    assert resolve(spec, farthest=5) == everything[:5]
    assert distances[0] == max(max(row.values()) for row in paths.values())
    with pytest.raises(ValueError, match=f"{size + 1} pairs asked, the task space has {size}"):
        resolve(spec, farthest=size + 1)


def test_a_fixed_goal_keeps_pair_coordinates_and_only_its_pairs():
    free = build_task_space(PresetTaskSpace(env_id=MEDIUM)).summary()["free_cells"]
    goal = free[-1]
    space = build_task_space(PresetTaskSpace(env_id=MEDIUM, goal_cell=goal))
    assert space.size == len(free) - 1 and space.feature_dim == 4
    assert all(list(v[2:]) == goal for v in space.values.tolist())
    assert all(o["goal_cell"] == goal for o in space.options)
    farthest = resolve(PresetTaskSpace(env_id=MEDIUM, goal_cell=goal), farthest=3)
    start_distances = sorted(shortest_paths(MEDIUM)[tuple(goal)].values(), reverse=True)
    assert [shortest_paths(MEDIUM)[tuple(o["reset_cell"])][tuple(goal)] for o in farthest] == start_distances[:3]
    for bad, message in (([0, 0], "not a free cell"), ([99, 1], "not a free cell")):
        with pytest.raises(ValueError, match=message):
            build_task_space(PresetTaskSpace(env_id=MEDIUM, goal_cell=bad))


def test_box_targets_round_trip_through_the_reset_options():
    spec = BoxTaskSpace(low=[0, 0], high=[1, 2], option_key="p")
    assert resolve(spec, tasks=[{"p": [1, 2]}, {"p": [0.0, 0.5]}]) == [{"p": [1, 2]}, {"p": [0.0, 0.5]}]
    for options, message in (({"p": [1, 2.5]}, "outside the box"), ({"p": 3}, "not the reset options"),
                             ({"p": [True, 1]}, "not the reset options"), ({}, "not the reset options"),
                             ({"p": [10**400, 1]}, "beyond 64 bits")):
        with pytest.raises(ValueError, match=message):
            resolve(spec, tasks=[options])


def test_discrete_targets_are_reset_options_of_its_tasks():
    spec = DiscreteTaskSpace(tasks=[{"name": "easy"}, {"name": "hard", "reset_options": {"level": [3, {"walls": 2}]}}])
    targets = [{"task": "easy"}, {"level": [3, {"walls": 2}]}]
    assert resolve(spec, tasks=targets) == targets
    for options in ({"task": "hard"}, {"level": [3, {"walls": 3}]}, {"task": "easy", "x": 1}):
        with pytest.raises(ValueError, match="tasks\\[0\\]: not the reset_options of any task"):
            resolve(spec, tasks=[options])


@pytest.mark.parametrize("spec", [
    PresetTaskSpace(env_id=MEDIUM),
    PresetTaskSpace(env_id="AdroitHandRelocate-v1"),
    DiscreteTaskSpace(tasks=[{"name": "a", "values": [1.0]}, {"name": "b", "values": [2.0]}]),
    BoxTaskSpace(low=[0, -1], high=[1, 1], option_key="goal"),
], ids=lambda spec: spec.kind)
def test_every_kind_of_task_space_pickles_as_the_update_worker_receives_it(spec):
    space = build_task_space(spec)
    copy = pickle.loads(pickle.dumps(space))
    point = space.from_unit(np.array([0.5] * space.dim)) if space.kind == "box" else None
    if point is None:
        assert copy.options == space.options and (copy.features(1) == space.features(1)).all()
    else:
        assert copy.reset_options(point) == space.reset_options(point)
        assert list(copy.values_of_options(space.reset_options(point))) == list(point)
