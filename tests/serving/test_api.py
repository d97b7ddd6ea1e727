"""The teacher service as a real process over HTTP, on a real SQLite file."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import os
import sqlite3
import stat
import time

import httpx
import pytest

MAZE = {"kind": "preset", "env_id": "PointMaze_UMaze-v3"}
TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(6)]}


def create(client, name="cur", task_space=None, target=None, **teacher_params):
    body = {
        "name": name,
        "task_space": task_space or TASKS,
        "teacher": {"algorithm": "gradnorm-reinforce", "params": {"horizon": 1, "batch_size": 4, **teacher_params}},
    }
    if target:
        body["target"] = target
    response = client.post("/curricula", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def propose(client, curriculum="cur", student="s1"):
    response = client.post("/propose", json={"curriculum": curriculum, "student_id": student})
    assert response.status_code == 200, response.text
    return response.json()


def report(client, proposal, reward, student="s1"):
    body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": {"grad_norm_mean": reward}}
    return client.post("/report", json=body)


def counts(service):
    with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
        return {
            "proposals": db.execute("select count(*) from proposals").fetchone()[0],
            "reports": db.execute("select count(*) from proposals where reported_at is not null").fetchone()[0],
            "updates": db.execute("select count(*) from teacher_updates").fetchone()[0],
            "curricula": db.execute("select count(*) from curricula").fetchone()[0],
        }


def test_maze_preset_proposals_are_free_cell_pairs(service):
    client = service.client()
    info = create(client, task_space=MAZE)
    layout = info["task_space_summary"]["maze_map"]
    assert info["task_space_summary"]["size"] == 7 * 6
    for _ in range(20):
        options = propose(client)["reset_options"]
        (r, c), (gr, gc) = options["reset_cell"], options["goal_cell"]
        assert layout[r][c] == 0 and layout[gr][gc] == 0 and (r, c) != (gr, gc)


def test_adroit_preset_gives_exactly_the_keys_the_environment_reads(service):
    client = service.client()
    create(client, task_space={"kind": "preset", "env_id": "AdroitHandRelocate-v1"})
    proposal = propose(client)
    state = proposal["reset_options"]["initial_state_dict"]
    assert set(state) == {"qpos", "qvel", "obj_pos", "target_pos"}
    assert len(state["qpos"]) == len(state["qvel"]) == 36
    ball_x, ball_y, target_x, target_y, target_z = proposal["task"]["values"]
    assert state["obj_pos"][:2] == [ball_x, ball_y] and state["target_pos"] == [target_x, target_y, target_z]
    assert -0.15 <= ball_x <= 0.15 and -0.15 <= ball_y <= 0.3 and 0.15 <= target_z <= 0.35


def test_env_default_sends_empty_reset_options(service):
    client = service.client()
    body = {"name": "none", "task_space": MAZE, "teacher": {"algorithm": "env-default"}}
    assert client.post("/curricula", json=body).status_code == 201
    proposal = propose(client, "none")
    assert proposal["reset_options"] == {} and proposal["task"] is None
    assert report(client, proposal, 1.0).json()["teacher_updated"] is False


def test_reward_goes_to_its_own_proposal_and_the_teacher_learns_from_it(service):
    """Report k carries the reward of proposal k's task. Were rewards shifted by one episode (the
    paper's off-by-one), task 2 would be rewarded at random and its probability would not rise."""
    client = service.client(service.student_token)
    create(service.client(), batch_size=10)
    for _ in range(300):
        proposal = propose(client)
        reward = 1.0 if proposal["task"]["index"] == 2 else 0.0
        assert report(client, proposal, reward).json()["reward"] == reward
    with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute("select task_index, reward, consumed_version from proposals").fetchall()
    assert all(reward == (1.0 if task == 2 else 0.0) for task, reward, _ in rows)
    assert sum(1 for *_, consumed in rows if consumed is not None) == 300
    teacher = client.get("/curricula/cur/teacher").json()
    assert teacher["version"] == teacher["updates"] == 30
    assert teacher["state"]["probabilities"][2] > 0.5


