from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from teacher_service import wire
from teacher_service.learning.teachers import REGISTRY
from teacher_service.serving.api.deps import get_hub
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.auth import require_admin, require_student

router = APIRouter(tags=["curricula"])

# A name no curriculum can have is refused before it reaches the database (NUL bytes, for one, fail there).
CurriculumPath = Annotated[str, Path(min_length=1, max_length=64, pattern=wire.CURRICULUM_NAME)]


@router.post("/curricula", status_code=201, response_model=wire.CurriculumInfo, dependencies=[Depends(require_admin)])
def create_curriculum(body: wire.CurriculumCreate, hub: TeacherHub = Depends(get_hub)) -> wire.CurriculumInfo:
    return hub.create_curriculum(body)


@router.get("/curricula", response_model=list[wire.CurriculumInfo], dependencies=[Depends(require_student)])
def list_curricula(hub: TeacherHub = Depends(get_hub)) -> list[wire.CurriculumInfo]:
    return hub.list_curricula()


@router.get("/curricula/{name}", response_model=wire.CurriculumInfo, dependencies=[Depends(require_student)])
def get_curriculum(name: CurriculumPath, hub: TeacherHub = Depends(get_hub)) -> wire.CurriculumInfo:
    return hub.get_curriculum(name)


@router.get("/curricula/{name}/target", response_model=wire.TargetTasks, dependencies=[Depends(require_student)])
def get_target(name: CurriculumPath, hub: TeacherHub = Depends(get_hub)) -> wire.TargetTasks:
    """The curriculum's target tasks, resolved: evaluate on each with env.reset(options=...) and post the
    result to /evaluations with `on_target: true`. 404 if the curriculum has none."""
    return hub.target_tasks(name)


@router.delete("/curricula/{name}", status_code=204, dependencies=[Depends(require_admin)])
def delete_curriculum(name: CurriculumPath, hub: TeacherHub = Depends(get_hub)) -> Response:
    hub.delete_curriculum(name)
    return Response(status_code=204)


@router.get("/teachers", dependencies=[Depends(require_student)])
def list_teachers() -> dict[str, dict]:
    """The registered teacher algorithms and the JSON schema of their parameters."""
    return {name: cls.Params.model_json_schema() for name, cls in sorted(REGISTRY.items())}
