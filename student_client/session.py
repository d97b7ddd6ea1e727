"""A student's conversation with its teacher, and what the student does while the teacher is away.

Used by `student-worker` and by `TeacherCurriculumWrapper`, so both survive the same outages: while
the teacher is unreachable (and for ``retry_every`` seconds after each failed try) `propose` returns
None, meaning "train on the environment's default task", and reports and evaluations wait in a
durable `Outbox` until the teacher is back. A 4xx answer to a proposal (wrong curriculum or token)
is raised: retrying cannot help. A try after a failed one first asks ``/healthz`` once, within
``PROBE_TIMEOUT_S`` (any answer but 502-504 will do: `TeacherClient.answers`): a teacher that is frozen
rather than stopped (a paused container, a network that drops packets) holds a call for all its retries
(about 52 s with the client's defaults), which every try would otherwise cost again. And from a failed try until
a call succeeds, each call makes one attempt (`TeacherClient.once`): a teacher that answers ``/healthz`` but not the
call (its database stalled, or shedding load with 503s) would otherwise hold every try for all the retries too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from student_client.client import TeacherClient, TeacherError, TeacherUnavailableError
from student_client.outbox import Outbox
from teacher_service.wire import (
    MAX_MAGNITUDE,
    EvaluationRequest,
    Proposal,
    ReportRequest,
    Signals,
    StudentContext,
    TargetTasks,
)

log = logging.getLogger(__name__)

Outcome = Literal["completed", "stopped", "abandoned"]
PROBE_TIMEOUT_S = 2.0
W = TypeVar("W", bound=BaseModel)
_warned: set[tuple[str, str, str]] = set()  # (student, field, fault) already logged


def _diverged(error: dict[str, Any]) -> bool:
    """Whether the schema refused a number that a diverged student measures: not finite, or beyond the schema's
    magnitude. A sign bound (a negative count or norm) is the caller's bug, and is raised."""
    if error["type"] == "finite_number":
        return True
    bounds = [abs(bound) for bound in error.get("ctx", {}).values() if isinstance(bound, (int, float))]
    return error["type"] in ("less_than_equal", "greater_than_equal") and bool(bounds) and bounds[0] >= MAX_MAGNITUDE


def reportable(model: type[W], student_id: str, /, **values: Any) -> W:
    """``model(**values)``, each number that the schema refuses because a student diverged (NaN, infinite, beyond its
    magnitude: a return or gradient) left out, so that the rest of the report goes through rather than the refusal
    failing the trainer: a field, or one key of a mapping (`extra`); logged once per student, field and fault, not
    each episode. Any other fault (a negative count, a name or type the schema does not know) is raised."""
    try:
        return model(**values)
    except ValidationError as exc:
        errors = exc.errors()
        if not all(_diverged(error) for error in errors):
            raise
    values = dict(values)
    for error in errors:
        field, *inside = error["loc"]
        if inside and isinstance(values.get(field), dict):  # one key of `extra`, not the others
            values[field] = {key: value for key, value in values[field].items() if key != inside[0]}
            field = f"{field}.{inside[0]}"
        else:  # the whole value where the number is inside a list (a task's coordinates)
            values.pop(field, None)
        if (student_id, field, error["type"]) not in _warned:
            _warned.add((student_id, field, error["type"]))
            log.warning("student %s: %s = %r cannot be sent (%s): sent as absent; not logged again for it", student_id,
                        field, error["input"], error["msg"])
    return model(**values)