def test_batches_from_many_students_and_horizon_trajectories(service):
    client = service.client()
    create(client, batch_size=6, horizon=3)
    proposals = {s: [propose(client, student=s) for _ in range(3)] for s in ("a", "b")}
    acks = [report(client, proposals["a"][k], 1.0, "a").json() for k in range(3)]
    # One full trajectory of student a is 3 episodes: not yet a batch of 6.
    assert not any(ack["teacher_updated"] for ack in acks)
    acks = [report(client, proposals["b"][k], 1.0, "b").json() for k in range(3)]
    assert [ack["teacher_updated"] for ack in acks] == [False, False, True]
    assert acks[-1]["teacher_version"] == 1


def test_restart_resumes_the_same_teacher(service):
    client = service.client()
    create(client, batch_size=2)
    for _ in range(6):
        assert report(client, propose(client), 1.0).status_code == 200
    pending = propose(client)  # made before the restart, reported after it
    before = client.get("/curricula/cur/teacher").json()
    service.stop()
    service.start()
    client = service.client()
    after = client.get("/curricula/cur/teacher").json()
    assert after == before and after["version"] == 3
    assert report(client, pending, 1.0).json()["teacher_updated"] is False
    ack = report(client, propose(client), 1.0).json()
    assert ack["teacher_updated"] is True and ack["teacher_version"] == 4


def test_a_restarted_service_does_not_draw_its_proposals_again(service):
    """The random teacher's draws after a restart, at the same teacher version, were the ones it made after the
    start before (its generator was seeded from seed, version and replica only): a resumed experiment trained on
    the same tasks again. A fresh curriculum's draws stay those of its seed."""
    client = service.client()
    body = {"name": "rnd", "task_space": MAZE, "teacher": {"algorithm": "random"}}
    assert client.post("/curricula", json=body).status_code == 201

    def draws(curriculum: str, student: str) -> list[int]:
        return [propose(client, curriculum, student)["task"]["index"] for _ in range(6)]

    first = draws("rnd", "a")
    service.stop()
    service.start()
    client = service.client()
    assert draws("rnd", "b") != first
    assert client.post("/curricula", json={**body, "name": "rnd2"}).status_code == 201
    assert draws("rnd2", "a") == first  # the same seed, nothing drawn before


def test_a_curriculum_stored_with_a_shorter_ttl_than_now_allowed_still_loads(service):
    """proposal_ttl_s under 1 s is refused at creation; one stored before that rule (0.5 s) still loads and serves
    (the rule in the schema made every request of it, and the list of curricula, a 500)."""
    client = service.client()
    create(client)
    with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE curricula SET spec = json_set(spec, '$.proposal_ttl_s', 0.5)")
    service.stop()
    service.start()
    client = service.client()
    assert [c["proposal_ttl_s"] for c in client.get("/curricula").json()] == [0.5]
    assert propose(client)["expires_at"]


def test_teacher_params_are_stored_as_the_teacher_reads_them(service):
    """A parameter given as a numeric string is shown (and stored) as the number the teacher uses, not as given."""
    client = service.client()
    body = {"name": "cur", "task_space": TASKS, "teacher": {"params": {"batch_size": "4", "lr": "0.01"}}}
    assert client.post("/curricula", json=body).json()["teacher"]["params"] == {"batch_size": 4, "lr": 0.01}
    service.stop()
    service.start()
    assert service.client().get("/curricula/cur").json()["teacher"]["params"] == {"batch_size": 4, "lr": 0.01}


# ---------------------------------------------------------------- bad input


def assert_rejected(service, response, status, message):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert message in (detail if isinstance(detail, str) else str(detail)), detail


