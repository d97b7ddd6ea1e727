from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.errors import ClientClosedRequest, Overloaded, database_unavailable

T = TypeVar("T")
log = logging.getLogger("teacher_service")


async def get_hub(request: Request) -> TeacherHub:
    # Dependencies that do no I/O are async: FastAPI runs sync ones in the thread pool, a hop per request.
    return request.app.state.hub


@dataclass
class RequestThreads:
    """The threads that run the hub's blocking work for the students' routes, and a slot per thread, which students'
    work holds while it runs: a batch or a group of single requests takes one too, though the writer thread does its
    work (`run_in_writer`, Gatherer), so that the writer's queue stays as short as when threads did that work.

    asyncio's own executor and semaphore: anyio's `to_thread` and capacity limiter, which FastAPI's sync routes
    use, cost the event loop about 30 us more per request (docs/scale-history.md).

    Load shedding: a request that has waited `max_wait_s` for its turn (TEACHER_MAX_QUEUE_WAIT_S) is answered 503
    (`Overloaded`) without being run: where the service's queue grows (a stalled database, more students than it
    serves), its requests would otherwise wait until their clients time out (10 s) and resend into the same queue."""

    count: int
    max_wait_s: float = math.inf
    executor: ThreadPoolExecutor = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    _warned_at: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.count, thread_name_prefix="request")
        self.slots = asyncio.Semaphore(self.count)

    def start(self, work: Callable[..., T], *args: object) -> asyncio.Future:
        """Start blocking work in a thread whose slot the caller holds (and gives back)."""
        # The request's context goes along (as anyio's to_thread does), e.g. a tracer's current span.
        call = functools.partial(contextvars.copy_context().run, work, *args)
        return asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def take_slot(self, shed_as: str | None = None) -> None:
        """Wait for a slot. With `shed_as` (the request's route), give up after `max_wait_s`: Overloaded."""
        if shed_as is not None and self.slots.locked():  # only a wait needs a timer (a task, for wait_for)
            try:
                await asyncio.wait_for(self.slots.acquire(), self.max_wait_s)
            except TimeoutError:
                raise self.overloaded(shed_as, self.max_wait_s) from None
        else:
            await self.slots.acquire()
        metrics.REQUEST_THREADS_BUSY.inc()

    def overloaded(self, route: str, waited_s: float) -> Overloaded:
        """The error of a request shed after waiting `waited_s`: counted, and logged at most once a minute."""
        metrics.SHED.labels(route).inc()
        if time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("overloaded: requests that waited %.1f s for their turn are answered 503 "
                        "(TEACHER_MAX_QUEUE_WAIT_S; teacher_requests_shed in /metrics counts them)", waited_s)
        return Overloaded(waited_s)

    def give_slot(self) -> None:
        metrics.REQUEST_THREADS_BUSY.dec()
        self.slots.release()

    def close(self) -> None:
        self.executor.shutdown(wait=True)


CLIENT_LEFT = "the client closed the connection before its request ran"


def client_gone(request: Request) -> bool:
    """Whether the client has hung up, without waiting: one step of `receive()`, which once the body is read
    either answers at once (a disconnect) or would wait on a future (the client is still there). Starlette's
    `is_disconnected` does the same inside an anyio cancel scope, whose cancellation formats the task's repr:
    about a tenth of the event loop's time per request. Written for uvicorn's `receive` and plain ASGI
    middleware such as the service's. A `receive` that cannot be stepped so (not a coroutine function, or one
    that fails outside its request's task, as Starlette's `BaseHTTPMiddleware` would) counts as a client there."""
    if not inspect.iscoroutinefunction(request.receive):
        return False
    step = request.receive()
    try:
        step.send(None)
    except StopIteration as answered:
        return answered.value.get("type") == "http.disconnect"
    except Exception:  # noqa: BLE001 - see above: the request runs
        return False
    step.close()
    return False


async def start_holding_a_slot(request: Request, start: Callable[[RequestThreads], T]) -> tuple[RequestThreads, T]:
    """Take a request thread's slot, then start the work (`start(threads)`), unless the client hung up while waiting
    for the slot; the slot goes back if nothing started. The caller gives it back when the work ends."""
    threads: RequestThreads = request.app.state.request_threads
    await threads.take_slot(shed_as=request.scope.get("path", ""))  # a students' route: no ids in it
    try:
        if client_gone(request):
            raise ClientClosedRequest(CLIENT_LEFT)
        return threads, start(threads)
    except BaseException:
        threads.give_slot()
        raise


