"""Env adapters start where the teacher said, refuse malformed options, and step PointMazes together as
each would step alone."""

import re
import subprocess
import sys
import tempfile

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from student_client.envs import TaskMismatchError, make_env, step_all
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


def test_maze_options_take_what_the_raw_env_takes(point):
    """Cells as numpy arrays (gymnasium-robotics documents them so; `reset_options` of its own output failed) and
    None (the env picks the cell), as the raw env takes them; a float or boolean cell is still refused."""
    from student_client.envs import reset_options

    raw = point.env.unwrapped
    converted = reset_options(raw, {"reset_cell": [1, 1], "goal_cell": [3, 1]})
    assert {k: v.tolist() for k, v in reset_options(raw, converted).items()} == {"reset_cell": [1, 1], "goal_cell": [3, 1]}
    obs = point.reset({"reset_cell": None, "goal_cell": np.array([3, 1])}, seed=0)
    assert cell_of(point, obs[-2:]) == [3, 1]
    for cell in (np.array([1.0, 1.0]), np.array([True, True])):
        with pytest.raises(TaskMismatchError, match="must be \\[row, col\\] integers"):
            reset_options(raw, {"reset_cell": cell})


def test_maze_empty_options_is_env_default(point):
    obs = point.reset({}, seed=0)
    assert obs.shape == (point.obs_dim,)


@pytest.mark.parametrize("env_id", ["PointMaze_UMaze-v3", "AntMaze_UMaze-v5"])
def test_a_maze_leaves_no_model_file_in_the_temp_folder(env_id, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the temp folder gymnasium-robotics writes into
    gym.make(env_id).close()
    (left,) = tmp_path.iterdir()  # what the library alone leaves: one model file per env
    left.unlink()
    env = make_env(env_id)
    assert list(tmp_path.iterdir()) == []
    env.reset({"reset_cell": [1, 1], "goal_cell": [3, 1]}, seed=0)  # the model was read before the file went
    env.step(env.action_space.sample())


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
        {"initial_state_dict": {**d, "obj_pos": ["0.1", 0.2, 0.035]}},  # numpy read text and booleans as numbers
        {"initial_state_dict": {**d, "obj_pos": [True, 0.2, 0.035]}},
    ]
    says = ["must be exactly ['initial_state_dict']", "exactly the keys", "exactly the keys",
            "must be 3 numbers, got shape (2,)", "must be 36 numbers, got shape (30,)",
            "holds NaN or infinite values",  # not "must be 3 finite numbers, got shape (3,)" for a NaN
            "initial_state_dict['obj_pos'] is not a list of numbers", "is not a list of numbers"]
    for options, message in zip(bad, says, strict=True):
        with pytest.raises(TaskMismatchError, match=re.escape(message)):
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


def physics_state(env) -> np.ndarray:
    """MuJoCo's whole integration state: positions, velocities, controls, the solver's warm start, time."""
    model, data = env.unwrapped.point_env.model, env.unwrapped.point_env.data
    state = np.empty(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION))
    mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
    return state


UMAZE, DENSE, MOVING_GOAL = (("PointMaze_UMaze-v3", {}),  # sparse reward, continuing task: the benches' and presets'
                             ("PointMaze_UMazeDense-v3", {"continuing_task": False}),  # dense, ends at the goal
                             ("PointMaze_UMaze-v3", {"reset_target": True}))  # the goal moves when reached


@pytest.mark.parametrize("configs", [[UMAZE] * 3, [DENSE] * 3, [MOVING_GOAL] * 3, [UMAZE, DENSE, MOVING_GOAL]],
                         ids=["sparse", "dense-episodic", "moving-goal", "mixed"])
