"""The examples and the README's SB3 snippet, run as a user runs them (tiny budgets) against a real service
that creates the curricula of the repository's curricula.yaml, as `make run` does."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from tests.servers import REPO, ServiceProcess

GRAD_KEYS = ("grad_norm_mean", "grad_norm_episode", "critic_grad_norm_mean", "critic_grad_norm_episode")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    proc = ServiceProcess(tmp_path_factory.mktemp("service"),
                          extra_env={"TEACHER_CURRICULA_FILE": str(REPO / "curricula.yaml")}).start()
    yield proc
    proc.stop()


def run(service, *cmd: str) -> None:
    env = {**os.environ, "TEACHER_URL": service.url, "TEACHER_TOKEN": service.student_token, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]


def reports(service, student_id: str) -> list[dict]:
    """The signals of a student's reported proposals on umaze-gradnorm, in proposal order."""
    with service.client() as http:
        response = http.get("/curricula/umaze-gradnorm/history", params={"student": student_id, "limit": 1000})
    response.raise_for_status()
    return [item["signals"] for item in response.json()["items"] if item["signals"] is not None]


def test_cleanrl_recipe_reports_each_episodes_own_updates(service):
    run(service, "examples/cleanrl_sac.py", "--student-id", "cleanrl-t", "--total-timesteps", "250",
        "--max-episode-steps", "100", "--learning-starts", "50", "--batch-size", "32", "--hidden", "32")
    first, second, last = reports(service, "cleanrl-t")
    # One update after each step from step 50 on: 50 in the first episode, 100 in the second.
    assert [(s["env_steps"], s["grad_updates"]) for s in (first, second, last)] == [(100, 50), (100, 100), (50, 50)]
    assert "outcome" not in first and "outcome" not in second and last["outcome"] == "stopped"
    for signals in (first, second, last):
        assert all(math.isfinite(signals[k]) and signals[k] > 0 for k in (*GRAD_KEYS, "grad_norm_local"))


def test_sb3_example_runs_against_the_service(service):
    pytest.importorskip("stable_baselines3")
    run(service, "examples/sb3_pointmaze.py", "--student-id", "sb3-t", "--steps", "400", "--learning-starts", "100")
    first, last = reports(service, "sb3-t")
    # SB3 updates after each step once past learning_starts: after steps 101..300, then 301..400.
    assert (first["env_steps"], first["grad_updates"]) == (300, 200)
    assert (last["env_steps"], last["grad_updates"], last["outcome"]) == (100, 100, "stopped")
    for report in (first, last):
        assert all(math.isfinite(report[k]) and report[k] > 0 for k in GRAD_KEYS)


def test_readme_sb3_snippet_runs_as_written(service, tmp_path):
    pytest.importorskip("stable_baselines3")
    readme = (REPO / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "stable_baselines3" in block]
    assert "learn(20_000" in snippet
    (tmp_path / "snippet.py").write_text(snippet.replace("learn(20_000", "learn(400"))  # a tiny budget
    run(service, str(tmp_path / "snippet.py"))
    (student_id,) = re.findall(r'"umaze-gradnorm", "([^"]+)"', snippet)
    assert [s["env_steps"] for s in reports(service, student_id)] == [300, 100]