async def run_in_request_thread(request: Request, work: Callable[..., T], *args: object) -> T:
    """Run blocking hub work in one of the request threads, unless the client hung up while waiting.

    Under overload, clients time out and retry while their first request still waits for a thread;
    running it anyway would be work for nobody that makes the queue longer still. The slot is held until the
    work ends, even if this request is cancelled meanwhile (the thread cannot be), so a slot means a free thread."""
    threads, running = await start_holding_a_slot(request, lambda threads: threads.start(work, *args))

    def done(finished: asyncio.Future) -> None:
        threads.give_slot()
        if not finished.cancelled():
            finished.exception()  # seen: a request cancelled meanwhile leaves nobody to await it

    running.add_done_callback(done)
    return await asyncio.shield(running)


async def run_in_writer(request: Request, start: Callable[[list], Future], items: list) -> list:
    """Start hub work that the writer thread does whole (`start(items)`: the batch verbs, TeacherHub.proposing and
    .reporting) and await it, without a thread between. It holds a request thread's slot until the work ends, as a
    thread's work would, so the writer's queue stays as short as before; and it is not started for a client that hung
    up while waiting for the slot."""
    threads, running = await start_holding_a_slot(request, lambda _: start(items))
    loop = asyncio.get_running_loop()
    running.add_done_callback(lambda _: loop.call_soon_threadsafe(threads.give_slot))  # from the writer thread
    return await asyncio.wrap_future(running)


@dataclass(eq=False)  # compared by identity: `deque.remove` finds this request, not an equal one
class Waiting:
    """A single request waiting for its group, with its item for the batch verb."""

    request: Request
    item: Any
    answer: asyncio.Future
    since: float  # the event loop's time when it came
    taken: bool = False  # into a group, or answered without one


