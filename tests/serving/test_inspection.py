"""The inspection endpoints against a real service process, on SQLite and on PostgreSQL.

The data is made once per backend through /propose, /report and /evaluations; each test reads it back.
"""

from __future__ import annotations

import csv
import io
import math

import pytest

from tests.servers import ServiceProcess
from tests.serving.test_api import MAZE, create, propose

ADROIT = {"kind": "preset", "env_id": "AdroitHandRelocate-v1"}
BALL_Z = 0.035


def signals_of(i: int) -> dict:
    return {"grad_norm_mean": float(i), "episode_return": -float(i), "success": i % 2 == 0, "env_steps": 100 + i,
            "extra": {"lp": i / 10}}


def send(client, curriculum: str, student: str, i: int | None) -> dict:
    """A proposal, reported with signals_of(i) unless i is None."""
    proposal = propose(client, curriculum, student)
    if i is not None:
        body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": signals_of(i)}
        assert client.post("/report", json=body).status_code == 200
    return proposal


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def data(request, tmp_path_factory):
    """A service with: `maze` (two students, 10 reports, one open proposal, evaluations),
    `hand` (Adroit, gradnorm teacher, 8 reports), `hand-random` (Adroit, random teacher) and `cut` (an episode, a
    stopped one, an abandoned proposal)."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database(f"inspection_{id(request)}")
    service = ServiceProcess(tmp_path_factory.mktemp(request.param), database_url=url).start()
    client = service.client()
    create(client, "maze", MAZE, target={"farthest": 2})
    create(client, "hand", ADROIT)
    body = {"name": "hand-random", "task_space": ADROIT, "teacher": {"algorithm": "random"}}
    assert client.post("/curricula", json=body).status_code == 201
    for i in range(10):
        send(client, "maze", f"s{i % 2 + 1}", i)
    send(client, "maze", "s1", None)
    for i in range(8):
        send(client, "hand", "s1", i)
    for i in range(5):
        send(client, "hand-random", "s1", i)
    # Proposals without task values (stored as JSON null), and a box too narrow for 20 bins of distinct floats.
    body = {"name": "hand-default", "task_space": ADROIT, "teacher": {"algorithm": "env-default"}}
    assert client.post("/curricula", json=body).status_code == 201
    send(client, "hand-default", "s1", 1)
    body = {"name": "narrow", "task_space": {"kind": "box", "low": [1.0], "high": [1.0000000000000002]},
            "teacher": {"algorithm": "random"}}
    assert client.post("/curricula", json=body).status_code == 201
    send(client, "narrow", "s1", 1)
    for algorithm in ("exp3", "learning-progress"):  # teachers that learn from every report
        body = {"name": algorithm, "task_space": {"kind": "discrete", "tasks": [{"name": "a"}, {"name": "b"}]},
                "teacher": {"algorithm": algorithm}, "reward_signal": "success"}
        assert client.post("/curricula", json=body).status_code == 201
        for i in range(3):
            send(client, algorithm, "s1", i)
    create(client, "cut", MAZE)  # an episode, a stopped one (it ran) and an abandoned proposal (never trained on)
    send(client, "cut", "s1", 1)
    for outcome, signals in (("stopped", {"env_steps": 40, "episode_return": 7.0}), ("abandoned", {})):
        body = {"proposal_id": propose(client, "cut", "s1")["proposal_id"], "student_id": "s1", "signals": signals,
                "outcome": outcome}
        assert client.post("/report", json=body).status_code == 200
    for student, steps, success in (("s1", 500, 0.2), ("s1", 1000, 0.6), ("s2", 500, 0.4)):
        evaluation = {"curriculum": "maze", "student_id": student, "env_steps": steps, "episodes": 5,
                      "success_rate": success, "mean_return": 10 * success}
        assert client.post("/evaluations", json=evaluation).status_code == 201
    target = {"curriculum": "maze", "student_id": "s1", "env_steps": 700, "episodes": 4, "success_rate": 0.25,
              "mean_return": -3.0, "on_target": True}
    assert client.post("/evaluations", json=target).status_code == 201
    yield service, service.client(service.student_token)
    service.stop()


def history_all(client, curriculum="maze", **params) -> list[dict]:
    items, after = [], None
    while True:
        page = client.get(f"/curricula/{curriculum}/history", params={**params, **({"after": after} if after else {})})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        after = page.json()["next_after"]
        if after is None:
            return items


def test_history_pages_filters_and_csv(data):
    _, client = data
    everything = client.get("/curricula/maze/history", params={"limit": 100}).json()
    assert everything["next_after"] is None and len(everything["items"]) == 11
    paged = history_all(client, limit=3)
    assert paged == everything["items"]  # cursor pages, in order, nothing lost or repeated
    first = paged[0]
    assert first["student_id"] == "s1" and first["reward"] == 0.0 and first["signals"]["extra"] == {"lp": 0.0}
    assert len(first["task_values"]) == 4 and first["teacher_version"] == 0
    assert paged[-1]["reported_at"] is None and paged[-1]["reward"] is None  # the open proposal

    assert [p["student_id"] for p in history_all(client, student="s2")] == ["s2"] * 5
    since, until = paged[3]["created_at"], paged[7]["created_at"]
    window = history_all(client, since=since, until=until)
    assert [p["seq"] for p in window] == [p["seq"] for p in paged[3:7]]

    response = client.get("/curricula/maze/history", params={"format": "csv", "limit": 4})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["x-next-after"] == str(paged[3]["seq"])
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(r["seq"]) for r in rows] == [p["seq"] for p in paged[:4]]
    assert float(rows[2]["reward"]) == 2.0 and rows[2]["success"] == "True" and rows[2]["env_steps"] == "102"
    by_accept = client.get("/curricula/maze/history", params={"limit": 4}, headers={"Accept": "text/csv"})
    assert by_accept.text == response.text


def test_distribution_now_at_a_version_and_of_proposals(data):
    _, client = data
    teacher = client.get("/curricula/maze/teacher").json()
    assert teacher["version"] == 2  # 10 rewarded episodes, batches of 4
    now = client.get("/curricula/maze/distribution").json()
    assert now["source"] == "teacher" and now["version"] == 2 and len(now["values"]) == 42
    assert now["probabilities"] == teacher["state"]["probabilities"]
    assert math.isclose(sum(now["probabilities"]), 1, abs_tol=1e-4)
    first = client.get("/curricula/maze/distribution", params={"version": 1}).json()
    assert first["version"] == 1 and first["probabilities"] != now["probabilities"]
    assert client.get("/curricula/maze/distribution", params={"version": 9}).status_code == 404
    for algorithm in ("exp3", "learning-progress"):  # their update stats have no probabilities: it was a 500 (KeyError)
        past = client.get(f"/curricula/{algorithm}/distribution", params={"version": 2})
        assert past.status_code == 404 and "does not store its distribution with each update" in past.json()["detail"]
        assert len(client.get(f"/curricula/{algorithm}/distribution").json()["probabilities"]) == 2

    seen = history_all(client)
    counts = client.get("/curricula/maze/distribution", params={"source": "proposals", "buckets": 3}).json()
    assert counts["proposals"] == 11 and sum(counts["counts"]) == 11
    for p in seen:
        assert counts["counts"][p["task_index"]] >= 1 and counts["values"][p["task_index"]] == p["task_values"]
    assert len(counts["buckets"]) == 3 and sum(b["proposals"] for b in counts["buckets"]) == 11
    assert sum(sum(b["counts"].values()) for b in counts["buckets"]) == 11

    box = client.get("/curricula/hand/distribution", params={"samples": 200, "bins": 5}).json()
    assert box["kind"] == "box" and box["names"][0] == "ball_x" and box["samples"] == 200
    assert all(sum(h["counts"]) == 200 and len(h["edges"]) == 6 for h in box["histograms"])
    random_box = client.get("/curricula/hand-random/distribution").json()
    assert random_box["source"] == "proposals" and random_box["samples"] == 5  # no policy: its proposals
    assert client.get("/curricula/hand-random/distribution", params={"source": "teacher"}).status_code == 422

    # Once 500s: env-default's proposals have no values to count; a range that 20 bins cannot split is one bin.
    default = client.get("/curricula/hand-default/distribution", params={"source": "proposals", "samples": 1})
    assert default.status_code == 200 and default.json()["samples"] == 0
    assert all(sum(h["counts"]) == 0 for h in default.json()["histograms"])
    narrow = client.get("/curricula/narrow/distribution").json()
    assert narrow["samples"] == 1 and narrow["histograms"][0]["edges"] == [1.0, 1.0000000000000002]
    assert narrow["histograms"][0]["counts"] == [1]



def test_a_version_of_the_proposals_is_refused(data):
    """Proposals span every version: asked for at one (`version` with source=proposals, or of a teacher without a
    distribution of its own), the answer counted all of them, as if they were that version's. It is a 422 now."""
    _, client = data
    for name, params in (("maze", {"source": "proposals", "version": 1}), ("hand-random", {"version": 1})):
        response = client.get(f"/curricula/{name}/distribution", params=params)
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "version"] and "proposals span every version" in error["msg"]


