"""Database tables and the engine factory (SQLite with WAL by default, PostgreSQL by URL)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    false,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from teacher_service.learning.rewards import DERIVED_SIGNALS


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AwareDateTime(TypeDecorator):
    """Timezone-aware datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Curriculum(Base):
    __tablename__ = "curricula"
    # Processes cache teachers by curriculum id: SQLite must not hand a deleted curriculum's id to a new one.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)  # the CurriculumCreate body, as given
    teacher_version: Mapped[int] = mapped_column(Integer, default=0)
    teacher_updates: Mapped[int] = mapped_column(Integer, default=0)
    # Checkpoint of the whole teacher; deferred: loaded only when a process's cached teacher is stale.
    teacher_state: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(AwareDateTime, default=utcnow)


def derived_window_index(name: str, *columns: str) -> Index:
    """A partial index of the reports in derived-reward windows (`derived_window_at` set), the newest last."""
    where = text("derived_window_at IS NOT NULL")
    return Index(name, *columns, "derived_window_at", "seq", sqlite_where=where, postgresql_where=where)


class Proposal(Base):
    __tablename__ = "proposals"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)  # global order of proposals
    proposal_id: Mapped[str] = mapped_column(String(32), unique=True)  # what students see
    curriculum_id: Mapped[int] = mapped_column(ForeignKey("curricula.id", ondelete="CASCADE"))
    student_id: Mapped[str] = mapped_column(String(128))
    task_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    task_values: Mapped[list | None] = mapped_column(JSON, nullable=True)
    reset_options: Mapped[dict] = mapped_column(JSON)
    teacher_version: Mapped[int] = mapped_column(Integer)
    teacher_input: Mapped[dict] = mapped_column(JSON)  # what the teacher needs to learn from it (observation, action)
    created_at: Mapped[datetime] = mapped_column(AwareDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(AwareDateTime)
    # Set when a report arrives.
    reported_at: Mapped[datetime | None] = mapped_column(AwareDateTime, nullable=True)
    # reported_at again, only in curricula whose rewards are derived from earlier reports (return_progress,
    # *_normalized): their reports read the last ones through its partial indexes, where an index of every
    # report would cost every other curriculum's reports too (added after the first schema).
    derived_window_at: Mapped[datetime | None] = mapped_column(AwareDateTime, nullable=True)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    signals: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    ack: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the first answer, returned again on a resend
    # Batching for the teacher: `trajectory` is set once the report completes a trajectory of
    # `horizon` episodes of this student; `consumed_version` once a teacher update has used it.
    trajectory: Mapped[int | None] = mapped_column(Integer, nullable=True)
    consumed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_proposals_batch", "curriculum_id", "consumed_version", "trajectory"),
        Index("ix_proposals_student", "curriculum_id", "student_id", "seq"),
        Index("ix_proposals_curriculum_seq", "curriculum_id", "seq"),
        # A student's rewarded episodes not yet grouped into a trajectory (at most horizon - 1 of them):
        # each report reads them, and without this index it read the student's whole history. The price: on
        # PostgreSQL a report's UPDATE (it sets reward) can no longer be a HOT update.
        Index("ix_proposals_open", "curriculum_id", "student_id",
              sqlite_where=text("reward IS NOT NULL AND trajectory IS NULL"),
              postgresql_where=text("reward IS NOT NULL AND trajectory IS NULL")),
        # The last reports of a curriculum, of one of its students, and of a student on one discrete task, for
        # derived rewards: without them a report read and sorted the whole history (57 ms a report at 80,000
        # episodes on SQLite), and a student's first report of a discrete task read all of the student's.
        derived_window_index("ix_proposals_derived_window", "curriculum_id"),
        derived_window_index("ix_proposals_student_derived_window", "curriculum_id", "student_id"),
        derived_window_index("ix_proposals_task_derived_window", "curriculum_id", "student_id", "task_index"),
    )


