"""The database's share of a batched episode: the hot path's writes alone, on one connection, as the writer runs them.

The service's writer thread runs every write through one connection, one transaction after another, so on
PostgreSQL the server's time per episode bounds one process's episodes/s whatever the Python around it does.
This bench runs the writes that batches of 64 episodes cost (`store/statements.py`: insert the proposals, then
mark them reported, group trajectories of 5, number a batch every 640 episodes; a transaction for the proposals and
one for the reports, with the values `gradnorm-reinforce` stores on PointMaze), without HTTP, teacher or
validation, and prints wall and CPU time per episode: this process (the driver's side) and, on PostgreSQL, the
server's processes. Not the reads of a batch (its curriculum, lock and counts, its proposals, its students' open
episodes and last reports), which the service also runs: a lower bound of the database's share. One query stands
in for how the service knows its new rows' seqs.

Beside it, `insert-only`: a sketch of another layout (not the service's), in which a report is a row of its own
table instead of updates of its proposal's row (an episode's row is updated 2.8 times today, and on PostgreSQL none
of those updates can be HOT, so each writes a new version of the row and an entry in each of its 9 indexes), and
a batch is one row, with 2 secondary indexes against today's 9 and none of the reads a redesign would still
need: an upper bound of what a redesign of the tables would buy, before anyone builds it. Figures move by tens of
percent from run to run on a shared machine: compare layouts within one run, over `--repeats`.

    python bench/hot_path_statements.py [--rounds 300] [--repeats 2] [--sqlite-only]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from service_load import SIGNALS, cpu_seconds  # noqa: E402

from teacher_service import wire  # noqa: E402
from teacher_service.learning.task_spaces import build_task_space  # noqa: E402
from teacher_service.learning.teachers import Context, build_teacher  # noqa: E402
from teacher_service.serving.store.statements import Driver  # noqa: E402
from teacher_service.serving.store.tables import create_tables, make_engine  # noqa: E402

SIZE, LEARNERS, HORIZON, BATCH = 64, 8, 5, 640  # as part 3 of service_load.py

INSERT_ONLY_TABLES = [
    "CREATE TABLE sketch_proposals (seq {serial} PRIMARY KEY, proposal_id VARCHAR(32) UNIQUE, curriculum_id INTEGER, "
    "student_id VARCHAR(128), task_index INTEGER, task_values {json}, reset_options {json}, teacher_version INTEGER, "
    "teacher_input {json}, created_at {time}, expires_at {time})",
    "CREATE INDEX ix_sketch_student ON sketch_proposals (curriculum_id, student_id, seq)",
    "CREATE TABLE sketch_reports (seq BIGINT PRIMARY KEY, curriculum_id INTEGER, student_id VARCHAR(128), "
    "reported_at {time}, reward FLOAT, signals {json}, ack {json}, closes_trajectory BOOLEAN)",
    "CREATE INDEX ix_sketch_reports ON sketch_reports (curriculum_id, seq)",
    "CREATE TABLE sketch_batches (curriculum_id INTEGER, version INTEGER, last_seq BIGINT, "
    "PRIMARY KEY (curriculum_id, version))",
]
INSERT_ONLY_SQL = {
    "insert_proposal": "INSERT INTO sketch_proposals (proposal_id, curriculum_id, student_id, task_index, task_values, "
    "reset_options, teacher_version, teacher_input, created_at, expires_at) VALUES (:proposal_id, :curriculum_id, "
    ":student_id, :task_index, :task_values, :reset_options, :teacher_version, :teacher_input, :created_at, :expires_at)",
    "seqs": "SELECT seq, student_id FROM sketch_proposals WHERE curriculum_id = :curriculum_id ORDER BY seq DESC "
    "LIMIT :n",
    "insert_report": "INSERT INTO sketch_reports (seq, curriculum_id, student_id, reported_at, reward, signals, ack, "
    "closes_trajectory) VALUES (:seq, :curriculum_id, :student_id, :reported_at, :reward, :signals, :ack, :closes)",
    "number_batch": "INSERT INTO sketch_batches VALUES (:curriculum_id, :version, :last_seq)",
}
TODAY_SEQS = "SELECT seq, student_id FROM proposals WHERE curriculum_id = :curriculum_id ORDER BY seq DESC LIMIT :n"


def stored_values(driver: Driver) -> dict[str, Any]:
    """What the service stores for a PointMaze proposal of `gradnorm-reinforce` and for its report."""
    spec = wire.CurriculumCreate.model_validate({"name": "bench", "task_space": {"kind": "preset", "env_id": "PointMaze_UMaze-v3"}})
    space = build_task_space(spec.task_space)
    teacher = build_teacher("gradnorm-reinforce", space, {}, 0)
    decision = teacher.propose_many([Context()])[0]
    ack = {"proposal_id": "0" * 32, "reward": 1.5, "teacher_version": 12, "teacher_updated": False}
    return {"task_index": decision.task_index, "task_values": driver.json(space.task(decision.task_index).values),
            "reset_options": driver.json(space.reset_options(decision.task_index)),
            "teacher_input": driver.json(decision.teacher_input), "signals": driver.json(SIGNALS),
            "ack": driver.json(ack)}


class Run:
    """Rounds of batches on one connection: one learner's 64 students at a time, 8 learners in turn."""

    def __init__(self, connection: Any, driver: Driver, values: dict[str, Any]) -> None:
        self.connection, self.driver, self.values = connection, driver, values
        self.cursor = connection.cursor()
        self.students = [f"vec{k}-{i}" for k in range(LEARNERS) for i in range(SIZE)]
        self.version = 0
        self.ready = 0

    def sql(self, text: str) -> str:
        return re.sub(r"(?<!:):(\w+)", r"%(\1)s", text) if self.driver.postgres else text

    def transaction(self, work: Callable[[], Any]) -> Any:
        if not self.driver.postgres:
            self.cursor.execute("BEGIN IMMEDIATE")  # as the writer's transactions begin on SQLite
        result = work()
        self.connection.commit() if self.driver.postgres else self.cursor.execute("COMMIT")
        return result

    def propose(self, students: list[str], insert: str, seqs: str) -> dict[str, int]:
        now = self.driver.time(datetime.now(timezone.utc))
        rows = [{"proposal_id": f"{time.time_ns():016x}{os.urandom(8).hex()}", "curriculum_id": 1, "student_id": s,
                 "task_index": self.values["task_index"], "task_values": self.values["task_values"],
                 "reset_options": self.values["reset_options"], "teacher_version": self.version,
                 "teacher_input": self.values["teacher_input"], "created_at": now, "expires_at": now}
                for s in students]
        self.cursor.executemany(self.sql(insert), rows)
        self.cursor.execute(self.sql(seqs), {"curriculum_id": 1, "n": len(students)})
        return {student: seq for seq, student in self.cursor.fetchall()}

    def numbered(self, episodes: int) -> bool:
        self.ready += episodes
        if self.ready < BATCH:
            return False
        self.version, self.ready = self.version + 1, 0
        return True


