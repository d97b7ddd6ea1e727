"""The hub hosts the teachers: it turns API calls into teacher decisions and durable database rows.

Writes go through the group committer (group_commit.py): many requests' writes in one transaction, each
answered once committed. The two verbs run the driver-level statements of store/statements.py; admin writes
and the read-only inspection queries use SQLAlchemy. A report stores its row and, when it completes a
batch, numbers the batch; the updater (updater.py) applies numbered batches to the teacher off the request
path, once each and in order. The teacher of a curriculum lives in memory as a cache of the checkpoint in
its `curricula` row; the row's `teacher_version` says whether the cache is current, so several service
processes can share one database. Reports take a lock on the curriculum row (SQLite: the database write
lock) so that batches are numbered once and in order; see README "Several replicas".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import pydantic
from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from teacher_service import wire
from teacher_service.learning.rewards import DERIVED_SIGNALS
from teacher_service.learning.task_spaces import (
    DiscreteSpace,
    TaskSpace,
    ambiguity,
    build_task_space,
    resolve_target,
)
from teacher_service.learning.teachers import REGISTRY, Context, Teacher, build_teacher
from teacher_service.learning.trajectories import group_trajectories
from teacher_service.serving.group_commit import GroupCommitter, Tx
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.errors import ApiError, BadRequest, Conflict, Gone, NotFound
from teacher_service.serving.infra.fifo_lock import FifoLock
from teacher_service.serving.settings import Settings
from teacher_service.serving.store import reports
from teacher_service.serving.store.statements import CURRICULUM_ID, PROPOSAL_ID, STUDENT_ID, CurriculumRow, Driver
from teacher_service.serving.store.tables import Curriculum, Evaluation, utcnow, writer_engine
from teacher_service.serving.updater import Updater, read_batch

T = TypeVar("T")

# Every column but the checkpoint, which is read only when a cached teacher is stale.
CURRICULUM_COLUMNS = (
    Curriculum.id,
    Curriculum.name,
    Curriculum.spec,
    Curriculum.teacher_version,
    Curriculum.teacher_updates,
    Curriculum.created_at,
)
CURRICULUM_BY_NAME = select(*CURRICULUM_COLUMNS).where(Curriculum.name == bindparam("name"))


@dataclass
class Runtime:
    """A curriculum's teacher in memory, valid while `version` equals the stored teacher_version."""

    curriculum_id: int
    spec: wire.CurriculumCreate
    space: TaskSpace
    teacher: Teacher
    version: int = -1  # -1: state not loaded yet, or in doubt
    lock: FifoLock = field(default_factory=FifoLock)
    # The version of the update worker's copy of the teacher, which learns while `teacher` goes on proposing, and a
    # spare teacher that the updater loads each new version into before swapping it in (updater.py).
    learner_version: int = -1
    spare: Teacher | None = None


@dataclass
class DeferredMarks:
    """A report batch's writes of reported rows, `mark_reported` and then `set_trajectory` rows (which group rows
    marked before them), written together (an executemany each: on PostgreSQL one round trip for the batch, not
    one per report or trajectory) at its end, or before any statement that must see them."""

    driver: Driver
    cursor: Any
    rows: list[dict[str, Any]] = field(default_factory=list)
    trajectories: list[dict[str, Any]] = field(default_factory=list)

    def flush(self) -> None:
        self.driver.many(self.cursor, "mark_reported", self.rows)
        self.driver.many(self.cursor, "set_trajectory", self.trajectories)
        self.rows.clear()
        self.trajectories.clear()


# A stored report's acknowledgement (or its error), its curriculum, and whether it is new (not a resend).
ReportOutcome = tuple[wire.ReportAck | ApiError, CurriculumRow | None, bool]


@dataclass
class Batching:
    """A curriculum's batching state in one report transaction, which holds its row lock: read once, then
    kept up to date by the reports stored in it (episodes ready for the next batch, the last numbered one)."""

    row: CurriculumRow
    ready: int
    last_scheduled: int


def validation_message(exc: pydantic.ValidationError) -> str:
    """Each error as `field: message`; a check across fields (no location) says which fields in its message."""
    parts = []
    for err in exc.errors():
        message = str(err.get("ctx", {}).get("error") or err["msg"])  # a check's own words, not "Value error, ..."
        where = ".".join(map(str, err["loc"]))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def check_reward_signal(signal: str) -> None:
    if signal in wire.NAMED_SIGNALS or signal in DERIVED_SIGNALS:
        return
    if signal.startswith("extra.") and len(signal) > len("extra."):
        return
    raise BadRequest(
        f"unknown reward_signal {signal!r}: use one of {', '.join(wire.NAMED_SIGNALS)}, "
        f"a derived signal ({', '.join(DERIVED_SIGNALS)}) or 'extra.<name>'"
    )