def test_bad_curricula_are_rejected_and_change_nothing(service):
    client = service.client()
    create(client)
    before = counts(service)
    cases = [
        ({"name": "x", "task_space": {"kind": "preset", "env_id": "CartPole-v1"}}, 422, "no preset for 'CartPole-v1'"),
        ({"name": "x", "task_space": {"kind": "preset", "env_id": "PointMaze_Nope-v3"}}, 422, "unknown environment id"),
        ({"name": "x", "task_space": TASKS, "teacher": {"algorithm": "oracle"}}, 422, "unknown teacher algorithm 'oracle'"),
        # Two tasks that reset the environment alike: a proposal of `a` would train the student on `b`.
        ({"name": "x", "task_space": {"kind": "discrete", "tasks": [{"name": "a", "reset_options": {"task": "b"}},
                                                                    {"name": "b"}]}}, 422, "same reset options"),
        # 1 and 1.0 (or 0.0 and -0.0) are one value to a Python environment, as to the target lookup.
        ({"name": "x", "task_space": {"kind": "discrete", "tasks": [{"name": "a", "reset_options": {"t": [1, -0.0]}},
                                                                    {"name": "b", "reset_options": {"t": [1.0, 0]}}]}},
         422, "tasks 'a' and 'b' have the same reset options"),
        ({"name": "x", "task_space": {"kind": "box", "low": [0, 0], "high": [1, 1], "names": ["x", "x"]}}, 422,
         "names must be distinct"),
        ({"name": "x", "task_space": TASKS, "teacher": {"params": {"lr": -1}}}, 422, "teacher.params: lr"),
        ({"name": "x", "task_space": TASKS, "teacher": {"params": {"typo": 1}}}, 422, "typo"),
        ({"name": "x", "task_space": TASKS, "reward_signal": "loss"}, 422, "unknown reward_signal 'loss'"),
        # Proposals that expire before their student can report them.
        ({"name": "x", "task_space": TASKS, "proposal_ttl_s": 1e-9}, 422, "greater than or equal to 1"),
        ({"name": "x", "task_space": TASKS, "teacher": {"algorithm": "learnability"}, "reward_signal": "grad_norm_mean"},
         422, "learns from success or extra.*, not reward_signal 'grad_norm_mean'"),
        ({"name": "x", "task_space": {"kind": "box", "low": [1], "high": [0]}}, 422, "every low must be below"),
        ({"name": "bad name!", "task_space": TASKS}, 422, "string_pattern_mismatch"),
        ({"name": "cur", "task_space": TASKS}, 409, "already exists"),
    ]
    for body, status, message in cases:
        assert_rejected(service, client.post("/curricula", json=body), status, message)
    assert_rejected(service, client.get("/curricula/nope"), 404, "curriculum 'nope' not found")
    assert_rejected(service, client.delete("/curricula/nope"), 404, "curriculum 'nope' not found")
    assert counts(service) == before


