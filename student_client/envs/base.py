"""What the environment family modules share: the gymnasium-robotics registration and the reset check's error."""

from __future__ import annotations

from typing import Any, Protocol

import farama_notifications
import gymnasium as gym

# gymnasium-robotics prints its Adroit reward notice to stderr on import, in every worker's log;
# acl-run says it once and the README names the pinned version instead.
farama_notifications.notifications.pop("gymnasium_robotics", None)
import gymnasium_robotics  # noqa: E402

gym.register_envs(gymnasium_robotics)


class TaskMismatchError(ValueError):
    """The reset options are malformed, or the environment did not start where the teacher said."""


class EnvFamily(Protocol):
    """A family module (``maze``, ``adroit``): how to read and check the teacher's reset options."""

    def env_options(self, env: gym.Env, options: dict[str, Any]) -> dict[str, Any]:
        """Validate the options and convert them to what ``env.reset`` expects; raise `TaskMismatchError`."""

    def verify(self, env: gym.Env, options: dict[str, Any]) -> None:
        """After reset: raise `TaskMismatchError` unless the env is where ``options`` said."""
