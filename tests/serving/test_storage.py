"""Durability on PostgreSQL, generated tokens, and the --insecure switch."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys

import httpx
import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from teacher_service.serving.infra.errors import database_unavailable
from teacher_service.serving.store.tables import create_tables, make_engine
from tests.servers import PostgresServer, ServiceProcess, free_port, wait_until
from tests.serving.test_api import create, propose, report


def test_postgres_path_commits_and_resumes(tmp_path, postgres_url):
    service = ServiceProcess(tmp_path, database_url=postgres_url).start()
    try:
        client = service.client()
        create(client, batch_size=2)
        acks = [report(client, propose(client), float(k)).json() for k in range(4)]
        assert [a["teacher_version"] for a in acks] == [0, 1, 1, 2]
        pending = propose(client)
        service.stop()
        service.start()
        client = service.client()
        assert client.get("/curricula/cur/teacher").json()["version"] == 2
        assert report(client, pending, 1.0).json() == {
            "proposal_id": pending["proposal_id"], "reward": 1.0, "teacher_version": 2, "teacher_updated": False
        }
        assert report(client, propose(client), 5.0).json()["teacher_version"] == 3
    finally:
        service.stop()
    dsn = postgres_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as conn:
        rewards = conn.execute("select reward from proposals order by seq").fetchall()
        versions = conn.execute("select version from teacher_updates order by id").fetchall()
    assert [r for (r,) in rewards] == [0.0, 1.0, 2.0, 3.0, 1.0, 5.0]
    assert [v for (v,) in versions] == [1, 2, 3]


def test_a_database_outage_answers_503_and_the_service_recovers_when_it_is_back(tmp_path):
    """PostgreSQL stopped under a running service: every route that needs it answers 503 with Retry-After (the
    students' clients retry those), none 500; health and metrics still answer; nothing acknowledged is lost, and
    once the database is back the same service proposes and reports again."""
    server, service = PostgresServer(), None  # its own server: the session's stays up for the other tests
    try:
        url = server.start().create_database("outage")
        service = ServiceProcess(tmp_path, database_url=url).start()
        client = service.client()
        create(client, batch_size=2)
        acknowledged = report(client, propose(client), 1.0)
        assert acknowledged.status_code == 200
        pending = propose(client)
        server.pause()
        answers = [client.post("/propose", json={"curriculum": "cur", "student_id": "s2"}),
                   report(client, pending, 2.0),
                   client.post("/propose/batch", json={"items": [{"curriculum": "cur", "student_id": "s3"}]}),
                   client.get("/curricula/cur"), client.get("/curricula/cur/students")]
        for answer in answers:
            assert answer.status_code == 503, (answer.request.url, answer.text)
            assert answer.headers["retry-after"] == "1" and "database is unavailable" in answer.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200
        server.resume()
        assert report(client, pending, 2.0).json()["teacher_version"] == 1  # the pending one completes the batch
        assert report(client, propose(client, student="s2"), 3.0, student="s2").status_code == 200
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            rewards = conn.execute("select reward from proposals where reward is not null order by seq").fetchall()
        assert [r for (r,) in rewards] == [1.0, 2.0, 3.0]
    finally:
        if service:
            service.stop()
        server.stop()
    assert "the database is unavailable" in service.log_path.read_text()


def test_a_replica_frozen_while_it_holds_a_curriculums_lock_does_not_hold_up_the_others(tmp_path, postgres_url):
    """A replica that stops (SIGSTOP, a paused VM) inside a report transaction keeps the curriculum's row lock,
    and every replica's reports of that curriculum wait on it. The server ends such a session after
    `database_idle_transaction_s`: the others go on, and the frozen one, when it wakes, gets an error that
    counts as an outage (503, "resending is safe"). Without it they waited until TCP gave up on the frozen
    replica (minutes)."""
    service = ServiceProcess(tmp_path, database_url=postgres_url).start()
    frozen = make_engine(postgres_url, request_threads=1, idle_transaction_s=1.5)  # what the replica's app makes
    try:
        client = service.client()
        create(client, batch_size=2)
        pending = propose(client)
        with frozen.connect() as conn:
            assert conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "1500ms"
            conn.execute(text("BEGIN"))
            conn.execute(text("SELECT id FROM curricula WHERE name = 'cur' FOR NO KEY UPDATE"))  # the report's row lock
            answer = report(client, pending, 1.0)  # waits for the lock until the server ends the frozen session
            assert answer.status_code == 200 and answer.json()["reward"] == 1.0
            with pytest.raises(sqlalchemy.exc.DBAPIError) as woke:
                conn.execute(text("SELECT 1"))
            assert database_unavailable(woke.value)
    finally:
        frozen.dispose()
        service.stop()


def test_only_an_unavailable_database_counts_as_unavailable(tmp_path):
    """SQLite's write lock held past the timeout is an outage (503); a mistake in a statement is not, and a running
    service answers it with 500."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as locked:
            waiter.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as mistake:
            waiter.execute("SELECT * FROM missing")
    finally:
        holder.close()
        waiter.close()
    engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}", request_threads=1)  # through SQLAlchemy
    with pytest.raises(sqlalchemy.exc.OperationalError) as wrapped_mistake, engine.connect() as conn:
        conn.execute(text("SELECT * FROM missing"))
    engine.dispose()
    assert database_unavailable(locked.value)
    assert not database_unavailable(mistake.value) and not database_unavailable(wrapped_mistake.value)

    (tmp_path / "service").mkdir()
    service = ServiceProcess(tmp_path / "service").start()
    try:
        client = service.client()
        create(client)
        with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
            db.execute("DROP TABLE evaluations")  # a schema the code does not expect: a bug, not an outage
        answer = client.post("/evaluations", json={"curriculum": "cur", "student_id": "s1", "env_steps": 1,
                                                   "episodes": 1, "success_rate": 0.5, "mean_return": 1.0})
        assert answer.status_code == 500
        # The server closes a connection after a 500; on a new one, routes the bug does not touch still answer.
        assert service.client().post("/propose", json={"curriculum": "cur", "student_id": "s1"}).status_code == 200
    finally:
        service.stop()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_pool_has_a_connection_for_every_thread_that_can_hold_one(database, tmp_path, request):
    """The students' threads, as many for the other routes holding up to two each (an inspection reads the
    teacher's version inside its session), the writer and the updater: with fewer, a request would wait 30 s for
    a connection and fail (SQLAlchemy's default pool is 5 + 10 on SQLite; ours was 20 + 20 on PostgreSQL)."""
    url = (f"sqlite:///{tmp_path / 'pool.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = make_engine(url, request_threads=30)
    assert engine.pool.size() >= 30 + 2 * 30 + 2
    engine.dispose()
    if database == "sqlite":
        memory = make_engine("sqlite://", request_threads=30)  # one shared connection: no pool to size
        with memory.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
        memory.dispose()


def run_service(tmp_path, *args, env=None):
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "teacher_service.serving.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path), *args],
        env={**clean, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, "service")
    return process, url


def test_embedded_default_generates_owner_only_tokens(tmp_path):
    process, url = run_service(tmp_path)
    try:
        path = tmp_path / "tokens.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        tokens = json.loads(path.read_text())
        body = {"name": "c", "task_space": {"kind": "box", "low": [0], "high": [1]}}
        assert httpx.post(f"{url}/curricula", json=body).status_code == 401
        assert httpx.post(f"{url}/curricula", json=body,
                          headers={"Authorization": f"Bearer {tokens['student_token']}"}).status_code == 403
        assert httpx.post(f"{url}/curricula", json=body,
                          headers={"Authorization": f"Bearer {tokens['admin_token']}"}).status_code == 201
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert str(path) in output


def test_insecure_only_when_asked(tmp_path):
    process, url = run_service(tmp_path, "--insecure")
    try:
        body = {"name": "c", "task_space": {"kind": "box", "low": [0], "high": [1]}}
        assert httpx.post(f"{url}/curricula", json=body, timeout=30).status_code == 201  # the first one builds a teacher
        assert not (tmp_path / "tokens.json").exists()
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "--insecure" in output


def test_sqlite_never_reuses_a_deleted_curriculums_id(tmp_path):
    # Teachers are cached by curriculum id: a new curriculum taking a deleted one's id would get its teacher.
    engine = make_engine(f"sqlite:///{tmp_path / 'ids.db'}", request_threads=1)
    create_tables(engine)
    add = text("INSERT INTO curricula (name, spec, teacher_version, teacher_updates, teacher_state, created_at) "
               "VALUES (:name, '{}', 0, 0, x'00', '2026-01-01 00:00:00') RETURNING id")
    with engine.begin() as conn:
        conn.execute(add, {"name": "a"})
        newest = conn.execute(add, {"name": "b"}).scalar_one()
        conn.execute(text("DELETE FROM curricula WHERE id = :id"), {"id": newest})
        assert conn.execute(add, {"name": "c"}).scalar_one() > newest
    engine.dispose()


def database(url: str, insert_proposals: str, rows: list[dict]):
    """A database at `url` with curriculum 1 and proposals inserted by the statement `insert_proposals` from
    `rows`, analyzed as autovacuum would (PostgreSQL); its engine."""
    engine = make_engine(url, request_threads=4)
    create_tables(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO curricula (id, name, spec, teacher_version, teacher_updates, teacher_state, "
                          "created_at) VALUES (1, 'c', '{}', 0, 0, :state, :now)"),
                     {"state": b"", "now": "2026-01-01 00:00:00"})
        conn.execute(text(insert_proposals), rows)
        if conn.dialect.name == "postgresql":  # as autovacuum does; SQLite files are never analyzed
            conn.execute(text("ANALYZE"))
    return engine


def history(url: str, trajectories: list[int | None], consumed: list[int | None]):
    """A database at `url` with curriculum 1 and student 's' holding one episode per entry (rewarded, in
    that trajectory and consumed by that teacher version); its engine and driver."""
    from teacher_service.serving.store.statements import Driver

    engine = database(
        url, "INSERT INTO proposals (proposal_id, curriculum_id, student_id, reset_options, teacher_version, "
        "teacher_input, created_at, expires_at, reward, trajectory, consumed_version) VALUES (:id, 1, 's', '{}', 0, "
        ":input, :now, :now, :reward, :trajectory, :consumed)",
        [{"id": f"p{k}", "now": "2026-01-01 00:00:00", "trajectory": trajectory, "consumed": version,
          "reward": float(k), "input": json.dumps({"k": k})}
         for k, (trajectory, version) in enumerate(zip(trajectories, consumed, strict=True))])
    return engine, Driver(engine.dialect.name)


def plan(driver, cursor, statement: str, params: dict) -> str:
    cursor.execute(("EXPLAIN " if driver.postgres else "EXPLAIN QUERY PLAN ") + driver.sql[statement], params)
    return " ".join(str(row) for row in cursor.fetchall())


def test_a_reports_open_episodes_are_read_through_their_partial_index(tmp_path, postgres_url):
    """Each report reads its student's episodes not yet in a trajectory. A student with a long history
    (2,000 episodes in trajectories, 2 open): through ix_proposals_open that is the 2 rows, where the
    student's index made it a scan of the whole history (~1.2 ms a report at 840 episodes)."""
    for url in (f"sqlite:///{tmp_path / 'plan.db'}", postgres_url):
        engine, driver = history(url, [None if k >= 2000 else k for k in range(2002)], [None] * 2002)
        one = {"curriculum_id": 1, "student_ids": driver.list_param(["s"])}
        several = {"curriculum_id": 1, "student_ids": driver.list_param(["s", "t"])}
        with engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            open_seqs = driver.open_episodes(cursor, 1, ["s"])["s"]
            open_plan = plan(driver, cursor, "open_episodes_of_students", one)
            # A report batch reads them for all its students in one statement, through the same index.
            by_student = driver.open_episodes(cursor, 1, ["s", "t"])
            batch_plan = plan(driver, cursor, "open_episodes_of_students", several)
            # and its proposals, through the unique index on proposal_id.
            proposals = driver.proposals(cursor, ["p7", "p2001", "nope"])
            ids_plan = plan(driver, cursor, "proposals_by_ids", {"proposal_ids": driver.list_param(["p7", "p2001"])})
            cursor.close()
        engine.dispose()
        assert len(open_seqs) == 2, url
        assert "ix_proposals_open" in open_plan, (url, open_plan)
        assert sorted(by_student["s"]) == sorted(open_seqs) and by_student["t"] == [], url
        assert "ix_proposals_open" in batch_plan, (url, batch_plan)
        assert sorted(row[1] for row in proposals) == ["p2001", "p7"], url
        assert "SCAN proposals" not in ids_plan and "Seq Scan" not in ids_plan, (url, ids_plan)


def test_the_informativeness_table_reads_the_newest_reports_not_the_history(tmp_path, postgres_url):
    """/informativeness (an open dashboard asks every 30 s) reads the newest reported episodes through the
    (curriculum_id, seq) index, stopping after as many rows as asked; ordered by report time, it read and sorted
    the curriculum's whole history (225 ms at 300,000 episodes on SQLite, against 1.6)."""
    from teacher_service.serving.inspection import last_reported

    n = 3000
    in_flight = {k for k in range(n) if k % 7 == 0 or k >= n - 2}  # proposed, not reported
    rows = [{"id": f"p{k}", "now": "2026-01-01 00:00:00",
             "reported": None if k in in_flight else f"2026-01-01 {k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}"}
            for k in range(n)]
    for url in (f"sqlite:///{tmp_path / 'plan.db'}", postgres_url):
        engine = database(
            url, "INSERT INTO proposals (proposal_id, curriculum_id, student_id, reset_options, teacher_version, "
            "teacher_input, created_at, expires_at, reported_at) VALUES (:id, 1, 's', '{}', 0, '{}', :now, :now, "
            ":reported)", rows)
        statement = last_reported(1, 100)
        with engine.connect() as conn:
            seqs = [row.seq for row in conn.execute(statement)]
            order = {row.seq: row.proposal_id for row in conn.execute(text("SELECT seq, proposal_id FROM proposals"))}
            explain = "EXPLAIN " if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
            sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = " ".join(str(row) for row in conn.exec_driver_sql(explain + sql))
        engine.dispose()
        newest = [f"p{k}" for k in range(n - 1, -1, -1) if k not in in_flight][:100]
        assert [order[seq] for seq in seqs] == newest, url
        assert "TEMP B-TREE" not in plan and "Sort" not in plan and "Seq Scan" not in plan, (url, plan)


def test_a_teacher_update_reads_its_batch_not_the_curriculums_history(tmp_path, postgres_url):
    """The updater reads the batch of one version, in sequence order. Behind it, 5,000 episodes of 500 earlier
    versions: through ix_proposals_batch that is its 10 rows; SQLite's planner, asked for ORDER BY seq, took the
    (curriculum_id, seq) index and read them all (10 to 20 ms an update at 80,000 episodes)."""
    from teacher_service.serving.updater import read_batch

    versions = [k // 10 + 1 for k in range(5000)] + [501] * 10 + [None] * 3
    # Its trajectories in the reverse order of its episodes: the index's order is not the sequence order.
    trajectories = list(range(5000)) + list(range(6000, 5990, -1)) + [None] * 3
    for url in (f"sqlite:///{tmp_path / 'batch.db'}", postgres_url):
        engine, driver = history(url, trajectories, versions)
        params = {"curriculum_id": 1, "version": 501}
        with engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            batch = read_batch(driver, cursor, 1, 501)
            batch_plan = plan(driver, cursor, "batch", params)
            cursor.close()
        engine.dispose()
        expected = [k for k, version in enumerate(versions) if version == 501]
        assert [exp.teacher_input["k"] for exp in batch] == expected, url
        assert "ix_proposals_batch" in batch_plan and "ix_proposals_curriculum_seq" not in batch_plan, (url, batch_plan)
