"""The dashboard's reads: /compare (JSON, CSV), /updates, maze shortest paths, finished students."""

from __future__ import annotations

import csv
import io

import pytest

from teacher_service import wire
from tests.servers import ServiceProcess
from tests.serving.test_api import MAZE, create, propose
from tests.serving.test_inspection import send

EVALUATIONS = {  # curriculum: (student, env steps, success rate)
    "a": [("s1", 500, 0.2), ("s2", 500, 0.4), ("s1", 1000, 0.6), ("s2", 1000, 1.0), ("s2", 1000, 0.8)],
    "b": [("s1", 500, 0.0), ("s1", 1000, 0.1)],
}
TARGET_EVALUATIONS = {"a": [("s1", 500, 0.05), ("s2", 500, 0.15), ("s1", 1000, 0.5)], "b": []}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory):
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"compare_{id(request)}")
    service = ServiceProcess(tmp_path_factory.mktemp(request.param), database_url=url).start()
    admin = service.client()
    for name in ("a", "b"):
        create(admin, name, MAZE, target={"farthest": 2})
        for on_target, evaluations in ((False, EVALUATIONS[name]), (True, TARGET_EVALUATIONS[name])):
            for student, steps, success in evaluations:
                body = {"curriculum": name, "student_id": student, "env_steps": steps, "episodes": 5,
                        "success_rate": success, "mean_return": 10 * success, "on_target": on_target}
                assert admin.post("/evaluations", json=body).status_code == 201
    yield service.client(service.student_token)
    service.stop()


def test_compare_gives_mean_and_band_over_students_per_curriculum(client):
    body = client.get("/compare", params={"curricula": "a, b,a", "metric": "success_rate"}).json()
    a, b = body["curves"]
    assert (a["curriculum"], a["algorithm"], b["curriculum"]) == ("a", "gradnorm-reinforce", "b")
    assert a["env_steps"] == [500, 1000] and a["students"] == [2, 2]
    # s2's two evaluations at 1000 steps count once, as their mean 0.9.
    assert a["mean"] == pytest.approx([0.3, 0.75]) and a["min"] == pytest.approx([0.2, 0.6])
    assert a["max"] == pytest.approx([0.4, 0.9]) and a["std"] == pytest.approx([0.1, 0.15])
    assert b["mean"] == pytest.approx([0.0, 0.1]) and b["students"] == [1, 1] and b["std"] == [0.0, 0.0]
    returns = client.get("/compare", params={"curricula": "b", "metric": "mean_return"}).json()["curves"][0]
    assert returns["mean"] == pytest.approx([0.0, 1.0])

    response = client.get("/compare", params={"curricula": "a,b", "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["curriculum"], r["env_steps"], r["students"]) for r in rows] == [
        ("a", "500", "2"), ("a", "1000", "2"), ("b", "500", "1"), ("b", "1000", "1")]
    assert float(rows[1]["mean"]) == pytest.approx(0.75)


def test_compare_on_target_uses_only_the_target_evaluations(client):
    body = client.get("/compare", params={"curricula": "a,b", "on_target": "true"}).json()
    assert body["on_target"] is True
    a, b = body["curves"]
    assert a["env_steps"] == [500, 1000] and a["students"] == [2, 1]
    assert a["mean"] == pytest.approx([0.1, 0.5]) and a["min"] == pytest.approx([0.05, 0.5])
    assert b["env_steps"] == [] and b["mean"] == []
    assert client.get("/compare", params={"curricula": "a"}).json()["on_target"] is False
    assert client.get("/compare", params={"curricula": "a", "on_target": "maybe"}).status_code == 422
    schema = client.get("/openapi.json").json()["paths"]["/compare"]["get"]["parameters"]
    assert "target tasks" in next(p for p in schema if p["name"] == "on_target")["description"]


@pytest.mark.parametrize("params, status", [
    ({"curricula": "a,nope"}, 404),
    ({"curricula": " , "}, 422),
    ({"curricula": ",".join(f"c{i}" for i in range(17))}, 422),
    ({"curricula": "a", "metric": "grad_norm_mean"}, 422),
    ({}, 422),
])
def test_compare_rejects_bad_input(client, params, status):
    response = client.get("/compare", params=params)
    assert response.status_code == status and "detail" in response.json()


def test_compare_needs_a_token(client):
    assert client.get("/compare", params={"curricula": "a"}, headers={"Authorization": ""}).status_code == 401


def test_updates_maze_shortest_paths_and_finished_students(client, tmp_path):
    for i in range(8):  # batches of 4: two teacher updates
        send(client, "a", "s1", i)
    updates = client.get("/curricula/a/updates").json()
    assert [u["version"] for u in updates["items"]] == [1, 2] and updates["next_after"] is None
    first = updates["items"][0]
    assert {"policy_loss", "baseline_loss", "entropy", "reward_mean"} <= first.keys()
    assert "probabilities" not in first  # numbers only
    page = client.get("/curricula/a/updates", params={"limit": 1, "after": 1}).json()
    assert [u["version"] for u in page["items"]] == [2] and page["next_after"] == 2

    # UMaze: free cells (1,1) (1,2) (1,3) (2,3) (3,3) (3,2) (3,1); the way from (1,1) to (3,1) goes round.
    distribution = client.get("/curricula/a/distribution").json()
    paths = dict(zip(map(tuple, distribution["values"]), distribution["shortest_path"]))
    assert paths[(1, 1, 3, 1)] == 6 and paths[(1, 1, 1, 2)] == 1 and paths[(3, 3, 1, 3)] == 2

    # A student whose last report says its run finished is not active; once it resumes, it is again.
    proposal = propose(client, "a", "s3")
    body = {"proposal_id": proposal["proposal_id"], "student_id": "s3",
            "signals": {"episode_return": 1.0, "extra": {wire.RUN_FINISHED: 1.0}}}
    assert client.post("/report", json=body).status_code == 200
    students = {s["student_id"]: s for s in client.get("/curricula/a/students").json()["students"]}
    assert students["s3"]["finished"] and not students["s3"]["active"]
    assert students["s1"]["active"] and not students["s1"]["finished"]
    propose(client, "a", "s3")
    students = {s["student_id"]: s for s in client.get("/curricula/a/students").json()["students"]}
    assert students["s3"]["active"] and not students["s3"]["finished"]
    # The window is a query parameter: with a tiny one nobody is active.
    assert client.get("/curricula/a/students", params={"active_within_s": 1e-6}).json()["active"] == 0


def test_compare_band_of_equal_evaluations_has_no_spread(client):
    """Three students evaluated alike: a std of 0, not what avg(x * x) - avg(x)^2 leaves of large returns (16.0 for
    returns of 1e9) or of success rates (1e-8)."""
    body = {"curriculum": "b", "env_steps": 7_000, "episodes": 5, "success_rate": 0.7, "mean_return": 1e9 + 0.3}
    for student in ("s1", "s2", "s3"):
        assert client.post("/evaluations", json={**body, "student_id": student}).status_code == 201
    for metric, value in (("mean_return", 1e9 + 0.3), ("success_rate", 0.7)):
        curve = client.get("/compare", params={"curricula": "b", "metric": metric}).json()["curves"][0]
        at = curve["env_steps"].index(7_000)
        assert curve["students"][at] == 3 and curve["mean"][at] == pytest.approx(value)
        assert curve["std"][at] == pytest.approx(0.0, abs=1e-6)