class TeacherHub:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)  # read-only ORM queries (inspection)
        self.driver = Driver(engine.dialect.name)
        # Every write of this process goes through one writer thread, so SQLite's single writer is never
        # contended here; on PostgreSQL one commit serves many requests too.
        self.committer = GroupCommitter(writer_engine(engine))
        self.updater = Updater(self, timeout_s=settings.update_timeout_s)
        self._runtimes: dict[int, Runtime] = {}
        self._runtimes_lock = threading.Lock()

    def start(self) -> None:
        """Start applying the batches that a crash or another replica left numbered but not applied."""
        self.updater.start()

    def close(self) -> None:
        """Apply the numbered batches, then stop the updater and the writer."""
        self.updater.close()
        self.committer.close()

    def write(self, job: Callable[[Tx], T], alone: bool = False) -> T:
        """Run `job(tx)` in the next group transaction (or `alone`: GroupCommitter.submit); its result once committed."""
        return self.committer.call(job, alone)

    def submit(self, job: Callable[[Tx], T], answer: Callable[[T], Any], alone: bool = False) -> Future:
        """Run `job(tx)` in the next group transaction (or `alone`) without waiting: the future of `answer(its
        result)`, which runs in the writer thread once committed and before its next group, whether or not anyone
        still waits (so a cancelled request's reports are counted and wake the updater all the same)."""
        answered: Future = Future()
        answered.set_running_or_notify_cancel()  # cannot be cancelled: see GroupCommitter.submit

        def finish(committed: Future) -> None:
            try:
                answered.set_result(answer(committed.result()))
            except StopIteration as exc:  # an asyncio future refuses it: the request awaiting it would wait for ever
                answered.set_exception(RuntimeError(f"the job raised {exc!r}"))
            except BaseException as exc:  # noqa: BLE001 - the caller's to see
                answered.set_exception(exc)

        self.committer.submit(job, alone).add_done_callback(finish)
        return answered

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A driver cursor for reads (SQLite: autocommit; PostgreSQL: rolled back on return to the pool)."""
        raw = self.engine.raw_connection()
        try:
            yield raw.cursor()
        finally:
            raw.close()

    # ------------------------------------------------------------------ curricula

    def build(self, spec: wire.CurriculumCreate) -> tuple[TaskSpace, Teacher]:
        """Task space and fresh teacher for a spec; BadRequest with the reason if it is unusable."""
        check_reward_signal(spec.reward_signal)
        try:
            space = build_task_space(spec.task_space)
        except ValueError as exc:
            raise BadRequest(f"task_space: {exc}") from exc
        if spec.teacher.algorithm not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise BadRequest(f"unknown teacher algorithm {spec.teacher.algorithm!r}: known are {known}")
        teacher_class = REGISTRY[spec.teacher.algorithm]
        if not teacher_class.accepts_reward_signal(spec.reward_signal):
            raise BadRequest(
                f"teacher {spec.teacher.algorithm!r} learns from {' or '.join(teacher_class.reward_signals)}, "
                f"not reward_signal {spec.reward_signal!r}"
            )
        try:
            teacher = build_teacher(spec.teacher.algorithm, space, spec.teacher.params, spec.seed)
        except pydantic.ValidationError as exc:
            raise BadRequest(f"teacher.params: {validation_message(exc)}") from exc
        except ValueError as exc:  # the teacher refuses this task space
            raise BadRequest(f"teacher {spec.teacher.algorithm!r}: {exc}") from exc
        return space, teacher

    @staticmethod
    def as_read(spec: wire.CurriculumCreate) -> wire.CurriculumCreate:
        """The spec with the parameters given as its teacher reads them ("2" as 2): what is stored, and what the
        curriculum shows. KeyError for an unknown algorithm, pydantic.ValidationError for parameters it refuses."""
        params = REGISTRY[spec.teacher.algorithm].Params.model_validate(spec.teacher.params)
        update = {"params": params.model_dump(mode="json", exclude_unset=True)}
        return spec.model_copy(update={"teacher": spec.teacher.model_copy(update=update)})

    def create_curriculum(self, spec: wire.CurriculumCreate, exist_ok: bool = False) -> wire.CurriculumInfo:
        if spec.proposal_ttl_s is not None and spec.proposal_ttl_s < 1:
            # Here, not in the schema: curricula stored before with a shorter one still load.
            raise BadRequest("Input should be greater than or equal to 1 s: a proposal must outlive the answer that "
                             "carries it", loc=("body", "proposal_ttl_s"))
        space, teacher = self.build(spec)
        spec = self.as_read(spec)
        if problem := ambiguity(space):
            raise BadRequest(f"task_space: {problem}", loc=("body", "task_space"))
        if spec.target is not None:
            try:
                resolve_target(spec.task_space, space, spec.target)
            except ValueError as exc:
                raise BadRequest(f"target: {exc}", loc=("body", "target")) from exc

        def create(tx: Tx) -> Row:
            existing = tx.conn.execute(CURRICULUM_BY_NAME, {"name": spec.name}).first()
            if existing is not None:
                if exist_ok:
                    return existing
                raise Conflict(f"curriculum {spec.name!r} already exists")
            tx.conn.execute(
                insert(Curriculum.__table__).values(
                    name=spec.name, spec=spec.model_dump(mode="json"), teacher_state=teacher.state_bytes()
                )
            )
            return self._row_by_name(tx.conn, spec.name)

        try:
            return self._info(self.write(create, alone=True))  # alone: see _propose_job
        except IntegrityError as exc:  # another replica created it since our check (PostgreSQL)
            if not exist_ok:
                raise Conflict(f"curriculum {spec.name!r} already exists") from exc
            return self.get_curriculum(spec.name)

    def list_curricula(self) -> list[wire.CurriculumInfo]:
        self.updater.settle()
        with self.engine.connect() as conn:
            return [self._info(row) for row in conn.execute(select(*CURRICULUM_COLUMNS).order_by(Curriculum.id))]

    def get_curriculum(self, name: str) -> wire.CurriculumInfo:
        with self.engine.connect() as conn:
            return self._info(self.curriculum_row(conn, name))

    def target_tasks(self, name: str) -> wire.TargetTasks:
        with self.engine.connect() as conn:
            runtime = self.runtime(self._row_by_name(conn, name))
        if runtime.spec.target is None:
            raise NotFound(f"curriculum {name!r} {wire.NO_TARGET_TASKS}")
        return wire.TargetTasks(reset_options=resolve_target(runtime.spec.task_space, runtime.space, runtime.spec.target))

    def delete_curriculum(self, name: str) -> None:
        def delete_row(tx: Tx) -> int:
            row = self._row_by_name(tx.conn, name)
            # Proposals, updates and evaluations go with it (ON DELETE CASCADE).
            tx.conn.execute(delete(Curriculum.__table__).where(Curriculum.id == row.id))
            return row.id

        curriculum_id = self.write(delete_row)
        with self._runtimes_lock:
            self._runtimes.pop(curriculum_id, None)
        self.updater.forget(curriculum_id)

    def curriculum_row(self, session: Session | Connection, name: str) -> Row:
        """The curriculum's columns except its checkpoint, once the teacher updates that this process
        has scheduled are applied (read your own reports); NotFound if there is none by that name."""
        # Settled before `session` reads anything: on SQLite its first read fixes what it sees.
        with self.reading() as cursor:
            found = self.driver.one(cursor, "curriculum_by_name", {"name": name})
        if found is not None:
            self.updater.settle(found[0])
        return self._row_by_name(session, name)

    @staticmethod
    def _row_by_name(session: Session | Connection, name: str) -> Row:
        row = session.execute(CURRICULUM_BY_NAME, {"name": name}).first()
        if row is None:
            raise NotFound(f"curriculum {name!r} not found")
        return row

    def _info(self, row: Row) -> wire.CurriculumInfo:
        runtime = self.runtime(row)
        return wire.CurriculumInfo(
            **row.spec,
            task_space_summary=runtime.space.summary(),
            teacher_version=row.teacher_version,
            teacher_updates=row.teacher_updates,
            created_at=row.created_at,
        )

    # ------------------------------------------------------------------ teacher cache

    def runtime(self, row: Row) -> Runtime:
        """The curriculum's task space and teacher in memory (the teacher may be stale: see current_teacher)."""
        return self._runtime(row.id, lambda: row.spec)

    def runtime_by_id(self, cursor: Any, curriculum_id: int) -> Runtime:
        """`runtime` for the hot path: the spec is read (with the driver) only when not cached."""
        def spec() -> dict:
            found = self.driver.one(cursor, "spec", {"curriculum_id": curriculum_id})
            if found is None:  # deleted since the caller read its row
                raise NotFound("curriculum not found (deleted meanwhile)")
            return self.driver.load_json(found[0])

        return self._runtime(curriculum_id, spec)

    def _runtime(self, curriculum_id: int, spec: Callable[[], dict]) -> Runtime:
        runtime = self._runtimes.get(curriculum_id)  # a dict read is atomic: no lock on the hot path
        if runtime is not None:
            return runtime
        with self._runtimes_lock:
            runtime = self._runtimes.get(curriculum_id)
            if runtime is None:
                parsed = wire.CurriculumCreate.model_validate(spec())
                space, teacher = self.build(parsed)
                runtime = Runtime(curriculum_id, parsed, space, teacher)
                self._runtimes[curriculum_id] = runtime
            return runtime

    def sync(self, cursor: Any, runtime: Runtime, stored_version: int) -> None:
        """Bring a cache that another process (or a failed commit) made stale to the stored version: replay
        the updates it misses onto it, or load the checkpoint if that is newer, and replay from there.

        Call with runtime.lock held. Versions only grow: a cache ahead of the caller's row is current."""
        if runtime.version != -1 and runtime.version >= stored_version:
            return
        try:
            self._catch_up(cursor, runtime)
        except BaseException:
            runtime.version = -1  # a replay that failed half-way leaves the cache in doubt
            raise

    def _catch_up(self, cursor: Any, runtime: Runtime) -> None:
        cold = runtime.version == -1  # nothing loaded yet (or in doubt)
        # Version and state in one statement: under READ COMMITTED (PostgreSQL; a propose job's key-share lock does
        # not hold off another replica's update) a second statement could see a newer commit than the caller's row did.
        teacher = runtime.teacher
        checkpoint = self.driver.one(cursor, "checkpoint_if_newer", {
            "curriculum_id": runtime.curriculum_id, "cached": runtime.version, "every": teacher.checkpoint_every})
        if checkpoint is None:  # deleted since the caller read its row
            raise NotFound(f"curriculum {runtime.spec.name!r} not found (deleted meanwhile)")
        version, state = checkpoint
        if state is not None:  # else the cache is at least as new as the checkpoint: replay onto it
            teacher.load_state_bytes(bytes(state))
        # A teacher that checkpoints every few updates (Teacher.checkpoint_every) is behind the stored
        # version by the updates since: replay them from their stored batches, in order.
        for replayed in range(teacher.updates + 1, version + 1):
            batch = read_batch(self.driver, cursor, runtime.curriculum_id, replayed)
            if not batch:  # a numbered batch is stored with its number: none means the data is not what we think
                raise RuntimeError(f"no stored batch for update {replayed} of curriculum {runtime.spec.name!r}")
            teacher.update(batch)
        # Every replica loading this checkpoint would draw the same proposals until the next update; a seed from the
        # replica's id keeps them apart and stays reproducible for one replica. On a cold load (a start), the last
        # proposal stored too: a restarted process drew again what it had drawn at this version before (a resumed
        # run's proposals repeated its first ones); none for a new curriculum, whose first draws stay its seed's.
        # Not on catching up, which can race the updater's swap to the same version (updater.py): the same seed.
        last_proposal = None
        if cold:
            (last_proposal,) = self.driver.one(cursor, "last_proposal", {"curriculum_id": runtime.curriculum_id})
        self.reseed(runtime, version, last_proposal)
        runtime.version = version

    def reseed(self, runtime: Runtime, version: int, last_proposal: int | None = None) -> None:
        """Seed the teacher's generator from the curriculum's seed, the version, this replica and, on loading a stored
        version, the curriculum's last proposal (its seq)."""
        key = f"{runtime.spec.seed}:{version}:{self.settings.replica_id}"
        if last_proposal is not None:
            key += f":{last_proposal}"
        salt = hashlib.sha256(key.encode()).digest()
        runtime.teacher.generator.manual_seed(int.from_bytes(salt[:8], "little") >> 1)

    # ------------------------------------------------------------------ propose

    def proposing(self, requests: list[wire.ProposeRequest]) -> Future:
        """The future of a proposal for each request, or the error of that request; the proposals in one transaction.
        The routes await it in the event loop (api/deps.py)."""
        return self.submit(self._propose_job(requests), self._count_proposals)

    def _propose_job(self, requests: list[wire.ProposeRequest]) -> Callable[[Tx], list[wire.Proposal | ApiError]]:
        """The decisions and inserts of a batch of proposals, one job of the writer: decided in its transaction. The
        updater stores a new teacher version, and a curriculum is created, in a transaction of its own (`alone`), so
        that the teacher a job loads or builds (`sync`, `runtime_by_id`) is never one that its group could still roll
        back. The curriculum stays locked until the proposals are stored (`curriculum_to_propose`)."""

        def decide_and_insert(tx: Tx) -> list[wire.Proposal | ApiError]:
            now = utcnow()
            decided: list[tuple[wire.Proposal, dict[str, Any]] | ApiError | None] = [None] * len(requests)
            by_curriculum: dict[str, list[int]] = {}
            for k, request in enumerate(requests):
                by_curriculum.setdefault(request.curriculum, []).append(k)
            for name, indices in by_curriculum.items():
                try:
                    outcomes = self._decide(tx.cursor, name, [requests[k] for k in indices], now)
                except ApiError as exc:  # the curriculum's: every item of it gets it
                    outcomes = [exc] * len(indices)
                for k, outcome in zip(indices, outcomes):
                    decided[k] = outcome
            self.driver.many(tx.cursor, "insert_proposal", [d[1] for d in decided if not isinstance(d, ApiError)])
            return [d if isinstance(d, ApiError) else d[0] for d in decided]

        return decide_and_insert

    def _count_proposals(self, results: list[wire.Proposal | ApiError]) -> list[wire.Proposal | ApiError]:
        metrics.count_per_curriculum(metrics.PROPOSALS, (r.curriculum for r in results if not isinstance(r, ApiError)))
        self.updater.expect_updates()
        return results

    def _decide(self, cursor: Any, name: str, requests: list[wire.ProposeRequest],
                now) -> list[tuple[wire.Proposal, dict[str, Any]] | ApiError]:
        """The teacher's proposals for requests to one curriculum, each with its row to insert, or the
        request's error; one teacher call for all of them (Teacher.propose_many)."""
        raw = self.driver.one(cursor, "curriculum_to_propose", {"name": name})
        if raw is None:
            raise NotFound(f"curriculum {name!r} not found")
        row = CurriculumRow(*raw)
        runtime = self.runtime_by_id(cursor, row.id)
        space = runtime.space
        contexts = self._contexts(cursor, runtime, requests)
        valid = [c for c in contexts if not isinstance(c, ApiError)]
        with runtime.lock:
            self.sync(cursor, runtime, row.teacher_version)
            # No teacher call when every request was refused (a policy forward over no rows fails).
            decisions = iter(runtime.teacher.propose_many(valid) if valid else [])
            version = runtime.version
        ttl = runtime.spec.proposal_ttl_s or self.settings.proposal_ttl_s
        expires_at = now + timedelta(seconds=ttl)
        driver = self.driver
        created, expires = driver.time(now), driver.time(expires_at)
        # Ids that follow their creation time (nanoseconds, then 64 random bits) go to the right edge of the unique
        # index, where random ones dirtied a page of it per proposal: in process a batched episode costs 11-19% less.
        clock, random_bits = f"{time.time_ns():016x}", os.urandom(8 * len(requests)).hex()
        outcomes: list[tuple[wire.Proposal, dict[str, Any]] | ApiError] = []
        for k, (request, context) in enumerate(zip(requests, contexts)):
            if isinstance(context, ApiError):
                outcomes.append(context)
                continue
            decision = next(decisions)
            if decision.task_index is not None:
                task, options = space.task(decision.task_index), space.reset_options(decision.task_index)
            elif decision.task_values is not None:
                task, options = space.task(decision.task_values), space.reset_options(decision.task_values)
            else:
                task, options = None, {}
            proposal = wire.Proposal(
                proposal_id=clock + random_bits[16 * k:16 * (k + 1)],
                curriculum=row.name,
                student_id=request.student_id,
                task=task,
                reset_options=options,
                teacher_version=version,
                expires_at=expires_at,
            )
            outcomes.append((proposal, {
                "proposal_id": proposal.proposal_id,
                "curriculum_id": row.id,
                "student_id": request.student_id,
                "task_index": decision.task_index,
                "task_values": driver.json(task.values if task else None),
                "reset_options": driver.json(options),
                "teacher_version": version,
                "teacher_input": driver.json(decision.teacher_input),
                "created_at": created,
                "expires_at": expires,
            }))
        return outcomes

    def _contexts(self, cursor: Any, runtime: Runtime, requests: list[wire.ProposeRequest]) -> list[Context | ApiError]:
        """Each student's last episode: from the request if it says, else from its last report here of a completed
        episode (one query for all of them); empty for a teacher that does not look at it. A bad context is refused
        whatever the teacher."""
        space = runtime.space
        contexts: list[Context | ApiError | None] = []
        for request in requests:
            given = request.context
            if given is not None and given.last_task is not None:
                if len(given.last_task) != space.feature_dim:
                    contexts.append(
                        BadRequest(f"context.last_task must have {space.feature_dim} values for this task space"))
                    continue
                try:
                    space.check_values(given.last_task)  # else the teacher would take the nearest edge's features
                except ValueError as exc:
                    contexts.append(BadRequest(f"context.last_task: {exc}"))
                else:
                    contexts.append(Context(given.last_return, space.features_of_values(given.last_task)))
            elif given is not None and given.last_return is not None:  # the student's word, even without a task
                contexts.append(Context(given.last_return, None))
            else:
                contexts.append(None)
        if not runtime.teacher.uses_context:
            return [c if isinstance(c, ApiError) else Context() for c in contexts]
        asking = sorted({r.student_id for r, c in zip(requests, contexts) if c is None})
        last = {
            student: self._stored_context(space, task_index, task_values, signals)
            for student, task_index, task_values, signals in self.driver.last_reports(cursor, runtime.curriculum_id, asking)
        } if asking else {}
        return [last.get(r.student_id, Context()) if c is None else c for r, c in zip(requests, contexts)]

    def _stored_context(self, space: TaskSpace, task_index: int | None, task_values: Any, signals: Any) -> Context:
        if isinstance(space, DiscreteSpace) and task_index is not None:  # a proposal with an index has a task
            features = space.features(task_index)
        else:
            task_values = self.driver.load_json(task_values)
            if task_values is None:
                return Context()
            features = space.features_of_values(task_values)
        return Context(self.driver.load_json(signals).get("episode_return"), features)

    # ------------------------------------------------------------------ report

    def reporting(self, requests: list[wire.ReportRequest]) -> Future:
        """The future of each report's acknowledgement, or its error (the others go on); stored in one transaction.
        The routes await it in the event loop (api/deps.py)."""
        return self.submit(self._report_job(requests), self._answer_reports)

    def _report_job(self, requests: list[wire.ReportRequest]) -> Callable[[Tx], list[ReportOutcome]]:
        """The write of a batch of reports, one job of the writer."""

        def store(tx: Tx) -> list[ReportOutcome]:
            locked: dict[int, Batching] = {}  # per job: a job run again (group_commit.py) reads them again
            rows, open_before = self._read_batch_rows(tx.cursor, locked, requests)
            marks = DeferredMarks(self.driver, tx.cursor)
            outcomes, seen = [], set()
            for request in requests:
                try:
                    if request.proposal_id in seen:  # maybe stored by an item before it: read it again
                        marks.flush()
                        raw = self.driver.one(tx.cursor, "proposal_by_id", {"proposal_id": request.proposal_id})
                    else:
                        raw = rows.get(request.proposal_id)
                    seen.add(request.proposal_id)
                    outcomes.append(self._store_report(tx, locked, request, raw, open_before, marks))
                except ApiError as exc:  # raised before this report wrote anything
                    outcomes.append((exc, None, False))
            marks.flush()
            return outcomes

        return store

    def _answer_reports(self, outcomes: list[ReportOutcome]) -> list[wire.ReportAck | ApiError]:
        """The answers of a committed report job; counts its new reports and wakes the updater for the batches
        they numbered."""
        # Counted once committed; a resend is answered again but not counted again.
        metrics.count_per_curriculum(metrics.REPORTS, (row.name for _, row, fresh in outcomes if fresh))
        numbered: dict[int, int] = {}  # per curriculum, the last version its new reports numbered a batch for
        for ack, row, fresh in outcomes:
            if fresh and ack.teacher_updated:
                numbered[row.id] = max(numbered.get(row.id, 0), ack.teacher_version)
        for curriculum_id, version in numbered.items():
            self.updater.notify(curriculum_id, version)
        return [ack for ack, _, _ in outcomes]

    def _lock(self, cursor: Any, locked: dict[int, Batching], curriculum_id: int) -> Batching:
        """Take the curriculum's row lock in this transaction (once) and read its batching state."""
        batching = locked.get(curriculum_id)
        if batching is None:
            driver, ids = self.driver, {"curriculum_id": curriculum_id}
            # The row lock orders all reports of a curriculum, across service processes too.
            raw = driver.one(cursor, "lock_curriculum", ids)
            if raw is None:
                raise NotFound("curriculum not found (deleted meanwhile)")
            (ready,) = driver.one(cursor, "count_ready", ids)
            (last,) = driver.one(cursor, "last_scheduled", ids)
            batching = locked[curriculum_id] = Batching(CurriculumRow(*raw), ready, last or 0)
        return batching

    def _read_batch_rows(self, cursor: Any, locked: dict[int, Batching], requests: list[wire.ReportRequest]
                         ) -> tuple[dict[str, tuple], dict[tuple[int, str], list[int]]]:
        """What a batch of reports reads before storing any, in a few statements instead of a few per report
        (on PostgreSQL each is a round trip): their curricula, locked first, then their proposals (read under the
        locks, so that a concurrent resend on another replica is seen), and their students' episodes not yet in a
        trajectory, by (curriculum id, student id), for curricula whose trajectories span several episodes."""
        driver = self.driver
        ids = sorted({request.proposal_id for request in requests})
        curricula = sorted(driver.curricula_of(cursor, ids))
        for curriculum_id in curricula:  # in id order (within this job; a group's jobs lock in their order)
            # Deleted meanwhile: so are its proposals (ON DELETE CASCADE), which the read below does not find.
            with contextlib.suppress(NotFound):
                self._lock(cursor, locked, curriculum_id)
        rows = {raw[PROPOSAL_ID]: raw for raw in driver.proposals(cursor, ids)} if curricula else {}
        open_before: dict[tuple[int, str], list[int]] = {}
        for curriculum_id in locked:
            students = sorted({raw[STUDENT_ID] for raw in rows.values() if raw[CURRICULUM_ID] == curriculum_id})
            try:
                teacher = self.runtime_by_id(cursor, curriculum_id).teacher
            except ApiError:  # then each of its reports meets the error on its own
                continue
            if teacher.batch_size > 0 and teacher.horizon > 1 and students:
                for student, seqs in driver.open_episodes(cursor, curriculum_id, students).items():
                    open_before[curriculum_id, student] = seqs
        return rows, open_before

    def _store_report(self, tx: Tx, locked: dict[int, Batching], request: wire.ReportRequest, raw: tuple | None,
                      open_before: dict[tuple[int, str], list[int]],
                      marks: DeferredMarks) -> tuple[wire.ReportAck, CurriculumRow, bool]:
        """Store one report (`raw`: its proposal's row, read under its curriculum's lock; `open_before`:
        students' episodes read before the batch, taken by the first report of each student; its row goes
        to `marks`, flushed before each statement here that reads or numbers reported rows); number the
        teacher's next batch if it completes one. Returns the acknowledgement, the curriculum and whether
        the report is new (not a resend)."""
        driver, cursor = self.driver, tx.cursor
        if raw is None:
            raise NotFound(f"proposal {request.proposal_id!r} not found")
        proposal = driver.proposal(raw)
        if proposal.curriculum_id not in locked:  # its lock was not taken: the curriculum is gone
            raise NotFound("curriculum not found (deleted meanwhile)")
        batching = locked[proposal.curriculum_id]
        row = batching.row
        signals = request.signals.model_dump(mode="json")
        if request.outcome != "completed":  # stored with the signals (history shows it); rewards no teacher
            signals["outcome"] = request.outcome
        if proposal.student_id != request.student_id:
            raise Conflict(
                f"proposal {request.proposal_id!r} was made for student {proposal.student_id!r}, "
                f"not {request.student_id!r}"
            )
        if proposal.ack is not None:
            if proposal.signals == signals:
                return wire.ReportAck.model_validate(proposal.ack), row, False  # a resend: the first answer
            raise Conflict(f"proposal {request.proposal_id!r} was already reported with other signals or another outcome")
        now = utcnow()
        if now > proposal.expires_at:
            raise Gone(f"proposal {request.proposal_id!r} expired at {proposal.expires_at.isoformat()}")

        runtime = self.runtime_by_id(cursor, row.id)
        reward = None if "outcome" in signals else reports.reward(
            tx.conn, runtime.spec.reward_signal, runtime.space, proposal, request.signals, before_reading=marks.flush
        )
        teacher = runtime.teacher  # only its batching parameters are read here: no teacher lock
        trajectory, completes = None, False
        # Read before the batch: valid until this student's first report in it changes its episodes.
        before = open_before.pop((row.id, proposal.student_id), None)
        if reward is not None and teacher.batch_size > 0:
            if before is None and teacher.horizon > 1:  # not read before the batch, or changed since: read them now
                marks.flush()
                before = driver.open_episodes(cursor, row.id, [proposal.student_id])[proposal.student_id]
            trajectory, ready = self._close_trajectory(runtime, proposal, before or [], marks)
            batching.ready += ready
            completes = batching.ready >= teacher.batch_size
        version = max(batching.last_scheduled, row.teacher_version) + int(completes)
        answer = {"proposal_id": proposal.proposal_id, "reward": reward, "teacher_version": version,
                  "teacher_updated": completes}
        ack = wire.ReportAck(**answer)
        reported_at = driver.time(now)
        marks.rows.append({
            "seq": proposal.seq, "reported_at": reported_at, "signals": driver.json(signals), "reward": reward,
            "derived_window_at": reported_at if runtime.spec.reward_signal in DERIVED_SIGNALS else None,
            "trajectory": trajectory, "ack": driver.json(answer),
        })
        if completes:  # the batch is numbered with the version that will have learned from it
            marks.flush()
            driver.execute(cursor, "schedule_ready", {"curriculum_id": row.id, "version": version})
            batching.ready, batching.last_scheduled = 0, version
        return ack, row, True

    def _close_trajectory(self, runtime: Runtime, proposal, open_seqs: list[int],
                          marks: DeferredMarks) -> tuple[int | None, int]:
        """Group this student's rewarded episodes into trajectories (learning/trajectories.py), the others' rows
        to `marks`; returns the trajectory this proposal completes, if it completes one, and how many episodes
        (this one included) the trajectories it completes make ready for a batch. `open_seqs`: the student's
        episodes not yet in one."""
        horizon = runtime.teacher.horizon
        if horizon == 1:
            return proposal.seq, 1
        open_seqs = [seq for seq in open_seqs if seq != proposal.seq]
        trajectory, ready = None, 0
        for members in group_trajectories([*open_seqs, proposal.seq], horizon):
            if proposal.seq in members:
                trajectory = members[0]
            marks.trajectories += [{"trajectory": members[0], "seq": seq} for seq in members if seq != proposal.seq]
            ready += len(members)
        return trajectory, ready

    # ------------------------------------------------------------------ evaluations

    def add_evaluation(self, request: wire.EvaluationRequest) -> wire.EvaluationAck:
        """Store an evaluation, once per idempotency key: a resend is answered with the first one's id."""
        values = request.model_dump(exclude={"curriculum"})

        def insert_evaluation(tx: Tx) -> int:
            row = self._row_by_name(tx.conn, request.curriculum)
            if request.on_target and not row.spec.get("target"):
                # It would be counted as success on target tasks that were never named.
                raise BadRequest(f"curriculum {request.curriculum!r} has no target tasks: post on_target false",
                                 ("body", "on_target"))
            table = Evaluation.__table__
            first = tx.conn.execute(select(table).where(table.c.curriculum_id == row.id,
                                                        table.c.idempotency_key == request.idempotency_key)).first()
            if first is not None:
                if any(getattr(first, name) != value for name, value in values.items()):
                    raise Conflict(f"evaluation {request.idempotency_key!r} was already posted with other values")
                return first.id
            return tx.conn.execute(insert(table).values(curriculum_id=row.id, **values)).inserted_primary_key[0]

        try:
            return wire.EvaluationAck(evaluation_id=self.write(insert_evaluation))
        except IntegrityError:  # another replica stored the same key since our check (PostgreSQL): now found
            return wire.EvaluationAck(evaluation_id=self.write(insert_evaluation))

    @contextlib.contextmanager
    def current_teacher(self, session: Session, row: Row) -> Iterator[Teacher]:
        """The curriculum's teacher, synchronized with the stored checkpoint, held under its lock."""
        runtime = self.runtime(row)
        # The connection before the lock, as every other path takes them: holding the teacher's lock
        # while waiting for a pooled connection could stall proposals.
        with self.reading() as cursor, runtime.lock:
            self.sync(cursor, runtime, row.teacher_version)
            yield runtime.teacher
