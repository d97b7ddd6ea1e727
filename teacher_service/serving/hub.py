"""The hub hosts the teachers: it turns API calls into teacher decisions and durable database rows.

Every request is one database transaction, committed before the response. The request paths use
SQLAlchemy Core on a connection (an ORM session costs more than the statements it runs here); the
read-only inspection queries use sessions. The teacher of a curriculum lives in memory as a cache
of the checkpoint stored in its `curricula` row; the row's `teacher_version` says whether the cache
is current, so several service processes can share one database. Reports take a lock on the
curriculum row (SQLite: the database write lock) so that a teacher update is applied exactly once
and in order; see README "Several replicas".
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pydantic
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from teacher_service import wire
from teacher_service.learning.rewards import DERIVED_SIGNALS
from teacher_service.learning.task_spaces import DiscreteSpace, TaskSpace, build_task_space
from teacher_service.learning.teachers import REGISTRY, Context, Experience, Teacher, build_teacher
from teacher_service.learning.trajectories import group_trajectories
from teacher_service.serving.infra import metrics
from teacher_service.serving.infra.errors import BadRequest, Conflict, Gone, NotFound
from teacher_service.serving.infra.fifo_lock import FifoLock
from teacher_service.serving.settings import Settings
from teacher_service.serving.store import reports
from teacher_service.serving.store.statements import (
    COUNT_OTHERS_READY,
    CURRICULUM_BY_NAME,
    CURRICULUM_COLUMNS,
    INSERT_PROPOSAL,
    LAST_REPORT_OF_STUDENT,
    LOCK_CURRICULUM_OF_PROPOSAL,
    MARK_REPORTED,
    OPEN_EPISODES_OF_STUDENT,
    PROPOSAL_BY_ID,
    READY_ROWS,
)
from teacher_service.serving.store.tables import Curriculum, Evaluation, Proposal, TeacherUpdate, utcnow, writer_engine


@dataclass
class Runtime:
    """A curriculum's teacher in memory, valid while `version` equals the stored teacher_version."""

    curriculum_id: int
    spec: wire.CurriculumCreate
    space: TaskSpace
    teacher: Teacher
    version: int = -1  # -1: state not loaded yet, or in doubt
    lock: FifoLock = field(default_factory=FifoLock)


