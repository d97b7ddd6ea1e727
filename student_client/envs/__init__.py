"""Environment families, one module each (`maze`, `adroit`); `reset_options` turns a proposal's
``reset_options`` into what ``env.reset(options=...)`` accepts, `make_env` builds the worker's adapter."""

# base first: it silences gymnasium-robotics' import notice, which the adapter's own import of it would print.
from student_client.envs.base import TaskMismatchError
from student_client.envs.adapter import (
    EnvAdapter,
    EnvArgumentsError,
    family,
    make_env,
    reset_options,
    same_tasks,
    step_all,
    verify_reset,
)

__all__ = ["EnvAdapter", "EnvArgumentsError", "TaskMismatchError", "family", "make_env", "reset_options", "same_tasks",
           "step_all", "verify_reset"]
