from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from teacher_service import wire
from teacher_service.serving.api.deps import get_hub, run_in_request_thread
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.auth import require_student

router = APIRouter(tags=["students"], dependencies=[Depends(require_student)])

# The routes are async and hand the hub's blocking work to a request thread themselves: FastAPI would
# also validate a sync route's response in the thread pool, a second wait in its queue per request.


@router.post("/propose", response_model=wire.Proposal)
async def propose(request: Request, body: wire.ProposeRequest, hub: TeacherHub = Depends(get_hub)) -> wire.Proposal:
    """The task for the student's next episode. Pass `reset_options` to `env.reset(options=...)`."""
    return await run_in_request_thread(request, hub.propose, body)


@router.post("/report", response_model=wire.ReportAck)
async def report(request: Request, body: wire.ReportRequest, hub: TeacherHub = Depends(get_hub)) -> wire.ReportAck:
    """What the student measured while training on a proposal's episode. Idempotent."""
    return await run_in_request_thread(request, hub.report, body)


@router.post("/evaluations", status_code=201, response_model=wire.EvaluationAck)
async def add_evaluation(
    request: Request, body: wire.EvaluationRequest, hub: TeacherHub = Depends(get_hub)
) -> wire.EvaluationAck:
    """An evaluation on the environment's default start and goal distribution."""
    return await run_in_request_thread(request, hub.add_evaluation, body)