class TeacherSession:
    """Proposals and reports of one student on one curriculum, with the outage policy above.

    ``outbox``: a file that keeps undelivered messages across restarts (None: in memory only).
    The context sent with each proposal is the return and task of the last episode that the
    environment ended (`ended`), which may be before its report is sent.
    """

    def __init__(self, client: TeacherClient, curriculum: str, student_id: str, outbox: str | Path | None = None,
                 retry_every: float = 5.0) -> None:
        self.client = client
        self.one_try = client.once()  # for calls after a failed try (`caller`)
        self.curriculum = curriculum
        self.student_id = student_id
        self.outbox = Outbox(Path(outbox) if outbox is not None else None)
        self.retry_every = retry_every
        self.down_until: float | None = None  # None: up; else no try before this time (monotonic)
        self.recovering = False  # from a failed try until a call succeeds
        self.last_return: float | None = None
        self.last_task: list[float] | None = None
        self._target: TargetTasks | None = None
        self._target_known = False

    def reachable(self) -> bool:
        """Whether to try the teacher now: False for ``retry_every`` seconds after a failed try, then until it
        answers ``/healthz`` (asked once per ``retry_every``)."""
        return which_reachable([self])[0]

    def mark_down(self, cause: TeacherError | None = None) -> None:
        """The teacher did not answer (`cause`, where known): train on env-default tasks for ``retry_every`` seconds."""
        if not self.recovering:  # once per outage, not at each failed try of it
            log.warning("teacher unreachable%s; training on env-default tasks, reports kept in the outbox",
                        f" ({cause.detail})" if cause is not None else "")
        self.down_until = time.monotonic() + self.retry_every
        self.recovering = True

    @property
    def caller(self) -> TeacherClient:
        """The client for this session's next call: after a failed try, one attempt per call until one succeeds (the
        tries themselves are this session's retries), else the client with its retries."""
        return self.one_try if self.recovering else self.client

    def propose(self) -> Proposal | None:
        """The teacher's next task, or None (env default) while the teacher is unreachable."""
        self.flush()
        if not self.reachable():
            return None
        try:
            proposal = self.caller.propose(self.curriculum, self.student_id, self.context())
        except TeacherUnavailableError as exc:
            self.mark_down(exc)
            return None
        self.recovering = False
        return proposal

    def context(self) -> StudentContext:
        """What the teacher sees of this student: the return and task of its last ended episode."""
        task = self.last_task if self.last_task is not None and len(self.last_task) <= 64 else None
        return reportable(StudentContext, self.student_id, last_return=self.last_return, last_task=task)

    def target(self) -> TargetTasks | None:
        """The curriculum's target tasks (None: it names none), asked once; while the teacher is
        unreachable None, and asked again at the next call."""
        return targets_many([self])[0]

    def ended(self, proposal: Proposal | None, episode_return: float) -> None:
        """The environment ended the episode of ``proposal``: its return and task are the next context."""
        self.last_task = proposal.task.values if proposal is not None and proposal.task else None
        self.last_return = episode_return

    def finish(self, proposal: Proposal | None, signals: Signals, outcome: Outcome = "completed",
               deliver: bool = True) -> None:
        """Report an episode trained on ``proposal`` (None: an env-default task, nothing to report);
        ``deliver=False`` only queues it, for `flush_many`."""
        if proposal is not None:
            self.outbox.put_report(ReportRequest(proposal_id=proposal.proposal_id, student_id=self.student_id,
                                                 signals=signals, outcome=outcome))
            if deliver:
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
            self.outbox.flush(self.caller)
            if self.outbox.pending:
                self.mark_down()
            else:
                self.recovering = False

    def drain(self, timeout: float, stop: Callable[[], bool] = lambda: False) -> None:
        """At exit: keep delivering the outbox for up to ``timeout`` seconds (or until ``stop()``)."""
        drain_many([self], timeout, stop)


# ---------------------------------------------------------------- several students, one client


def which_reachable(sessions: Sequence[TeacherSession]) -> list[bool]:
    """Whether to try the teacher now, for each session (`TeacherSession.reachable`); one ``/healthz`` per client
    for the sessions whose wait is over (sessions sharing a client: one frozen teacher, one probe's wait)."""
    now = time.monotonic()
    healthy: dict[int, bool] = {}
    for session in sessions:
        if session.down_until is not None and now >= session.down_until:
            client = session.client
            if id(client) not in healthy:
                healthy[id(client)] = client.answers(timeout_s=PROBE_TIMEOUT_S)
            if healthy[id(client)]:
                session.down_until = None
            else:
                session.mark_down()
    return [s.down_until is None for s in sessions]


def caller_of(sessions: Sequence[TeacherSession]) -> TeacherClient:
    """`TeacherSession.caller` for one call on behalf of sessions sharing a client: one attempt if any is recovering."""
    return sessions[0].one_try if any(session.recovering for session in sessions) else sessions[0].client


