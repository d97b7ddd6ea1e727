"""A curriculum's target tasks: validated at creation, resolved by GET /curricula/{name}/target, evaluations
flagged on_target, and the evaluations table of an older database given its new column at start-up."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import inspect

from teacher_service import wire
from teacher_service.learning.task_spaces.maze import shortest_paths
from teacher_service.serving.curricula_file import CurriculaFileError, create_curricula
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.settings import Settings
from teacher_service.serving.store.tables import create_tables, make_engine
from tests.servers import ServiceProcess, wait_until

UMAZE = "PointMaze_UMaze-v3"
MAZE = {"kind": "preset", "env_id": UMAZE}
TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}", "reset_options": {"level": i}} for i in range(4)]}
BOX = {"kind": "box", "low": [0, -1], "high": [1, 1], "option_key": "pos"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service for the API tests (each uses its own curriculum names): a start costs seconds."""
    proc = ServiceProcess(tmp_path_factory.mktemp("target")).start()
    yield proc
    proc.stop()


def curriculum(name, task_space, target, **fields):
    return {"name": name, "task_space": task_space, "teacher": {"algorithm": "random"}, "target": target, **fields}


def evaluation(name, student, steps, success, on_target):
    return {"curriculum": name, "student_id": student, "env_steps": steps, "episodes": 10,
            "success_rate": success, "mean_return": -1.0, "on_target": on_target}


def distance(options):
    return shortest_paths(UMAZE)[tuple(options["reset_cell"])][tuple(options["goal_cell"])]


def test_farthest_pairs_are_resolved_stored_and_evaluated_on(service):
    client = service.client()
    created = client.post("/curricula", json=curriculum("far", MAZE, {"farthest": 4}))
    assert created.status_code == 201, created.text
    assert created.json()["target"] == {"tasks": None, "farthest": 4}
    assert client.get("/curricula/far").json()["target"] == {"tasks": None, "farthest": 4}

    target = service.client(service.student_token).get("/curricula/far/target")
    assert target.status_code == 200, target.text
    resolved = target.json()["reset_options"]
    # UMaze's longest shortest path is 6 cells, between its two ends (both directions); then 5.
    assert max(max(row.values()) for row in shortest_paths(UMAZE).values()) == 6
    assert [distance(o) for o in resolved] == [6, 6, 5, 5]

    for on_target, success in ((True, 0.2), (False, 0.9)):
        response = client.post("/evaluations", json=evaluation("far", "s1", 100, success, on_target))
        assert response.status_code == 201, response.text
    rows = client.get("/curricula/far/evaluations").json()["items"]
    assert [(r["on_target"], r["success_rate"]) for r in rows] == [(True, 0.2), (False, 0.9)]


def test_explicit_tasks_of_each_kind_of_space_are_returned_as_given(service):
    client = service.client()
    cases = [
        ("maze", MAZE, [{"reset_cell": [1, 1], "goal_cell": [3, 1]}, {"goal_cell": [1, 3], "reset_cell": [3, 3]}]),
        ("disc", TASKS, [{"level": 3}, {"level": 0}]),
        ("box", BOX, [{"pos": [0.5, -1.0]}, {"pos": [1, 1]}]),
    ]
    for name, space, tasks in cases:
        response = client.post("/curricula", json=curriculum(name, space, {"tasks": tasks}))
        assert response.status_code == 201, response.text
        assert client.get(f"/curricula/{name}/target").json()["reset_options"] == tasks
    adroit = {"kind": "preset", "env_id": "AdroitHandRelocate-v1"}
    options = {"initial_state_dict": {"qpos": [0.0] * 36, "qvel": [0.0] * 36, "obj_pos": [0.1, 0.2, 0.035],
                                      "target_pos": [0.0, 0.1, 0.3]}}
    assert client.post("/curricula", json=curriculum("adroit", adroit, {"tasks": [options]})).status_code == 201
    bad = {**options["initial_state_dict"], "target_pos": [0.0, 0.1, 0.5]}  # z above the box
    response = client.post("/curricula", json=curriculum("adroit2", adroit, {"tasks": [{"initial_state_dict": bad}]}))
    assert response.status_code == 422 and "outside the box" in response.text