def test_students(data):
    _, client = data
    body = client.get("/curricula/maze/students").json()
    assert body["active"] == 2
    s1, s2 = body["students"]
    assert (s1["student_id"], s1["episodes"], s1["proposals"], s1["env_steps"]) == ("s1", 5, 6, 100 * 5 + 0 + 2 + 4 + 6 + 8)
    assert s1["last_evaluation"]["success_rate"] == 0.6 and s1["last_evaluation"]["mean_return"] == 6.0
    assert s2["last_evaluation"]["env_steps"] == 500 and s2["active"]
    assert s1["last_target_evaluation"]["success_rate"] == 0.25 and s2["last_target_evaluation"] is None
    assert client.get("/curricula/maze/students", params={"active_within_s": 0.001}).json()["active"] == 0


def test_an_abandoned_proposal_is_no_episode(data):
    _, client = data
    (s1,) = client.get("/curricula/cut/students").json()["students"]
    assert (s1["proposals"], s1["episodes"], s1["env_steps"]) == (3, 2, 101 + 40)
    assert client.get("/curricula/cut/signals").json()["episodes"] == 2
    informativeness = client.get("/curricula/cut/informativeness", params={"last": 10}).json()
    assert informativeness["episodes"] == 2
    # The CSV tells them apart too (it once dropped `outcome`: a stopped episode read as a completed one).
    rows = list(csv.DictReader(io.StringIO(client.get("/curricula/cut/history", params={"format": "csv"}).text)))
    assert [r["outcome"] for r in rows] == ["completed", "stopped", "abandoned"]


