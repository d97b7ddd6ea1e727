"""End to end: a real service process and `student-worker` processes over real HTTP."""

import math
import signal
import time
from datetime import datetime

import pytest
import torch

from tests.student_helpers import (TINY, create_curriculum, episode_log, start_worker, stored_evaluations,
                                   stored_proposals, wait_exit, wait_inside_second_episode)
from tests.servers import wait_until

GRAD_KEYS = ("grad_norm_mean", "grad_norm_episode", "critic_grad_norm_mean", "critic_grad_norm_episode")
SIGNAL_KEYS = (*GRAD_KEYS, "episode_return", "success", "env_steps", "grad_updates")


def assert_reports_match_log(stored: dict, log: list[dict], student_id: str) -> None:
    """Each proposal's stored report is the worker's own record of the episode trained on it."""
    for record in log:
        if record["proposal_id"] is None:
            continue
        row = stored[record["proposal_id"]]
        assert row["student_id"] == student_id
        for key in SIGNAL_KEYS:
            expected, got = record[key], row["signals"][key]
            assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected, key


def test_two_workers_report_their_own_episodes(service, tmp_path):
    create_curriculum(service, "e2e")
    dirs = [tmp_path / "w1", tmp_path / "w2"]
    procs = [start_worker(service, d, "e2e", 700, seed, "--eval-every", "600", "--eval-episodes", "1")
             for seed, d in zip((1, 2), dirs)]
    for proc, d in zip(procs, dirs):
        wait_exit(proc, d)
    stored = stored_proposals(service, "e2e")
    for seed, d in zip((1, 2), dirs):
        log = episode_log(d)
        assert [r["env_steps"] for r in log] == [300, 300, 100]
        assert [r["grad_updates"] for r in log] == [51, 300, 100]  # learning starts at step 250
        assert all(r["proposal_id"] for r in log)
        assert_reports_match_log(stored, log, f"student-{seed}")
        for record in log:  # finite, positive gradient norms once learning started
            assert all(math.isfinite(record[k]) and record[k] > 0 for k in GRAD_KEYS)
    assert sum(row["signals"] is not None for row in stored.values()) == 6
    evaluations = stored_evaluations(service, "e2e")
    assert sorted((e[0], e[1], e[2]) for e in evaluations) == [("student-1", 600, 1), ("student-2", 600, 1)]


def test_before_learning_starts_reports_carry_no_gradient(service, tmp_path):
    create_curriculum(service, "early")
    d = tmp_path / "w"
    wait_exit(start_worker(service, d, "early", 300, 3, "--learning-starts", "1000", "--eval-every", "0"), d)
    (record,) = episode_log(d)
    row = stored_proposals(service, "early")[record["proposal_id"]]
    assert row["signals"]["grad_updates"] == 0
    assert all(row["signals"][k] is None for k in GRAD_KEYS)


def test_killed_worker_resumes_from_checkpoint(service, tmp_path):
    create_curriculum(service, "resume")
    d = tmp_path / "w"
    args = ("--checkpoint-every", "300", "--eval-every", "0")
    proc = start_worker(service, d, "resume", 1500, 4, *args)
    wait_until(lambda: len(episode_log(d)) >= 2 and (d / "checkpoint.pt").exists(), 120, "two episodes")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = torch.load(d / "checkpoint.pt", weights_only=False)["step"]
    assert saved_step >= 300
    before = len(episode_log(d))
    # With a larger --steps, as the README says to train further: its replay buffer (sized to the run) is larger
    # than the checkpoint's, which once failed the resume ("buffer capacity 1800 != checkpoint's 1500").
    wait_exit(start_worker(service, d, "resume", 1800, 4, *args), d)
    log = episode_log(d)
    after = log[before:]
    assert after[0]["step"] == saved_step + after[0]["env_steps"]  # continues, not from 0
    assert after[-1]["step"] == 1800
    assert after[0]["grad_updates"] == after[0]["env_steps"]  # learning had already started
    assert "resumed from" in (d / "worker.log").read_text()
    assert_reports_match_log(stored_proposals(service, "resume"), log, "student-4")


def test_worker_delivers_every_report_after_a_teacher_outage(service, tmp_path):
    create_curriculum(service, "outage")
    d = tmp_path / "w"
    proc = start_worker(service, d, "outage", 3000, 5, "--retry-every", "0.5", "--eval-every", "0")
    wait_until(lambda: any(r["signals"] for r in stored_proposals(service, "outage").values()), 120, "a first report")
    service.stop()
    down_from = len(episode_log(d))
    wait_until(lambda: len(episode_log(d)) >= down_from + 2 or proc.poll() is not None, 120, "episodes while down")
    training_while_down = episode_log(d)[down_from:]
    restarted = datetime.utcnow()
    service.start()
    wait_exit(proc, d)
    log = episode_log(d)
    stored = stored_proposals(service, "outage")
    proposed = [r["proposal_id"] for r in log if r["proposal_id"]]
    assert any(r["proposal_id"] is None for r in training_while_down)  # env-default tasks while down
    assert all(stored[pid]["signals"] is not None for pid in proposed)  # no report lost
    assert set(proposed) == set(stored)  # every proposal the service made was trained on and reported
    assert any(datetime.fromisoformat(stored[pid]["reported_at"]) >= restarted for pid in proposed)
    assert_reports_match_log(stored, log, "student-5")
    assert '"pending": []' in (d / "outbox.json").read_text()