def test_bad_reports_are_rejected_and_change_nothing(service):
    client = service.client()
    create(client)
    proposal = propose(client)
    first = report(client, proposal, 2.0)
    assert first.status_code == 200
    other = propose(client)
    before = counts(service)

    def send(signals, proposal_id=other["proposal_id"], student="s1"):
        return client.post("/report", json={"proposal_id": proposal_id, "student_id": student, "signals": signals})

    assert_rejected(service, send({}, proposal_id="0" * 32), 404, "not found")
    assert_rejected(service, send({}, student="s2"), 409, "was made for student 's1', not 's2'")
    assert_rejected(service, send({"grad_norm_mean": 1e13}), 422, "less than or equal")
    assert_rejected(service, send({"grad_norm_mean": -1}), 422, "greater than or equal to 0")
    assert_rejected(service, send({"grad_norm_mean": "big"}), 422, "should be a number, not text")
    # Numbers as text and booleans as numbers were read as numbers (stored, and rewarded, as 2.5 and 1.0).
    assert_rejected(service, send({"grad_norm_mean": "2.5"}), 422, "should be a number, not text")
    assert_rejected(service, send({"grad_norm_mean": True}), 422, "should be a number, not a boolean")
    assert_rejected(service, send({"env_steps": "7"}), 422, "should be a number, not text")
    assert_rejected(service, send({"success": "yes"}), 422, "should be true or false, not text")
    assert_rejected(service, send({"extra": {"lp": "0.5"}}), 422, "should be a number, not text")
    assert_rejected(service, send({"env_steps": 1.5}), 422, "valid integer")
    assert_rejected(service, send({"surprise": 1}), 422, "extra_forbidden")
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"proposal_id": "%s", "student_id": "s1", "signals": {"grad_norm_mean": %s}}' % (
            other["proposal_id"].encode(), raw)
        response = client.post("/report", content=body, headers={"content-type": "application/json"})
        assert_rejected(service, response, 422, "finite number")
    assert_rejected(service, client.post("/report", content=b"{not json", headers={"content-type": "application/json"}), 422, "JSON")
    # Valid JSON sent as curl's -d sends it, or with no type: FastAPI does not read it as JSON, and the answer says why.
    valid = json.dumps({"proposal_id": other["proposal_id"], "student_id": "s1", "signals": {}}).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert_rejected(service, client.post("/report", content=valid, headers=form), 422,
                    "send the body as JSON, with Content-Type: application/json (not application/x-www-form-urlencoded)")
    assert_rejected(service, client.post("/report", content=valid), 422, "with Content-Type: application/json (not none)")
    # What orjson refuses to parse (a lone surrogate) is parsed by the json module, as before: the field refuses it.
    body = b'{"proposal_id": "%s", "student_id": "\\ud800", "signals": {}}' % other["proposal_id"].encode()
    response = client.post("/report", content=body, headers={"content-type": "application/json"})
    assert_rejected(service, response, 422, "string_unicode")
    huge = {"proposal_id": other["proposal_id"], "student_id": "s1", "signals": {"extra": {"x": 1}}, "pad": "x" * 70_000}
    assert_rejected(service, client.post("/report", json=huge), 413, "larger than")
    # A compressed body: refused for its coding (415), not called malformed JSON.
    gzipped = {"content-type": "application/json", "content-encoding": "gzip"}
    assert_rejected(service, client.post("/report", content=gzip.compress(valid), headers=gzipped), 415,
                    "Content-Encoding 'gzip' is not supported: send the body uncompressed")
    twice = [("content-type", "application/json"), ("content-encoding", "gzip"), ("content-encoding", "identity")]
    assert_rejected(service, client.post("/report", content=gzip.compress(valid), headers=twice), 415, "'gzip'")
    # The same report again: the first answer, counted once.
    again = report(client, proposal, 2.0)
    assert again.status_code == 200 and again.json() == first.json()
    assert_rejected(service, report(client, proposal, 3.0), 409, "already reported with other signals")
    stopped = {"proposal_id": proposal["proposal_id"], "student_id": "s1", "signals": {"grad_norm_mean": 2.0},
               "outcome": "stopped"}  # the same signals: the message named only those
    assert_rejected(service, client.post("/report", json=stopped), 409, "or another outcome")
    assert counts(service) == before


