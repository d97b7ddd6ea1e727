"""Prometheus /metrics of a real service process, and the student worker's TensorBoard scalars."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import ServiceProcess
from tests.student_helpers import create_curriculum, start_worker, wait_exit
from tests.serving.test_api import create, propose, report


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service for both tests (their curricula differ, the counters are compared as differences)."""
    proc = ServiceProcess(tmp_path_factory.mktemp("metrics")).start()
    yield proc
    proc.stop()


def scrape(service) -> dict[tuple[str, frozenset], float]:
    """Every sample as {(name, labels): value}; /metrics needs no token."""
    response = httpx.get(f"{service.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_with_requests(service):
    client = service.client()
    create(client)
    before = scrape(service)
    for _ in range(4):  # batch_size 4: the fourth report updates the teacher
        assert report(client, propose(client), 1.0).status_code == 200
    assert report(client, propose(client), 1.0).status_code == 200
    client.post("/report", json={"proposal_id": "x" * 32, "student_id": "s1", "signals": {}})  # 404
    assert client.get("/curricula/cur/history").status_code == 200
    after = scrape(service)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("teacher_proposals_total", curriculum="cur") == 5
    assert moved("teacher_reports_total", curriculum="cur") == 5
    assert moved("teacher_updates_total", curriculum="cur") == 1
    assert value(after, "teacher_active_students", curriculum="cur") == 1
    assert moved("teacher_http_requests_total", method="POST", route="/propose", status="200") == 5
    assert moved("teacher_http_requests_total", method="POST", route="/report", status="404") == 1
    # Paths with a curriculum name are counted under their template.
    assert moved("teacher_http_requests_total", method="GET", route="/curricula/{name}/history", status="200") == 1
    assert moved("teacher_http_request_duration_seconds_count", method="POST", route="/propose") == 5
    assert value(after, "teacher_http_request_duration_seconds_bucket", method="POST", route="/propose", le="+Inf") >= 5

    client.get("/no/such/page")
    assert value(scrape(service), "teacher_http_requests_total", method="GET", route="unmatched", status="404") == 1


def test_worker_writes_tensorboard_scalars(service, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    create_curriculum(service, "tb")
    logdir = tmp_path / "tb"
    wait_exit(start_worker(service, tmp_path / "w", "tb", 300, 7, "--tensorboard", str(logdir),
                           "--eval-every", "300", "--eval-episodes", "1"), tmp_path / "w")
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {"episode/episode_return", "episode/success", "episode/grad_norm_mean", "episode/grad_norm_episode",
              "episode/critic_grad_norm_mean", "perf/steps_per_s", "eval/success_rate", "eval/mean_return"}
    assert wanted <= tags, tags
    assert events.Scalars("episode/grad_norm_mean")[0].value > 0 and events.Scalars("perf/steps_per_s")[0].value > 0
