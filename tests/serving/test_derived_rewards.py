"""Derived reward signals over HTTP: ReportAck.reward equals the value computed by hand from the reports; the
statements that read the earlier reports read a window, not the history, also in a database from before."""

from __future__ import annotations

import numpy as np
import pytest

from tests.servers import ServiceProcess

TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(3)]}
BOX = {"kind": "box", "low": [0, 0], "high": [10, 1]}


def create(client, name, task_space, reward_signal):
    body = {"name": name, "task_space": task_space, "teacher": {"algorithm": "random"}, "reward_signal": reward_signal}
    assert client.post("/curricula", json=body).status_code == 201


def propose(client, name, student="s"):
    return client.post("/propose", json={"curriculum": name, "student_id": student}).json()


def report(client, proposal, signals, student="s"):
    body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": signals}
    response = client.post("/report", json=body)
    assert response.status_code == 200, response.text
    return response.json()["reward"]


def test_return_progress_is_the_change_since_the_task_was_last_reported(service):
    client = service.client()
    create(client, "line", TASKS, "return_progress")
    create(client, "box", BOX, "return_progress")
    rng = np.random.default_rng(0)
    last_return = {}  # discrete: task index -> its last reported return
    box_history = []  # box: (scaled task, return), in report order
    for step in range(40):
        if step == 20:  # the values come from the database, so a restart changes nothing
            service.stop()
            service.start()
            client = service.client()
        # Three proposals out at once, reported in reverse order: "last" means last reported.
        for proposal in reversed([propose(client, "line") for _ in range(3)]):
            index = proposal["task"]["index"]
            if step % 7 == 3:  # no return in this report: no reward, and it is not a "last" return
                assert report(client, proposal, {"grad_norm_mean": 1.0}) is None
                continue
            value = round(float(rng.normal(10, 5)), 3)
            expected = abs(value - last_return[index]) if index in last_return else None
            assert report(client, proposal, {"episode_return": value}) == expected
            last_return[index] = value

        proposal = propose(client, "box")
        task = np.array(proposal["task"]["values"]) / np.array(BOX["high"])  # nearest in scaled coordinates
        value = round(float(rng.normal(10, 5)), 3)
        reward = report(client, proposal, {"episode_return": value})
        if box_history:
            distances = [np.linalg.norm(task - other) for other, _ in box_history]
            assert reward == pytest.approx(abs(value - box_history[int(np.argmin(distances))][1]))
        else:
            assert reward is None
        box_history.insert(0, (task, value))  # most recent first, so argmin prefers it among ties
    assert len(last_return) == 3


def test_return_progress_compares_a_student_only_with_itself(service):
    # Two students of different skill take turns on one task and neither learns: no progress.
    client = service.client()
    create(client, "one", {"kind": "discrete", "tasks": [{"name": "only"}]}, "return_progress")
    rng = np.random.default_rng(0)
    rewards = []
    for step in range(20):
        student, skill = ("weak", 1.0) if step % 2 else ("strong", 10.0)
        value = round(skill + 0.05 * float(rng.standard_normal()), 3)
        rewards.append(report(client, propose(client, "one", student), {"episode_return": value}, student))
    assert rewards[:2] == [None, None]  # each student's first report of the task
    assert max(rewards[2:]) < 0.3, rewards  # across students each would be about 9


def test_gradient_norms_normalized_by_the_recent_mean(service):
    client = service.client()
    response = client.post("/curricula", json={"name": "x", "task_space": TASKS, "reward_signal": "progress"})
    assert response.status_code == 422
    for name in ("return_progress", "grad_norm_mean_normalized", "critic_grad_norm_episode_normalized"):
        assert name in response.json()["detail"][0]["msg"]
    create(client, "grad", TASKS, "grad_norm_episode_normalized")
    rng = np.random.default_rng(1)
    reported = []  # grad_norm_episode of each report, None where missing
    for step in range(130):
        # The gradients grow 10x over training; the normalized reward stays of order 1.
        value = None if step % 5 == 0 else round(float((1 + step / 13) * rng.uniform(0.5, 1.5)), 6)
        student = "ab"[step % 2]
        reward = report(client, propose(client, "grad", student), {"grad_norm_episode": value}, student)
        # Mean over this report's value and those of the previous 99 reports that carry one.
        window = [v for v in reported[-99:] if v is not None]
        reported.append(value)
        if value is None:
            assert reward is None
            continue
        expected = value / np.mean([value, *window])
        assert abs(reward - expected) < 1e-9, (step, reward, expected)
    assert reward < 2



