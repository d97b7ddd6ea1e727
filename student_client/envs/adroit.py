"""AdroitHandRelocate-v1: options ``{"initial_state_dict": {qpos(36), qvel(36), obj_pos(3), target_pos(3)}}``.

The env reads nothing but ``options["initial_state_dict"]``; the paper's code passed these keys at the
top level of ``options`` and the teacher had no effect (defect 1), hence the strict check here.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from student_client.envs.base import TaskMismatchError

SHAPES = {"qpos": 36, "qvel": 36, "obj_pos": 3, "target_pos": 3}
OBJ_SLIDE_JOINTS = slice(30, 33)  # OBJTx, OBJTy, OBJTz: the ball's offset from its body position
TOLERANCE = 1e-6


def env_options(env: gym.Env, options: dict[str, Any]) -> dict[str, Any]:
    """Check keys, shapes and finiteness; the env needs float64 arrays where JSON gives lists."""
    if set(options) != {"initial_state_dict"}:
        raise TaskMismatchError(f"Adroit reset options must be exactly ['initial_state_dict'], got {sorted(options)}")
    state = options["initial_state_dict"]
    if not isinstance(state, dict) or set(state) != set(SHAPES):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise TaskMismatchError(f"initial_state_dict must have exactly the keys {sorted(SHAPES)}, got {keys}")
    arrays = {}
    for key, size in SHAPES.items():
        raw = state[key]
        numbers = raw.dtype.kind in "iuf" if isinstance(raw, np.ndarray) else isinstance(raw, (list, tuple)) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in raw)
        if not numbers:  # numpy would read "0.1" and True as numbers
            raise TaskMismatchError(f"initial_state_dict[{key!r}] is not a list of numbers")
        value = np.asarray(raw, dtype=np.float64)
        if value.shape != (size,):
            raise TaskMismatchError(f"initial_state_dict[{key!r}] must be {size} numbers, got shape {value.shape}")
        if not np.all(np.isfinite(value)):
            raise TaskMismatchError(f"initial_state_dict[{key!r}] holds NaN or infinite values")
        arrays[key] = value
    return {"initial_state_dict": arrays}


def verify(env: gym.Env, options: dict[str, Any]) -> None:
    """The ball body is at obj_pos (plus its slide joints), the target site at target_pos, qpos as given."""
    state = env_options(env, options)["initial_state_dict"]
    ball = env.data.xpos[env.obj_body_id]
    expected_ball = state["obj_pos"] + state["qpos"][OBJ_SLIDE_JOINTS]
    target = env.data.site_xpos[env.target_obj_site_id]
    if not np.allclose(ball, expected_ball, atol=TOLERANCE):
        raise TaskMismatchError(f"ball is at {ball}, teacher said {expected_ball}")
    if not np.allclose(target, state["target_pos"], atol=TOLERANCE):
        raise TaskMismatchError(f"target is at {target}, teacher said {state['target_pos']}")
    if not np.allclose(env.data.qpos, state["qpos"], atol=TOLERANCE):
        raise TaskMismatchError("hand/ball joint positions differ from the teacher's qpos")
