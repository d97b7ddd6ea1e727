"""Prometheus metrics: HTTP requests by route template, and the curriculum events the hub counts.
Served by `GET /metrics` (api/service.py)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("teacher_http_requests", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "teacher_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PROPOSALS = Counter("teacher_proposals", "Proposals made", ["curriculum"])
REPORTS = Counter("teacher_reports", "Reports accepted (resends not counted)", ["curriculum"])
UPDATES = Counter("teacher_updates", "Teacher updates", ["curriculum"])
ACTIVE_STUDENTS = Gauge("teacher_active_students", "Students seen in the last 5 minutes", ["curriculum"])
REQUEST_THREADS_BUSY = Gauge("teacher_request_threads_busy", "Slots held by students' work (an evaluation, a batch or a "
                             "group of single requests), in a request thread or the writer: at most "
                             "TEACHER_REQUEST_THREADS (api/deps.py RequestThreads)")
REQUESTS_WAITING = Gauge("teacher_requests_waiting", "Single /propose or /report requests waiting for their group "
                         "(api/deps.py Gatherer)")
SHED = Counter("teacher_requests_shed", "Students' requests answered 503 without being run, after waiting "
               "TEACHER_MAX_QUEUE_WAIT_S for their turn (api/deps.py)", ["route"])
GATHERED = Histogram("teacher_gathered_requests", "Single /propose or /report requests that waited together and "
                     "ran as one batch", ["verb"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000))


def count_per_curriculum(counter: Counter, curricula: Iterable[str]) -> None:
    """Add one per name to `counter`, with one label lookup per curriculum rather than per item (a lookup per item
    was ~1% of the service's time under batch load)."""
    for curriculum, count in collections.Counter(curricula).items():
        counter.labels(curriculum).inc(count)


class RequestMetrics:
    """Counts and times every HTTP request under its route template, so paths with ids stay one series."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