def validation_message(exc: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in exc.errors())


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
        self._writer_engine = writer_engine(engine)
        # SQLite has one writer at a time; queueing writers on a lock here wakes the next one at once,
        # where SQLite's own busy handler would sleep and poll. PostgreSQL needs no such lock.
        self._write_lock = FifoLock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        self._runtimes: dict[int, Runtime] = {}
        self._runtimes_lock = threading.Lock()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that writes, committed on exit."""
        with self._write_lock, self._writer_engine.begin() as conn:
            yield conn

    def read(self) -> Connection:
        """A connection for reads only: `with hub.read() as conn:`."""
        return self.engine.connect()

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
        try:
            teacher = build_teacher(spec.teacher.algorithm, space, spec.teacher.params, spec.seed)
        except pydantic.ValidationError as exc:
            raise BadRequest(f"teacher.params: {validation_message(exc)}") from exc
        except ValueError as exc:  # the teacher refuses this task space
            raise BadRequest(f"teacher {spec.teacher.algorithm!r}: {exc}") from exc
        return space, teacher

    def create_curriculum(self, spec: wire.CurriculumCreate, exist_ok: bool = False) -> wire.CurriculumInfo:
        _, teacher = self.build(spec)
        try:
            with self.write() as conn:
                existing = conn.execute(CURRICULUM_BY_NAME, {"name": spec.name}).first()
                if existing is not None:
                    if exist_ok:
                        return self._info(existing)
                    raise Conflict(f"curriculum {spec.name!r} already exists")
                conn.execute(
                    insert(Curriculum.__table__).values(
                        name=spec.name, spec=spec.model_dump(mode="json"), teacher_state=teacher.state_bytes()
                    )
                )
                return self._info(self.curriculum_row(conn, spec.name))
        except IntegrityError as exc:  # another replica created it since our check (PostgreSQL)
            if not exist_ok:
                raise Conflict(f"curriculum {spec.name!r} already exists") from exc
            return self.get_curriculum(spec.name)

    def list_curricula(self) -> list[wire.CurriculumInfo]:
        with self.read() as conn:
            rows = conn.execute(select(*CURRICULUM_COLUMNS).order_by(Curriculum.id)).all()
            return [self._info(row) for row in rows]

    def get_curriculum(self, name: str) -> wire.CurriculumInfo:
        with self.read() as conn:
            return self._info(self.curriculum_row(conn, name))

    def delete_curriculum(self, name: str) -> None:
        with self.write() as conn:
            row = self.curriculum_row(conn, name)
            # Proposals, updates and evaluations go with it (ON DELETE CASCADE).
            conn.execute(delete(Curriculum.__table__).where(Curriculum.id == row.id))
        with self._runtimes_lock:
            self._runtimes.pop(row.id, None)

    def curriculum_row(self, session: Session | Connection, name: str) -> Row:
        """The curriculum's columns except its checkpoint; NotFound if there is none by that name."""
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
        with self._runtimes_lock:
            runtime = self._runtimes.get(row.id)
            if runtime is None:
                spec = wire.CurriculumCreate.model_validate(row.spec)
                space, teacher = self.build(spec)
                runtime = Runtime(row.id, spec, space, teacher)
                self._runtimes[row.id] = runtime
            return runtime

    def _sync(self, session: Session | Connection, runtime: Runtime, row: Row) -> None:
        """Load the stored checkpoint if another process (or a failed commit) made the cache stale.

        Call with runtime.lock held."""
        if runtime.version != row.teacher_version:
            # Version and state in one statement: under READ COMMITTED (PostgreSQL, no row lock when
            # proposing) a second statement could see a newer commit than `row` did.
            version, state = session.execute(
                select(Curriculum.teacher_version, Curriculum.teacher_state).where(Curriculum.id == row.id)
            ).one()
            runtime.teacher.load_state_bytes(state)
            # Every replica loading this checkpoint would draw the same proposals until the next update;
            # a seed from the replica's id keeps them apart and stays reproducible for one replica.
            salt = hashlib.sha256(f"{runtime.spec.seed}:{version}:{self.settings.replica_id}".encode()).digest()
            runtime.teacher.generator.manual_seed(int.from_bytes(salt[:8], "little") >> 1)
            runtime.version = version

    # ------------------------------------------------------------------ propose

    def propose(self, request: wire.ProposeRequest) -> wire.Proposal:
        now = utcnow()
        # Deciding only reads; the write transaction is a single insert, so the write lock is held briefly.
        with self.read() as conn:
            row = self.curriculum_row(conn, request.curriculum)
            runtime = self.runtime(row)
            context = self._context(conn, runtime, request) if runtime.teacher.uses_context else Context()
            with runtime.lock:
                self._sync(conn, runtime, row)
                decision = runtime.teacher.propose(context)
                version = runtime.version
        space = runtime.space
        if decision.task_index is not None:
            task, options = space.task(decision.task_index), space.reset_options(decision.task_index)
        elif decision.task_values is not None:
            task, options = space.task(decision.task_values), space.reset_options(decision.task_values)
        else:
            task, options = None, {}
        ttl = runtime.spec.proposal_ttl_s or self.settings.proposal_ttl_s
        proposal = wire.Proposal(
            proposal_id=uuid.uuid4().hex,
            curriculum=row.name,
            student_id=request.student_id,
            task=task,
            reset_options=options,
            teacher_version=version,
            expires_at=now + timedelta(seconds=ttl),
        )
        try:
            with self.write() as conn:
                conn.execute(
                    INSERT_PROPOSAL,
                    {
                        "proposal_id": proposal.proposal_id,
                        "curriculum_id": row.id,
                        "student_id": request.student_id,
                        "task_index": decision.task_index,
                        "task_values": task.values if task else None,
                        "reset_options": options,
                        "teacher_version": version,
                        "teacher_input": decision.teacher_input,
                        "created_at": now,
                        "expires_at": proposal.expires_at,
                    },
                )
        except IntegrityError as exc:  # the curriculum was deleted meanwhile
            raise NotFound(f"curriculum {request.curriculum!r} not found") from exc
        metrics.PROPOSALS.labels(row.name).inc()
        return proposal

    def _context(self, conn: Connection, runtime: Runtime, request: wire.ProposeRequest) -> Context:
        """The student's last episode: from the request if it says, else from its last report here."""
        space = runtime.space
        given = request.context
        if given is not None and given.last_task is not None:
            if len(given.last_task) != space.feature_dim:
                raise BadRequest(f"context.last_task must have {space.feature_dim} values for this task space")
            return Context(given.last_return, space.features_of_values(given.last_task))
        last = conn.execute(
            LAST_REPORT_OF_STUDENT, {"curriculum_id": runtime.curriculum_id, "student_id": request.student_id}
        ).first()
        if last is None or last.task_values is None:
            return Context()
        if isinstance(space, DiscreteSpace) and last.task_index is not None:
            features = space.features(last.task_index)
        else:
            features = space.features_of_values(last.task_values)
        return Context(last.signals.get("episode_return"), features)

    # ------------------------------------------------------------------ report

    def report(self, request: wire.ReportRequest) -> wire.ReportAck:
        signals = request.signals.model_dump(mode="json")
        with self.write() as conn:
            # The row lock orders all reports of a curriculum, across service processes too; the
            # proposal is read after it, so a concurrent resend on another replica is seen.
            ids = {"proposal_id": request.proposal_id}
            row = conn.execute(LOCK_CURRICULUM_OF_PROPOSAL, ids).first()
            if row is None:
                raise NotFound(f"proposal {request.proposal_id!r} not found")
            proposal = conn.execute(PROPOSAL_BY_ID, ids).one()
            now = utcnow()
            if proposal.student_id != request.student_id:
                raise Conflict(
                    f"proposal {request.proposal_id!r} was made for student {proposal.student_id!r}, "
                    f"not {request.student_id!r}"
                )
            if proposal.ack is not None:
                if proposal.signals == signals:
                    return wire.ReportAck.model_validate(proposal.ack)  # a resend: the first answer again
                raise Conflict(f"proposal {request.proposal_id!r} was already reported with other signals")
            if now > proposal.expires_at:
                raise Gone(f"proposal {request.proposal_id!r} expired at {proposal.expires_at.isoformat()}")

            runtime = self.runtime(row)
            reward = reports.reward(conn, runtime.spec.reward_signal, runtime.space, proposal, request.signals)
            with runtime.lock:
                self._sync(conn, runtime, row)
                trajectory, updating = None, False
                if reward is not None and runtime.teacher.batch_size > 0:
                    trajectory = self._close_trajectory(conn, runtime, proposal)
                    waiting = conn.scalar(COUNT_OTHERS_READY, {"curriculum_id": row.id, "seq": proposal.seq})
                    updating = waiting + (trajectory is not None) >= runtime.teacher.batch_size
                ack = wire.ReportAck(
                    proposal_id=proposal.proposal_id,
                    reward=reward,
                    teacher_version=row.teacher_version + int(updating),
                    teacher_updated=updating,
                )
                conn.execute(
                    MARK_REPORTED,
                    {"proposal_seq": proposal.seq, "reported_at": now, "signals": signals, "reward": reward,
                     "trajectory": trajectory, "ack": ack.model_dump(mode="json")},
                )
                if updating:
                    self._update_teacher(conn, runtime, row)
                # Commit under the teacher's lock, then label the cache: no request of this process
                # sees an update that is not stored (another replica could store that version).
                conn.commit()
                runtime.version = ack.teacher_version
        # Counted once committed; a resend returned above and is not counted again.
        metrics.REPORTS.labels(row.name).inc()
        if ack.teacher_updated:
            metrics.UPDATES.labels(row.name).inc()
        return ack

    def _close_trajectory(self, conn: Connection, runtime: Runtime, proposal: Row) -> int | None:
        """Store the grouping of this student's rewarded episodes into trajectories (learning/trajectories.py);
        returns the trajectory this proposal completes, if it completes one."""
        horizon = runtime.teacher.horizon
        if horizon == 1:
            return proposal.seq
        open_seqs = conn.scalars(
            OPEN_EPISODES_OF_STUDENT,
            {"curriculum_id": runtime.curriculum_id, "student_id": proposal.student_id, "seq": proposal.seq},
        ).all()
        trajectory = None
        for members in group_trajectories([*open_seqs, proposal.seq], horizon):
            if proposal.seq in members:
                trajectory = members[0]
            others = [seq for seq in members if seq != proposal.seq]
            conn.execute(update(Proposal.__table__).where(Proposal.seq.in_(others)).values(trajectory=members[0]))
        return trajectory

    def _update_teacher(self, conn: Connection, runtime: Runtime, row: Row) -> None:
        """Update the teacher on the waiting batch of complete trajectories and store it."""
        rows = conn.execute(READY_ROWS, {"curriculum_id": runtime.curriculum_id}).all()
        batch = [
            Experience(
                seq=p.seq,
                student_id=p.student_id,
                trajectory=p.trajectory,
                task_index=p.task_index,
                task_values=p.task_values,
                teacher_input=p.teacher_input,
                reward=p.reward,
            )
            for p in rows
        ]
        # The teacher in memory is ahead of the database until report() commits, or broken if this
        # fails half-way: unlabeled, so that no request uses it unless the commit succeeds.
        runtime.version = -1
        stats = runtime.teacher.update(batch)
        version = row.teacher_version + 1
        conn.execute(
            update(Curriculum.__table__)
            .where(Curriculum.id == row.id)
            .values(teacher_version=version, teacher_updates=row.teacher_updates + 1,
                    teacher_state=runtime.teacher.state_bytes())
        )
        conn.execute(
            update(Proposal.__table__).where(Proposal.seq.in_([p.seq for p in rows])).values(consumed_version=version)
        )
        conn.execute(insert(TeacherUpdate.__table__).values(curriculum_id=row.id, version=version, stats=stats))

    # ------------------------------------------------------------------ evaluations

    def add_evaluation(self, request: wire.EvaluationRequest) -> wire.EvaluationAck:
        with self.write() as conn:
            row = self.curriculum_row(conn, request.curriculum)
            result = conn.execute(
                insert(Evaluation.__table__).values(curriculum_id=row.id, **request.model_dump(exclude={"curriculum"}))
            )
            return wire.EvaluationAck(evaluation_id=result.inserted_primary_key[0])

    @contextlib.contextmanager
    def current_teacher(self, session: Session, row: Row) -> Iterator[Teacher]:
        """The curriculum's teacher, synchronized with the stored checkpoint, held under its lock."""
        runtime = self.runtime(row)
        with runtime.lock:
            self._sync(session, runtime, row)
            yield runtime.teacher
