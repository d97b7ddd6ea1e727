"""The update worker: the process where teachers learn. Its copies, what it does with a failing update, and that
it learns what the same teacher learns in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pydantic
import pytest

from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import Context, Experience, build_teacher
from teacher_service.serving.settings import Settings
from teacher_service.serving.update_worker import Blueprint, StaleLearner, UpdateJob, UpdateWorker, learn
from teacher_service.wire import DiscreteTaskSpace
from tests.servers import REPO

SPACE = build_task_space(DiscreteTaskSpace(tasks=[{"name": f"t{i}"} for i in range(4)]))
PARAMS = {"batch_size": 4, "horizon": 2}


def teacher():
    return build_teacher("gradnorm-reinforce", SPACE, PARAMS, 3)


def batches(count: int) -> list[list[Experience]]:
    """Batches of two students' trajectories of two episodes, drawn by a teacher like the one that learns."""
    drawing, seq, out = teacher(), 0, []
    for b in range(count):
        batch = []
        for k, decision in enumerate(drawing.propose_many([Context()] * 4)):
            seq += 1
            batch.append(Experience(seq=seq, student_id=f"s{k // 2}", trajectory=seq - k % 2, task_index=decision.task_index,
                                    task_values=None, teacher_input=decision.teacher_input, reward=float(b + k)))
        out.append(batch)
    return out


def base():
    return Blueprint("gradnorm-reinforce", SPACE, PARAMS, 3), teacher().state_bytes()


def test_the_worker_copy_learns_what_the_teacher_learns_here_and_needs_a_base_it_does_not_have():
    data, learners = batches(5), {}
    with pytest.raises(StaleLearner):
        learn(learners, UpdateJob(7, first=1, batches=data[:1]))
    first = learn(learners, UpdateJob(7, first=1, batches=data[:2], checkpoint_version=2, base=base()))
    rest = learn(learners, UpdateJob(7, first=3, batches=data[2:], checkpoint_version=4))  # from its own copy
    with pytest.raises(StaleLearner):  # a version it is not at
        learn(learners, UpdateJob(7, first=3, batches=data[2:3]))

    here = teacher()
    stats = [here.update(batch) for batch in data]
    assert first.stats + rest.stats == stats
    assert first.checkpoint == first.state  # the round ends at its checkpoint's version
    checkpoint_4, final = teacher(), teacher()
    checkpoint_4.load_state_bytes(rest.checkpoint)
    final.load_state_bytes(rest.state)
    assert checkpoint_4.updates == 4 and final.updates == 5
    assert final.describe() == here.describe()


def test_a_failing_update_in_the_worker_process_is_reported_with_its_traceback_and_leaves_no_copy():
    worker = UpdateWorker()
    try:
        broken = batches(1)
        broken[0][0].teacher_input = {}  # no "obs": the update raises KeyError
        with pytest.raises(RuntimeError, match="the teacher update failed in the update worker(.|\n)*KeyError"):
            worker.update(UpdateJob(1, first=1, batches=broken, base=base()))
        with pytest.raises(StaleLearner):  # the copy that failed half-way is gone
            worker.update(UpdateJob(1, first=1, batches=batches(1)))
        result = worker.update(UpdateJob(1, first=1, batches=batches(1), checkpoint_version=1, base=base()))
        assert len(result.stats) == 1 and result.checkpoint == result.state
    except BaseException:
        worker.close()
        raise
    assert worker.close() == 0  # it ended on its own when asked


def test_a_worker_that_does_not_answer_in_time_is_killed_even_while_a_large_job_is_being_sent():
    """A frozen worker (SIGSTOP, a paused container) reads nothing: a job larger than the socket's buffers would
    block its send for ever, and the update's answer never comes."""
    worker = UpdateWorker()
    try:
        first = worker.update(UpdateJob(1, first=1, batches=batches(1), base=base()))
        frozen = worker.pid
        os.kill(frozen, signal.SIGSTOP)
        large = batches(1)
        large[0][0].teacher_input = {"padding": "x" * 4_000_000}  # never read: the worker is frozen
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="the teacher update took more than 2 s; its worker was stopped"):
            worker.update(UpdateJob(1, first=2, batches=large), timeout_s=2)
        assert 2 <= time.monotonic() - started < 30
        assert worker.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(frozen, 0)  # killed and reaped
        with pytest.raises(StaleLearner):  # a new worker, without the copy
            worker.update(UpdateJob(1, first=2, batches=batches(1)), timeout_s=60)
        again = teacher()
        again.load_state_bytes(first.state)
        result = worker.update(UpdateJob(1, first=2, batches=batches(1), base=(base()[0], again.state_bytes())), 60)
        assert len(result.stats) == 1 and worker.pid not in (None, frozen)
    finally:
        worker.close()


def test_a_stop_signal_in_a_new_workers_first_moments_does_not_end_it():
    """A Ctrl-C in a terminal reaches the worker too; the service decides when it stops. Sent while the new process
    is still starting Python, before its own code could ignore it, it ended the worker (with a KeyboardInterrupt
    traceback once Python was up)."""
    worker = UpdateWorker()
    try:
        worker.start()
        os.kill(worker.pid, signal.SIGINT)
        os.kill(worker.pid, signal.SIGTERM)
        result = worker.update(UpdateJob(1, first=1, batches=batches(1), base=base()), timeout_s=60)
        assert len(result.stats) == 1
    finally:
        code = worker.close()
    assert code == 0  # it ended when asked


@pytest.mark.parametrize("seconds", ["inf", "nan", "0", "1e10"])
def test_an_update_time_limit_that_poll_cannot_wait_is_refused_at_start_up(seconds, monkeypatch):
    monkeypatch.setenv("TEACHER_UPDATE_TIMEOUT_S", seconds)
    with pytest.raises(pydantic.ValidationError, match="update_timeout_s"):
        Settings()


def test_the_worker_drops_the_copies_of_deleted_curricula_with_its_next_job():
    learners = {}
    learn(learners, UpdateJob(1, first=1, batches=batches(1), base=base()))
    learn(learners, UpdateJob(2, first=1, batches=batches(1), base=base()))
    learn(learners, UpdateJob(2, first=2, batches=batches(1), forget=[1, 5]))
    assert sorted(learners) == [2] and learners[2][0] == 2
    # A curriculum created again under a deleted one's id (SQLite files from before the second session) starts anew.
    learn(learners, UpdateJob(2, first=1, batches=batches(1), base=base(), forget=[2]))
    assert learners[2][0] == 1


def test_a_script_without_a_main_guard_runs_once_and_its_teacher_learns(tmp_path):
    """multiprocessing would run the caller's main module again in the worker: a script that starts a hub at its top
    level would start another one there, each time the worker starts."""
    script = tmp_path / "embedded.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        print("script body", flush=True)
        from tests.serving.test_group_commit import SPEC, hub_in_process
        from teacher_service.wire import CurriculumCreate, ProposeRequest, ReportRequest, Signals
        hub = hub_in_process({str(tmp_path)!r})
        hub.create_curriculum(CurriculumCreate(**SPEC))
        proposals = hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{{k}}") for k in range(2)]).result()
        hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                     signals=Signals(grad_norm_mean=1.0)) for p in proposals]).result()
        hub.updater.settle(timeout_s=120)
        print("version", hub.get_curriculum("cur").teacher_version, flush=True)
        hub.close()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["script body", "version 1"]
