"""Attach any Gymnasium trainer to a teacher: propose at each reset, report at each episode's end.

A trainer updates *after* an env step, so the update that follows an episode's last step belongs to
that episode. Where that update lands depends on when the trainer resets:

* same-step reset (Stable-Baselines3's VecEnvs, gymnasium's ``SAME_STEP`` autoreset, a plain loop):
  ``reset`` comes right after the last step, before the update; the report waits for the next ``step``;
* next-step reset (gymnasium's default ``NEXT_STEP`` autoreset): the update after the last step comes
  before ``reset``, which sends the report; the update after the autoreset step (which moved no
  environment) is credited to no episode.

A ``reset`` in mid-episode or ``close`` reports the part that ran as ``stopped``, and releases a
proposal no step was taken on (``abandoned``); neither rewards the teacher. The teacher's outages are
survived as `student-worker` survives them (`student_client.session`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

from student_client.client import TeacherClient
from student_client.envs import reset_options, verify_reset
from student_client.probes import GradNormTracker
from student_client.session import Outcome, TeacherSession
from teacher_service.wire import Proposal, Signals


class TeacherCurriculumWrapper(gym.Wrapper):
    """Resets on the teacher's tasks and reports each episode's return, success, steps and gradient norms.

    Attach the trainer's optimizers to ``self.tracker`` (`GradNormTracker`) under the names "actor" and
    "critic" to report gradient norms; without them the report carries no gradient signals. Each wrapper
    needs a tracker of its own: in a vector env whose sub-environments share one learner, attach every
    wrapper's tracker, and each update is credited to every episode that was running when it was made.

    While the teacher is unreachable the env resets on its own default tasks and reports wait in an
    outbox (``outbox``: a file that keeps them across restarts), delivered when the teacher is back and,
    for up to ``drain_timeout`` seconds, at ``close``.
    """

    def __init__(self, env: gym.Env, client: TeacherClient, curriculum: str, student_id: str,
                 tracker: GradNormTracker | None = None, outbox: str | Path | None = None,
                 retry_every: float = 5.0, drain_timeout: float = 10.0) -> None:
        super().__init__(env)
        self.session = TeacherSession(client, curriculum, student_id, outbox, retry_every)
        self.tracker = tracker or GradNormTracker()
        self.drain_timeout = drain_timeout
        # Episode-local signals of an ended episode, given its length; set by the SB3 callback.
        self.local_signals: Callable[[int], dict[str, float | None]] | None = None
        self._proposal: Proposal | None = None  # of the running episode (None: env default)
        self._ended: tuple[Proposal | None, Signals] | None = None  # report waiting for its last update
        self._updates_at_end = 0
        self._skip_updates = False  # updates before the next step followed no step of any episode
        self._reset_episode()

    def _reset_episode(self) -> None:
        self._return, self._steps, self._success = 0.0, 0, False

    def _updates(self) -> int:
        return sum(acc.updates for acc in self.tracker.groups.values())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Ask the teacher for a task and reset on it (``options`` from the caller are replaced)."""
        if self._ended is not None and self._updates() > self._updates_at_end:
            self.flush()  # next-step reset: the update after the last step is in
            self._skip_updates = True
        self._stop()
        self._proposal = self.session.propose()
        options = self._proposal.reset_options if self._proposal else None
        obs, info = self.env.reset(seed=seed, options=reset_options(self.env, options))
        verify_reset(self.env, options)
        if self._proposal:
            info["proposal_id"] = self._proposal.proposal_id
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.flush()
        if self._skip_updates:
            self.tracker.pop()
            self._skip_updates = False
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._steps += 1
        self._success |= bool(info.get("success", False))
        if terminated or truncated:
            self.session.ended(self._proposal, self._return)  # the next proposal's context, report or not
            self._ended = (self._proposal, self._signals())
            self._updates_at_end = self._updates()
            self._proposal = None
            self._reset_episode()
        return obs, reward, terminated, truncated, info

    def _signals(self) -> Signals:
        return Signals(episode_return=self._return, success=self._success, env_steps=self._steps)

    def _finish(self, proposal: Proposal | None, signals: Signals, outcome: Outcome) -> None:
        """Report an episode with the gradient norms of the updates since the last report."""
        stats = self.tracker.pop()
        grads: dict[str, Any] = {}
        if "actor" in stats:
            grads.update(grad_norm_mean=stats["actor"].mean, grad_norm_episode=stats["actor"].episode,
                         grad_updates=stats["actor"].updates)
            if self.local_signals is not None and stats["actor"].updates and proposal is not None:
                grads.update(self.local_signals(signals.env_steps))
        if "critic" in stats:
            grads.update(critic_grad_norm_mean=stats["critic"].mean,
                         critic_grad_norm_episode=stats["critic"].episode)
        self.session.finish(proposal, signals.model_copy(update=grads), outcome)

    def flush(self) -> None:
        """Send the report of the episode that ended, with the gradient norms of its updates."""
        if self._ended is not None:
            proposal, signals = self._ended
            self._ended = None
            self._finish(proposal, signals, "completed")

    def _stop(self) -> None:
        """Cut the running episode short: report what ran of it as stopped, or release its proposal."""
        if self._steps:
            self._finish(self._proposal, self._signals(), "stopped")
        elif self._proposal is not None:
            self.session.release(self._proposal)
        self._proposal = None
        self._reset_episode()

    def close(self) -> None:
        """Report the ended episode, stop the running one, deliver the outbox, then close the env."""
        self.flush()
        self._stop()
        self.session.drain(self.drain_timeout)
        super().close()
