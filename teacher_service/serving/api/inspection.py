"""Read-only inspection of a curriculum: history, evaluations, distribution, students, teacher, signals."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import AfterValidator

from teacher_service import wire
from teacher_service.serving.api.curricula import CurriculumPath
from teacher_service.serving.api.deps import get_hub
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.auth import require_student
from teacher_service.serving.inspection import ACTIVE_WITHIN_S, Inspector, utc

router = APIRouter(prefix="/curricula/{name}", tags=["inspection"], dependencies=[Depends(require_student)])

# Cursors and versions are compared with 32-bit columns (PostgreSQL's INTEGER): bounded to what they hold.
MAX_INT32 = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=10_000, description="Page size.")]
After = Annotated[int | None, Query(ge=0, le=MAX_INT32, description="Cursor: the `next_after` of the previous page.")]
Student = Annotated[wire.StudentId | None, Query(description="Only this student.")]
Since = Annotated[datetime | None, Query(description="From this time on (ISO 8601; UTC if no zone)."), AfterValidator(utc)]
Until = Annotated[datetime | None, Query(description="Before this time (ISO 8601; UTC if no zone)."), AfterValidator(utc)]


def history_csv(page: dict[str, Any]) -> str:
    """One row per proposal; task values and `extra` signals as JSON text so columns never vary. `outcome` is empty for
    a proposal not reported, else completed, stopped or abandoned (which the signals of the JSON form say)."""
    columns = ["seq", "proposal_id", "student_id", "created_at", "teacher_version", "task_index", "task_values",
               "reported_at", "outcome", "reward", *wire.NAMED_SIGNALS, "extra"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for item in page["items"]:
        signals = item["signals"] or {}
        row = {**item, **signals, "task_values": json.dumps(item["task_values"]),
               "extra": json.dumps(signals.get("extra", {})),
               "outcome": signals.get("outcome", "completed") if item["reported_at"] else None}
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


async def get_inspector(hub: TeacherHub = Depends(get_hub)) -> Inspector:
    return Inspector(hub)


@router.get("/history", responses={200: {"content": {"text/csv": {}}}})
def history(
    name: CurriculumPath,
    request: Request,
    limit: Limit = 100,
    after: After = None,
    student: Student = None,
    since: Since = None,
    until: Until = None,
    format: Annotated[Literal["json", "csv"] | None, Query(description="Or send Accept: text/csv.")] = None,
    inspector: Inspector = Depends(get_inspector),
):
    """Proposals with their reports, oldest first, one page at a time (`next_after` is null on a page that is not
    full; after a full last page, the next page is empty)."""
    page = inspector.history(name, limit, after, student, since, until)
    if format == "csv" or (format is None and "text/csv" in request.headers.get("accept", "")):
        headers = {} if page["next_after"] is None else {"X-Next-After": str(page["next_after"])}
        return Response(history_csv(page), media_type="text/csv", headers=headers)
    return page


@router.get("/evaluations")
def evaluations(
    name: CurriculumPath,
    limit: Limit = 1000,
    after: After = None,
    student: Student = None,
    since: Since = None,
    until: Until = None,
    on_target: Annotated[bool | None, Query(
        description="true: only evaluations on the curriculum's target tasks; false: only those on the "
        "environment's own distribution; absent: both (each row says which in `on_target`)."
    )] = None,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """Evaluations of the curriculum's students, oldest first, paged like `history`."""
    return inspector.evaluations(name, limit, after, student, since, until, on_target)


@router.get("/distribution")
def distribution(
    name: CurriculumPath,
    version: Annotated[int | None, Query(ge=0, le=MAX_INT32, description="The teacher after update N (default: now); its own distribution only, not its proposals.")] = None,
    source: Annotated[Literal["teacher", "proposals"] | None, Query(
        description="The teacher's policy, or the frequencies of its proposals (default for teachers without one)."
    )] = None,
    samples: Annotated[int, Query(ge=1, le=100_000, description="Box: samples drawn (or last proposals).")] = 1000,
    bins: Annotated[int, Query(ge=1, le=200, description="Box: histogram bins per dimension.")] = 20,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    buckets: Annotated[int | None, Query(ge=1, le=1000, description="Discrete proposals: counts per stretch of time.")] = None,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """Discrete: probabilities per task. Box: histograms per dimension of samples or of recent proposals."""
    return inspector.distribution(name, version, source, samples, bins, seed, buckets)


@router.get("/students")
def students(
    name: CurriculumPath,
    active_within_s: Annotated[float, Query(gt=0, le=30 * 24 * 3600, allow_inf_nan=False)] = ACTIVE_WITHIN_S,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """Per student: episodes, environment steps, last evaluation on the environment's own distribution
    (`last_evaluation`) and on the curriculum's target tasks (`last_target_evaluation`), last seen, and
    whether it is active."""
    return inspector.students(name, active_within_s)


@router.get("/teacher")
def teacher(name: CurriculumPath, inspector: Inspector = Depends(get_inspector)) -> dict:
    """Version, updates, the teacher's own state, its last update's losses and baseline, and reward statistics."""
    return inspector.teacher(name)


@router.get("/signals")
def signals(
    name: CurriculumPath,
    signal: Annotated[list[wire.SignalName] | None, Query(max_length=32, description="Series to return (default: all named).")] = None,
    every: Annotated[int | None, Query(ge=1, le=10**9, description="Episodes per window (default: ~100 windows).")] = None,
    student: Student = None,
    since: Since = None,
    until: Until = None,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """Each reported signal (and the teacher's reward) aggregated in windows of `every` episodes."""
    return inspector.signals(name, signal, every, student, since, until)


@router.get("/informativeness")
def informativeness(
    name: CurriculumPath,
    signal: Annotated[list[wire.SignalName] | None, Query(max_length=32, description="Signals (default: all named).")] = None,
    last: Annotated[int, Query(ge=10, le=100_000, description="The last reported episodes considered (the newest proposals among those reported).")] = 5000,
    bins: Annotated[int, Query(ge=1, le=10, description="Box: grid cells per dimension grouping tasks.")] = 3,
    permutations: Annotated[int, Query(ge=1, le=2000, description="Permutations for the p-value.")] = 200,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """How much each signal tells about the task: R^2 of per-task means on detrended values, with a
    permutation p-value (README "How informative is a reward?")."""
    return inspector.informativeness(name, signal, last, bins, permutations)


@router.get("/updates")
def updates(
    name: CurriculumPath,
    limit: Limit = 1000,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT32, description="Cursor: the `next_after` (a version) of the previous page.")] = None,
    inspector: Inspector = Depends(get_inspector),
) -> dict:
    """The numbers each teacher update stored (losses, baseline, entropy, rewards), oldest first."""
    return inspector.updates(name, limit, after)
