"""A value the wire schema refuses (NaN, infinite, beyond its bounds: a diverged student's) is reported as absent,
by the Gym wrapper and by student-worker's report, against a real service; the rest of the report goes through."""

from __future__ import annotations

import json
import logging
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from teacher_service.wire import MAX_MAGNITUDE, RUN_FINISHED, CurriculumCreate, DiscreteTaskSpace, NamedTask, Signals

from student_client import TeacherClient, session
from student_client.episode_signals import LocalSignals
from student_client.integrations.gym_wrapper import TeacherCurriculumWrapper
from student_client.probes import GradStats
from student_client.training import Episode, StudentFiles, StudentSpec


class OneStepEnv(gym.Env):
    """Each episode is one step, rewarded with the next of ``rewards``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self, rewards: list[float]) -> None:
        self.rewards = iter(rewards)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(1, np.float32), next(self.rewards), True, False, {}


@pytest.fixture
def warnings_anew(monkeypatch, caplog):
    """The log of this test's refused values alone: what was logged once per process before is logged again."""
    monkeypatch.setattr(session, "_warned", set())
    caplog.set_level(logging.WARNING, logger="student_client.session")
    return caplog


def create(service, name: str) -> None:
    with TeacherClient(service.url, service.admin_token) as admin:
        admin.create_curriculum(CurriculumCreate(name=name, task_space=DiscreteTaskSpace(tasks=[NamedTask(name="a")]),
                                                 reward_signal="episode_return"))


def reported(service, curriculum: str) -> list[dict]:
    """The signals of the curriculum's reported proposals, in proposal order."""
    with service.client() as http:
        items = http.get(f"/curricula/{curriculum}/history", params={"limit": 1000}).json()["items"]
    return [item["signals"] for item in items if item["signals"] is not None]


def test_the_wrapper_reports_a_return_or_gradient_the_schema_refuses_as_absent(service, warnings_anew):
    """`step()` raised pydantic's ValidationError at the end of an episode whose return was NaN, infinite or beyond
    1e12, and the trainer stopped (an outsider's probe). Each episode is now reported, the refused value null, and the
    warning comes once per signal and fault, not once per episode."""
    create(service, "toy")
    rewards = [math.nan, math.inf, 1e13, -1e13, math.nan, 2 * MAX_MAGNITUDE, 1.5]
    grads = [1.0, math.nan, 1.0, 1.0, 1.0, 1.0, 1.0]  # the second episode's update diverged
    client = TeacherClient(service.url, service.student_token, attempts=1)
    env = TeacherCurriculumWrapper(OneStepEnv(rewards), client, "toy", "s-1")
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    env.tracker.attach(optimizer, "actor")
    for grad in grads:
        env.reset()
        env.step(env.action_space.sample())
        for param in net.parameters():
            param.grad = torch.full_like(param, grad)
        optimizer.step()  # the update after the episode's last step: that episode's
    env.close()
    assert env.session.outbox.pending == [] and env.session.outbox.rejected == []
    signals = reported(service, "toy")
    assert [s["episode_return"] for s in signals] == [None] * 6 + [1.5]
    assert [s["grad_norm_mean"] is None for s in signals] == [False, True, False, False, False, False, False]
    assert [(s["env_steps"], s["grad_updates"]) for s in signals] == [(1, 1)] * 7  # the rest went through
    logged = [r.getMessage() for r in warnings_anew.records]
    # The return (in the report, and as the next proposal's context) not finite, above and below the bounds; the
    # gradient norms not finite: once each, though NaN came twice and the bounds were passed three times.
    assert all(m.startswith("student s-1: ") for m in logged)
    assert sorted(m.removeprefix("student s-1: ").split(" cannot be sent")[0] for m in logged) == [
        "episode_return = -10000000000000.0", "episode_return = 10000000000000.0", "episode_return = nan",
        "grad_norm_episode = nan", "grad_norm_mean = nan",
        "last_return = -10000000000000.0", "last_return = 10000000000000.0", "last_return = nan"]


def test_student_workers_report_gives_a_refused_value_as_absent(service, tmp_path, warnings_anew):
    """student-worker built its report's Signals from the episode's return and gradient statistics: a NaN gradient
    raised there and ended the run. Its report, episode log and next proposal's context now go through."""
    create(service, "toy")
    client = TeacherClient(service.url, service.student_token, attempts=1)
    files = StudentFiles(StudentSpec(0, "toy", "s-1", tmp_path), client, retry_every=1.0)
    proposal = files.session.propose()
    files.report(proposal, Episode(steps=5, ret=math.inf, ended=True), (GradStats(math.nan, 2.0, 5),
                 GradStats(1.0, 10 * MAX_MAGNITUDE, 5)), LocalSignals(grad_norm_local=math.nan), step=5, run_finished=True)
    (signals,) = reported(service, "toy")
    assert signals["episode_return"] is None and signals["grad_norm_mean"] is None
    assert signals["critic_grad_norm_episode"] is None and signals["grad_norm_local"] is None
    assert (signals["grad_norm_episode"], signals["critic_grad_norm_mean"], signals["env_steps"]) == (2.0, 1.0, 5)
    assert signals["extra"] == {"run_finished": 1.0}
    record = json.loads((tmp_path / "episodes.jsonl").read_text())
    assert record["episode_return"] is None and record["grad_norm_episode"] == 2.0
    assert files.session.propose() is not None  # its context holds the return: left out too
    assert sorted(r.getMessage().removeprefix("student s-1: ").split(" =")[0] for r in warnings_anew.records) == [
        "critic_grad_norm_episode", "episode_return", "grad_norm_local", "grad_norm_mean", "last_return"]


def test_an_evaluation_whose_return_cannot_be_sent_is_skipped_not_fatal(service, tmp_path, caplog):
    """An evaluation's mean return is required: a diverged policy's NaN raised pydantic's ValidationError in
    student-worker (left by the fix above). It is now logged and not posted; the next evaluation is."""
    create(service, "toy")
    client = TeacherClient(service.url, service.student_token, attempts=1)
    files = StudentFiles(StudentSpec(0, "toy", "s-1", tmp_path), client, retry_every=1.0)
    caplog.set_level(logging.WARNING, logger="student_client.worker")
    files.evaluated(100, [math.nan, 1.0], [False, True], on_target=False)
    files.evaluated(200, [1.0, 3.0], [False, True], on_target=False)
    assert files.session.outbox.pending == [] and files.session.outbox.rejected == []
    with service.client() as http:
        rows = http.get("/curricula/toy/evaluations").json()["items"]
    assert [(r["env_steps"], r["mean_return"]) for r in rows] == [(200, 2.0)]
    assert any("evaluation at 100 steps not posted: its mean return nan" in r.getMessage() for r in caplog.records)


def test_reportable_drops_one_key_of_extra_and_raises_a_callers_bug(warnings_anew):
    """A refused number inside `extra` drops that key, not the others (`run_finished`, an `extra.<name>` reward); a
    negative count or norm, which no diverged student measures, is the caller's bug and raised, not hidden."""
    signals = session.reportable(Signals, "s-1", extra={RUN_FINISHED: 1.0, "lp": math.nan}, env_steps=5)
    assert signals.extra == {RUN_FINISHED: 1.0} and signals.env_steps == 5
    assert [r.getMessage().split(" cannot")[0] for r in warnings_anew.records] == ["student s-1: extra.lp = nan"]
    for bug in ({"env_steps": -1}, {"grad_norm_mean": -0.5}):
        with pytest.raises(ValidationError):
            session.reportable(Signals, "s-1", **bug)
