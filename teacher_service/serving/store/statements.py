"""The statements of the hot path (/propose, /report, teacher updates) as SQL for the database driver.

Through SQLAlchemy a statement costs about 60 us on SQLite, through `sqlite3` about 5 us (README "Scale");
SQLAlchemy keeps the schema (tables.py), the rare writes and the inspection queries. Values are stored
the way SQLAlchemy's column types store them, so that both read the same rows: JSON as text (SQLite) or
json (PostgreSQL), `None` as JSON null; times in UTC, on SQLite as SQLAlchemy's 'YYYY-MM-DD HH:MM:SS.ffffff'.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from datetime import datetime, timezone
from typing import Any

import orjson

_CURRICULUM = "SELECT id, name, teacher_version FROM curricula"
_PROPOSAL_COLUMNS = "seq, proposal_id, curriculum_id, student_id, task_index, task_values, expires_at, signals, ack"
_READY = "curriculum_id = :curriculum_id AND trajectory IS NOT NULL AND consumed_version IS NULL"

SQL = {
    "curriculum_by_name": f"{_CURRICULUM} WHERE name = :name",
    "curriculum_by_id": f"{_CURRICULUM} WHERE id = :curriculum_id",
    # The row lock that orders all reports of a curriculum across replicas (SQLite: the write lock does). NO KEY
    # UPDATE: it excludes the other reports and the updater's UPDATE of the row, not the proposals' KEY SHARE below.
    "lock_curriculum": f"{_CURRICULUM} WHERE id = :curriculum_id" "{report_lock}",
    # A propose job's curriculum: on PostgreSQL the key-share lock keeps another replica from deleting it before the
    # job's proposals are stored (its DELETE waits for the commit, then takes them along); on SQLite the write lock,
    # which the job holds, does that. Neither reports nor the updater's UPDATE of the row (no key column) wait for it.
    "curriculum_to_propose": f"{_CURRICULUM} WHERE name = :name" "{propose_lock}",
    "spec": "SELECT spec FROM curricula WHERE id = :curriculum_id",
    "last_proposal": "SELECT max(seq) FROM proposals WHERE curriculum_id = :curriculum_id",
    # The version, and the checkpoint only if a cache at version :cached is older than it (a teacher that
    # checkpoints every :every updates stores it at the versions that are multiples of :every).
    "checkpoint_if_newer": "SELECT teacher_version, CASE WHEN :cached < teacher_version / :every * :every "
    "THEN teacher_state END FROM curricula WHERE id = :curriculum_id",
    # The last completed episode of each of a list of students (not stopped or abandoned: no `outcome` in its
    # signals), as a student's own context says (student_client/session.py); one statement for a batch's contexts;
    # per student an index scan from its newest proposal, as for one (a max() over its rows would read its history).
    "last_reports_of_students": "SELECT p.student_id, p.task_index, p.task_values, p.signals FROM {students} "
    "JOIN proposals p ON p.seq = (SELECT seq FROM proposals WHERE curriculum_id = :curriculum_id "
    "AND student_id = s.value AND reported_at IS NOT NULL AND {outcome} IS NULL ORDER BY seq DESC LIMIT 1)",
    "insert_proposal": "INSERT INTO proposals (proposal_id, curriculum_id, student_id, task_index, task_values, "
    "reset_options, teacher_version, teacher_input, created_at, expires_at) VALUES (:proposal_id, :curriculum_id, "
    ":student_id, :task_index, :task_values, :reset_options, :teacher_version, :teacher_input, :created_at, "
    ":expires_at)",
    "proposal_by_id": f"SELECT {_PROPOSAL_COLUMNS} FROM proposals WHERE proposal_id = :proposal_id",
    # A report batch's proposals in one statement (PostgreSQL: one round trip, not one per report).
    "proposals_by_ids": f"SELECT {_PROPOSAL_COLUMNS} FROM proposals WHERE proposal_id {{in_ids}}",
    # Their curricula, to lock before reading them: one row, not the batch's (SQLite: one step of the statement,
    # where each row's step gives up the GIL and waits to take it back, in the one writer thread).
    "curricula_of_proposals": "SELECT DISTINCT curriculum_id FROM proposals WHERE proposal_id {in_ids}",
    "mark_reported": "UPDATE proposals SET reported_at = :reported_at, derived_window_at = :derived_window_at, "
    "signals = :signals, reward = :reward, trajectory = :trajectory, ack = :ack WHERE seq = :seq",
    # Students' rewarded episodes not yet in a trajectory, (student_id, seq) rows: through the partial index of
    # open episodes (a handful each), not their whole histories; SQLite's planner, without statistics (we never
    # ANALYZE), would take the student index, so it is named there.
    "open_episodes_of_students": "SELECT student_id, seq FROM proposals{open_index} WHERE curriculum_id = "
    ":curriculum_id AND student_id {in_students} AND reward IS NOT NULL AND trajectory IS NULL",
    "set_trajectory": "UPDATE proposals SET trajectory = :trajectory WHERE seq = :seq",
    "count_ready": f"SELECT count(*) FROM proposals WHERE {_READY}",
    # Batches are numbered by the teacher version that will have learned from them.
    "last_scheduled": "SELECT max(consumed_version) FROM proposals WHERE curriculum_id = :curriculum_id",
    "schedule_ready": f"UPDATE proposals SET consumed_version = :version WHERE {_READY}",
    # The caller sorts by seq: with ORDER BY seq, SQLite's planner took the (curriculum_id, seq) index and read the
    # curriculum's whole history on every teacher update (10 to 20 ms at 80,000 episodes, growing), not its batch.
    "batch": "SELECT seq, student_id, trajectory, task_index, task_values, teacher_input, reward FROM proposals "
    "WHERE curriculum_id = :curriculum_id AND consumed_version = :version",
    # Curricula with batches numbered and not applied, and the last numbered (the batch index has it at its end).
    "pending_curricula": "SELECT c.id, (SELECT max(consumed_version) FROM proposals p WHERE p.curriculum_id = c.id) "
    "FROM curricula c WHERE EXISTS (SELECT 1 FROM proposals p "
    "WHERE p.curriculum_id = c.id AND p.consumed_version > c.teacher_version)",
    # A round of :updates updates, conditional: of two replicas applying the same batches, one stores them.
    "store_update": "UPDATE curricula SET teacher_version = :version, teacher_updates = teacher_updates + :updates, "
    "teacher_state = :state WHERE id = :curriculum_id AND teacher_version = :version - :updates",
    "store_update_without_checkpoint": "UPDATE curricula SET teacher_version = :version, "
    "teacher_updates = teacher_updates + :updates WHERE id = :curriculum_id AND teacher_version = :version - :updates",
    "insert_update": "INSERT INTO teacher_updates (curriculum_id, version, stats, created_at) "
    "VALUES (:curriculum_id, :version, :stats, :created_at)",
}

CurriculumRow = namedtuple("CurriculumRow", "id name teacher_version")
ProposalRow = namedtuple("ProposalRow", _PROPOSAL_COLUMNS)
# Positions in a raw row of those columns.
PROPOSAL_ID, CURRICULUM_ID, STUDENT_ID = (ProposalRow._fields.index(c) for c in ("proposal_id", "curriculum_id",
                                                                                  "student_id"))


class Driver:
    """The statements for one dialect, rewritten once for its driver, and its value conversions."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {dialect!r}")
        def as_table(param: str, alias: str) -> str:
            """A list parameter as a table alias(value): a PostgreSQL array, or on SQLite a JSON array."""
            return f"unnest(:{param}::text[]) AS {alias}(value)" if self.postgres else f"json_each(:{param}) {alias}"

        def in_list(param: str) -> str:
            """`IN` a list parameter. On PostgreSQL `= ANY(array)`, which its planner can use in an index's condition:
            as `IN (SELECT ... unnest)` it read every open episode of the curriculum (1,216 to 1,536 index entries for
            a batch's 64 students: a quarter of the server's time per batched episode) and joined them to the list."""
            return f"= ANY(:{param}::text[])" if self.postgres else f"IN (SELECT value FROM json_each(:{param}))"

        filled = {
            name: text.format(report_lock=" FOR NO KEY UPDATE" if self.postgres else "",
                              propose_lock=" FOR KEY SHARE" if self.postgres else "",
                              students=as_table("student_ids", "s"), in_students=in_list("student_ids"),
                              in_ids=in_list("proposal_ids"),
                              open_index="" if self.postgres else " INDEXED BY ix_proposals_open",
                              outcome="signals ->> 'outcome'" if self.postgres else "json_extract(signals, '$.outcome')")
            for name, text in SQL.items()
        }
        # sqlite3 takes :name; psycopg takes %(name)s.
        self.sql = {name: re.sub(r"(?<!:):(\w+)", r"%(\1)s", text) for name, text in filled.items()} if self.postgres else filled

    def execute(self, cursor, name: str, params: dict[str, Any] | None = None):
        cursor.execute(self.sql[name], params or {})
        return cursor

    def one(self, cursor, name: str, params: dict[str, Any] | None = None) -> tuple | None:
        return self.execute(cursor, name, params).fetchone()

    def all(self, cursor, name: str, params: dict[str, Any] | None = None) -> list[tuple]:
        return self.execute(cursor, name, params).fetchall()

    def last_reports(self, cursor, curriculum_id: int, student_ids: list[str]) -> list[tuple]:
        """(student_id, task_index, task_values, signals) of each student's last report of a completed episode, for
        those with one."""
        return self.all(cursor, "last_reports_of_students",
                        {"curriculum_id": curriculum_id, "student_ids": self.list_param(student_ids)})

    def proposals(self, cursor, proposal_ids: list[str]) -> list[tuple]:
        """The raw rows of those of these proposals that exist (`proposal` parses one)."""
        return self.all(cursor, "proposals_by_ids", {"proposal_ids": self.list_param(proposal_ids)})

    def curricula_of(self, cursor, proposal_ids: list[str]) -> list[int]:
        """The ids of the curricula of those of these proposals that exist."""
        rows = self.all(cursor, "curricula_of_proposals", {"proposal_ids": self.list_param(proposal_ids)})
        return [curriculum_id for (curriculum_id,) in rows]

    def open_episodes(self, cursor, curriculum_id: int, student_ids: list[str]) -> dict[str, list[int]]:
        """Each student's rewarded episodes not yet in a trajectory: their seqs, in no particular order."""
        found: dict[str, list[int]] = {student: [] for student in student_ids}
        for student, seq in self.all(cursor, "open_episodes_of_students",
                                     {"curriculum_id": curriculum_id, "student_ids": self.list_param(student_ids)}):
            found[student].append(seq)
        return found

    def list_param(self, values: list[str]) -> list[str] | str:
        """A list of strings as the statements take it (see `as_table` and `in_list`)."""
        return values if self.postgres else self.json(values)

    def many(self, cursor, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            cursor.executemany(self.sql[name], rows)

    # ------------------------------------------------------------------ values

    # orjson: about a quarter of the service's time under batch load went to the json module. Numpy scalars
    # and arrays are written as numbers and lists; a non-finite float as null (JSON has no NaN, PostgreSQL's json
    # refuses it): the wire schemas let none in, and the teachers' own outputs are finite.
    @staticmethod
    def json(value: Any) -> str:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def load_json(self, value: Any) -> Any:
        if not isinstance(value, str) or self.postgres:
            return value
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:  # NaN or Infinity, as json.dumps wrote them before orjson
            return json.loads(value)

    def time(self, moment: datetime) -> datetime | str:
        if self.postgres:
            return moment
        # isoformat: the same text as strftime("%Y-%m-%d %H:%M:%S.%f"), in two thirds of the time.
        return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")

    def load_time(self, value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)

    def proposal(self, raw: tuple) -> ProposalRow:
        seq, proposal_id, curriculum_id, student_id, task_index, task_values, expires_at, signals, ack = raw
        return ProposalRow(seq, proposal_id, curriculum_id, student_id, task_index, self.load_json(task_values),
                           self.load_time(expires_at), self.load_json(signals), self.load_json(ack))
