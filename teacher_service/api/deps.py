from __future__ import annotations

from fastapi import Request

from teacher_service.hub import TeacherHub


async def get_hub(request: Request) -> TeacherHub:
    # Dependencies that do no I/O are async: FastAPI runs sync ones in the thread pool, a hop per request.
    return request.app.state.hub
