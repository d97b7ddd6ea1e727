from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import pydantic
from fastapi import APIRouter, Depends, Request

from teacher_service import wire
from teacher_service.serving.api.deps import get_hub, run_in_request_thread, run_in_writer
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.auth import require_student
from teacher_service.serving.infra.errors import ApiError, BadRequest
from teacher_service.serving.infra.json_bodies import OrjsonRoute

M = TypeVar("M", bound=pydantic.BaseModel)

router = APIRouter(tags=["students"], dependencies=[Depends(require_student)], route_class=OrjsonRoute)

# The routes are async and hand the hub's work to the writer thread themselves (/evaluations to a request thread):
# FastAPI would also validate a sync route's response in the thread pool, a second wait in its queue per request.
# The two single verbs, the service's busiest routes, go through their gatherers (api/deps.py), taken from the
# app rather than as a dependency: each dependency costs FastAPI's event loop a few microseconds a request.


@router.post("/propose", response_model=wire.Proposal)
async def propose(request: Request, body: wire.ProposeRequest) -> wire.Proposal:
    """The task for the student's next episode. Pass `reset_options` to `env.reset(options=...)`."""
    return await request.app.state.gatherers["propose"].call(request, body)


@router.post("/report", response_model=wire.ReportAck)
async def report(request: Request, body: wire.ReportRequest) -> wire.ReportAck:
    """What the student measured while training on a proposal's episode. Idempotent. Acknowledged once stored;
    a teacher update that the report completes is applied just after (see `teacher_version`)."""
    return await request.app.state.gatherers["report"].call(request, body)


def parse_items(hub: TeacherHub, items: list[Any], model: type[M]) -> list[M | wire.ItemError]:
    """Each item of a batch validated on its own: the model, or the item's 422 entry, located as the single verb
    locates its body's problems."""
    limit = hub.settings.max_batch_items
    if len(items) > limit:
        # The students' clients read the limit from this entry (type too_long, ctx as pydantic's) and split their
        # batches to it.
        raise BadRequest(f"a batch holds at most {limit} items, not {len(items)}: split it", ("body", "items"), "too_long",
                         {"max_length": limit, "actual_length": len(items)})
    parsed: list[M | wire.ItemError] = []
    for item in items:
        try:
            parsed.append(model.model_validate(item))
        except pydantic.ValidationError as exc:
            parsed.append(wire.ItemError(status=422, detail=wire.item_problems(exc)))
    return parsed


def item_results(parsed: list[Any], answers: list[Any]) -> list[tuple[Any, wire.ItemError | None]]:
    """(result, None) or (None, error) per item, in order: the hub's answers to the valid items (an error as the
    single verb would answer it) and the invalid items' own entries."""
    answered = iter(answers)
    results = [p if isinstance(p, wire.ItemError) else next(answered) for p in parsed]
    return [
        (None, wire.ItemError(status=r.status_code, detail=r.body()["detail"])) if isinstance(r, ApiError)
        else (None, r) if isinstance(r, wire.ItemError) else (r, None)
        for r in results
    ]


async def run_batch(request: Request, items: list[Any], model: type[M],
                    start: Callable[[list[M]], Future]) -> list[tuple[Any, wire.ItemError | None]]:
    """A batch verb: its items validated one by one, the valid ones through the hub's batch work (`start`), which the
    writer thread does whole, deciding proposals included, so the event loop hands it over and awaits it
    (api/deps.py `run_in_writer`). A request thread that waited for the writer cost more: in alternating runs of
    batches of 64, 3 to 14% fewer episodes/s for the reports, 0 to 23% for the proposals (docs/scale-history.md)."""
    hub: TeacherHub = request.app.state.hub
    parsed = parse_items(hub, items, model)
    todo = [p for p in parsed if not isinstance(p, wire.ItemError)]
    answers = await run_in_writer(request, start, todo) if todo else []
    return item_results(parsed, answers)


@router.post("/propose/batch", response_model=wire.ProposeBatchResponse)
async def propose_batch(request: Request, body: wire.ProposeBatchRequest) -> wire.ProposeBatchResponse:
    """A proposal for each item (each a `/propose` body), e.g. one per environment of a vectorized learner.
    Up to TEACHER_MAX_BATCH_ITEMS items (default 1,024). Per-item results: a bad item gets its own error."""
    pairs = await run_batch(request, body.items, wire.ProposeRequest, request.app.state.hub.proposing)
    return wire.ProposeBatchResponse(results=[wire.ProposeBatchItem(proposal=p, error=e) for p, e in pairs])


@router.post("/report/batch", response_model=wire.ReportBatchResponse)
async def report_batch(request: Request, body: wire.ReportBatchRequest) -> wire.ReportBatchResponse:
    """Reports of many episodes (each a `/report` body), stored in one transaction; each is idempotent per
    proposal id, as `/report` is. Up to TEACHER_MAX_BATCH_ITEMS items. Per-item results: a bad item gets its
    own error (404, 409, 410, 422) while the others are stored."""
    pairs = await run_batch(request, body.items, wire.ReportRequest, request.app.state.hub.reporting)
    return wire.ReportBatchResponse(results=[wire.ReportBatchItem(ack=a, error=e) for a, e in pairs])


@router.post("/evaluations", status_code=201, response_model=wire.EvaluationAck)
async def add_evaluation(
    request: Request, body: wire.EvaluationRequest, hub: TeacherHub = Depends(get_hub)
) -> wire.EvaluationAck:
    """An evaluation of a student: on the curriculum's target tasks (`on_target: true`) or the environment's own
    start and goal distribution."""
    return await run_in_request_thread(request, hub.add_evaluation, body)
