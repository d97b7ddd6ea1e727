from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.errors import ClientClosedRequest, database_unavailable

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
    max_items: int  # the most single requests gathered into one batch (run_gathered)
    executor: ThreadPoolExecutor = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    waiting: dict[str, collections.deque] = field(default_factory=dict)  # per verb (run_gathered)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.count, thread_name_prefix="request")
        self.slots = asyncio.Semaphore(self.count)

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def client_gone(request: Request) -> bool:
    """Whether the client has hung up, without waiting: one step of `receive()`, which once the body is read
    either answers at once (a disconnect) or would wait on a future (the client is still there). Starlette's
    `is_disconnected` does the same inside an anyio cancel scope, whose cancellation formats the task's repr:
    about a tenth of the event loop's time per request. Written for uvicorn's `receive` and plain ASGI
    middleware such as ours; a `receive` that is not a coroutine function (Starlette's `BaseHTTPMiddleware`
    runs a task group in its own) cannot be stepped, and its client is taken to be there."""
    if not inspect.iscoroutinefunction(request.receive):
        return False
    step = request.receive()
    try:
        step.send(None)
    except StopIteration as answered:
        return answered.value.get("type") == "http.disconnect"
    step.close()
    return False


def start_in_request_thread(threads: RequestThreads, work: Callable[..., T], *args: object) -> asyncio.Future:
    """Start blocking hub work in a request thread whose slot the caller holds; the slot is released when the
    work ends, even if the request that started it is cancelled meanwhile (the thread cannot be), so a slot
    means a free thread."""
    try:
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
    return running


def client_left_error() -> ClientClosedRequest:
    return ClientClosedRequest("the client closed the connection before its request ran")


async def run_in_request_thread(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run blocking hub work in one of the request threads, unless the client hung up while waiting.

    Under overload, clients time out and retry while their first request still waits for a thread;
    running it anyway would be work for nobody that makes the queue longer still."""
    threads: RequestThreads = request.app.state.request_threads
    await threads.slots.acquire()
    if client_gone(request):
        threads.slots.release()
        raise client_left_error()
    return await asyncio.shield(start_in_request_thread(threads, work, *args))


@dataclass
class Waiting:
    """A single verb's request waiting for a request thread, with its item for the batch verb."""

    request: Request
    item: Any
    answer: asyncio.Future
    taken: bool = False  # by a request that got a thread, into its group


async def run_gathered(request: Request, verb: str, batch_verb: Callable[[list], list], item: Any) -> Any:
    """A single verb (`verb`: its name) run through the hub's batch verb: the requests that wait for a request
    thread together go as one batch, in arrival order and up to TEACHER_MAX_BATCH_ITEMS, each answered with its
    own item's result or error. Whoever gets a thread first takes every request waiting; one alone is a batch of
    one. Under load a single propose or report then costs the hub about what a batch item does (README "Scale")."""
    threads: RequestThreads = request.app.state.request_threads
    queue = threads.waiting.setdefault(verb, collections.deque())
    mine = Waiting(request, item, asyncio.get_running_loop().create_future())
    queue.append(mine)
    metrics.REQUESTS_WAITING.inc()
    while not mine.taken:
        await threads.slots.acquire()
        # From here to the hand-over nothing awaits: a group taken is always handed over or answered.
        group: list[Waiting] = []
        while queue and len(group) < threads.max_items:
            waiting = queue.popleft()
            waiting.taken = True
            metrics.REQUESTS_WAITING.dec()
            if client_gone(waiting.request):  # nobody would read its answer
                waiting.answer.set_exception(client_left_error())
            else:
                group.append(waiting)
        if not group:  # taken by others meanwhile
            threads.slots.release()
            continue
        metrics.GATHERED.labels(verb).observe(len(group))
        try:
            running = start_in_request_thread(threads, run_each_alone_on_fault, batch_verb, [w.item for w in group])
        except Exception as exc:  # noqa: BLE001 - the executor is shut down: every request of the group gets it
            for waiting in group:
                waiting.answer.set_exception(exc)
        else:
            running.add_done_callback(functools.partial(answer_each, group))
    return await asyncio.shield(mine.answer)


def run_each_alone_on_fault(batch_verb: Callable[[list], list], items: list) -> list:
    """The batch verb on items gathered from single requests. A fault that is not the database's (a bug) fails
    only the items that meet it, each then run alone, as their requests would have been; the batch that failed
    was rolled back (one transaction)."""
    try:
        return batch_verb(items)
    except Exception as exc:
        if len(items) == 1 or database_unavailable(exc):
            raise
        results: list = []
        for item in items:
            try:
                results.extend(batch_verb([item]))
            except Exception as alone:  # noqa: BLE001 - this item's answer
                results.append(alone)
        return results


def answer_each(group: list[Waiting], finished: asyncio.Future) -> None:
    """Give each request of a gathered batch its own result or error (an ApiError is an item's 4xx)."""
    failure = asyncio.CancelledError() if finished.cancelled() else finished.exception()
    results = [failure] * len(group) if failure is not None else finished.result()
    for waiting, result in zip(group, results):
        if isinstance(result, BaseException):
            waiting.answer.set_exception(result)
        else:
            waiting.answer.set_result(result)