class Today(Run):
    """The service's statements (store/statements.py)."""

    name = "today's tables"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open: dict[str, list[int]] = {s: [] for s in self.students}

    def round(self, students: list[str]) -> None:
        seqs = self.transaction(lambda: self.propose(students, self.driver.sql["insert_proposal"], TODAY_SEQS))
        self.transaction(lambda: self.report(students, seqs))

    def report(self, students: list[str], seqs: dict[str, int]) -> None:
        sql, now = self.driver.sql, self.driver.time(datetime.now(timezone.utc))
        marks, trajectories, closed = [], [], 0
        for student in students:
            episodes = self.open[student]
            episodes.append(seqs[student])
            trajectory = None
            if len(episodes) == HORIZON:
                trajectory = episodes[0]
                trajectories += [{"trajectory": trajectory, "seq": seq} for seq in episodes[:-1]]
                closed += HORIZON
                self.open[student] = []
            marks.append({"seq": seqs[student], "reported_at": now, "derived_window_at": None, "reward": 1.5,
                          "signals": self.values["signals"], "trajectory": trajectory, "ack": self.values["ack"]})
        self.cursor.executemany(sql["mark_reported"], marks)
        if trajectories:
            self.cursor.executemany(sql["set_trajectory"], trajectories)
        if self.numbered(closed):
            self.cursor.execute(sql["schedule_ready"], {"curriculum_id": 1, "version": self.version})