def test_a_curriculum_without_target_answers_404(service):
    client = service.client(service.student_token)
    service.client().post("/curricula", json=curriculum("plain", MAZE, None))
    response = client.get("/curricula/plain/target")
    assert response.status_code == 404 and response.json()["detail"] == "curriculum 'plain' has no target tasks"
    assert client.get("/curricula/nope/target").status_code == 404
    # An evaluation "on the target" of a curriculum that names none would count as target success: refused.
    refused = client.post("/evaluations", json=evaluation("plain", "s1", 100, 0.5, True))
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "on_target"]
    assert client.post("/evaluations", json=evaluation("plain", "s1", 100, 0.5, False)).status_code == 201
    rows = client.get("/curricula/plain/evaluations").json()["items"]
    assert [(r["on_target"], r["success_rate"]) for r in rows] == [(False, 0.5)]


def test_bad_targets_get_a_clear_422_and_store_nothing(service):
    client = service.client()
    cell = {"reset_cell": [1, 1], "goal_cell": [3, 1]}
    cases = [
        (MAZE, {}, "exactly one of 'tasks' and 'farthest'"),
        (MAZE, {"tasks": [cell], "farthest": 2}, "exactly one of 'tasks' and 'farthest'"),
        (MAZE, {"farthest": 43}, "43 pairs asked, the task space has 42"),
        (MAZE, {"farthest": 0}, "greater than or equal to 1"),
        (MAZE, {"farthest": 10**9}, "less than or equal to 1000"),
        (MAZE, {"tasks": []}, "at least 1 item"),
        (MAZE, {"tasks": [cell] * 1001}, "at most 1000 items"),
        (MAZE, {"tasks": ["(1,1)->(3,1)"]}, "valid dictionary"),
        (MAZE, {"tasks": [[1, 1, 3, 1]]}, "valid dictionary"),
        (MAZE, {"tasks": [cell, {"reset_cell": [0, 0], "goal_cell": [3, 1]}]}, "tasks[1]: reset_cell [0, 0] is not a free cell"),
        (MAZE, {"tasks": [{"reset_cell": [1, 1], "goal_cell": [1, 1]}]}, "must differ"),
        (MAZE, {"tasks": [{"reset_cell": [1, 1]}]}, "{'reset_cell': [row, col], 'goal_cell': [row, col]}"),
        (MAZE, {"tasks": [{**cell, "noise": 0}]}, "{'reset_cell': [row, col], 'goal_cell': [row, col]}"),
        (MAZE, {"tasks": [{"reset_cell": [1.5, 1], "goal_cell": [3, 1]}]}, "must be [row, col] integers"),
        (MAZE, {"tasks": [{"reset_cell": [True, 1], "goal_cell": [3, 1]}]}, "must be [row, col] integers"),
        (MAZE, {"tasks": [{"reset_cell": [10**30, 1], "goal_cell": [3, 1]}]}, "beyond 64 bits"),
        (MAZE, {"tasks": [{"reset_cell": [2**62, 1], "goal_cell": [3, 1]}]}, "not a free cell"),
        (TASKS, {"farthest": 2}, "farthest is for maze presets"),
        (TASKS, {"tasks": [{"level": 9}]}, "tasks[0]: not the reset_options of any task"),
        (BOX, {"tasks": [{"pos": [2, 0]}]}, "outside the box"),
        (BOX, {"tasks": [{"pos": [0.5]}]}, "not the reset options of a point of this box"),
        (BOX, {"tasks": [{"pos": [0.5, "0"]}]}, "not the reset options of a point of this box"),
        (BOX, {"tasks": [{"task": [0.5, 0]}]}, "not the reset options of a point of this box"),
        (BOX, {"tasks": [{"pos": [0.5, 0], "extra": 1}]}, "not the reset options of a point of this box"),
        (BOX, {"farthest": 1}, "farthest is for maze presets"),
    ]
    before = client.get("/curricula").json()
    for space, target, message in cases:
        response = client.post("/curricula", json=curriculum("bad", space, target))
        assert response.status_code == 422, (target, response.text)
        assert message in response.text, (target, response.text)
    raw = b'{"name": "bad", "task_space": {"kind": "box", "low": [0], "high": [1]}, "target": {"tasks": [{"task": [NaN]}]}}'
    response = client.post("/curricula", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    for space, message in (({**MAZE, "goal_cell": [0, 0]}, "goal_cell [0, 0] is not a free cell"),
                           ({"kind": "preset", "env_id": "AdroitHandRelocate-v1", "goal_cell": [1, 1]},
                            "goal_cell is for maze presets")):
        response = client.post("/curricula", json=curriculum("bad", space, None))
        assert response.status_code == 422 and message in response.text, response.text
    assert client.get("/curricula").json() == before


def test_curricula_file_entries_carry_a_target(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(f"curricula:\n  - {{name: far, task_space: {{kind: preset, env_id: {UMAZE}}}, target: {{farthest: 2}}}}\n")
    bad.write_text(f"curricula:\n  - {{name: far2, task_space: {{kind: preset, env_id: {UMAZE}}}, target: {{farthest: 99}}}}\n")
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(settings.resolved_database_url(), settings.request_threads)
    create_tables(engine)
    hub = TeacherHub(settings, engine)
    (info,) = create_curricula(hub, good)
    assert info.target.farthest == 2 and [distance(o) for o in hub.target_tasks("far").reset_options] == [6, 6]
    with pytest.raises(CurriculaFileError, match="curriculum 'far2': target: farthest: 99 pairs asked"):
        create_curricula(hub, bad)


# ---------------------------------------------------------------- a database from before on_target and idempotency keys


def old_schema_then_upgrade(tmp_path, url, execute):
    """A database whose evaluations table is the previous schema's (no on_target), with a stored evaluation:
    the service adds the column at start-up, reads the old row and stores new ones; a second upgrade is a no-op."""
    engine = make_engine(url, request_threads=4)
    create_tables(engine)
    TeacherHub(Settings(data_dir=tmp_path), engine).create_curriculum(
        wire.CurriculumCreate.model_validate(curriculum("far", MAZE, {"farthest": 2})))
    execute("DROP INDEX ix_evaluations_idempotency")  # the table as the previous schemas made it
    execute("ALTER TABLE evaluations DROP COLUMN idempotency_key")
    execute("ALTER TABLE evaluations DROP COLUMN on_target")
    execute("DROP INDEX ix_proposals_open")  # and without the index added since
    execute("INSERT INTO evaluations (curriculum_id, student_id, env_steps, episodes, success_rate, mean_return, "
            "created_at) SELECT id, 'old', 50, 5, 0.4, -2.0, '2026-01-01 00:00:00+00:00' FROM curricula")
    service = ServiceProcess(tmp_path, database_url=url).start()
    try:
        client = service.client()
        response = client.post("/evaluations", json=evaluation("far", "new", 100, 0.1, True))
        assert response.status_code == 201, response.text
        rows = client.get("/curricula/far/evaluations").json()["items"]
        assert [(r["student_id"], r["on_target"]) for r in rows] == [("old", False), ("new", True)]
        assert [r["env_steps"] for r in client.get("/curricula/far/evaluations", params={"on_target": "true"}).json()["items"]] == [100]
        resent = evaluation("far", "new", 100, 0.1, True) | {"idempotency_key": "k-1"}  # keys work on the old table
        assert client.post("/evaluations", json=resent).json() == client.post("/evaluations", json=resent).json()
    finally:
        service.stop()
    assert "ix_proposals_open" in {index["name"] for index in inspect(engine).get_indexes("proposals")}
    assert "ix_evaluations_idempotency" in {index["name"] for index in inspect(engine).get_indexes("evaluations")}
    create_tables(engine)  # as the next start does: the column is there already
    engine.dispose()


def test_an_sqlite_database_from_the_previous_schema_gets_on_target(tmp_path):
    url = f"sqlite:///{tmp_path / 'teacher.db'}"

    def execute(statement):
        with sqlite3.connect(tmp_path / "teacher.db") as db:
            db.execute(statement)

    old_schema_then_upgrade(tmp_path, url, execute)


def test_a_postgresql_database_from_the_previous_schema_gets_on_target(tmp_path, postgres_url):
    dsn = postgres_url.replace("postgresql+psycopg", "postgresql")

    def execute(statement):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)

    old_schema_then_upgrade(tmp_path, postgres_url, execute)


def test_processes_upgrading_one_sqlite_file_at_once_all_start(tmp_path):
    """Replicas started together on an old SQLite file: one adds the column, the others then find it
    (without the write lock taken up front, some failed with "database is locked")."""
    url = f"sqlite:///{tmp_path / 'teacher.db'}"
    engine = make_engine(url, request_threads=4)
    create_tables(engine)
    engine.dispose()
    # Each process signals it is ready, then all upgrade at once.
    code = (
        "import pathlib, sys, time\n"
        "from teacher_service.serving.store.tables import create_tables, make_engine\n"
        "engine = make_engine(sys.argv[1], request_threads=1); ready, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])\n"
        "ready.touch()\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "create_tables(engine)\n"
    )
    for trial in range(3):
        with sqlite3.connect(tmp_path / "teacher.db") as db:
            db.execute("DROP INDEX ix_evaluations_idempotency")
            db.execute("ALTER TABLE evaluations DROP COLUMN idempotency_key")
            db.execute("ALTER TABLE evaluations DROP COLUMN on_target")
            db.execute("DROP INDEX ix_proposals_open")
        go = tmp_path / f"go-{trial}"
        ready = [tmp_path / f"ready-{trial}-{k}" for k in range(4)]
        processes = [subprocess.Popen([sys.executable, "-c", code, url, str(r), str(go)], stderr=subprocess.PIPE,
                                      text=True) for r in ready]
        wait_until(lambda: all(r.exists() for r in ready), 120, "the upgrading processes")
        go.touch()
        assert [(p.wait(timeout=120), p.stderr.read()) for p in processes] == [(0, "")] * 4


# ---------------------------------------------------------------- a maze with a fixed goal


def test_fixed_goal_proposals_and_target_tasks_reset_a_real_pointmaze(service):
    import gymnasium as gym

    from student_client.envs import reset_options, verify_reset

    client = service.client()
    space = {**MAZE, "goal_cell": [3, 1]}
    info = client.post("/curricula", json=curriculum("goal", space, {"farthest": 3})).json()
    assert info["task_space_summary"]["size"] == 6 and info["task_space_summary"]["goal_cell"] == [3, 1]
    proposals = [client.post("/propose", json={"curriculum": "goal", "student_id": "s1"}).json() for _ in range(12)]
    assert {tuple(p["reset_options"]["goal_cell"]) for p in proposals} == {(3, 1)}
    assert all(p["task"]["values"] == [*p["reset_options"]["reset_cell"], 3, 1] for p in proposals)
    assert len({tuple(p["reset_options"]["reset_cell"]) for p in proposals}) > 1  # the teacher chooses the start
    target = client.get("/curricula/goal/target").json()["reset_options"]
    # The starts farthest from the goal [3, 1]: the U's other end [1, 1] (6 cells), then [1, 2] (5), [1, 3] (4).
    assert target == [{"reset_cell": [1, 1], "goal_cell": [3, 1]}, {"reset_cell": [1, 2], "goal_cell": [3, 1]},
                      {"reset_cell": [1, 3], "goal_cell": [3, 1]}]
    env = gym.make(UMAZE)
    for options in [*target, *(p["reset_options"] for p in proposals[:4])]:
        env.reset(seed=0, options=reset_options(env, options))
        verify_reset(env, options)
    env.close()
