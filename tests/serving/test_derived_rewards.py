"""Derived reward signals over HTTP: ReportAck.reward equals the value computed by hand from the reports."""

from __future__ import annotations

import numpy as np
import pytest

TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}", "values": [float(i)]} for i in range(3)]}
BOX = {"kind": "box", "low": [0, 0], "high": [10, 1]}


def create(client, name, task_space, reward_signal):
    body = {"name": name, "task_space": task_space, "teacher": {"algorithm": "random"}, "reward_signal": reward_signal}
    assert client.post("/curricula", json=body).status_code == 201


def propose(client, name, student="s"):
    return client.post("/propose", json={"curriculum": name, "student_id": student}).json()


def report(client, proposal, signals, student="s"):
    body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": signals}
    response = client.post("/report", json=body)
    assert response.status_code == 200, response.text
    return response.json()["reward"]


def test_return_progress_is_the_change_since_the_task_was_last_reported(service):
    client = service.client()
    create(client, "line", TASKS, "return_progress")
    create(client, "box", BOX, "return_progress")
    rng = np.random.default_rng(0)
    last_return = {}  # discrete: task index -> its last reported return
    box_history = []  # box: (scaled task, return), in report order
    for step in range(40):
        if step == 20:  # the values come from the database, so a restart changes nothing
            service.stop()
            service.start()
            client = service.client()
        # Three proposals out at once, reported in reverse order: "last" means last reported.
        for proposal in reversed([propose(client, "line") for _ in range(3)]):
            index = proposal["task"]["index"]
            if step % 7 == 3:  # no return in this report: no reward, and it is not a "last" return
                assert report(client, proposal, {"grad_norm_mean": 1.0}) is None
                continue
            value = round(float(rng.normal(10, 5)), 3)
            expected = abs(value - last_return[index]) if index in last_return else None
            assert report(client, proposal, {"episode_return": value}) == expected
            last_return[index] = value

        proposal = propose(client, "box")
        task = np.array(proposal["task"]["values"]) / np.array(BOX["high"])  # nearest in scaled coordinates
        value = round(float(rng.normal(10, 5)), 3)
        reward = report(client, proposal, {"episode_return": value})
        if box_history:
            distances = [np.linalg.norm(task - other) for other, _ in box_history]
            assert reward == pytest.approx(abs(value - box_history[int(np.argmin(distances))][1]))
        else:
            assert reward is None
        box_history.insert(0, (task, value))  # most recent first, so argmin prefers it among ties
    assert len(last_return) == 3


def test_return_progress_compares_a_student_only_with_itself(service):
    # Two students of different skill take turns on one task and neither learns: no progress.
    client = service.client()
    create(client, "one", {"kind": "discrete", "tasks": [{"name": "only"}]}, "return_progress")
    rng = np.random.default_rng(0)
    rewards = []
    for step in range(20):
        student, skill = ("weak", 1.0) if step % 2 else ("strong", 10.0)
        value = round(skill + 0.05 * float(rng.standard_normal()), 3)
        rewards.append(report(client, propose(client, "one", student), {"episode_return": value}, student))
    assert rewards[:2] == [None, None]  # each student's first report of the task
    assert max(rewards[2:]) < 0.3, rewards  # across students each would be about 9


def test_gradient_norms_normalized_by_the_recent_mean(service):
    client = service.client()
    response = client.post("/curricula", json={"name": "x", "task_space": TASKS, "reward_signal": "progress"})
    assert response.status_code == 422
    for name in ("return_progress", "grad_norm_mean_normalized", "critic_grad_norm_episode_normalized"):
        assert name in response.json()["detail"][0]["msg"]
    create(client, "grad", TASKS, "grad_norm_episode_normalized")
    rng = np.random.default_rng(1)
    reported = []  # grad_norm_episode of each report, None where missing
    for step in range(130):
        # The gradients grow 10x over training; the normalized reward stays of order 1.
        value = None if step % 5 == 0 else round(float((1 + step / 13) * rng.uniform(0.5, 1.5)), 6)
        student = "ab"[step % 2]
        reward = report(client, propose(client, "grad", student), {"grad_norm_episode": value}, student)
        # Mean over this report's value and those of the previous 99 reports that carry one.
        window = [v for v in reported[-99:] if v is not None]
        reported.append(value)
        if value is None:
            assert reward is None
            continue
        expected = value / np.mean([value, *window])
        assert abs(reward - expected) < 1e-9, (step, reward, expected)
    assert reward < 2



def test_stopped_and_abandoned_episodes_are_no_earlier_report(service):
    """A cut episode's partial return and gradients are neither progressed from nor a scale for others."""
    client = service.client()
    one_task = {"kind": "discrete", "tasks": [{"name": "only"}]}
    create(client, "progress", one_task, "return_progress")
    create(client, "scale", one_task, "grad_norm_mean_normalized")
    for name, first, cut, last, expected in [
        ("progress", {"episode_return": 10.0}, {"episode_return": -50.0}, {"episode_return": 12.0}, 2.0),
        ("scale", {"grad_norm_mean": 2.0}, {"grad_norm_mean": 100.0}, {"grad_norm_mean": 6.0}, 1.5),
    ]:
        report(client, propose(client, name), first)
        for outcome in ("stopped", "abandoned"):
            proposal = propose(client, name)
            body = {"proposal_id": proposal["proposal_id"], "student_id": "s", "signals": cut, "outcome": outcome}
            response = client.post("/report", json=body)
            assert response.status_code == 200 and response.json()["reward"] is None, response.text
        assert report(client, propose(client, name), last) == pytest.approx(expected)
