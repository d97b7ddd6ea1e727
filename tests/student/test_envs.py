"""Env adapters start where the teacher said, and refuse malformed options."""

import numpy as np
import pytest

from student_client.envs import TaskMismatchError, make_env
from teacher_service.learning.task_spaces.maze import layout_with_goal


@pytest.fixture(scope="module")
def point():
    return make_env("PointMaze_UMaze-v3")


@pytest.fixture(scope="module")
def ant():
    return make_env("AntMaze_UMaze-v5")


@pytest.fixture(scope="module")
def adroit():
    return make_env("AdroitHandRelocate-v1")


def cell_of(env, xy):
    return [int(v) for v in env.env.unwrapped.maze.cell_xy_to_rowcol(np.asarray(xy))]


@pytest.mark.parametrize("fixture", ["point", "ant"])
@pytest.mark.parametrize("reset_cell,goal_cell", [([1, 1], [3, 1]), ([3, 3], [1, 2]), ([1, 3], [3, 2])])
def test_maze_starts_in_the_teachers_cells(request, fixture, reset_cell, goal_cell):
    env = request.getfixturevalue(fixture)
    for seed in range(3):  # positions get noise within the cell
        obs = env.reset({"reset_cell": reset_cell, "goal_cell": goal_cell}, seed=seed)
        assert obs.dtype == np.float32 and obs.shape == (env.obs_dim,)
        assert cell_of(env, env.env.unwrapped.data.qpos[:2]) == reset_cell
        assert cell_of(env, obs[-2:]) == goal_cell  # desired_goal is the last part of the observation
        env.step(env.action_space.sample())


@pytest.mark.parametrize("options", [
    {"reset_cell": [0, 0]},  # wall
    {"goal_cell": [2, 1]},  # wall
    {"reset_cell": [9, 1]},  # outside
    {"reset_cell": [1, 1, 1]},  # wrong shape
    {"reset_cell": [1.0, 1.0]},  # not integers
    {"start_cell": [1, 1]},  # wrong key
])
def test_maze_rejects_bad_options(point, options):
    with pytest.raises(TaskMismatchError):
        point.reset(options)


def test_maze_empty_options_is_env_default(point):
    obs = point.reset({}, seed=0)
    assert obs.shape == (point.obs_dim,)


def test_a_layout_with_a_fixed_goal_keeps_the_goal_and_varies_the_start():
    """acl-experiment --goal-cell gives env-default students this maze_map: the env's own reset (no options)
    then puts the goal in that cell every time and the start anywhere else."""
    env = make_env("PointMaze_UMaze-v3", maze_map=layout_with_goal("PointMaze_UMaze-v3", [3, 1]))
    starts = set()
    for seed in range(30):
        obs = env.reset({}, seed=seed)
        assert cell_of(env, obs[-2:]) == [3, 1]
        starts.add(tuple(cell_of(env, env.env.unwrapped.data.qpos[:2])))
    assert (3, 1) not in starts and len(starts) >= 4
    with pytest.raises(ValueError, match="not a free cell"):
        layout_with_goal("PointMaze_UMaze-v3", [2, 1])


def teacher_state(env, obj_pos, target_pos):
    env.reset(seed=0)
    state = env.env.unwrapped.get_env_state()
    d = {k: [float(v) for v in state[k]] for k in ("qpos", "qvel")}
    return {"qpos": d["qpos"], "qvel": d["qvel"], "obj_pos": list(obj_pos), "target_pos": list(target_pos)}


@pytest.mark.parametrize("obj_pos,target_pos", [([0.1, 0.2, 0.035], [0.0, 0.1, 0.2]),
                                                ([-0.12, 0.16, 0.035], [0.18, -0.15, 0.33])])
def test_adroit_starts_at_the_teachers_state(adroit, obj_pos, target_pos):
    d = teacher_state(adroit, obj_pos, target_pos)  # JSON lists, as the service sends them
    adroit.reset({"initial_state_dict": d})
    u = adroit.env.unwrapped
    np.testing.assert_allclose(u.data.xpos[u.obj_body_id], obj_pos, atol=1e-9)
    np.testing.assert_allclose(u.data.site_xpos[u.target_obj_site_id], target_pos, atol=1e-9)
    _, _, _, _, success = adroit.step(np.zeros(adroit.act_dim, dtype=np.float32))
    assert isinstance(success, bool)


def test_adroit_rejects_bad_options(adroit):
    d = teacher_state(adroit, [0.1, 0.2, 0.035], [0.0, 0.1, 0.2])
    bad = [
        d,  # keys at the top level: the paper's defect 1
        {"initial_state_dict": {**d, "palm_pos": [0, 0, 0]}},  # extra key from get_env_state()
        {"initial_state_dict": {k: v for k, v in d.items() if k != "qvel"}},  # missing key
        {"initial_state_dict": {**d, "obj_pos": [0.1, 0.2]}},  # wrong shape
        {"initial_state_dict": {**d, "qpos": d["qpos"][:30]}},  # wrong shape
        {"initial_state_dict": {**d, "target_pos": [0.0, float("nan"), 0.2]}},
    ]
    for options in bad:
        with pytest.raises(TaskMismatchError):
            adroit.reset(options)


class DropOptions:
    """Fault injection: an env whose reset ignores its options (what defect 1 amounted to)."""

    def __init__(self, env):
        self.env, self.unwrapped, self.spec = env, env.unwrapped, env.spec

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed)


def test_a_reset_that_ignores_the_options_is_caught(point, adroit):
    real = point.env
    point.env = DropOptions(real)
    try:
        with pytest.raises(TaskMismatchError):
            for seed in range(20):  # the default goal may land in the asked cell by chance; not 20 times
                point.reset({"reset_cell": [3, 3], "goal_cell": [1, 1]}, seed=seed)
    finally:
        point.env = real
    d = teacher_state(adroit, [0.1, 0.2, 0.035], [0.0, 0.1, 0.2])
    real = adroit.env
    adroit.env = DropOptions(real)
    try:
        with pytest.raises(TaskMismatchError):
            adroit.reset({"initial_state_dict": d})
    finally:
        adroit.env = real