def test_point_mazes_stepped_together_step_as_the_library_steps_each(configs):
    """`step_all` (maze.step_point_mazes) against gymnasium-robotics' own step of identical envs: the same
    observations, rewards, ends and success, and the same MuJoCo state, bit for bit, through episode ends,
    clipped actions and clipped velocities."""
    ours = [make_env(env_id, **kwargs) for env_id, kwargs in configs]
    theirs = [gym.make(env_id, **kwargs) for env_id, kwargs in configs]
    k = len(configs)
    for seed, (mine, raw) in enumerate(zip(ours, theirs)):
        mine.reset(seed=seed)
        raw.reset(seed=seed)
    rng = np.random.default_rng(0)
    ends = successes = clipped_velocities = together = 0
    goal_moves = [0] * k
    for t in range(1500):
        if t % 25 == 0:  # held for 25 steps, so that the ball gathers speed past the velocity clip
            actions = rng.uniform(-1.5, 1.5, (k, 2)).astype(np.float32)
        clipped_velocities += sum(np.abs(raw.unwrapped.data.qvel).max() > 5.0 for raw in theirs)
        goals = [raw.unwrapped.goal.copy() for raw in theirs]
        together += all(mine._steps_with_maze_step() for mine in ours)
        obs, rewards, terminated, truncated, success = step_all(ours, actions)
        assert (obs.dtype, rewards.dtype, terminated.dtype, truncated.dtype, success.dtype) == (
            np.float32, np.float64, bool, bool, bool)
        for i, raw in enumerate(theirs):
            raw_obs, reward, raw_terminated, raw_truncated, info = raw.step(actions[i])
            np.testing.assert_array_equal(obs[i], ours[i]._flatten(raw_obs))
            assert (rewards[i], terminated[i], truncated[i], success[i]) == (
                reward, raw_terminated, raw_truncated, info["success"]), (t, i)
            goal_moves[i] += not np.array_equal(goals[i], raw.unwrapped.goal)
            if raw_terminated or raw_truncated:
                ends += 1
                raw.reset()
                ours[i].reset()
        successes += int(success.sum())
    for mine, raw in zip(ours, theirs):
        np.testing.assert_array_equal(physics_state(mine.env), physics_state(raw))
        np.testing.assert_array_equal(mine.env.unwrapped.goal, raw.unwrapped.goal)
    # The first two steps go through the wrappers (their checks), the rest together.
    assert together == 1500 - 2
    assert ends >= 3 and successes >= 5 and clipped_velocities >= 5, (ends, successes, clipped_velocities)
    moving = [bool(kwargs.get("reset_target")) for _, kwargs in configs]
    assert not any(moves for moves, can in zip(goal_moves, moving) if not can), goal_moves
    assert sum(moves for moves, can in zip(goal_moves, moving) if can) >= 2 * any(moving), goal_moves


def test_one_maze_steps_alone_as_the_library_steps_it():
    """`EnvAdapter.step` (the single worker's) takes the same path for one PointMaze."""
    mine, raw = make_env("PointMaze_UMaze-v3"), gym.make("PointMaze_UMaze-v3")
    mine.reset(seed=7)
    raw.reset(seed=7)
    rng = np.random.default_rng(1)
    for _ in range(400):
        action = rng.uniform(-1, 1, 2)
        obs, reward, terminated, truncated, success = mine.step(action)
        raw_obs, raw_reward, raw_terminated, raw_truncated, info = raw.step(action)
        np.testing.assert_array_equal(obs, mine._flatten(raw_obs))
        assert (reward, terminated, truncated, success) == (raw_reward, raw_terminated, raw_truncated, info["success"])
        assert type(reward) is float and type(success) is bool
    assert mine._steps_with_maze_step()
    np.testing.assert_array_equal(physics_state(mine.env), physics_state(raw))


def test_stepping_together_keeps_the_wrappers_checks():
    """Before a reset, step_all raises what gymnasium's order check raises; an env other than a PointMaze
    steps through its own step; an env given twice, or a count of actions other than the envs', is refused."""
    point = make_env("PointMaze_UMaze-v3")
    with pytest.raises(gym.error.ResetNeeded):
        step_all([point], np.zeros((1, 2), np.float32))
    point.reset(seed=0)
    for bad_envs, bad_actions in (([point, point], np.zeros((2, 2))), ([point], np.zeros((2, 2))), ([], [])):
        with pytest.raises(ValueError, match="step_all takes"):
            step_all(bad_envs, bad_actions)
    ant = make_env("AntMaze_UMaze-v5")
    first = ant.reset(seed=0)
    obs, rewards, terminated, truncated, success = step_all([ant], [np.zeros(ant.act_dim, np.float32)])
    assert obs.shape == (1, first.shape[0]) and obs.dtype == np.float32 and rewards.dtype == np.float64


def test_importing_the_env_helpers_prints_no_gymnasium_robotics_notice():
    """The Adroit reward notice went to stderr on every import (and in every worker's log): the adapter imported
    gymnasium-robotics before the module that silences it."""
    for module in ("student_client.envs", "student_client.envs.adapter", "student_client.integrations.gym_wrapper"):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=True)
        assert "reward functions were updated" not in done.stderr, module
