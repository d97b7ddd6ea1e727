"""A durable local outbox: messages for the teacher survive a teacher outage and a worker restart."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import weakref
from itertools import takewhile
from pathlib import Path
from typing import TextIO

from student_client.client import TeacherClient, TeacherError, TeacherUnavailableError
from teacher_service.wire import EvaluationRequest, ReportRequest

log = logging.getLogger(__name__)

# The answers that refuse the message itself (malformed, too large, an unknown or expired proposal, a conflicting
# resend, invalid values): sending it again cannot help. Any other 4xx (a token rotated since: 401, 403; a proxy's
# 405 or 429) says nothing about the message, which is kept for a later flush.
REFUSALS = frozenset({400, 404, 409, 410, 413, 422})


class Outbox:
    """Pending reports and evaluations, persisted to a JSON file on every change (atomic replace).

    Messages are delivered in order; delivery stops at the first unreachable-teacher error and
    resumes on the next ``flush``. A message the service refuses for what it is (`REFUSALS`; e.g. 410: the
    proposal expired during a long outage) can never be delivered; it is moved to ``rejected``,
    kept in the file for the record, and logged. Another 4xx (a wrong token) is raised, the message kept.

    A file has one outbox at a time, across processes: two that shared one (say, the sub-environments of a vector
    env given the same ``outbox=``) overwrote each other's messages. The second raises ValueError; the claim ends
    with ``close`` or with the process. A forked child's copy gives the file up, as ``close`` does.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[dict] = []
        self.rejected: list[dict] = []
        self._claim = None if path is None else _claim(path)
        _OPEN.add(self)
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            self.pending, self.rejected = saved["pending"], saved["rejected"]

    def put_report(self, report: ReportRequest) -> None:
        self._put({"kind": "report", "body": report.model_dump(mode="json")})

    def put_evaluation(self, evaluation: EvaluationRequest) -> None:
        self._put({"kind": "evaluation", "body": evaluation.model_dump(mode="json")})

    def flush(self, client: TeacherClient) -> int:
        """Deliver what is pending; return how many messages were delivered."""
        delivered = 0
        while self.pending:
            message = self.pending[0]
            try:
                if message["kind"] == "report":
                    report = ReportRequest.model_validate(message["body"])
                    client.report(report.proposal_id, report.student_id, report.signals, report.outcome)
                else:
                    client.evaluate(EvaluationRequest.model_validate(message["body"]))
            except TeacherUnavailableError:
                break
            except TeacherError as exc:
                if exc.status_code not in REFUSALS:
                    raise  # kept, in order, for a flush that can deliver it
                log.warning("teacher rejected a %s (%s): %s", message["kind"], exc.status_code, exc.detail)
                self.rejected.append({**message, "status_code": exc.status_code, "detail": str(exc.detail)})
            self.pending.pop(0)
            delivered += 1
            self._save()
        return delivered

    def flush_reports(self, client: TeacherClient, others: list[Outbox]) -> None:
        """Deliver the reports leading this outbox and ``others`` in one batch call (``report_many``).

        Raises the call's `TeacherError` if it fails as a whole; an item refused for what it is (`REFUSALS`) is moved
        to ``rejected`` as in ``flush``, one that failed otherwise (a 5xx) stays pending with what follows it. What
        follows the leading reports (e.g. an evaluation) is left for ``flush``.
        """
        boxes = [self, *others]
        heads = [list(takewhile(lambda m: m["kind"] == "report", box.pending)) for box in boxes]
        reports = [ReportRequest.model_validate(m["body"]) for head in heads for m in head]
        if not reports:
            return
        results = iter(client.report_many(reports))
        for box, head in zip(boxes, heads):
            if not head:
                continue  # nothing of this box was sent: its file stays as it is
            answers = [next(results) for _ in head]
            for message, answer in zip(head, answers):
                if isinstance(answer, TeacherError):
                    if answer.status_code not in REFUSALS:
                        break  # keep it and what follows it, in order
                    log.warning("teacher rejected a report (%s): %s", answer.status_code, answer.detail)
                    box.rejected.append({**message, "status_code": answer.status_code, "detail": str(answer.detail)})
                box.pending.pop(0)
            box._save()

    def close(self) -> None:
        """Give up the file: another outbox may use it now. Messages put after this are kept in memory only."""
        self.path = None  # no more writes to a file that another outbox may own
        if self._claim is not None:
            self._claim.close()  # the lock goes with the last descriptor of it
            self._claim = None

    def _put(self, message: dict) -> None:
        self.pending.append(message)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"pending": self.pending, "rejected": self.rejected}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _claim(path: Path) -> TextIO | None:
    """An open lock file beside ``path``, locked (flock: held until it is closed, or the process ends); None on a
    filesystem without locks, where the claim is not possible."""
    lock = open(path.with_name(path.name + ".lock"), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ValueError(f"the outbox {path} is in use by another student, in this process or another: give each "
                         "student (each sub-environment of a vector env) an outbox file of its own") from None
    except OSError as exc:  # ENOLCK, ENOSYS: some network filesystems
        lock.close()
        log.warning("the outbox %s cannot be locked (%s): make sure no other student uses it", path, exc)
        return None
    return lock


# A forked child holds copies of its parent's lock files, which would keep the parent's claims after it closes them:
# the child's outboxes close (their files stay the parent's).
_OPEN: weakref.WeakSet[Outbox] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [outbox.close() for outbox in list(_OPEN)])
