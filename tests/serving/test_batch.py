"""Batch verbs: POST /propose/batch and /report/batch, and the clients' propose_many / report_many."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import sqlite3
from collections import Counter

import httpx
import pytest
from sqlalchemy import text

from student_client.client import AsyncTeacherClient, TeacherClient, TeacherError
from teacher_service.wire import CurriculumCreate, Proposal, ProposeRequest, ReportAck, ReportRequest, Signals
from teacher_service.serving.infra.errors import ApiError, BadRequest
from tests.servers import ServiceProcess
from tests.serving.test_group_commit import hub_in_process
from tests.serving.test_api import create

DATABASES = itertools.count()


def rows(service: ServiceProcess, query: str) -> list[tuple]:
    with sqlite3.connect(service.database_url.removeprefix("sqlite:///")) as db:
        return db.execute(query).fetchall()


def test_batches_answer_each_item_and_resends_get_the_first_answers(service):
    create(service.client(), batch_size=4)
    client = TeacherClient(service.url, service.student_token)
    proposals = client.propose_many("cur", [f"s{k}" for k in range(6)])
    assert [p.student_id for p in proposals] == [f"s{k}" for k in range(6)]
    reports = [ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id, signals=Signals(grad_norm_mean=k))
               for k, p in enumerate(proposals)]
    acks = client.report_many(reports)
    assert [a.reward for a in acks] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [(a.teacher_version, a.teacher_updated) for a in acks] == [(0, False)] * 3 + [(1, True), (1, False), (1, False)]
    # Resent (a client that lost the answer): the same acknowledgements, nothing stored twice.
    assert client.report_many(reports) == acks
    assert rows(service, "select count(*), count(reported_at) from proposals") == [(6, 6)]
    # The scheduled update is applied right after: the curriculum shows it.
    assert client.get_curriculum("cur").teacher_version == 1
    assert rows(service, "select version from teacher_updates") == [(1,)]


def test_a_bad_item_gets_its_own_error_and_the_others_are_stored(service):
    create(service.client())
    with service.client(service.student_token) as http:
        answer = http.post("/propose/batch", json={"items": [
            {"curriculum": "cur", "student_id": "a"},
            {"curriculum": "nope", "student_id": "b"},  # no such curriculum
            {"curriculum": "cur"},  # not a valid item
            {"curriculum": "cur", "student_id": "c"},
            None, 5,  # not objects: refused one by one too
        ]}).raise_for_status().json()["results"]
        assert [r["error"]["status"] if r["error"] else 200 for r in answer] == [200, 404, 422, 200, 422, 422]
        single = http.post("/propose", json={"curriculum": "cur"})
        assert single.status_code == 422 and answer[2]["error"]["detail"] == single.json()["detail"]  # as /propose says
        assert [r["error"]["detail"][0]["loc"] for r in answer[4:]] == [["body"], ["body"]]
        good = [r["proposal"] for r in answer if r["proposal"]]
        items = [
            {"proposal_id": good[0]["proposal_id"], "student_id": "a", "signals": {"grad_norm_mean": 1.0}},
            {"proposal_id": good[1]["proposal_id"], "student_id": "a", "signals": {}},  # c's proposal: 409
            {"proposal_id": "f" * 32, "student_id": "a", "signals": {}},  # 404
            {"proposal_id": good[1]["proposal_id"], "student_id": "c", "signals": {"grad_norm_mean": float("1e300")}},
            {"proposal_id": good[1]["proposal_id"], "student_id": "c", "signals": {"grad_norm_mean": 2.0}},
            [good[0]["proposal_id"]],  # not an object
        ]
        answer = http.post("/report/batch", json={"items": items}).raise_for_status().json()["results"]
    assert [r["error"]["status"] if r["error"] else 200 for r in answer] == [200, 409, 404, 422, 200, 422]
    assert [r["ack"]["reward"] for r in answer if r["ack"]] == [1.0, 2.0]
    assert rows(service, "select student_id, reward from proposals order by seq") == [("a", 1.0), ("c", 2.0)]


def test_batch_limits_are_clear_errors_that_change_nothing(tmp_path):
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_MAX_BATCH_ITEMS": "8", "TEACHER_MAX_BATCH_BODY_BYTES": "100000"}).start()
    try:
        create(service.client())
        with service.client(service.student_token) as http:
            too_many = http.post("/propose/batch", json={"items": [{"curriculum": "cur", "student_id": "a"}] * 9})
            assert too_many.status_code == 422 and "at most 8 items" in too_many.text
            assert too_many.json()["detail"][0]["loc"] == ["body", "items"]  # where FastAPI puts its own limit's
            assert http.post("/propose/batch", json={"items": []}).status_code == 422
            big = {"items": [{"proposal_id": "a" * 32, "student_id": "s", "signals": {"extra": {"x" * 60: 1.0}}}] * 1000}
            assert http.post("/report/batch", json=big).status_code == 413
        assert rows(service, "select count(*) from proposals") == [(0,)]
        # The client splits a long list into batches the service takes.
        client = TeacherClient(service.url, service.student_token, batch_items=8)
        assert len([p for p in client.propose_many("cur", [f"s{k}" for k in range(20)]) if p.proposal_id]) == 20
    finally:
        service.stop()


def test_async_client_batches(service):
    create(service.client(), batch_size=2)

    async def run() -> tuple[list, list]:
        async with AsyncTeacherClient(service.url, service.student_token) as client:
            proposals = await client.propose_many("cur", ["a", "b", "c"])
            reports = [ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                     signals=Signals(grad_norm_mean=1.0)) for p in proposals]
            reports.append(ReportRequest(proposal_id="0" * 32, student_id="a", signals=Signals()))
            return proposals, await client.report_many(reports)

    proposals, acks = asyncio.run(run())
    assert len(proposals) == 3
    assert [a.teacher_updated for a in acks[:3]] == [False, True, False]
    assert isinstance(acks[3], TeacherError) and acks[3].status_code == 404
    assert all(isinstance(a, ReportAck) for a in acks[:3])


def test_openapi_documents_the_batch_verbs(service):
    schema = httpx.get(f"{service.url}/openapi.json").json()
    assert {"/propose/batch", "/report/batch"} <= set(schema["paths"])
    ack = schema["components"]["schemas"]["ReportAck"]["properties"]["teacher_version"]["description"]
    assert "scheduled" in ack


def test_a_batch_gives_each_student_the_context_of_its_own_last_report(tmp_path):
    """One query finds the last reports of a batch's students: each item's teacher input is its own."""
    hub = hub_in_process(tmp_path)
    tasks = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(6)]}
    hub.create_curriculum(CurriculumCreate(name="cur", task_space=tasks, teacher={"algorithm": "gradnorm-reinforce"}))
    a, b = hub.proposing([ProposeRequest(curriculum="cur", student_id=s) for s in ("a", "b")]).result()
    hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id, signals=Signals(episode_return=r))
                   for p, r in ((a, 10.0), (b, -3.0))]).result()
    asked = [ProposeRequest(curriculum="cur", student_id="b"), ProposeRequest(curriculum="cur", student_id="new"),
             ProposeRequest(curriculum="cur", student_id="a"),
             ProposeRequest(curriculum="cur", student_id="a", context={"last_return": 5.0})]
    proposals = hub.proposing(asked).result()
    hub.close()
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        observation = {pid: json.loads(obs) for pid, obs in db.execute(
            "select proposal_id, json_extract(teacher_input, '$.obs') from proposals")}
    feature = {p.student_id: p.task.index / 5 * 2 - 1 for p in (a, b)}  # the task's value (0..5) scaled to [-1, 1]
    expected = [[-math.log1p(3.0), 1.0, feature["b"]], [0.0, 0.0, 0.0], [math.log1p(10.0), 1.0, feature["a"]],
                [math.log1p(5.0), 1.0, 0.0]]
    for proposal, obs in zip(proposals, expected):
        assert observation[proposal.proposal_id] == pytest.approx(obs), proposal.student_id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_without_a_context_the_teacher_sees_the_last_completed_episode_not_a_stopped_or_abandoned_one(
        tmp_path, request, backend):
    """As a student's own context (student_client/session.py): a cut episode's return is not a finished one's, and an
    abandoned proposal was never trained on."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    hub = hub_in_process(tmp_path, database_url=url)
    tasks = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(6)]}
    hub.create_curriculum(CurriculumCreate(name="cur", task_space=tasks, teacher={"algorithm": "gradnorm-reinforce"}))

    def propose() -> Proposal:
        (proposal,) = hub.proposing([ProposeRequest(curriculum="cur", student_id="a")]).result()
        return proposal

    def report(proposal: Proposal, outcome: str, **signals: float) -> None:
        hub.reporting([ReportRequest(proposal_id=proposal.proposal_id, student_id="a", signals=Signals(**signals),
                                     outcome=outcome)]).result()

    completed = propose()
    report(completed, "completed", episode_return=10.0)
    cut, dropped = propose(), propose()
    report(cut, "stopped", episode_return=99.0)
    report(dropped, "abandoned")
    after = propose()
    with hub.engine.connect() as conn:
        observation = conn.execute(text("select teacher_input from proposals where proposal_id = :p"),
                                   {"p": after.proposal_id}).scalar_one()
    hub.close()
    hub.engine.dispose()
    observation = (json.loads(observation) if isinstance(observation, str) else observation)["obs"]
    assert observation == pytest.approx([math.log1p(10.0), 1.0, completed.task.index / 5 * 2 - 1])