def test_bad_proposals_and_tokens_are_rejected_and_change_nothing(service):
    admin = service.client()
    create(admin)
    before = counts(service)
    assert_rejected(service, admin.post("/propose", json={"curriculum": "nope", "student_id": "s"}), 404, "not found")
    assert_rejected(service, admin.post("/propose", json={"curriculum": "cur", "student_id": ""}), 422, "at least 1")
    assert_rejected(service, admin.post("/propose", json={"curriculum": "cur"}), 422, "student_id")
    body = {"curriculum": "cur", "student_id": "s", "context": {"last_task": [1.0, 2.0]}}
    assert_rejected(service, admin.post("/propose", json=body), 422, "last_task must have 1 values")
    body = {"curriculum": "cur", "student_id": "s", "context": {"last_return": "1.5"}}
    assert_rejected(service, admin.post("/propose", json=body), 422, "should be a number, not text")
    # Outside the tasks' range (0 to 5): the teacher would have taken the nearest task's features for it.
    body = {"curriculum": "cur", "student_id": "s", "context": {"last_task": [7.5]}}
    assert_rejected(service, admin.post("/propose", json=body), 422,
                    "context.last_task: [7.5] is outside the task space's range [[0.0], [5.0]]")
    body["context"]["last_task"] = [-1e-3]
    assert_rejected(service, admin.post("/propose", json=body), 422, "is outside the task space's range")
    nobody = service.client()
    nobody.headers.pop("Authorization")
    assert_rejected(service, nobody.post("/propose", json={"curriculum": "cur", "student_id": "s"}), 401, "missing bearer token")
    wrong = service.client("not-a-token")
    assert_rejected(service, wrong.post("/propose", json={"curriculum": "cur", "student_id": "s"}), 401, "wrong bearer token")
    assert_rejected(service, wrong.delete("/curricula/cur"), 401, "wrong bearer token")
    student = service.client(service.student_token)
    assert_rejected(service, student.post("/curricula", json={"name": "y", "task_space": TASKS}), 403, "admin token")
    assert_rejected(service, student.delete("/curricula/cur"), 403, "admin token")
    assert counts(service) == before
    for edge in ([0.0], [5.0]):  # the range's own ends are tasks
        assert admin.post("/propose", json={**body, "context": {"last_task": edge}}).status_code == 200


def test_a_stalled_body_gets_408_and_its_connection_closed(tmp_path):
    """A body shorter than its Content-Length (or a chunked one that stops): uvicorn would wait for the rest for ever,
    holding the connection and the request; after TEACHER_BODY_IDLE_S without more of it, 408 and the connection
    closed, and nothing is stored. A body that arrives slowly but keeps coming is read whole."""
    import socket

    from tests.servers import ServiceProcess

    service = ServiceProcess(tmp_path, extra_env={"TEACHER_BODY_IDLE_S": "1"}).start()
    try:
        create(service.client())
        before = counts(service)
        proposal = json.dumps({"curriculum": "cur", "student_id": "s"}).encode()
        head = (f"POST /propose HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {service.admin_token}\r\n"
                "Content-Type: application/json\r\n").encode()
        short = head + b"Content-Length: %d\r\n\r\n" % (len(proposal) + 10) + proposal
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(proposal), proposal)
        for request in (short, chunked):
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                started = time.monotonic()
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):  # to the end: the service closes the connection
                    answer += chunk
                waited = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"the request body stalled: nothing more came for 1 s" in answer and 0.9 < waited < 5, (answer, waited)
        assert counts(service) == before
        # Sent in three parts, 0.6 s apart: each within the limit, the whole beyond it.
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(proposal))
            for part in (proposal[:10], proposal[10:20], proposal[20:]):
                time.sleep(0.6)
                sock.sendall(part)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert counts(service)["proposals"] == before["proposals"] + 1
    finally:
        service.stop()


def test_expired_proposals_get_410_and_never_stall_batches(service):
    client = service.client()
    body = {"name": "cur", "task_space": TASKS, "proposal_ttl_s": 1.0,
            "teacher": {"params": {"horizon": 1, "batch_size": 2}}}
    assert client.post("/curricula", json=body).status_code == 201
    abandoned = propose(client)
    time.sleep(1.2)
    assert_rejected(service, report(client, abandoned, 1.0), 410, "expired")
    acks = [report(client, propose(client), 1.0).json() for _ in range(2)]
    assert acks[-1]["teacher_updated"] is True


def test_curricula_listing_deletion_and_docs(service):
    client = service.client()
    create(client, "a")
    create(client, "b")
    assert [c["name"] for c in client.get("/curricula").json()] == ["a", "b"]
    assert client.delete("/curricula/a").status_code == 204
    assert [c["name"] for c in client.get("/curricula").json()] == ["b"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.head("/healthz").status_code == 200  # as uptime checkers and load balancers probe
    page = client.head("/")  # the dashboard: was 405
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and page.content == b""
    spec = client.get("/openapi.json").json()
    assert {"/propose", "/report", "/curricula"} <= set(spec["paths"])
    operation_ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))  # unique, as OpenAPI requires (code generators rely on it)
    assert "gradnorm-reinforce" in client.get("/teachers").json()


