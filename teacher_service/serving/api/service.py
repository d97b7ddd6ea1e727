"""The service's own routes: health for load balancers, Prometheus metrics for scrapers (both public)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from teacher_service.serving.infra import metrics as counters
from teacher_service.serving.infra.errors import DATABASE_ERRORS, database_unavailable
from teacher_service.serving.inspection import Inspector

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Uptime checkers and some load balancers probe with HEAD. A route of its own, out of the OpenAPI document: one
# route for both methods gave both operations one operationId, which OpenAPI forbids.
@router.head("/healthz", include_in_schema=False)
def healthz_head() -> None:
    return None


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Unauthenticated, as scrapers expect; it shows counts and curriculum names only. While the database is
    unavailable the counters still answer, the active-students gauge with its last values."""
    try:
        active = Inspector(request.app.state.hub).active_students()
    except DATABASE_ERRORS as exc:
        if not database_unavailable(exc):
            raise
    else:
        counters.ACTIVE_STUDENTS.clear()  # deleted curricula drop out
        for curriculum, count in active.items():
            counters.ACTIVE_STUDENTS.labels(curriculum).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
