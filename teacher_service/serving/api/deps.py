from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from fastapi import Request

from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra.errors import ClientClosedRequest

T = TypeVar("T")


async def get_hub(request: Request) -> TeacherHub:
    # Dependencies that do no I/O are async: FastAPI runs sync ones in the thread pool, a hop per request.
    return request.app.state.hub


async def run_in_request_thread(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run blocking hub work in one of the request threads, unless the client hung up while waiting.

    Under overload, clients time out and retry while their first request still waits for a thread;
    running it anyway would be work for nobody that makes the queue longer still."""
    async with anyio.to_thread.current_default_thread_limiter():
        if await request.is_disconnected():
            raise ClientClosedRequest("the client closed the connection before its request ran")
        # The slot is already held: run in a thread without asking the limiter again.
        return await anyio.to_thread.run_sync(work, *args, limiter=request.app.state.no_thread_limit)