def test_stopped_and_abandoned_episodes_are_no_earlier_report(service):
    """A cut episode's partial return and gradients are neither progressed from nor a scale for others."""
    client = service.client()
    one_task = {"kind": "discrete", "tasks": [{"name": "only"}]}
    create(client, "progress", one_task, "return_progress")
    create(client, "scale", one_task, "grad_norm_mean_normalized")
    for name, first, cut, last, expected in [
        ("progress", {"episode_return": 10.0}, {"episode_return": -50.0}, {"episode_return": 12.0}, 2.0),
        ("scale", {"grad_norm_mean": 2.0}, {"grad_norm_mean": 100.0}, {"grad_norm_mean": 6.0}, 1.5),
    ]:
        report(client, propose(client, name), first)
        for outcome in ("stopped", "abandoned"):
            proposal = propose(client, name)
            body = {"proposal_id": proposal["proposal_id"], "student_id": "s", "signals": cut, "outcome": outcome}
            response = client.post("/report", json=body)
            assert response.status_code == 200 and response.json()["reward"] is None, response.text
        assert report(client, propose(client, name), last) == pytest.approx(expected)


# ---------------------------------------------------------------- the window, not the history


def test_a_derived_reward_reads_its_window_through_an_index_not_the_history(tmp_path, postgres_url):
    """At 80,000 episodes a normalized reward read and sorted every report of the curriculum (57 ms a report
    on SQLite, bench/derived_rewards.py), return_progress every report of the student: both statements now
    read the last reports through the derived-window indexes, newest first, and stop at their limit."""
    from types import SimpleNamespace

    from sqlalchemy import text

    from teacher_service.serving.store import reports
    from teacher_service.serving.store.tables import Proposal
    from tests.serving.test_storage import database

    # Ten students taking turns, reported in the reverse of their order (the window follows report times, not
    # seq); student s has task 0 and box tasks (no index) in turns.
    rows = [{"id": f"p{k}", "student": "s" if k % 10 == 0 else f"o{k % 10}",
             "task": None if k % 20 == 10 else 0, "at": f"2026-01-01 00:{59 - k // 60:02}:{59 - k % 60:02}"}
            for k in range(3000)]  # seq k + 1

    def newest(student=None, task=0):
        return [k + 1 for k, row in enumerate(rows) if student in (None, row["student"]) and
                (student is None or row["task"] == task)][:99]

    for url in (f"sqlite:///{tmp_path / 'plan.db'}", postgres_url):
        engine = database(url, "INSERT INTO proposals (proposal_id, curriculum_id, student_id, task_index, "
                          "reset_options, teacher_version, teacher_input, created_at, expires_at, reported_at, "
                          "derived_window_at, signals) VALUES (:id, 1, :student, :task, '{}', 0, '{}', :at, :at, :at, "
                          ":at, '{}')", rows)
        proposal = SimpleNamespace(curriculum_id=1, seq=10**6, student_id="s", task_index=0)
        curriculum = reports.earlier_reports(proposal, Proposal.seq).limit(99)
        student = curriculum.where(Proposal.student_id == "s", Proposal.task_index == 0)
        # A task the student never had: the index finds none, where a filter would read the student's history.
        new_task = curriculum.where(Proposal.student_id == "s", Proposal.task_index == 1)
        box = curriculum.where(Proposal.student_id == "s")  # a box's tasks have no index: all the student's
        with engine.connect() as conn:
            explain = "EXPLAIN " if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "

            def plan(query) -> str:
                sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
                return " ".join(str(row) for row in conn.execute(text(explain + sql)))

            queries = {"curriculum": curriculum, "student": student, "new task": new_task, "box": box}
            plans = {name: plan(query) for name, query in queries.items()}
            seqs = {name: conn.scalars(query).all() for name, query in queries.items()}
        engine.dispose()
        assert "ix_proposals_derived_window" in plans["curriculum"], (url, plans)
        assert "ix_proposals_student_derived_window" in plans["box"], (url, plans)
        for name in ("student", "new task"):
            assert "ix_proposals_task_derived_window" in plans[name], (url, plans)
            # the task is a condition of the index, not a filter of the student's rows
            assert "task_index" in plans[name].split("Filter")[0], (url, plans)
        for p in plans.values():  # no pass over the history: neither a scan nor a sort
            assert not any(word in p for word in ("SCAN proposals", "Seq Scan", "TEMP B-TREE", "Sort")), (url, p)
        assert seqs["curriculum"] == newest() == list(range(1, 100)), url  # the last reported first
        assert seqs["student"] == newest("s", 0) and seqs["new task"] == [], url
        assert seqs["box"] == [k + 1 for k, row in enumerate(rows) if row["student"] == "s"][:99], url


