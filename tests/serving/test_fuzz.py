"""Property-based fuzzing of the whole OpenAPI document against a real service process.

Schemathesis generates requests for every operation from the service's own OpenAPI document, valid
and invalid ones; the service must never answer 5xx, and every answer (status code, content type,
body) must be one the document declares. Curricula, proposals and reports are seeded first, and
about half of the generated requests get the ids of that data instead of random ones, so that the
paths past the 404s (proposals, reports, inspection of real data) are exercised too.
"""

from __future__ import annotations

import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serving.test_api import MAZE, TASKS

EXAMPLES = 30  # per operation, half of them invalid on purpose: the whole test stays near 2 minutes
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BOX = {"kind": "box", "low": [0.0, -1.0], "high": [1.0, 1.0], "names": ["x", "y"]}
SEEDED = {
    "disc": {"task_space": TASKS, "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 2}}},
    "box": {"task_space": BOX, "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 2}}},
    "maze": {"task_space": MAZE, "teacher": {"algorithm": "exp3"}},
    "none": {"task_space": MAZE, "teacher": {"algorithm": "env-default"}},
}


@pytest.fixture
def seeded(service):
    """Curricula with reports, teacher updates and evaluations, and proposals still open for a report."""
    client = service.client()
    for name, body in SEEDED.items():
        assert client.post("/curricula", json={"name": name, **body}).status_code == 201
    assert client.post("/curricula", json={"name": "doomed", "task_space": TASKS}).status_code == 201
    open_proposals = []
    for name in SEEDED:
        for k in range(6):
            proposal = client.post("/propose", json={"curriculum": name, "student_id": f"s{k % 2}"}).json()
            signals = {"grad_norm_mean": 0.1 * k, "episode_return": float(k), "success": k % 2 == 0,
                       "env_steps": 100, "extra": {"lp": 0.5}}
            if k < 4:
                report = {"proposal_id": proposal["proposal_id"], "student_id": proposal["student_id"], "signals": signals}
                assert client.post("/report", json=report).status_code == 200
            else:
                open_proposals.append(proposal)
        evaluation = {"curriculum": name, "student_id": "s0", "env_steps": 1000, "episodes": 5,
                      "success_rate": 0.4, "mean_return": 1.5}
        assert client.post("/evaluations", json=evaluation).status_code == 201
    return {"proposals": open_proposals}


def pick(case, options: list):
    """One of `options`, the same for the same generated case (Hypothesis needs determinism)."""
    key = repr((case.method, case.path, case.path_parameters, case.query, case.body)).encode()
    return options[zlib.crc32(key) % len(options)]


def with_seeded_ids(case, proposals: list[dict]) -> None:
    """Replace the generated ids of about half the cases with ones of seeded data."""
    if not pick(case, [True, False]):
        return
    name = "doomed" if case.method == "DELETE" else pick(case, list(SEEDED))
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = name
    if isinstance(case.query, dict):
        if "curricula" in case.query:
            case.query["curricula"] = f"{name},disc"
        if "student" in case.query:
            case.query["student"] = "s1"
    if isinstance(case.body, dict):
        if "task_space" in case.body:  # a curriculum that can be created, with its teacher's defaults or not
            case.body["task_space"] = pick(case, [TASKS, BOX, MAZE])
            case.body["teacher"] = pick(case, [{}, {"algorithm": pick(case, ["alp-gmm", "exp3", "random"])},
                                               case.body.get("teacher", {})])
        if "curriculum" in case.body:
            case.body["curriculum"] = name
        if "proposal_id" in case.body:
            proposal = pick(case, proposals)
            case.body["proposal_id"] = proposal["proposal_id"]
            case.body["student_id"] = proposal["student_id"]


def test_no_5xx_and_every_answer_matches_the_openapi_document(service, seeded):
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # the whole document, not a part of it

    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def fuzz(case):
            with_seeded_ids(case, seeded["proposals"])
            token = pick(case, [service.admin_token, service.admin_token, service.student_token])
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=30)

        fuzz()
