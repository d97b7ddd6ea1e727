"""AdroitHandRelocate-v1: a box over the ball's table position and the target's position."""

from __future__ import annotations

import numpy as np

from teacher_service.learning.task_spaces.base import BoxSpace

ADROIT_RELOCATE_ID = "AdroitHandRelocate-v1"

# The environment's own default reset ranges (gymnasium-robotics 1.4.2, adroit_relocate.py reset_model).
# Note the ball's y range in the code is [-0.15, 0.3]; its docstring's prose agrees, older notes said [0.15, 0.3].
BALL_XY_LOW, BALL_XY_HIGH = (-0.15, -0.15), (0.15, 0.3)
TARGET_LOW, TARGET_HIGH = (-0.2, -0.2, 0.15), (0.2, 0.2, 0.35)
BALL_Z = 0.035  # the ball's body height in the model; the default reset leaves it unchanged
N_QPOS = N_QVEL = 36  # 30 hand joints + the ball's 6-dof free joint; default reset sets them all to 0


def relocate_reset_options(values: np.ndarray) -> dict:
    ball_x, ball_y, target_x, target_y, target_z = (float(v) for v in values)
    # Exactly the four keys set_env_state accepts; anything else fails its state-space check.
    return {
        "initial_state_dict": {
            "qpos": [0.0] * N_QPOS,
            "qvel": [0.0] * N_QVEL,
            "obj_pos": [ball_x, ball_y, BALL_Z],
            "target_pos": [target_x, target_y, target_z],
        }
    }


def relocate_values(options: dict) -> list[float]:
    state = options["initial_state_dict"]
    return [*state["obj_pos"][:2], *state["target_pos"]]


def adroit_relocate_task_space() -> BoxSpace:
    return BoxSpace(
        low=[*BALL_XY_LOW, *TARGET_LOW],
        high=[*BALL_XY_HIGH, *TARGET_HIGH],
        names=["ball_x", "ball_y", "target_x", "target_y", "target_z"],
        to_reset_options=relocate_reset_options,
        from_reset_options=relocate_values,
        summary={"env_id": ADROIT_RELOCATE_ID},
    )
