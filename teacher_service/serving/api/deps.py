from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request

from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.errors import ClientClosedRequest

T = TypeVar("T")


async def get_hub(request: Request) -> TeacherHub:
    # Dependencies that do no I/O are async: FastAPI runs sync ones in the thread pool, a hop per request.
    return request.app.state.hub


@dataclass
class RequestThreads:
    """The threads that run the hub's blocking work for the students' routes, and a slot per thread.

    asyncio's own executor and semaphore: anyio's `to_thread` and capacity limiter, which FastAPI's sync routes
    use, cost the event loop about 30 us more per request (README "Scale")."""

    count: int
    executor: ThreadPoolExecutor = field(init=False)
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.count, thread_name_prefix="request")
        self.slots = asyncio.Semaphore(self.count)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


async def client_gone(request: Request) -> bool:
    """Whether the client has hung up, without waiting: one step of `receive()`, which once the body is read
    either answers at once (a disconnect) or would wait on a future (the client is still there). Starlette's
    `is_disconnected` does the same inside an anyio cancel scope, whose cancellation formats the task's repr:
    about a tenth of the event loop's time per request. Written for uvicorn's `receive` and plain ASGI
    middleware such as ours (Starlette's `BaseHTTPMiddleware`, whose `receive` runs a task group, would not do);
    a `receive` that is not a coroutine gets Starlette's check."""
    step = request.receive()
    if not inspect.iscoroutine(step):
        return await request.is_disconnected()
    try:
        step.send(None)
    except StopIteration as answered:
        return answered.value.get("type") == "http.disconnect"
    step.close()
    return False


async def run_in_request_thread(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run blocking hub work in one of the request threads, unless the client hung up while waiting.

    Under overload, clients time out and retry while their first request still waits for a thread;
    running it anyway would be work for nobody that makes the queue longer still. The slot is held until the
    work ends, even if this request is cancelled meanwhile (the thread cannot be), so a slot means a free thread."""
    threads: RequestThreads = request.app.state.request_threads
    await threads.slots.acquire()
    try:
        if await client_gone(request):
            raise ClientClosedRequest("the client closed the connection before its request ran")
        # The request's context goes along (as anyio's to_thread does), e.g. a tracer's current span.
        call = functools.partial(contextvars.copy_context().run, work, *args)
        running = asyncio.get_running_loop().run_in_executor(threads.executor, call)
    except BaseException:
        threads.slots.release()
        raise
    metrics.REQUEST_THREADS_BUSY.inc()  # once the work is handed over: `done` below takes it back

    def done(finished: asyncio.Future) -> None:
        metrics.REQUEST_THREADS_BUSY.dec()
        threads.slots.release()
        if not finished.cancelled():
            finished.exception()  # seen: a request cancelled meanwhile leaves nobody to await it

    running.add_done_callback(done)
    return await asyncio.shield(running)
