from __future__ import annotations

from fastapi import Request

from teacher_service.hub import TeacherHub


def get_hub(request: Request) -> TeacherHub:
    return request.app.state.hub
