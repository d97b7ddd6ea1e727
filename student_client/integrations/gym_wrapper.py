"""Attach any Gymnasium trainer to a teacher: propose at each reset, report at each episode's end.

A trainer such as Stable-Baselines3 updates *after* an env step, so the update that follows an
episode's last step belongs to that episode. The wrapper therefore sends an episode's report at the
next ``step`` (or ``flush``/``close``), when the tracker holds exactly that episode's updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

from student_client.client import TeacherClient
from student_client.envs import family
from student_client.probes import GradNormTracker
from teacher_service.wire import Proposal, Signals, StudentContext


class TeacherCurriculumWrapper(gym.Wrapper):
    """Resets on the teacher's tasks and reports each episode's return, success, steps and gradient norms.

    Attach the trainer's optimizers to ``self.tracker`` (`GradNormTracker`) under the names "actor" and
    "critic" to report gradient norms; without them the report carries no gradient signals.
    """

    def __init__(self, env: gym.Env, client: TeacherClient, curriculum: str, student_id: str,
                 tracker: GradNormTracker | None = None) -> None:
        super().__init__(env)
        self.client = client
        self.curriculum = curriculum
        self.student_id = student_id
        self.tracker = tracker or GradNormTracker()
        # Episode-local signals of an ended episode, given its length; set by the SB3 callback.
        self.local_signals: Callable[[int], dict[str, float | None]] | None = None
        env_id = env.spec.id if env.spec else ""
        try:
            self._family = family(env_id)
        except ValueError:
            self._family = None  # your own env: options go through unchecked
        self._proposal: Proposal | None = None
        self._ended: tuple[Proposal, Signals] | None = None
        self._last_return: float | None = None
        self._reset_episode()

    def _reset_episode(self) -> None:
        self._return, self._steps, self._success = 0.0, 0, False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Ask the teacher for a task and reset on it (``options`` from the caller are replaced)."""
        self._proposal = self.client.propose(self.curriculum, self.student_id,
                                             StudentContext(last_return=self._last_return))
        options = self._proposal.reset_options
        env_options = self._family.env_options(self.env.unwrapped, options) if self._family and options else options
        obs, info = self.env.reset(seed=seed, options=env_options or None)
        if self._family and options:
            self._family.verify(self.env.unwrapped, options)
        self._reset_episode()
        info["proposal_id"] = self._proposal.proposal_id
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.flush()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._steps += 1
        self._success |= bool(info.get("success", False))
        if terminated or truncated:
            self._end_episode()
        return obs, reward, terminated, truncated, info

    def _end_episode(self) -> None:
        if self._proposal is None:
            return
        signals = Signals(episode_return=self._return, success=self._success, env_steps=self._steps)
        self._ended = (self._proposal, signals)
        self._last_return = self._return
        self._proposal = None

    def flush(self) -> None:
        """Send the report of the episode that ended, with the gradient norms of its updates."""
        if self._ended is None:
            return
        proposal, signals = self._ended
        stats = self.tracker.pop()
        grads: dict[str, Any] = {}
        if "actor" in stats:
            grads.update(grad_norm_mean=stats["actor"].mean, grad_norm_episode=stats["actor"].episode,
                         grad_updates=stats["actor"].updates)
            if self.local_signals is not None and stats["actor"].updates:
                grads.update(self.local_signals(signals.env_steps))
        if "critic" in stats:
            grads.update(critic_grad_norm_mean=stats["critic"].mean,
                         critic_grad_norm_episode=stats["critic"].episode)
        self.client.report(proposal.proposal_id, self.student_id, signals.model_copy(update=grads))
        self._ended = None

    def close(self) -> None:
        """Report the last episode, also one cut short by the end of training, then close the env."""
        if self._steps:
            self._end_episode()
        self.flush()
        super().close()
