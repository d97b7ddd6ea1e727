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

Where the wrappers run in worker processes (gymnasium's ``AsyncVectorEnv``, SB3's ``SubprocVecEnv``), the
gradients are measured in the learner's process (`RemoteGradCredit`) and each episode's statistics are
delivered to its wrapper (`GradMailbox`) when the wrapper would have popped them in process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from student_client.client import TeacherClient
from student_client.envs import reset_options, verify_reset
from student_client.probes import GradNormTracker, GradStats
from student_client.session import Outcome, TeacherSession, reportable
from teacher_service.wire import Proposal, Signals


class GradMailbox:
    """The tracker of a wrapper in a worker process: holds the statistics the learner's process delivered."""

    def __init__(self) -> None:
        self.groups: dict[str, GradStats] = {}

    def pop(self) -> dict[str, GradStats]:
        stats, self.groups = self.groups, {}
        return stats


class RemoteGradCredit:
    """Gradient signals for wrappers in worker processes: one `GradNormTracker` per sub-environment here,
    next to the optimizers (``attach``), and each sub-environment's statistics sent to its wrapper by
    ``deliver(list of stats or None, one per sub-environment)``.

    Call ``before_step()`` before each vector step, ``after_step(dones)`` after it and ``flush()`` before a
    reset (``flush(envs)`` before a partial one) or close of the vector env (`RemoteGradCreditVectorEnv` and
    SB3's `RemoteGradCreditVecEnv` do).
    A sub-environment whose episode ended gets its statistics before its next step, after the update that
    followed the last step; with next-step autoreset it also gets, one step later, the update that followed
    the autoreset step, which its wrapper drops. Exact when the learner updates after every vector step.
    """

    def __init__(self, num_envs: int, deliver: Callable[[list[dict[str, GradStats] | None]], None],
                 next_step_autoreset: bool) -> None:
        self.trackers = [GradNormTracker() for _ in range(num_envs)]
        self.deliver = deliver
        self.next_step_autoreset = next_step_autoreset
        self._due: set[int] = set()
        self._autoresetting: set[int] = set()

    def attach(self, optimizer: Any, name: str) -> None:
        """Record every step of ``optimizer`` under ``name`` for every sub-environment."""
        for tracker in self.trackers:
            tracker.attach(optimizer, name)

    def before_step(self) -> None:
        self._send(self._due)
        self._due = set()

    def after_step(self, dones: Any) -> None:
        ended = {i for i, done in enumerate(dones) if done}
        self._due = ended | self._autoresetting
        self._autoresetting = ended if self.next_step_autoreset else set()

    def flush(self, envs: set[int] | None = None) -> None:
        """Send the statistics of the sub-environments about to be reset (all by default): their episodes end here."""
        envs = set(range(len(self.trackers))) if envs is None else envs
        self._send(envs)
        self._due -= envs
        self._autoresetting -= envs

    def _send(self, envs: set[int]) -> None:
        stats = [self.trackers[i].pop() if i in envs else None for i in range(len(self.trackers))]
        if any(s and any(g.updates for g in s.values()) for s in stats):
            self.deliver(stats)


