"""The application factory: everything the service is, wired together from one Settings object."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from teacher_service.serving.api import compare, curricula, episodes, inspection, service
from teacher_service.serving.api.deps import Gatherer, RequestThreads
from teacher_service.serving.curricula_file import create_curricula
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.auth import load_tokens
from teacher_service.serving.infra.errors import (
    DATABASE_ERRORS,
    ApiError,
    DatabaseUnavailable,
    database_unavailable,
    responses,
)
from teacher_service.serving.infra.middleware import BodySizeLimit
from teacher_service.serving.infra.private_files import private_dir, private_sqlite_file
from teacher_service.serving.settings import Settings
from teacher_service.serving.store.tables import create_tables, make_engine

log = logging.getLogger("teacher_service")
STATIC = Path(__file__).parent / "static"


def error_message(err: dict, content_type: str | None) -> str:
    """A validation error's message; a body that is not JSON gets the parser's reason too
    ("JSON decode error: Expecting ',' delimiter"), and one not sent as JSON the content type it needs: FastAPI reads a
    body as JSON only with that type, and curl's -d sends a form's."""
    if err["type"] == "json_invalid" and err.get("ctx", {}).get("error"):
        return f"{err['msg']}: {err['ctx']['error']}"
    if err["type"] == "model_attributes_type" and list(err["loc"]) == ["body"] and "json" not in (content_type or ""):
        return f"{err['msg']}: send the body as JSON, with Content-Type: application/json (not {content_type or 'none'})"
    return err["msg"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    private_dir(settings.data_dir)
    private_sqlite_file(settings.resolved_database_url())
    engine = make_engine(settings.resolved_database_url(), settings.request_threads, settings.database_idle_transaction_s)
    create_tables(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The students' proposes and reports are done by the writer thread, their evaluations in request threads of
        # their own, and all of them hold one of those threads' slots while their work runs (api/deps.py); the other
        # routes run in anyio's pool. With one database writer at a time, a few threads serve more requests than
        # anyio's default 40, which mostly wait on each other for the GIL.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        app.state.request_threads = threads = RequestThreads(settings.request_threads, settings.max_queue_wait_s)
        hub = app.state.hub
        app.state.gatherers = {
            "propose": Gatherer(threads, "propose", hub.proposing, settings.max_batch_items),
            "report": Gatherer(threads, "report", hub.reporting, settings.max_batch_items),
        }
        hub.start()
        yield
        app.state.request_threads.close()
        app.state.hub.close()  # applies the teacher updates still pending

    app = FastAPI(
        lifespan=lifespan,
        title="ACL teacher service",
        version="0.1.0",
        description="Curriculum teachers for RL students: `POST /propose` before an episode, `POST /report` after it.",
    )
    app.state.settings = settings
    app.state.hub = TeacherHub(settings, engine)
    if settings.curricula_file:
        create_curricula(app.state.hub, settings.curricula_file)
    app.state.tokens = load_tokens(settings)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, batch_max_bytes=settings.max_batch_body_bytes,
                       idle_s=settings.body_idle_s)
    app.add_middleware(metrics.RequestMetrics)  # added last: outermost, so it also sees 413 answers

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location and message: echoing the input back could contain NaN, which is not JSON.
        content_type = request.headers.get("content-type")
        errors = [{"loc": list(err["loc"]), "msg": error_message(err, content_type), "type": err["type"]}
                  for err in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if not database_unavailable(exc):
            raise exc  # a mistake, not an outage: a 500 with its traceback
        log.error("%s %s: the database is unavailable: %r", request.method, request.url.path, exc)
        return await api_error(request, DatabaseUnavailable())

    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, database_error)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        # A bug. Answered in JSON as every other error is (clients read `detail`); Starlette then re-raises it, so the
        # log still has its traceback.
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service's log has its traceback"},
                            status_code=500)

    # The errors each group of routes can answer with, in the OpenAPI document (one model: errors.py).
    app.include_router(curricula.router, responses=responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503))
    app.include_router(episodes.router, responses=responses(400, 401, 404, 408, 409, 410, 413, 415, 422, 503))
    app.include_router(inspection.router, responses=responses(401, 404, 422, 503))
    app.include_router(compare.router, responses=responses(401, 404, 422, 503))
    app.include_router(service.router)

    # The dashboard: public static files (everything local, no CDN); its API calls carry the token.
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: as uptime checkers probe
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