def test_a_wrong_length_last_task_fails_its_item_only(tmp_path):
    """A batch item whose context.last_task has the wrong length is a 422 for that item; the others are
    proposed, and a batch of only such items stores nothing (no teacher call over zero rows)."""
    hub = hub_in_process(tmp_path)
    tasks = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(6)]}
    hub.create_curriculum(CurriculumCreate(name="cur", task_space=tasks, teacher={"algorithm": "gradnorm-reinforce"}))
    bad = ProposeRequest(curriculum="cur", student_id="a", context={"last_return": 1.0, "last_task": [1.0, 2.0]})
    assert isinstance(hub.proposing([bad]).result()[0], BadRequest)
    refused, proposed = hub.proposing([bad, ProposeRequest(curriculum="cur", student_id="b")]).result()
    assert isinstance(refused, BadRequest) and "last_task must have 1 values" in str(refused)
    ignores = CurriculumCreate(name="plain", task_space=tasks, teacher={"algorithm": "random"})
    hub.create_curriculum(ignores)  # a teacher that does not look at contexts refuses a bad one all the same
    assert isinstance(hub.proposing([bad.model_copy(update={"curriculum": "plain"})]).result()[0], BadRequest)
    hub.close()
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select student_id from proposals").fetchall() == [(proposed.student_id,)] == [("b",)]