class InsertOnly(Run):
    """The sketch: a report is a row of its own, a batch one row."""

    name = "insert-only sketch"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open: dict[str, int] = dict.fromkeys(self.students, 0)
        json_type, time_type = ("json", "timestamptz") if self.driver.postgres else ("TEXT", "TEXT")
        serial = "BIGSERIAL" if self.driver.postgres else "INTEGER"
        for statement in INSERT_ONLY_TABLES:
            self.cursor.execute(statement.format(serial=serial, json=json_type, time=time_type))
        self.connection.commit()

    def round(self, students: list[str]) -> None:
        seqs = self.transaction(lambda: self.propose(students, INSERT_ONLY_SQL["insert_proposal"], INSERT_ONLY_SQL["seqs"]))
        self.transaction(lambda: self.report(students, seqs))

    def report(self, students: list[str], seqs: dict[str, int]) -> None:
        now = self.driver.time(datetime.now(timezone.utc))
        rows, closed = [], 0
        for student in students:
            self.open[student] += 1
            closes = self.open[student] == HORIZON
            if closes:
                self.open[student], closed = 0, closed + HORIZON
            rows.append({"seq": seqs[student], "curriculum_id": 1, "student_id": student, "reported_at": now,
                         "reward": 1.5, "signals": self.values["signals"], "ack": self.values["ack"], "closes": closes})
        self.cursor.executemany(self.sql(INSERT_ONLY_SQL["insert_report"]), rows)
        if self.numbered(closed):
            self.cursor.execute(self.sql(INSERT_ONLY_SQL["number_batch"]),
                                {"curriculum_id": 1, "version": self.version, "last_seq": max(seqs.values())})


def measure(layout: type[Run], url: str, rounds: int, server_pid: int | None) -> dict[str, float]:
    """One layout on a fresh database at `url`: us of wall time and of CPU per episode."""
    engine = make_engine(url, request_threads=1)
    create_tables(engine)
    driver = Driver(engine.dialect.name)
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        cursor = connection.cursor()
        cursor.execute("INSERT INTO curricula (name, spec, teacher_version, teacher_updates, teacher_state, created_at) "
                       + ("VALUES ('bench', '{}', 0, 0, ''::bytea, now())" if driver.postgres else
                          "VALUES ('bench', '{}', 0, 0, x'', '2026-01-01 00:00:00.000000')"))
        connection.commit()
        run = layout(connection, driver, stored_values(driver))
        wall, cpu = time.perf_counter(), time.process_time()
        server = cpu_seconds(server_pid, tree=True) if server_pid else 0.0
        for k in range(rounds):
            learner = k % LEARNERS
            run.round(run.students[learner * SIZE:(learner + 1) * SIZE])
        episodes = rounds * SIZE
        figures = {"wall": time.perf_counter() - wall, "driver CPU": time.process_time() - cpu}
        if server_pid:
            figures["server CPU"] = cpu_seconds(server_pid, tree=True) - server
        return {name: 1e6 * seconds / episodes for name, seconds in figures.items()}
    finally:
        raw.close()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="batches of 64 episodes per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each layout, alternating")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()

    def report(backend: str, url_of: Callable[[], str], server_pid: int | None = None) -> None:
        for repeat in range(args.repeats):
            for layout in (Today, InsertOnly) if repeat % 2 == 0 else (InsertOnly, Today):
                figures = measure(layout, url_of(), args.rounds, server_pid)
                print(f"{backend:10} {layout.name:20} " + "  ".join(f"{name} {us:6.1f}" for name, us in figures.items())
                      + "  (us per episode)", flush=True)

    print(f"batches of {SIZE}, {args.rounds} rounds, one connection; proposals and reports one transaction each")
    data = Path(tempfile.mkdtemp(prefix="hot-path-"))
    counter = iter(range(1_000_000))
    try:
        report("SQLite", lambda: f"sqlite:///{data}/bench{next(counter)}.db")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    if args.sqlite_only:
        return
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        print("PostgreSQL (initdb, pg_ctl) not found: measured on SQLite only")
        return
    from tests.servers import PostgresServer

    postgres = PostgresServer().start()
    try:
        server_pid = int((postgres.dir / "data" / "postmaster.pid").read_text().split()[0])
        report("PostgreSQL", lambda: postgres.create_database(f"bench{next(counter)}"), server_pid)
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