class Gatherer:
    """Runs the single requests of one verb through the hub's batch work: those that arrive while a group runs
    wait, and go together as the next group (in arrival order, up to TEACHER_MAX_BATCH_ITEMS), each answered with
    its own item's result or error. Under load a single propose or report then costs the hub about what an item
    of a batch does, a fraction of a call of its own (docs/scale-history.md); one alone is a group of one.

    One chain of groups per verb: a request that arrives while none runs starts it. Each group takes a request
    thread's slot in turn with the other routes (so none of them waits for the chain to end), hands its items to the
    writer thread as the batch verbs do (`start`: TeacherHub.proposing or .reporting; no request thread between) and
    gives the slot back once its requests are answered; the waiting requests themselves only wait for their answers."""

    def __init__(self, threads: RequestThreads, verb: str, start: Callable[[list], Future], max_items: int) -> None:
        self.threads = threads
        self.verb = verb
        self.start = start
        self.max_items = max_items
        self.queue: collections.deque[Waiting] = collections.deque()
        self.running = False
        # The task running the current group: kept here, since the event loop holds tasks only weakly, and not the
        # request's own, whose cancellation must not stop the chain.
        self.group_task: asyncio.Task | None = None
        # Load shedding: one timer for the whole queue, due when its oldest request reaches max_wait_s (`_shed`).
        self._shedding: asyncio.TimerHandle | None = None

    async def call(self, request: Request, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        mine = Waiting(request, item, loop.create_future(), loop.time())
        self.queue.append(mine)
        metrics.REQUESTS_WAITING.inc()
        self._arm_shedding()
        if not self.running:
            self.running = True
            self._next_turn()
        try:
            return await asyncio.shield(mine.answer)
        except asyncio.CancelledError:
            if not mine.taken:  # nobody would read its answer: not run
                self.queue.remove(mine)
                metrics.REQUESTS_WAITING.dec()
            raise

    async def _run_group(self) -> None:
        group: list[Waiting] = []
        try:
            await self.threads.take_slot()
        except asyncio.CancelledError:
            self._stop(group)
            raise
        try:
            self._take(group)
            if group:
                self._answer(group, await run_each_alone_on_fault(self.start, [w.item for w in group]))
        except asyncio.CancelledError:
            self.threads.give_slot()
            self._stop(group)
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the writer closed: its group gets the error
            self._answer_all(group, exc)
        self._end_turn()

    def _take(self, group: list[Waiting]) -> None:
        """Move the next group from the queue into `group` (the caller's, so that nothing taken goes unanswered)."""
        while self.queue and len(group) < self.max_items:
            waiting = self.queue.popleft()
            waiting.taken = True
            metrics.REQUESTS_WAITING.dec()
            if client_gone(waiting.request):  # nobody would read its answer
                waiting.answer.set_exception(ClientClosedRequest(CLIENT_LEFT))
            else:
                group.append(waiting)
        if group:
            metrics.GATHERED.labels(self.verb).observe(len(group))

    def _arm_shedding(self) -> None:
        if self._shedding is None and self.queue and self.threads.max_wait_s < math.inf:
            due = self.queue[0].since + self.threads.max_wait_s
            self._shedding = asyncio.get_running_loop().call_at(due, self._shed)

    def _shed(self) -> None:
        """Answer 503 to the requests that have waited TEACHER_MAX_QUEUE_WAIT_S without being taken into a group, as
        one waiting for a slot is: neither their group's wait for a slot nor a group that runs long (a stalled
        database) holds them past it. They are the queue's oldest, at its head."""
        self._shedding = None
        now, limit = asyncio.get_running_loop().time(), self.threads.max_wait_s
        while self.queue and now - self.queue[0].since >= limit - 0.001:  # the loop may run a timer a little early
            waiting = self.queue.popleft()
            waiting.taken = True
            metrics.REQUESTS_WAITING.dec()
            waiting.answer.set_exception(self.threads.overloaded(f"/{self.verb}", now - waiting.since))
        self._arm_shedding()

    def _answer(self, group: list[Waiting], results: list) -> None:
        """Give each request of the group its own result or error (an ApiError: its 4xx)."""
        if len(results) != len(group):
            results = [RuntimeError(f"{len(results)} answers to {len(group)} items")] * len(group)
        for waiting, result in zip(group, results):
            if isinstance(result, BaseException):
                self._answer_all([waiting], result)
            else:
                waiting.answer.set_result(result)

    @staticmethod
    def _answer_all(group: list[Waiting], error: BaseException) -> None:
        if isinstance(error, StopIteration):  # a future refuses it (as a coroutine would turn it into this)
            error = RuntimeError(f"the batch verb raised {error!r}")
        for waiting in group:
            if not waiting.answer.done():
                waiting.answer.set_exception(error)

    def _stop(self, group: list[Waiting]) -> None:
        """The service is stopping (this group's task was cancelled): the group and the waiting requests get an error."""
        self.running = False
        if self._shedding is not None:
            self._shedding.cancel()
            self._shedding = None
        taken = list(self.queue)
        self.queue.clear()
        for waiting in taken:
            waiting.taken = True
            metrics.REQUESTS_WAITING.dec()
        self._answer_all(group + taken, RuntimeError("the service stopped before the request was answered"))

    def _end_turn(self) -> None:
        """Give the slot back; the next group, if anyone waits, takes one in turn with the other routes."""
        self.threads.give_slot()
        if self.queue:
            self._next_turn()
        else:
            self.running = False

    def _next_turn(self) -> None:
        self.group_task = asyncio.get_running_loop().create_task(self._run_group())


async def run_each_alone_on_fault(start: Callable[[list], Future], items: list) -> list:
    """The batch work (`start(items)`, done by the writer thread) on a group of single requests' items. A fault that
    is not the database's (a bug) fails only the items that meet it: the batch that failed was rolled back (one
    transaction), and each item is then a job of its own, as its request alone would have been (the writer runs
    such jobs one transaction each once their group fails: group_commit.py)."""
    try:
        return await asyncio.wrap_future(start(items))
    except Exception as exc:
        if len(items) == 1 or database_unavailable(exc):
            raise
        results: list = []
        for answer in await asyncio.gather(*(asyncio.wrap_future(start([item])) for item in items),
                                           return_exceptions=True):
            results.extend([answer] if isinstance(answer, BaseException) else answer)
        return results  # the caller checks that there is one per item
