"""`reset_options`: a real proposal's reset options, made acceptable to the raw gymnasium-robotics envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from student_client.envs import reset_options
from tests.servers import ServiceProcess


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    proc = ServiceProcess(tmp_path_factory.mktemp("service")).start()
    yield proc
    proc.stop()


def proposal_options(service, env_id: str) -> dict:
    """The reset options of a real proposal on a preset curriculum of ``env_id``."""
    with service.client() as http:
        spec = {"name": env_id, "task_space": {"kind": "preset", "env_id": env_id}}
        assert http.post("/curricula", json=spec).status_code == 201
        response = http.post("/propose", json={"curriculum": env_id, "student_id": "raw-0"})
    assert response.status_code == 200, response.text
    return response.json()["reset_options"]


def test_adroit_options_from_propose_reset_the_raw_env(service):
    options = proposal_options(service, "AdroitHandRelocate-v1")
    env = gym.make("AdroitHandRelocate-v1")
    with pytest.raises(AttributeError):  # the JSON lists, passed unchanged, crash the raw env
        env.reset(seed=0, options=options)
    env.reset(seed=0, options=reset_options(env, options))
    raw, state = env.unwrapped, options["initial_state_dict"]
    assert np.allclose(raw.data.site_xpos[raw.target_obj_site_id], state["target_pos"])
    # The ball sits at its body position plus its three slide joints (qpos 30..32).
    assert np.allclose(raw.data.xpos[raw.obj_body_id], np.add(state["obj_pos"], state["qpos"][30:33]))
    assert np.allclose(raw.data.qpos, state["qpos"])


@pytest.mark.parametrize("env_id", ["PointMaze_UMaze-v3", "AntMaze_UMaze-v5"])
def test_maze_options_from_propose_reset_the_raw_env(service, env_id):
    options = proposal_options(service, env_id)
    env = gym.make(env_id)
    env.reset(seed=0, options=reset_options(env, options))
    maze = env.unwrapped.maze
    assert [int(v) for v in maze.cell_xy_to_rowcol(env.unwrapped.goal)] == options["goal_cell"]
    assert [int(v) for v in maze.cell_xy_to_rowcol(env.unwrapped.data.qpos[:2])] == options["reset_cell"]


def test_empty_options_mean_the_env_default_and_own_envs_pass_through():
    env = gym.make("Pendulum-v1")
    assert reset_options(env, {}) is None and reset_options(env, None) is None
    assert reset_options(env, {"anything": [1, 2]}) == {"anything": [1, 2]}