def test_teacher(data):
    _, client = data
    body = client.get("/curricula/maze/teacher").json()
    assert (body["algorithm"], body["version"], body["updates"]) == ("gradnorm-reinforce", 2, 2)
    assert body["last_update"]["version"] == 2 and "policy_loss" in body["last_update"]
    assert "baseline_mean" in body["last_update"] and "probabilities" not in body["last_update"]
    rewards = body["rewards"]
    assert (rewards["count"], rewards["mean"], rewards["min"], rewards["max"]) == (10, 4.5, 0.0, 9.0)
    assert math.isclose(rewards["std"], math.sqrt(8.25))


def test_teacher_reward_std_of_equal_rewards_is_zero(data):
    """Equal large rewards have no spread; avg(x * x) - avg(x)^2 left one of several units."""
    service, client = data
    admin = service.client()
    create(admin, "equal-rewards", MAZE)
    for _ in range(3):
        proposal = propose(admin, "equal-rewards")
        body = {"proposal_id": proposal["proposal_id"], "student_id": "s1", "signals": {"grad_norm_mean": 1e9 + 0.3}}
        assert admin.post("/report", json=body).status_code == 200
    rewards = client.get("/curricula/equal-rewards/teacher").json()["rewards"]
    assert rewards["count"] == 3 and rewards["mean"] == pytest.approx(1e9 + 0.3)
    assert rewards["std"] == pytest.approx(0.0, abs=1e-6)


