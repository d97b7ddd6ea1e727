"""Under overload the service does no work for clients that hung up while their request waited."""

from __future__ import annotations

import sqlite3
import threading

import httpx
import pytest

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
