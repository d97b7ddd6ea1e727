"""Single /propose and /report requests that wait for a request thread together run as one batch (api/deps.py),
each answered with its own result or error."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from teacher_service.serving.api.deps import run_each_alone_on_fault
from tests.servers import ServiceProcess, wait_until
from tests.serving.test_api import MAZE, counts
from tests.serving.test_metrics import scrape, value

SIGNALS = {"grad_norm_mean": 1.5, "grad_norm_episode": 0.7, "episode_return": 3.0, "env_steps": 300}


def gathered(service, verb: str) -> tuple[float, float]:
    """How many batches of gathered requests ran for `verb`, and how many requests they held."""
    samples = scrape(service)
    return (value(samples, "teacher_gathered_requests_count", verb=verb),
            value(samples, "teacher_gathered_requests_sum", verb=verb))


def held_back(service, requests: list[tuple[str, dict]]) -> list:
    """Post the first request while another connection holds SQLite's write lock, so that it holds the only request
    thread; then the others, which wait for it; release the lock once all of them wait. The responses, in order."""
    blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            client = service.client()
            first = pool.submit(client.post, requests[0][0], json=requests[0][1])
            wait_until(lambda: value(scrape(service), "teacher_request_threads_busy") == 1, 30,
                       "the first request holding the only request thread")
            rest = [pool.submit(client.post, path, json=body) for path, body in requests[1:]]
            wait_until(lambda: value(scrape(service), "teacher_requests_waiting") == len(rest), 30,
                       f"{len(rest)} requests waiting")
            blocker.execute("ROLLBACK")
            return [first.result(), *(f.result() for f in rest)]
    finally:
        blocker.close()


def test_waiting_single_requests_run_as_one_batch_each_with_its_own_answer(tmp_path):
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1"}).start()
    try:
        client = service.client()
        # The teacher's defaults: an update every 10 rewarded episodes.
        created = client.post("/curricula", json={"name": "maze", "task_space": MAZE,
                                                  "teacher": {"algorithm": "gradnorm-reinforce"}})
        assert created.status_code == 201, created.text
        students = [f"s{k}" for k in range(12)]

        proposes = [("/propose", {"curriculum": "maze", "student_id": s}) for s in students]
        answers = held_back(service, [*proposes, ("/propose", {"curriculum": "nowhere", "student_id": "s0"})])
        assert [a.status_code for a in answers] == [200] * 12 + [404]
        proposals = [a.json() for a in answers[:12]]
        assert [p["student_id"] for p in proposals] == students
        assert len({p["proposal_id"] for p in proposals}) == 12
        assert all(len(p["reset_options"]["goal_cell"]) == 2 for p in proposals)
        # The first alone, then the twelve that waited for it together (the unknown curriculum's among them).
        assert gathered(service, "propose") == (2, 13)

        reports = [("/report", {"proposal_id": p["proposal_id"], "student_id": p["student_id"], "signals": SIGNALS})
                   for p in proposals]
        resend, intruder = reports[3], ("/report", {**reports[5][1], "student_id": "intruder"})
        unknown = ("/report", {**reports[0][1], "proposal_id": "f" * 32})
        answers = held_back(service, [*reports, resend, intruder, unknown])
        assert [a.status_code for a in answers] == [200] * 13 + [409, 404], [a.text for a in answers]
        acks = [a.json() for a in answers[:13]]
        assert [a["proposal_id"] for a in acks] == [p["proposal_id"] for p in proposals] + [proposals[3]["proposal_id"]]
        assert acks[12] == acks[3]  # the resend gets the first answer, whichever of the two ran first
        assert sum(a["teacher_updated"] for a in acks[:12]) == 1  # the tenth report numbered a batch
        assert gathered(service, "report") == (2, 15)
        assert client.get("/curricula/maze").json()["teacher_updates"] == 1  # once applied
        assert counts(service) == {"proposals": 12, "reports": 12, "updates": 1, "curricula": 1}
    finally:
        service.stop()


def test_a_fault_in_a_gathered_batch_fails_only_the_items_that_meet_it():
    runs: list[list[str]] = []

    def verb(items: list[str]) -> list[str]:
        runs.append(items)
        if "bug" in items:
            raise ValueError("a bug this item meets")
        return [item.upper() for item in items]

    results = run_each_alone_on_fault(verb, ["a", "bug", "c"])
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert runs == [["a", "bug", "c"], ["a"], ["bug"], ["c"]]


def test_an_unavailable_database_fails_a_gathered_batch_at_once():
    runs: list[list[str]] = []

    def verb(items: list[str]) -> list[str]:
        runs.append(items)
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError):  # every request of the batch answers 503; none is tried again
        run_each_alone_on_fault(verb, ["a", "b"])
    assert runs == [["a", "b"]]
