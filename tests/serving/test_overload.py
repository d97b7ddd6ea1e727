"""Under overload the service does no work for clients that hung up while their request waited, and sheds requests
that waited past TEACHER_MAX_QUEUE_WAIT_S with a 503 instead of running them."""

from __future__ import annotations

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from student_client.client import TeacherClient
from tests.servers import ServiceProcess, wait_until
from tests.serving.test_api import counts, create
from tests.serving.test_metrics import scrape, value


def test_a_request_whose_client_left_while_it_waited_is_not_run(tmp_path):
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1"}).start()
    try:
        client = service.client()
        create(client)
        # Another process holds SQLite's write lock: the first propose blocks in the only request thread.
        blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        first: dict = {}
        waiting = threading.Thread(
            target=lambda: first.update(response=service.client().post("/propose", json={"curriculum": "cur", "student_id": "a"}))
        )
        waiting.start()
        wait_until(lambda: value(scrape(service), "teacher_request_threads_busy") == 1, 30,
                   "the first propose holding the only request thread")
        assert client.get("/healthz").status_code == 200  # the other routes have threads of their own
        # The second waits for the thread; its client gives up, as a client with a timeout and retries does.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{service.url}/propose", json={"curriculum": "cur", "student_id": "b"}, timeout=1,
                       headers={"Authorization": f"Bearer {service.admin_token}"})
        blocker.execute("ROLLBACK")
        blocker.close()
        waiting.join(30)
        assert first["response"].status_code == 200, first["response"].text

        assert counts(service)["proposals"] == 1  # only the first: nobody was waiting for the second
        samples = scrape(service)
        assert value(samples, "teacher_http_requests_total", method="POST", route="/propose", status="499") == 1
        assert value(samples, "teacher_http_requests_total", method="POST", route="/propose", status="200") == 1
    finally:
        service.stop()


def test_requests_that_wait_past_the_queue_limit_get_503_with_retry_after_and_change_nothing(tmp_path):
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1", "TEACHER_MAX_QUEUE_WAIT_S": "1"}).start()
    try:
        client = service.client()
        create(client)
        batch = [{"curriculum": "cur", "student_id": f"a{k}"} for k in range(3)]
        blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with ThreadPoolExecutor(2) as pool:
                # A batch holds the only slot while the writer waits for SQLite's write lock...
                first = pool.submit(service.client().post, "/propose/batch", json={"items": batch})
                wait_until(lambda: value(scrape(service), "teacher_request_threads_busy") == 1, 30,
                           "the first batch holding the only slot")
                # ... a single propose waits for its group, which waits for the slot ...
                single = pool.submit(service.client().post, "/propose", json={"curriculum": "cur", "student_id": "b"})
                wait_until(lambda: value(scrape(service), "teacher_requests_waiting") == 1  # or shed already, 1 s on
                           or value(scrape(service), "teacher_requests_shed_total", route="/propose") == 1, 30,
                           "the single waiting")
                # ... and a second batch, which waits for the slot, is answered 503 after the limit, without a slot.
                started = time.monotonic()
                shed = client.post("/propose/batch", json={"items": [{"curriculum": "cur", "student_id": "c"}]})
                waited = time.monotonic() - started
                assert shed.status_code == 503, shed.text
                assert 1 <= waited < 10
                assert shed.headers["retry-after"] == "1"
                assert "overloaded" in shed.json()["detail"] and "nothing was stored" in shed.json()["detail"]
                # The single, queued before it, is shed too, while the slot is still held: not left to wait for it.
                assert single.result(timeout=20).status_code == 503, single.result().text
                assert int(single.result().headers["retry-after"]) >= 1
                blocker.execute("ROLLBACK")
                assert first.result().status_code == 200, first.result().text
                assert [r["proposal"]["student_id"] for r in first.result().json()["results"]] == ["a0", "a1", "a2"]
        finally:
            blocker.close()
        assert counts(service)["proposals"] == 3  # the first batch's only
        samples = scrape(service)
        assert value(samples, "teacher_requests_shed_total", route="/propose/batch") == 1
        assert value(samples, "teacher_requests_shed_total", route="/propose") == 1
        assert value(samples, "teacher_http_requests_total", method="POST", route="/propose", status="503") == 1
        # Not overloaded any more: served again.
        assert client.post("/propose", json={"curriculum": "cur", "student_id": "b"}).status_code == 200
        assert counts(service)["proposals"] == 4
    finally:
        service.stop()


def test_the_students_client_waits_what_a_503_asks_before_it_retries(tmp_path):
    service = ServiceProcess(tmp_path, extra_env={"TEACHER_REQUEST_THREADS": "1", "TEACHER_MAX_QUEUE_WAIT_S": "4"}).start()
    try:
        create(service.client())
        blocker = sqlite3.connect(service.database_url.removeprefix("sqlite:///"), isolation_level=None,
                                  check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(5, blocker.execute, ["ROLLBACK"])
        try:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(service.client().post, "/propose/batch",
                                    json={"items": [{"curriculum": "cur", "student_id": "a"}]})
                wait_until(lambda: value(scrape(service), "teacher_request_threads_busy") == 1, 30,
                           "the first batch holding the only slot")
                client = TeacherClient(service.url, service.admin_token, attempts=3)
                started = time.monotonic()
                release.start()
                # Shed at 4 s with Retry-After: 2; the lock goes at 5 s. A retry after the backoff's 0.1 s would wait
                # for the slot and be answered soon after 5 s; the client waits the 2 s it was asked to.
                [proposal] = client.propose_many("cur", ["b"])
                elapsed = time.monotonic() - started
                assert first.result().status_code == 200
        finally:
            release.join()
            blocker.close()
        assert proposal.student_id == "b"
        assert elapsed >= 6.0
        assert value(scrape(service), "teacher_requests_shed_total", route="/propose/batch") == 1
    finally:
        service.stop()
