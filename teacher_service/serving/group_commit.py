"""Group commit: one writer thread runs the writes of many requests in one transaction.

A request hands its write to the writer as a job and waits; the writer takes every job queued so far,
runs them one after the other in one transaction, commits, and only then answers each: an answer still
means committed. One commit (and, on SQLite, one turn of the write lock) serves the whole group.

A job gets the transaction as a `Tx`: SQLAlchemy's connection and the driver's cursor on it. It raises
an `ApiError` (a 4xx for its own request) only before it writes; the others in the group go on. Any other
exception rolls the group back, and its jobs are then run one transaction each, so that only the failing
one fails; but all of them fail at once if the database is unavailable (errors.database_unavailable: a 503).

On SQLite the writer keeps one connection from one group to the next (a new one after a failure). SQLite
empties a connection's page cache when another connection has written since its last transaction, so a writer
that took whichever pooled connection came next read its pages again each time; its own connection keeps those
it last wrote (in process, 21% fewer page reads under batch load). On PostgreSQL, whose server keeps the cache,
each group checks a connection out of the pool, which tests it first (a server restarted meanwhile).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from teacher_service.serving.infra.errors import ApiError, database_unavailable

T = TypeVar("T")
log = logging.getLogger("teacher_service")


@dataclass
class Tx:
    conn: Connection  # SQLAlchemy, for the rare statements
    cursor: Any  # the driver's cursor in the same transaction, for the hot ones (store/statements.py)


class GroupCommitter:
    def __init__(self, engine: Engine, max_jobs: int = 256) -> None:
        self.engine = engine  # a writer engine: on SQLite its transactions begin with BEGIN IMMEDIATE
        self.max_jobs = max_jobs
        self._queue: deque[tuple[Callable[[Tx], Any], Future, bool]] = deque()  # job, its future, alone
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.groups = 0  # transactions committed, and the jobs in them: their ratio is the mean group size
        self.jobs = 0
        self._keeps_connection = engine.dialect.name == "sqlite"
        self._conn: Connection | None = None  # used by the writer thread only

    def submit(self, job: Callable[[Tx], T], alone: bool = False) -> Future:
        """Queue a job; its future is resolved once its transaction has committed (or failed). A job `alone` gets a
        transaction of its own: no other job sees what it wrote before it is committed (e.g. the updater's new teacher
        version, which a propose job would load into the cached teacher: hub.py)."""
        future: Future = Future()
        # Running from now on, so it cannot be cancelled: a job may already be in a transaction, and a caller that
        # awaits it through asyncio (`asyncio.wrap_future`) and is cancelled would cancel it otherwise, after which
        # setting its result would fail the writer's whole group.
        future.set_running_or_notify_cancel()
        with self._wake:
            if self._closing:
                raise RuntimeError("the writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._queue.append((job, future, alone))
            self._wake.notify()
        return future

    def call(self, job: Callable[[Tx], T], alone: bool = False) -> T:
        """Run a job in the next group (or `alone`) and return its result once committed."""
        return self.submit(job, alone).result()

    def close(self) -> None:
        """Run what is queued, then stop the writer."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()  # back to the pool, which discards it if it was invalidated
            self._conn = None

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                group = [self._queue.popleft()]
                alone = group[0][2]
                while self._queue and len(group) < self.max_jobs and not alone and not self._queue[0][2]:
                    group.append(self._queue.popleft())
            self._commit([(job, future) for job, future, _ in group])

    def _commit(self, group: list[tuple[Callable[[Tx], Any], Future]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            with self._conn.begin():
                tx = Tx(self._conn, self._conn.connection.driver_connection.cursor())
                for job, _ in group:
                    try:
                        outcomes.append((True, job(tx)))
                    except ApiError as exc:  # raised before the job wrote anything
                        outcomes.append((False, exc))
        except Exception as exc:  # noqa: BLE001 - rolled back: run each job alone, or fail the lone one
            self._drop_connection()  # it may be what failed: the next transaction takes another
            if len(group) == 1 or database_unavailable(exc):  # a database that is down would fail each job again
                for _, future in group:
                    future.set_exception(exc)
            else:
                log.warning("a group of %d writes failed (%r); retrying them one by one", len(group), exc)
                for item in group:
                    self._commit([item])
            return
        if not self._keeps_connection:
            self._drop_connection()
        self.groups += 1
        self.jobs += len(group)
        for (_, future), (ok, value) in zip(group, outcomes):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