def test_a_database_from_before_the_derived_window_keeps_its_rewards(tmp_path, postgres_url):
    """A database from before `derived_window_at`: at start-up the reports of curricula with derived rewards
    enter their windows (so the next reward is the one the old reports give), other curricula's do not."""
    import sqlite3

    import psycopg

    sqlite_path = tmp_path / "sqlite" / "teacher.db"
    sqlite_path.parent.mkdir()
    for url in (f"sqlite:///{sqlite_path}", postgres_url):
        data = tmp_path / ("pg" if url == postgres_url else "sqlite")
        data.mkdir(exist_ok=True)

        def execute(statement, url=url):
            if url == postgres_url:
                with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
                    cursor = conn.execute(statement)
                    return cursor.fetchall() if cursor.description else None
            with sqlite3.connect(sqlite_path) as db:
                return db.execute(statement).fetchall()

        service = ServiceProcess(data, database_url=url).start()
        client = service.client()
        one_task = {"kind": "discrete", "tasks": [{"name": "only"}]}
        create(client, "scale", one_task, "grad_norm_mean_normalized")
        create(client, "raw", one_task, "grad_norm_mean")
        for value in (1.0, 2.0, 3.0):
            report(client, propose(client, "scale"), {"grad_norm_mean": value})
            report(client, propose(client, "raw"), {"grad_norm_mean": value})
        service.stop()
        # The tables as the previous schema made them: no column, no indexes on it.
        for index in ("derived_window", "student_derived_window", "task_derived_window"):
            execute(f"DROP INDEX ix_proposals_{index}")
        execute("ALTER TABLE proposals DROP COLUMN derived_window_at")
        service.start()
        try:
            client = service.client()
            assert report(client, propose(client, "scale"), {"grad_norm_mean": 6.0}) == pytest.approx(6.0 / 3.0)
            assert report(client, propose(client, "raw"), {"grad_norm_mean": 6.0}) == 6.0
        finally:
            service.stop()
        windows = "SELECT c.name, count(p.derived_window_at), count(p.reported_at) FROM proposals p " \
                  "JOIN curricula c ON c.id = p.curriculum_id GROUP BY c.name ORDER BY c.name"
        assert [tuple(row) for row in execute(windows)] == [("raw", 0, 4), ("scale", 4, 4)], url
        assert execute("SELECT count(*) FROM proposals WHERE derived_window_at != reported_at") == [(0,)], url
        # Reports stored meanwhile by a replica of the previous version, without the column: the next start fills them.
        execute("UPDATE proposals SET derived_window_at = NULL WHERE seq % 2 = 0")
        service.start()
        service.stop()
        assert [tuple(row) for row in execute(windows)] == [("raw", 0, 4), ("scale", 4, 4)], url