class RemoteGradCreditVectorEnv(gym.vector.VectorWrapper):
    """Gymnasium's ``AsyncVectorEnv`` of `TeacherCurriculumWrapper` envs with exact gradient signals:
    attach the learner's optimizers with ``credit.attach(optimizer, "actor")`` (and "critic")."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        next_step = env.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.NEXT_STEP
        self.credit = RemoteGradCredit(env.num_envs, lambda stats: env.set_attr("grad_mail", stats), next_step)

    def step(self, actions: Any) -> tuple:
        self.credit.before_step()
        result = self.env.step(actions)
        self.credit.after_step(result[2] | result[3])
        return result

    def reset(self, **kwargs: Any) -> tuple:
        # A partial reset (`reset_mask`, autoreset disabled) ends only the masked envs' episodes: the others' statistics
        # sent now would be overwritten by those their wrappers get at their episodes' end.
        mask = (kwargs.get("options") or {}).get("reset_mask")
        self.credit.flush(None if mask is None else {int(i) for i in np.flatnonzero(mask)})
        return self.env.reset(**kwargs)

    def close(self, **kwargs: Any) -> None:
        self.credit.flush()
        self.env.close(**kwargs)


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
        self._ended: tuple[Proposal | None, dict[str, Any]] | None = None  # report waiting for its last update
        self._updates_at_end = 0
        self._skip_updates = False  # updates before the next step followed no step of any episode
        self._reset_episode()

    def _reset_episode(self) -> None:
        # success stays None (not measured) unless the env's infos carry it: reported False, an env without the notion
        # would fail every task for a teacher rewarded with success.
        self._return, self._steps, self._success = 0.0, 0, None

    def _updates(self) -> int:
        return sum(acc.updates for acc in self.tracker.groups.values())

    @property
    def grad_mail(self) -> None:
        return None

    @grad_mail.setter
    def grad_mail(self, stats: dict[str, GradStats] | None) -> None:
        """Statistics delivered by `RemoteGradCredit` (set through the vector env's ``set_attr``)."""
        if stats is not None:
            if not isinstance(self.tracker, GradMailbox):
                self.tracker = GradMailbox()
            self.tracker.groups = stats

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Ask the teacher for a task and reset on it (``options`` from the caller are replaced, with a warning)."""
        if options:
            warnings.warn("TeacherCurriculumWrapper.reset: the teacher's task replaces the options passed", stacklevel=2)
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
        if "success" in info:
            self._success = bool(self._success) or bool(info["success"])
        if terminated or truncated:
            self.session.ended(self._proposal, self._return)  # the next proposal's context, report or not
            self._ended = (self._proposal, self._measures())
            self._updates_at_end = self._updates()
            self._proposal = None
            self._reset_episode()
        return obs, reward, terminated, truncated, info

    def _measures(self) -> dict[str, Any]:
        return dict(episode_return=self._return, success=self._success, env_steps=self._steps)

    def _finish(self, proposal: Proposal | None, measures: dict[str, Any], outcome: Outcome) -> None:
        """Report an episode with the gradient norms of the updates since the last report."""
        stats = self.tracker.pop()
        grads: dict[str, Any] = {}
        if "actor" in stats:
            grads.update(grad_norm_mean=stats["actor"].mean, grad_norm_episode=stats["actor"].episode,
                         grad_updates=stats["actor"].updates)
            if self.local_signals is not None and stats["actor"].updates and proposal is not None:
                grads.update(self.local_signals(measures["env_steps"]))
        if "critic" in stats:
            grads.update(critic_grad_norm_mean=stats["critic"].mean,
                         critic_grad_norm_episode=stats["critic"].episode)
        self.session.finish(proposal, reportable(Signals, self.session.student_id, **measures, **grads), outcome)

    def flush(self) -> None:
        """Send the report of the episode that ended, with the gradient norms of its updates."""
        if self._ended is not None:
            proposal, measures = self._ended
            self._ended = None
            self._finish(proposal, measures, "completed")

    def _stop(self) -> None:
        """Cut the running episode short: report what ran of it as stopped, or release its proposal."""
        if self._steps:
            self._finish(self._proposal, self._measures(), "stopped")
        elif self._proposal is not None:
            self.session.release(self._proposal)
        self._proposal = None
        self._reset_episode()

    def close(self) -> None:
        """Report the ended episode, stop the running one, deliver the outbox (and give up its file), then close the
        env."""
        try:
            self.flush()
            self._stop()
            self.session.drain(self.drain_timeout)
        finally:  # also when the teacher refuses them (a wrong token): what is left stays in the outbox's file
            self.session.outbox.close()
            super().close()
