"""A student's conversation with its teacher, and what the student does while the teacher is away.

Used by `student-worker` and by `TeacherCurriculumWrapper`, so both survive the same outages: while
the teacher is unreachable (and for ``retry_every`` seconds after each failed try) `propose` returns
None, meaning "train on the environment's default task", and reports and evaluations wait in a
durable `Outbox` until the teacher is back. A 4xx answer to a proposal (wrong curriculum or token)
is raised: retrying cannot help.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from student_client.client import TeacherClient, TeacherUnavailableError
from student_client.outbox import Outbox
from teacher_service.wire import EvaluationRequest, Proposal, ReportRequest, Signals, StudentContext

log = logging.getLogger(__name__)

Outcome = Literal["completed", "stopped", "abandoned"]


class TeacherSession:
    """Proposals and reports of one student on one curriculum, with the outage policy above.

    ``outbox``: a file that keeps undelivered messages across restarts (None: in memory only).
    The context sent with each proposal is the return and task of the last episode that the
    environment ended (`ended`), which may be before its report is sent.
    """

    def __init__(self, client: TeacherClient, curriculum: str, student_id: str, outbox: str | Path | None = None,
                 retry_every: float = 5.0) -> None:
        self.client = client
        self.curriculum = curriculum
        self.student_id = student_id
        self.outbox = Outbox(Path(outbox) if outbox is not None else None)
        self.retry_every = retry_every
        self.down_until = 0.0
        self.last_return: float | None = None
        self.last_task: list[float] | None = None

    def reachable(self) -> bool:
        """Whether to try the teacher now (False for ``retry_every`` seconds after a failed try)."""
        return time.monotonic() >= self.down_until

    def _mark_down(self) -> None:
        if self.reachable():
            log.warning("teacher unreachable; training on env-default tasks, reports kept in the outbox")
        self.down_until = time.monotonic() + self.retry_every

    def propose(self) -> Proposal | None:
        """The teacher's next task, or None (env default) while the teacher is unreachable."""
        self.flush()
        if not self.reachable():
            return None
        task = self.last_task if self.last_task is not None and len(self.last_task) <= 64 else None
        context = StudentContext(last_return=self.last_return, last_task=task)
        try:
            return self.client.propose(self.curriculum, self.student_id, context)
        except TeacherUnavailableError:
            self._mark_down()
            return None

    def ended(self, proposal: Proposal | None, episode_return: float) -> None:
        """The environment ended the episode of ``proposal``: its return and task are the next context."""
        self.last_task = proposal.task.values if proposal is not None and proposal.task else None
        self.last_return = episode_return

    def finish(self, proposal: Proposal | None, signals: Signals, outcome: Outcome = "completed") -> None:
        """Report an episode trained on ``proposal`` (None: an env-default task, nothing to report)."""
        if proposal is not None:
            self.outbox.put_report(ReportRequest(proposal_id=proposal.proposal_id, student_id=self.student_id,
                                                 signals=signals, outcome=outcome))
            self.flush()

    def release(self, proposal: Proposal) -> None:
        """Give back a proposal that no episode was trained on."""
        self.finish(proposal, Signals(), "abandoned")

    def evaluate(self, evaluation: EvaluationRequest) -> None:
        self.outbox.put_evaluation(evaluation)
        self.flush()

    def flush(self) -> None:
        """Deliver the outbox if the teacher may be reachable."""
        if self.outbox.pending and self.reachable():
            self.outbox.flush(self.client)
            if self.outbox.pending:
                self._mark_down()

    def drain(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> None:
        """At exit: keep delivering the outbox for up to ``timeout`` seconds (or until ``stop()``)."""
        deadline = time.monotonic() + timeout
        while self.outbox.pending and time.monotonic() < deadline and not stop():
            self.outbox.flush(self.client)
            if self.outbox.pending:
                time.sleep(min(self.retry_every, max(deadline - time.monotonic(), 0)))
        if self.outbox.pending:
            where = f"; they are delivered on the next start with {self.outbox.path}" if self.outbox.path else ""
            log.warning("%d messages left undelivered in the outbox%s", len(self.outbox.pending), where)