def test_sigterm_checkpoints_and_exits_cleanly(service, tmp_path):
    create_curriculum(service, "term")
    d = tmp_path / "w"
    proc = start_worker(service, d, "term", 100_000, 6, "--eval-every", "0", "--checkpoint-every", "50")
    wait_inside_second_episode(d)
    proc.send_signal(signal.SIGTERM)
    wait_exit(proc, d, timeout=60)
    log = episode_log(d)
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == log[-1]["step"] < 100_000
    stored = stored_proposals(service, "term")
    assert_reports_match_log(stored, log, "student-6")
    # The episode SIGTERM cut is reported as stopped (no teacher reward); the ones before it completed.
    assert [r["outcome"] for r in log] == ["completed"] * (len(log) - 1) + ["stopped"]
    assert [stored[r["proposal_id"]]["signals"].get("outcome") for r in log] == [None] * (len(log) - 1) + ["stopped"]


def test_the_last_episode_of_a_run_says_so(service, tmp_path):
    """Its report carries extra.run_finished, so the students endpoint shows the student finished, not active."""
    create_curriculum(service, "finish")
    d = tmp_path / "w"
    wait_exit(start_worker(service, d, "finish", 500, 4, "--learning-starts", "1000", "--eval-every", "0"), d)
    rows = stored_proposals(service, "finish")
    assert [rows[r["proposal_id"]]["signals"]["extra"] for r in episode_log(d)] == [{}, {"run_finished": 1.0}]
    (student,) = service.client().get("/curricula/finish/students").json()["students"]
    assert student["finished"] and not student["active"]


def test_a_sigterm_after_the_run_finished_does_not_fail_it(service, tmp_path):
    """A launcher that stops its workers as they finish may signal one that is already shutting down (its
    interpreter unloading modules, where Python's own handler no longer runs): the run is done and saved,
    so the worker still exits 0, not -15 (acl-experiment would count the run as failed)."""
    create_curriculum(service, "late-term")
    d = tmp_path / "w"
    proc = start_worker(service, d, "late-term", 300, 7, "--learning-starts", "1000", "--eval-every", "0")
    wait_until(lambda: [r["step"] for r in episode_log(d)] == [300], 120, "the run's only episode")
    while proc.poll() is None:  # signalled again and again until it has exited
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    wait_exit(proc, d)
    assert torch.load(d / "checkpoint.pt", weights_only=False)["step"] == 300


@pytest.mark.parametrize("argv, says", [
    (["--seed", "-1"], "seeds must be 0 to 4294967295: [-1]"),  # numpy's ValueError, as a traceback
    (["--seed", "5000000000"], "seeds must be 0 to 4294967295"),
    (["--env", "CartPole-v1"], "--env: no adapter for 'CartPole-v1'"),
    (["--timeout", "-1"], "--timeout and --retry-every must be above 0"),  # failed at the first request
])
def test_arguments_no_run_could_use_are_usage_errors(argv, says, capsys):
    from student_client.worker import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--curriculum", "c", "--env", "PointMaze_UMaze-v3", "--steps", "300", *argv])
    assert exited.value.code == 2 and says in capsys.readouterr().err


def test_a_curriculum_of_another_environment_is_refused_at_the_start(service, tmp_path, monkeypatch):
    """A UMaze curriculum's cells read in the Medium maze trained the student on tasks no one proposed (rewarding the
    teacher for them) until one fell on a wall, and the worker died with a traceback, leaving that proposal open.
    Now refused at the start; found later (the teacher was down at the start), the episode's proposal is given back
    (abandoned) and the worker exits with the reason. Keyword arguments the environment does not take: the same."""
    from student_client.envs import TaskMismatchError
    from student_client.worker import Worker, main, parse_args

    create_curriculum(service, "umaze")
    monkeypatch.setenv("TEACHER_TOKEN", service.student_token)
    argv = ["--teacher", service.url, "--curriculum", "umaze", "--env", "PointMaze_Medium-v3", "--steps", "300",
            "--checkpoint-dir", str(tmp_path / "w"), "--eval-every", "0", *TINY]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert str(exited.value) == ("student-worker: curriculum 'umaze' proposes tasks of PointMaze_UMaze-v3, not of "
                                 "--env PointMaze_Medium-v3")
    assert stored_proposals(service, "umaze") == {}
    from student_client.worker import check_environment

    for same in ("PointMaze_UMazeDense-v3", "AntMaze_UMaze-v5"):  # the README's example: the same maze, dense
        check_environment(parse_args([*argv[:5], same, *argv[6:]]))
    with pytest.raises(SystemExit) as exited:
        main([*argv[:5], "PointMaze_UMaze-v3", *argv[6:], "--env-kwargs", '{"foo": 1}'])
    assert str(exited.value).startswith("student-worker: --env-kwargs: PointMaze_UMaze-v3 does not take {'foo': 1}")

    args = parse_args(argv)
    worker = Worker(args, args.students[0])  # as if the check had found the teacher down
    with pytest.raises(TaskMismatchError):
        for _ in range(20):  # a proposal of UMaze fits the Medium maze now and then: on until one does not
            worker.run()
            args.steps += 300
    *trained, given_back = sorted(stored_proposals(service, "umaze").values(), key=lambda row: row["reported_at"])
    assert given_back["signals"]["outcome"] == "abandoned" and all(row["reported_at"] for row in trained)