def flush_many(sessions: Sequence[TeacherSession]) -> None:
    """Deliver several students' outboxes (sessions sharing one client): their leading reports in one
    ``POST /report/batch``, then whatever is left (evaluations) one message at a time."""
    live = [s for s, up in zip(sessions, which_reachable(sessions)) if s.outbox.pending and up]
    if not live:
        return
    try:
        live[0].outbox.flush_reports(caller_of(live), [s.outbox for s in live[1:]])
    except TeacherUnavailableError as exc:
        for session in live:
            session.mark_down(exc)
        return
    for session in live:
        session.recovering = False  # a call succeeded (what follows may leave nothing for `flush` to send)
    for session in live:
        session.flush()


def propose_many(sessions: Sequence[TeacherSession]) -> list[Proposal | None]:
    """The next task of each of several students (sessions sharing one client), with `TeacherSession.propose`'s
    outage policy: None (env default) where the teacher is unreachable. One student asks ``POST /propose``;
    several ask ``POST /propose/batch``, one call per curriculum. A 4xx answer is raised."""
    if len(sessions) == 1:
        return [sessions[0].propose()]
    flush_many(sessions)
    proposals: list[Proposal | None] = [None] * len(sessions)
    groups: dict[str, list[int]] = {}
    for i, (session, up) in enumerate(zip(sessions, which_reachable(sessions))):
        if up:
            groups.setdefault(session.curriculum, []).append(i)
    for curriculum, members in groups.items():
        group = [sessions[i] for i in members]
        try:
            results = caller_of(group).propose_many(curriculum, [s.student_id for s in group],
                                                    [s.context() for s in group])
        except TeacherUnavailableError as exc:
            results = [exc] * len(group)
        for i, result in zip(members, results):
            if not isinstance(result, TeacherError):
                proposals[i] = result
                sessions[i].recovering = False
            elif result.status_code is None or result.status_code >= 500:
                sessions[i].mark_down(result)
            else:
                raise result
    return proposals


def targets_many(sessions: Sequence[TeacherSession]) -> list[TargetTasks | None]:
    """Each session's `TeacherSession.target`: one call per client and curriculum for the sessions that do not know
    theirs yet, none for a client that failed one (sessions sharing a client: a frozen teacher would otherwise hold
    each student's ask for the client's retries)."""
    failed: set[int] = set()
    asked: dict[tuple[int, str], TargetTasks | None] = {}
    asking = [session for session in sessions if not session._target_known]  # a known target needs no probe
    for session, up in zip(asking, which_reachable(asking)):
        key = (id(session.client), session.curriculum)
        if not up or id(session.client) in failed:
            continue
        if key not in asked:
            try:
                asked[key] = session.caller.target(session.curriculum)
            except TeacherUnavailableError:
                failed.add(id(session.client))
                continue
        session._target, session._target_known = asked[key], True
        session.recovering = False
    for session in asking:
        if id(session.client) in failed:
            session.mark_down()
    return [session._target for session in sessions]


def drain_many(sessions: Sequence[TeacherSession], timeout: float, stop: Callable[[], bool] = lambda: False) -> None:
    """At exit: keep delivering the sessions' outboxes for up to ``timeout`` seconds in all (or until ``stop()``),
    each client asked ``/healthz`` first in every round (a frozen teacher would hold a flush for its retries) and its
    sessions' leading reports then sent in one ``POST /report/batch``, the rest one message at a time; not one drain
    after another."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop():
        pending = [session for session in sessions if session.outbox.pending]
        if not pending:
            break
        clients: dict[int, list[TeacherSession]] = {}
        for session in pending:
            clients.setdefault(id(session.client), []).append(session)
        for group in clients.values():
            client = group[0].one_try  # each round is a try: one call each, not the client's retries
            if client.answers(timeout_s=PROBE_TIMEOUT_S):
                try:
                    group[0].outbox.flush_reports(client, [session.outbox for session in group[1:]])
                    for session in group:
                        session.outbox.flush(client)
                except TeacherUnavailableError:
                    pass  # left pending, for the next round
                except TeacherError as exc:  # a wrong token: no round can deliver them; kept for the next start
                    log.warning("the teacher refused the outbox's messages (%s %s)", exc.status_code, exc.detail)
                    deadline = time.monotonic()
        if any(session.outbox.pending for session in sessions):
            wait = min(session.retry_every for session in sessions)
            time.sleep(min(wait, max(deadline - time.monotonic(), 0)))
    for session in sessions:
        if session.outbox.pending:
            path = session.outbox.path
            where = f"; they are delivered on the next start with {path}" if path else ""
            log.warning("%d messages left undelivered in the outbox%s", len(session.outbox.pending), where)