def test_signals_in_windows(data):
    _, client = data
    body = client.get("/curricula/maze/signals", params={"every": 4}).json()
    assert body["episodes"] == 10 and [w["episodes"] for w in body["windows"]] == [4, 4, 2]
    starts = [w["first_episode"] for w in body["windows"]]
    assert starts == [0, 4, 8] and all(type(start) is int for start in starts)  # PostgreSQL's division gave 0.0
    assert body["series"]["reward"]["mean"] == [1.5, 5.5, 8.5]
    assert body["series"]["episode_return"]["min"] == [-3.0, -7.0, -9.0]
    assert body["series"]["success"]["mean"] == [0.5, 0.5, 0.5]
    assert body["series"]["grad_norm_episode"]["count"] == [0, 0, 0]
    extra = client.get("/curricula/maze/signals", params={"signal": "extra.lp", "every": 5, "student": "s2"}).json()
    assert extra["series"]["extra.lp"]["max"] == [0.9] and extra["episodes"] == 5
    assert client.get("/curricula/maze/signals", params={"signal": "nope"}).status_code == 422

    hand = client.get("/curricula/hand/signals", params={"every": 8}).json()
    distances = [math.dist(v[:2] + [BALL_Z], v[2:]) for v in (p["task_values"] for p in history_all(client, "hand"))]
    assert math.isclose(hand["series"]["ball_target_distance"]["mean"][0], sum(distances) / 8, rel_tol=1e-6)
    assert math.isclose(hand["series"]["ball_target_distance"]["max"][0], max(distances), rel_tol=1e-6)


def test_evaluations(data):
    _, client = data
    body = client.get("/curricula/maze/evaluations", params={"student": "s1"}).json()
    assert [(e["env_steps"], e["success_rate"], e["on_target"]) for e in body["items"]] == [
        (500, 0.2, False), (1000, 0.6, False), (700, 0.25, True)]
    for on_target, steps in (("true", [700]), ("false", [500, 1000, 500])):
        body = client.get("/curricula/maze/evaluations", params={"on_target": on_target}).json()
        assert [e["env_steps"] for e in body["items"]] == steps


def test_an_evaluation_resent_with_its_key_is_stored_once(data):
    """The outbox and the client's retries resend an evaluation whose answer was lost: one row, the first id (it was
    a second row). The same key with other values is a 409; posts without a key each get a key of their own."""
    service, client = data
    create(service.client(), "evals", MAZE)
    body = {"curriculum": "evals", "student_id": "s1", "env_steps": 100, "episodes": 5, "success_rate": 0.4,
            "mean_return": 2.5, "idempotency_key": "k-1"}
    first, again = client.post("/evaluations", json=body), client.post("/evaluations", json=body)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    conflict = client.post("/evaluations", json={**body, "success_rate": 0.6})
    assert conflict.status_code == 409 and "other values" in conflict.json()["detail"]
    keyless = {name: value for name, value in body.items() if name != "idempotency_key"}
    ids = {client.post("/evaluations", json=keyless).json()["evaluation_id"] for _ in range(2)}
    rows = client.get("/curricula/evals/evaluations").json()["items"]
    assert len(ids) == 2 and [r["success_rate"] for r in rows] == [0.4] * 3


@pytest.mark.parametrize("path", ["history", "evaluations", "distribution", "students", "teacher", "signals"])
def test_unknown_curriculum_bad_parameters_and_no_token(data, path):
    service, client = data
    response = client.get(f"/curricula/nope/{path}")
    assert response.status_code == 404 and response.json() == {"detail": "curriculum 'nope' not found"}
    refused = service.client("wrong-token").get(f"/curricula/maze/{path}")
    assert refused.status_code == 401
    bad = {"history": {"limit": 0}, "evaluations": {"since": "yesterday"}, "distribution": {"version": -1},
           "students": {"active_within_s": "x"}, "signals": {"every": 0}, "teacher": None}[path]
    if bad is not None:
        assert client.get(f"/curricula/maze/{path}", params=bad).status_code == 422