class TeacherUpdate(Base):
    """One row per teacher update: what it learned from and what it looked like afterwards."""

    __tablename__ = "teacher_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    curriculum_id: Mapped[int] = mapped_column(ForeignKey("curricula.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(AwareDateTime, default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    curriculum_id: Mapped[int] = mapped_column(ForeignKey("curricula.id", ondelete="CASCADE"), index=True)
    student_id: Mapped[str] = mapped_column(String(128))
    env_steps: Mapped[int] = mapped_column(BigInteger)
    episodes: Mapped[int] = mapped_column(Integer)
    success_rate: Mapped[float] = mapped_column(Float)
    mean_return: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(AwareDateTime, default=utcnow)
    # On the curriculum's target tasks, or on the environment's own distribution (added after the first schema).
    on_target: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The client's key of this evaluation, so that a resend stores nothing (added after the first schema: rows from
    # before have none, which the unique index allows many times).
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_evaluations_idempotency", "curriculum_id", "idempotency_key", unique=True),)


def make_engine(url: str, request_threads: int, idle_transaction_s: float = 60.0) -> Engine:
    """The engine for `url`. Its pool has a connection for every thread that can hold one at once: the students'
    request threads (settings.request_threads), as many threads for the other routes, each of which may hold two
    (an inspection reads the cached teacher's version inside its session), the writer and the updater; and a few
    for bursts. A thread that found none would wait 30 s and fail its request with 503 (SQLAlchemy's default pool
    was 5 + 10 on SQLite, 20 + 20 here before, whatever the threads). A PostgreSQL server that does not answer
    fails a new connection after 10 s (unless the URL sets `connect_timeout`); one of its sessions that holds a
    transaction `idle_transaction_s` without a statement is ended by the server (unless the URL sets `options`):
    a replica frozen while it held a curriculum's row lock would otherwise hold up that curriculum's reports on
    every replica until TCP gave up on it, and when it wakes its request fails with 503, "resending is safe"."""
    pool = {"pool_size": 3 * request_threads + 2, "max_overflow": 8}
    if url.startswith("sqlite"):
        database = make_url(url).database
        # An in-memory database: SQLAlchemy's own pool for it (one connection, and so one database, per thread).
        in_memory = not database or database == ":memory:" or "mode=memory" in url
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **({} if in_memory else pool))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL lets readers run beside the writer; NORMAL sync is crash-safe for the process in WAL mode.
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers say so (see writer_engine) and take the write lock up front with BEGIN IMMEDIATE,
            # so a read-then-write transaction never fails to upgrade its lock; readers stay concurrent.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")

        return engine
    query = make_url(url).query
    connect_args = {} if "connect_timeout" in query else {"connect_timeout": 10}
    if "options" not in query:
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={round(idle_transaction_s * 1000)}"
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


def writer_engine(engine: Engine) -> Engine:
    """The engine for transactions that will write (on SQLite they begin with BEGIN IMMEDIATE)."""
    return engine.execution_options(writer=True)


# Any fixed number: the key of the PostgreSQL advisory lock that serializes schema creation.
_SCHEMA_LOCK_KEY = 7_240_311


def _fill_derived_windows(conn: Connection) -> None:
    """The reports of curricula with derived rewards stored without `derived_window_at`: in a database from before
    it, or, during a rolling upgrade, by a replica of the previous version since the last start-up."""
    derived = [curriculum_id for curriculum_id, spec in conn.execute(select(Curriculum.id, Curriculum.spec))
               if spec.get("reward_signal") in DERIVED_SIGNALS]
    conn.execute(update(Proposal)
                 .where(Proposal.curriculum_id.in_(derived), Proposal.reported_at.is_not(None),
                        Proposal.derived_window_at.is_(None))
                 .values(derived_window_at=Proposal.reported_at))


# Columns added since a table was first released, and what fills them at every start-up (a database created
# before gets the columns then, and the indexes added since, see create_tables).
ADDED_COLUMNS = {Evaluation.__table__.c.on_target: None, Proposal.__table__.c.derived_window_at: _fill_derived_windows,
                 Evaluation.__table__.c.idempotency_key: None}


def create_tables(engine: Engine) -> None:
    """Create missing tables and add missing columns. Replicas starting together on PostgreSQL take turns:
    two concurrent CREATE TABLEs of the same name collide in the catalog (UniqueViolation on pg_type) otherwise;
    on SQLite the write lock, taken up front, serializes them."""
    with writer_engine(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        Base.metadata.create_all(conn)
        for column, fill in ADDED_COLUMNS.items():
            present = {c["name"] for c in inspect(conn).get_columns(column.table.name)}
            if column.name not in present:
                ddl = conn.dialect.ddl_compiler(conn.dialect, None).get_column_specification(column)
                conn.execute(text(f"ALTER TABLE {column.table.name} ADD COLUMN {ddl}"))
            if fill:
                fill(conn)
        for table in Base.metadata.sorted_tables:  # create_all adds indexes only with their table
            for index in table.indexes:
                index.create(conn, checkfirst=True)