@pytest.mark.parametrize("flag", ["--help"])
def test_cli_help_lists_settings(flag):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "teacher_service.serving.cli", flag], capture_output=True, text=True)
    assert out.returncode == 0 and "TEACHER_DATABASE_URL" in out.stdout and "--insecure" in out.stdout


# ---------------------------------------------------------------- hostile input, error model, file modes


def secured_operations(client) -> list[tuple[str, str]]:
    """(method, path) of every operation that needs a token, with the path's {name} filled in."""
    spec = client.get("/openapi.json").json()
    return [(method.upper(), path.replace("{name}", "cur"))
            for path, operations in spec["paths"].items() for method, op in operations.items() if op.get("security")]


def deep(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def test_hostile_input_gets_a_4xx_and_changes_nothing(service):
    """Each of these reached an unhandled exception (a 500) or was stored wrongly before."""
    client = service.client()
    create(client)
    report(client, propose(client), 1.0)
    before = counts(service)

    operations = secured_operations(client)
    assert len(operations) >= 15
    for method, path in operations:  # a token that is not ASCII: compared safely, refused
        response = httpx.request(method, service.url + path, headers=[(b"Authorization", b"Bearer \xc3\xa9t\xc3\xa9")])
        assert_rejected(service, response, 401, "wrong bearer token")

    def curriculum(**fields):
        return {"name": "x", "task_space": TASKS, **fields}

    def with_options(raw: str) -> bytes:
        return b'{"name": "x", "task_space": {"kind": "discrete", "tasks": [{"name": "t", "reset_options": %s}]}}' % raw.encode()

    json_body = {"content-type": "application/json"}
    history, signals = "/curricula/cur/history", "/curricula/cur/signals"
    cases = [
        # Integers beyond what the database holds.
        (client.get(history, params={"after": 2**64}), "less than or equal to 2147483647"),
        (client.get("/curricula/cur/evaluations", params={"after": 2**63}), "less than or equal to 2147483647"),
        (client.get("/curricula/cur/distribution", params={"version": 2**64}), "less than or equal to 2147483647"),
        # Times that exist with their offset but not in UTC.
        (client.get(history, params={"since": "0001-01-01T00:00:00+14:00"}), "out of range in UTC"),
        (client.get(signals, params={"until": "9999-12-31T23:59:59-14:00"}), "out of range in UTC"),
        # Signal names a SQL JSON path cannot hold.
        (client.get(signals, params={"signal": 'extra.a"b'}), "string_pattern_mismatch"),
        (client.get(signals, params={"signal": "extra.\x00"}), "string_pattern_mismatch"),
        (client.post("/report", json={"proposal_id": "p", "student_id": "s1", "signals": {"extra": {"a}": 1}}}),
         "string_pattern_mismatch"),
        (client.post("/curricula", json=curriculum(reward_signal="extra.{a,b}")), "string_pattern_mismatch"),
        # NUL bytes, which PostgreSQL cannot take in text: names and ids are refused before any query.
        (client.get("/curricula/a%00b/history"), "string_pattern_mismatch"),
        (client.get(history, params={"student": "s\x00"}), "string_pattern_mismatch"),
        (client.get("/compare", params={"curricula": "cur,a\x00b"}), "is not a curriculum name"),
        # Where the fault is (they were located nowhere), and what it is (NaN was said to be too large).
        (client.get("/compare", params={"curricula": ",,,"}), "'loc': ['query', 'curricula']"),
        (client.get("/curricula/cur/students", params={"active_within_s": "nan"}), "finite number"),
        (client.post("/report", json={"proposal_id": "p\x00", "student_id": "s1", "signals": {}}), "string_pattern_mismatch"),
        # Free-form JSON: bounded nesting, finite numbers.
        (client.post("/curricula", content=with_options(deep(300)), headers=json_body), "nested deeper than 16"),
        (client.post("/curricula", content=with_options('{"x": [1, NaN]}'), headers=json_body), "NaN and infinity"),
        (client.post("/curricula", content=with_options('{"x": -Infinity}'), headers=json_body), "NaN and infinity"),
        (client.post("/curricula", content=with_options('{"seed": 18446744073709551616}'), headers=json_body),
         "beyond 64 bits"),
        # Lone surrogates, which no database or JSON encoder here can store, in free-form JSON and free text.
        (client.post("/curricula", content=with_options('{"k": "\\ud800"}'), headers=json_body), "lone surrogate"),
        (client.post("/curricula", content=with_options('{"\\udc00": 1}'), headers=json_body), "lone surrogate"),
        (client.post("/curricula", content=b'{"name": "x", "task_space": {"kind": "discrete", "tasks": [{"name": '
                     b'"\\ud800"}]}}', headers=json_body), "string_unicode"),
        (client.post("/curricula", content=b'{"name": "x", "task_space": {"kind": "box", "low": [0], "high": [1], '
                     b'"option_key": "\\ud800"}}', headers=json_body), "string_unicode"),
        # Teacher networks: neither negative nor huge.
        (client.post("/curricula", json=curriculum(teacher={"params": {"hidden_sizes": [-1]}})), "greater than or equal to 1"),
        (client.post("/curricula", json=curriculum(teacher={"params": {"hidden_sizes": [10**7]}})), "less than or equal to 256"),
        (client.post("/curricula", json=curriculum(teacher={"params": {"hidden_sizes": [2**70]}})), "beyond 64 bits"),
        # Names that clients resolve away as path segments.
        (client.post("/curricula", json=curriculum(name=".")), "string_pattern_mismatch"),
        (client.post("/curricula", json=curriculum(name="..")), "string_pattern_mismatch"),
    ]
    for response, message in cases:
        assert_rejected(service, response, 422, message)
    assert counts(service) == before


def test_every_4xx_is_declared_and_sent_in_one_error_model(service):
    client = service.client()
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            declared = {int(code): r for code, r in op["responses"].items() if code.startswith("4")}
            if op.get("security"):
                assert 401 in declared, (method, path)
            if op.get("parameters") or op.get("requestBody"):
                assert 422 in declared, (method, path)
            for code, answer in declared.items():
                model = "ValidationErrorResponse" if code == 422 else "ErrorResponse"
                assert answer["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}

    from teacher_service.serving.infra.errors import ErrorResponse, ValidationErrorResponse

    create(client)
    student = service.client(service.student_token)
    validation = [
        client.post("/curricula", json={"name": "x", "task_space": TASKS, "teacher": {"algorithm": "oracle"}}),  # the hub's
        client.post("/curricula", json={"name": "x"}),  # FastAPI's
        client.get("/curricula/cur/signals", params={"signal": "nope"}),  # the inspector's
    ]
    others = [
        httpx.get(service.url + "/curricula"),  # 401
        student.delete("/curricula/cur"),  # 403
        client.get("/curricula/nope"),  # 404
        client.post("/curricula", json={"name": "cur", "task_space": TASKS}),  # 409
        client.post("/report", json={"pad": "x" * 70_000}),  # 413
        client.post("/propose", content=b"[" * 5000 + b"]" * 5000, headers={"content-type": "application/json"}),  # 400
    ]
    for response in validation:
        assert response.status_code == 422, response.text
        ValidationErrorResponse.model_validate_json(response.content, strict=True)
    assert validation[-1].json()["detail"][0]["loc"] == ["query", "signal"]
    assert sorted(r.status_code for r in others) == [400, 401, 403, 404, 409, 413]
    assert others[0].headers["www-authenticate"] == "Bearer"  # the scheme a 401 asks for
    for response in others:
        ErrorResponse.model_validate_json(response.content, strict=True)


def test_a_bug_is_answered_500_in_the_error_model(tmp_path):
    """A fault that is the service's own bug (injected: no input reaches one that we know of) gets a JSON body with
    `detail`, as every other error does; it was Starlette's text/plain "Internal Server Error"."""
    from teacher_service.serving.app import create_app
    from teacher_service.serving.infra.errors import ErrorResponse
    from teacher_service.serving.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, insecure=True))

    @app.get("/bug")
    def bug() -> None:
        raise ZeroDivisionError("injected")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.get("/bug")

    response = asyncio.run(get())
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    ErrorResponse.model_validate_json(response.content, strict=True)
    assert "ZeroDivisionError" in response.json()["detail"]


