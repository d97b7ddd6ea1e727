"""`GET /compare`: an evaluation metric of several curricula against environment steps, JSON or CSV."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from teacher_service.serving.api.inspection import get_inspector
from teacher_service.serving.infra.auth import require_student
from teacher_service.serving.infra.errors import BadRequest
from teacher_service.serving.inspection import Inspector

router = APIRouter(tags=["inspection"], dependencies=[Depends(require_student)])

MAX_CURRICULA = 16
CSV_COLUMNS = ("curriculum", "algorithm", "env_steps", "students", "mean", "std", "min", "max")


def compare_csv(result: dict[str, Any]) -> str:
    """One row per curriculum and evaluation step."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for curve in result["curves"]:
        for i, steps in enumerate(curve["env_steps"]):
            writer.writerow([curve["curriculum"], curve["algorithm"], steps,
                             *(curve[key][i] for key in CSV_COLUMNS[3:])])
    return out.getvalue()


@router.get("/compare", responses={200: {"content": {"text/csv": {}}}})
def compare(
    request: Request,
    curricula: Annotated[str, Query(min_length=1, max_length=2000, description="Curriculum names, comma-separated.")],
    metric: Annotated[Literal["success_rate", "mean_return"], Query(description="Evaluation metric.")] = "success_rate",
    on_target: Annotated[bool, Query(
        description="true: evaluations on each curriculum's target tasks; false: on the environment's own distribution."
    )] = False,
    format: Annotated[Literal["json", "csv"] | None, Query(description="Or send Accept: text/csv.")] = None,
    inspector: Inspector = Depends(get_inspector),
):
    """Per curriculum and evaluation step: mean, std, min and max of `metric` over the students evaluated there."""
    names = list(dict.fromkeys(n.strip() for n in curricula.split(",") if n.strip()))
    if not names or len(names) > MAX_CURRICULA:
        raise BadRequest(f"give 1 to {MAX_CURRICULA} curriculum names, comma-separated", ("query", "curricula"))
    result = inspector.compare(names, metric, on_target)
    if format == "csv" or (format is None and "text/csv" in request.headers.get("accept", "")):
        return Response(compare_csv(result), media_type="text/csv")
    return result