def stored_batching(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "select seq, curriculum_id, student_id, reward, trajectory, consumed_version from proposals order by seq"))]


def assert_batching_is_up_to_date(rows: list[tuple], horizon: dict[int, int], batch_size: int) -> None:
    """After each stored batch of reports: every student's rewarded episodes are grouped into trajectories
    as soon as `horizon` of them are there, and every numbered batch holds whole trajectories, at least
    `batch_size` episodes of them, with fewer than that left unnumbered (per curriculum)."""
    open_counts = Counter((c, s) for _, c, s, reward, trajectory, _ in rows if reward is not None and trajectory is None)
    trajectories = Counter((c, t, v) for _, c, _, _, t, v in rows if t is not None)
    assert all(n < horizon[c] for (c, _), n in open_counts.items()), open_counts
    assert all(n == horizon[c] for (c, _, _), n in trajectories.items()), trajectories
    per_version = Counter()
    for (c, _, v), n in trajectories.items():
        per_version[c, v] += n
    assert all(n < batch_size if v is None else n >= batch_size for (_, v), n in per_version.items()), per_version


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("reward_signal, horizon", [("grad_norm_mean", 3), ("return_progress", 1),
                                                   ("grad_norm_mean_normalized", 2)])
def test_a_batch_of_reports_stores_what_the_same_reports_one_at_a_time_store(request, tmp_path, backend,
                                                                            reward_signal, horizon):
    """A batch reads its proposals and its students' open episodes before storing any report, and writes its
    reports together at the end; reports of the same student in one batch (trajectories of several episodes,
    rewards read from earlier reports), of two curricula with the same student ids, a proposal reported twice
    in one batch (and again with other signals), a stopped episode and a wrong student must come out as the
    same reports sent one at a time: same answers, the same rewards, trajectories and numbered batches stored,
    and batching up to date after every call."""
    box = {"kind": "box", "low": [0.0], "high": [1.0]}  # return progress reads all of a student's earlier reports
    discrete = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(3)]}
    specs = [CurriculumCreate(name="cur", task_space=box, reward_signal=reward_signal, teacher={
                 "algorithm": "gradnorm-reinforce", "params": {"batch_size": 6, "horizon": horizon}}),
             CurriculumCreate(name="other", task_space=discrete, teacher={
                 "algorithm": "gradnorm-reinforce", "params": {"batch_size": 6, "horizon": 2}})]
    students = [("cur", s) for s in "abacabab"] + [("other", s) for s in "abab"] + [("cur", s) for s in "cabaxab"]
    # (proposal index, student, gradient norm, outcome): in an order of their own, repeats and mistakes included
    reports = [(0, "a", 1.0, "completed"), (2, "a", 2.0, "completed"), (8, "a", 0.5, "completed"),
               (1, "b", 3.0, "completed"), (4, "a", 4.0, "completed"), (2, "a", 2.0, "completed"),
               (2, "a", 9.0, "completed"), (3, "c", 5.0, "completed"), (9, "b", 0.7, "completed"),
               (16, "x", 1.0, "completed"), (16, "x", 9.0, "completed"), (6, "a", 6.0, "completed"),
               (10, "a", 0.9, "completed"), (5, "b", 7.0, "stopped"), (7, "c", 8.0, "completed"),
               (7, "b", 8.0, "completed"), (11, "b", 1.1, "completed"), (13, "a", 1.5, "completed"),
               (15, "a", 2.5, "completed"), (12, "c", 3.5, "completed"), (14, "b", 4.5, "completed"),
               (17, "a", 5.5, "completed"), (18, "b", 6.5, "completed"), (18, "b", 6.5, "completed")]
    outcomes, stored = {}, {}
    for way in ("one at a time", "in batches"):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'{way}.db'}"
        else:
            url = request.getfixturevalue("postgres").create_database(f"batch_{next(DATABASES)}")
        hub = hub_in_process(tmp_path, database_url=url)
        engine = hub.engine
        for spec in specs:
            hub.create_curriculum(spec)
        with engine.connect() as conn:
            horizons = {cid: horizon if name == "cur" else 2 for cid, name in conn.execute(
                text("select id, name from curricula"))}
        proposals = hub.proposing([ProposeRequest(curriculum=c, student_id=s) for c, s in students]).result()
        requests = [ReportRequest(proposal_id=proposals[k].proposal_id, student_id=s, outcome=outcome,
                                  signals=Signals(grad_norm_mean=g, episode_return=g * g)) for k, s, g, outcome in reports]
        batches = [[r] for r in requests] if way == "one at a time" else [requests[k:k + 8] for k in (0, 8, 16)]
        answers = []
        for batch in batches:
            answers += hub.reporting(batch).result()
            assert_batching_is_up_to_date(stored_batching(engine), horizons, batch_size=6)
        hub.close()
        stored[way] = stored_batching(engine)
        engine.dispose()

        def same_ids(detail: str) -> str:  # each hub drew its own proposal ids
            for k, proposal in enumerate(proposals):
                detail = detail.replace(proposal.proposal_id, f"#{k}")
            return detail

        outcomes[way] = [(a.status_code, same_ids(a.body()["detail"])) if isinstance(a, ApiError) else
                         (a.reward, a.teacher_version, a.teacher_updated) for a in answers]
    assert outcomes["in batches"] == outcomes["one at a time"]
    assert stored["in batches"] == stored["one at a time"]
    # It tested what it says: complete trajectories and numbered batches in both curricula, rewards read from
    # earlier reports, the conflicting repeats (9.0) refused with a 409, the resends answered again.
    rows = stored["in batches"]
    assert {c for _, c, _, _, t, _ in rows if t is not None} == {1, 2} and 1 in {v for *_, v in rows}
    assert len({reward for *_, reward, _, _ in rows if reward is not None}) >= 6
    assert [status for status, *_ in outcomes["in batches"] if status == 409] == [409, 409, 409]


def test_proposal_ids_follow_their_creation_so_inserts_stay_at_the_indexs_edge(tmp_path):
    """Random ids put each insert on a random page of the unique index (a page written per proposal); ids
    that begin with their creation time in nanoseconds land at its right edge: in order across calls, one
    prefix within a batch, unique by their 64 random bits."""
    hub = hub_in_process(tmp_path)
    try:
        hub.create_curriculum(CurriculumCreate.model_validate(
            {"name": "cur", "task_space": {"kind": "discrete", "tasks": [{"name": "a"}, {"name": "b"}]}}))
        batches = [hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(50)]).result()
                   for _ in range(4)]
        (single,) = hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()
    finally:
        hub.close()
    ids = [[p.proposal_id for p in batch] for batch in batches] + [[single.proposal_id]]
    flat = [i for batch in ids for i in batch]
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in flat) and len(set(flat)) == len(flat)
    assert all(len({i[:16] for i in batch}) == 1 for batch in ids)  # one creation time per batch
    assert all(min(later) > max(earlier) for earlier, later in zip(ids, ids[1:]))  # each call's after the last's
    assert all(len({i[16:] for i in batch}) == len(batch) for batch in ids)