def test_data_dir_and_database_are_owner_only(tmp_path):
    from teacher_service.serving.app import create_app
    from teacher_service.serving.settings import Settings

    data_dir = tmp_path / "fresh" / "data"
    umask = os.umask(0o022)  # the usual default, which leaves new files readable by everyone
    try:
        create_app(Settings(data_dir=data_dir))  # creates the database, its tables (a write) and the tokens
        with sqlite3.connect(data_dir / "teacher.db") as db:  # while it is open, -wal and -shm exist
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}
        assert {"teacher.db", "teacher.db-wal", "teacher.db-shm", "tokens.json"} <= set(files)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert set(files.values()) == {0o600}, files
        db.close()

        # A database left readable by an earlier version is made owner-only at the next start.
        (data_dir / "teacher.db").chmod(0o644)
        create_app(Settings(data_dir=data_dir))
        assert stat.S_IMODE((data_dir / "teacher.db").stat().st_mode) == 0o600
    finally:
        os.umask(umask)


def test_a_return_alone_is_the_context_the_teacher_sees(service):
    """A student that sends only `last_return` is believed; without context the service looks up its last report."""
    client = service.client()
    create(client)
    first = propose(client)
    body = {"proposal_id": first["proposal_id"], "student_id": "s1", "signals": {"episode_return": 100.0}}
    assert client.post("/report", json=body).status_code == 200
    given = client.post("/propose", json={"curriculum": "cur", "student_id": "s1", "context": {"last_return": 5.0}})
    looked_up = propose(client)
    with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
        observation = {pid: json.loads(obs) for pid, obs in db.execute(
            "select proposal_id, json_extract(teacher_input, '$.obs') from proposals")}
    assert observation[given.json()["proposal_id"]] == pytest.approx([math.log1p(5.0), 1.0, 0.0])
    last_task = first["task"]["index"] / 5 * 2 - 1  # the reported task's value (0..5) scaled to [-1, 1]
    assert observation[looked_up["proposal_id"]] == pytest.approx([math.log1p(100.0), 1.0, last_task])


def test_a_curriculum_of_the_largest_discrete_space_can_be_created(service):
    """The schema takes 10,000 discrete tasks, each with its reset options; such a spec is far above the students'
    64 KiB body limit, which refused every discrete space of a few thousand tasks with 413."""
    client = service.client()
    tasks = [{"name": f"task-{i:05d}", "reset_options": {"reset_cell": [i // 100, i % 100], "goal_cell": [0, 0]}}
             for i in range(10_000)]
    body = {"name": "big", "task_space": {"kind": "discrete", "tasks": tasks}, "teacher": {"algorithm": "exp3"},
            "reward_signal": "episode_return"}
    assert len(json.dumps(body)) > 10 * 64 * 1024
    response = client.post("/curricula", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["task_space_summary"]["size"] == 10_000
    proposal = propose(client, "big")
    assert proposal["reset_options"] == tasks[proposal["task"]["index"]]["reset_options"]
    # The students' verbs keep their small limit.
    assert client.post("/report", json={"pad": "x" * 70_000}).status_code == 413
