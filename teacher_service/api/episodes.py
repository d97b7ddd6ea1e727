from __future__ import annotations

from fastapi import APIRouter, Depends

from teacher_service import wire
from teacher_service.api.deps import get_hub
from teacher_service.auth import require_student
from teacher_service.hub import TeacherHub

router = APIRouter(tags=["students"], dependencies=[Depends(require_student)])


@router.post("/propose", response_model=wire.Proposal)
def propose(body: wire.ProposeRequest, hub: TeacherHub = Depends(get_hub)) -> wire.Proposal:
    """The task for the student's next episode. Pass `reset_options` to `env.reset(options=...)`."""
    return hub.propose(body)


@router.post("/report", response_model=wire.ReportAck)
def report(body: wire.ReportRequest, hub: TeacherHub = Depends(get_hub)) -> wire.ReportAck:
    """What the student measured while training on a proposal's episode. Idempotent."""
    return hub.report(body)


@router.post("/evaluations", status_code=201, response_model=wire.EvaluationAck)
def add_evaluation(body: wire.EvaluationRequest, hub: TeacherHub = Depends(get_hub)) -> wire.EvaluationAck:
    """An evaluation on the environment's default start and goal distribution."""
    return hub.add_evaluation(body)
