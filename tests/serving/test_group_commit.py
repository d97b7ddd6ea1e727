"""Group commit and the teacher updater: many requests per transaction, each answered once committed;
batches numbered by reports are applied once, in order, and after a crash."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from student_client.client import TeacherClient
from teacher_service.learning.task_spaces import build_task_space
from teacher_service.learning.teachers import build_teacher
from teacher_service.serving import hub as hub_module
from teacher_service.serving.hub import TeacherHub
from teacher_service.serving.settings import Settings
from teacher_service.serving.store.tables import Evaluation, create_tables, make_engine
from teacher_service.serving.update_worker import StaleLearner, UpdateJob
from teacher_service.serving.updater import MAX_ROUND, read_batch
from teacher_service.wire import CurriculumCreate, DiscreteTaskSpace, ProposeRequest, ReportRequest, Signals
from tests.servers import ServiceProcess, wait_until

TASKS = {"kind": "discrete", "tasks": [{"name": f"t{i}"} for i in range(4)]}
SPEC = {"name": "cur", "task_space": TASKS,
        "teacher": {"algorithm": "gradnorm-reinforce", "params": {"batch_size": 2, "horizon": 1}}}


def hub_in_process(data_dir, **settings) -> TeacherHub:
    """A hub in this process on a fresh SQLite file in `data_dir`, or on `database_url` (its threads start on first
    use)."""
    settings = Settings(data_dir=data_dir, **settings)
    engine = make_engine(settings.resolved_database_url(), settings.request_threads)
    create_tables(engine)
    return TeacherHub(settings, engine)


def hold_the_writer(hub: TeacherHub) -> threading.Event:
    """Occupy the writer thread until the returned event is set, so that the jobs submitted meanwhile queue."""
    started, gate = threading.Event(), threading.Event()
    hub.committer.submit(lambda tx: started.set() or gate.wait(10))
    assert started.wait(10)
    return gate


def test_a_job_awaited_in_asyncio_whose_caller_is_cancelled_still_commits_with_its_group(tmp_path):
    # The batch report route awaits its job so; cancelling the future of a job that the writer is about to run
    # (or is running) would leave the writer unable to answer it, and with it the rest of its group.
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))

    def evaluation(student: str):
        def job(tx):
            tx.conn.execute(insert(Evaluation.__table__).values(
                curriculum_id=1, student_id=student, env_steps=1, episodes=1, success_rate=0, mean_return=0))
            return student
        return job

    gate = hold_the_writer(hub)

    async def submit_and_cancel():
        waiting = asyncio.ensure_future(asyncio.wrap_future(hub.committer.submit(evaluation("cancelled"))))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return hub.committer.submit(evaluation("after"))

    after = asyncio.run(submit_and_cancel())
    gate.set()
    assert after.result(10) == "after"
    assert hub.write(evaluation("later")) == "later"  # the writer goes on
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert sorted(db.execute("select student_id from evaluations")) == [("after",), ("cancelled",), ("later",)]
    hub.close()


def test_a_job_that_raises_stop_iteration_fails_its_awaiting_request_instead_of_stalling_it(tmp_path):
    # asyncio refuses StopIteration as a future's exception: awaited as it was raised, the request (and a gathered
    # group's turn with it) would wait for ever. A teacher's propose_many returning too few decisions raises it.
    hub = hub_in_process(tmp_path)

    async def awaited():
        return await asyncio.wait_for(asyncio.wrap_future(hub.submit(lambda tx: next(iter([])), list)), 10)

    with pytest.raises(RuntimeError, match="StopIteration"):
        asyncio.run(awaited())
    hub.close()


def test_reports_whose_batch_request_is_cancelled_are_still_counted_and_wake_the_updater(tmp_path):
    """The batch route awaits `TeacherHub.reporting` in the event loop; what follows the commit (counting the reports,
    waking the updater for the batch they numbered) runs in the writer thread, not in the request that may be gone."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2: two reports number a batch
    proposals = hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(2)]).result()
    counted = lambda: REGISTRY.get_sample_value("teacher_reports_total", {"curriculum": "cur"}) or 0.0  # noqa: E731
    before = counted()
    gate = hold_the_writer(hub)

    async def report_and_cancel():
        waiting = asyncio.ensure_future(asyncio.wrap_future(hub.reporting(
            [ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id, signals=Signals(grad_norm_mean=1.0))
             for p in proposals])))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(report_and_cancel())
    gate.set()
    wait_until(lambda: counted() == before + 2, 10, "the count of the reports")
    wait_until(lambda: hub.get_curriculum("cur").teacher_version == 1, 10, "the update that they numbered")
    hub.close()


def test_queued_writes_share_one_transaction_and_a_failing_one_fails_alone(tmp_path):
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    curriculum_id = 1  # the first curriculum of a fresh database

    def evaluation(k: int):
        def job(tx):
            tx.conn.execute(insert(Evaluation.__table__).values(
                curriculum_id=curriculum_id, student_id=f"s{k}", env_steps=k, episodes=1, success_rate=0, mean_return=0))
            return k
        return job

    def duplicate(tx):  # not an API error: rolls its group back; then each of its jobs runs alone
        tx.conn.exec_driver_sql("INSERT INTO curricula (name, spec, teacher_version, teacher_updates, teacher_state, "
                                "created_at) VALUES ('cur', '{}', 0, 0, x'00', '2026-01-01 00:00:00.000000')")

    gate = hold_the_writer(hub)
    groups = hub.committer.groups
    futures = [hub.committer.submit(evaluation(k)) for k in range(40)]
    gate.set()
    assert [f.result(10) for f in futures] == list(range(40))
    assert hub.committer.groups - groups == 2  # the holding job's transaction, then one for all 40

    gate = hold_the_writer(hub)
    groups = hub.committer.groups
    futures = [hub.committer.submit(evaluation(k)) for k in range(40, 60)]
    bad = hub.committer.submit(duplicate)
    futures += [hub.committer.submit(evaluation(k)) for k in range(60, 80)]
    gate.set()
    assert [f.result(10) for f in futures] == list(range(40, 80))
    with pytest.raises(IntegrityError):
        bad.result(10)
    assert hub.committer.groups - groups == 1 + 40  # the failed group's jobs, retried one by one
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select count(*) from evaluations").fetchone() == (80,)
    hub.close()


def test_a_group_that_finds_the_database_unavailable_fails_at_once(tmp_path):
    """Each job retried alone would meet the outage again (on PostgreSQL, a connect timeout each)."""
    hub = hub_in_process(tmp_path)
    gate = hold_the_writer(hub)
    groups = hub.committer.groups
    runs: list[str] = []

    def job(name: str):
        return lambda tx: runs.append(name)

    def failing_disk(tx):
        runs.append("failing disk")
        error = sqlite3.OperationalError("disk I/O error")  # injected: a failing disk cannot be produced here
        error.sqlite_errorcode = sqlite3.SQLITE_IOERR
        raise error

    futures = [hub.committer.submit(job("a")), hub.committer.submit(failing_disk), hub.committer.submit(job("b"))]
    gate.set()
    for future in futures:
        with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
            future.result(10)
    assert runs == ["a", "failing disk"] and hub.committer.groups == groups + 1  # the holding job's group only
    assert hub.write(job("after")) is None and runs[-1] == "after"  # the writer goes on
    hub.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_writer_keeps_its_connection_on_sqlite_only_and_takes_another_after_a_failure(tmp_path, backend, request):
    """On SQLite the writer's connection stays checked out between groups (its page cache stays warm); on
    PostgreSQL each group checks one out of the pool, which tests it first. A failed transaction may have broken
    its connection: the next one takes another. Closing the writer gives its connection back."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'teacher.db'}"
    engine = make_engine(url, request_threads=1)
    create_tables(engine)
    committer = TeacherHub(Settings(data_dir=tmp_path, database_url=url), engine).committer

    def connection(tx):
        return tx.conn

    def bug(tx):
        raise RuntimeError("a bug in a job")

    try:
        first = committer.call(connection)
        assert (committer.call(connection) is first) == (backend == "sqlite")
        assert engine.pool.checkedout() == (1 if backend == "sqlite" else 0)
        with pytest.raises(RuntimeError, match="a bug"):
            committer.call(bug)
        assert engine.pool.checkedout() == 0
        assert committer.call(connection) is not first
    finally:
        committer.close()
    assert engine.pool.checkedout() == 0
    engine.dispose()


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (the update worker, multiprocessing's resource tracker)."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(child) for child in (task / "children").read_text().split()}
            except OSError:  # ended meanwhile
                continue
            todo += children - found
            found |= children
    return found


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie (nobody may reap an orphan in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_service_loses_no_acknowledged_report_and_applies_numbered_batches(tmp_path, backend, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    service = ServiceProcess(tmp_path, database_url=url).start()
    try:
        service.client().post("/curricula", json=SPEC).raise_for_status()
        client = TeacherClient(service.url, service.student_token)
        proposals = client.propose_many("cur", [f"s{k % 3}" for k in range(16)])
        acks = client.report_many([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                                 signals=Signals(grad_norm_mean=float(k)))
                                   for k, p in enumerate(proposals)])
        assert sum(a.teacher_updated for a in acks) == 8 and acks[-1].teacher_version == 8
        # The update worker and multiprocessing's resource tracker.
        wait_until(lambda: len(descendants(service.process.pid)) >= 2, 30, "the update worker")
        helpers = descendants(service.process.pid)
        service.process.send_signal(signal.SIGKILL)  # no shutdown: updates may still be pending
        service.process.wait()
        wait_until(lambda: not any(running(pid) for pid in helpers), 30, "the killed service's helper processes to end")
        service.start()
        client = TeacherClient(service.url, service.student_token)
        wait_until(lambda: client.get_curriculum("cur").teacher_version == 8, 30, "the pending updates")
        with service.client() as http:
            assert http.get("/curricula/cur/teacher").json()["updates"] == 8
    finally:
        service.stop()
    query = {
        "reported": "select count(*) from proposals where reported_at is not null",
        "versions": "select version from teacher_updates order by id",
        "state": "select teacher_state from curricula",
    }
    if url:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
            result = {k: conn.execute(q).fetchall() for k, q in query.items()}
    else:
        with sqlite3.connect(tmp_path / "teacher.db") as db:
            result = {k: db.execute(q).fetchall() for k, q in query.items()}
    assert result["reported"] == [(16,)]
    assert [v for (v,) in result["versions"]] == list(range(1, 9))  # each batch once, in order
    teacher = build_teacher("gradnorm-reinforce", build_task_space(DiscreteTaskSpace(**TASKS)),
                            SPEC["teacher"]["params"], 0)
    teacher.load_state_bytes(bytes(result["state"][0][0]))
    assert teacher.updates == 8


def test_a_restarted_hub_applies_what_was_numbered_but_not_applied(tmp_path):
    """Reports number batches in their own transaction; the updates run later, from the committed rows."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    # This process "dies" before applying anything: no updater thread (a notify-less one still polled every second,
    # and on a loaded machine applied the batches before the check below).
    hub.updater.start = lambda: None
    proposals = hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(6)]).result()
    acks = hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                        signals=Signals(grad_norm_mean=1.0)) for p in proposals]).result()
    assert [a.teacher_version for a in acks] == [0, 1, 1, 2, 2, 3]
    assert hub.get_curriculum("cur").teacher_version == 0
    hub.committer.close()

    restarted = TeacherHub(hub.settings, hub.engine)
    restarted.start()
    wait_until(lambda: restarted.get_curriculum("cur").teacher_version == 3, 30, "the numbered updates")
    restarted.close()
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select version from teacher_updates order by id").fetchall() == [(1,), (2,), (3,)]
        assert db.execute("select consumed_version, count(*) from proposals group by 1").fetchall() == [
            (1, 2), (2, 2), (3, 2)]



def test_a_backlog_of_batches_is_applied_in_rounds_by_the_update_worker_as_one_by_one_in_process(tmp_path, monkeypatch):
    """Batches numbered faster than they are applied (a saturated service) are applied in rounds of up to MAX_ROUND,
    one transaction each; the worker's teacher is the one that learns from each batch in turn here, and each round
    stores the checkpoint at the last multiple of checkpoint_every, from which a restart replays the rest. Proposals
    made meanwhile never replay a round into the teacher (the new one is swapped in before the writer goes on)."""
    hub = hub_in_process(tmp_path)
    spec = CurriculumCreate(**{"name": "alp", "task_space": {"kind": "box", "low": [0, 0], "high": [1, 2]},
                               "teacher": {"algorithm": "alp-gmm", "params": {"fit_rate": 20}},
                               "reward_signal": "episode_return"})
    hub.create_curriculum(spec)
    # No updater thread yet, nothing to wake it: the backlog builds up.
    start, hub.updater.start = hub.updater.start, lambda: None
    notify, hub.updater.notify = hub.updater.notify, lambda curriculum_id, version: None
    for k in range(60):  # ALP-GMM learns from every report: 60 batches
        (proposal,) = hub.proposing([ProposeRequest(curriculum="alp", student_id=f"s{k % 3}")]).result()
        hub.reporting([ReportRequest(proposal_id=proposal.proposal_id, student_id=proposal.student_id,
                                     signals=Signals(episode_return=sum(proposal.task.values) + 0.1 * k))]).result()
    replayed = []
    monkeypatch.setattr(hub_module, "read_batch", lambda *args: replayed.append(args) or read_batch(*args))
    done = threading.Event()

    def propose_meanwhile() -> None:
        while not done.is_set():
            hub.proposing([ProposeRequest(curriculum="alp", student_id="meanwhile")]).result()

    proposer = threading.Thread(target=propose_meanwhile)
    proposer.start()
    hub.updater.start = start
    notify(1, 60)
    wait_until(lambda: hub.get_curriculum("alp").teacher_version == 60, 120, "the backlog")
    done.set()
    proposer.join()
    assert replayed == []
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select version from teacher_updates order by id").fetchall() == [(v,) for v in range(1, 61)]
        # 16, 16, 16, 12: a transaction each, its rows with one time
        assert db.execute("select count(distinct created_at) from teacher_updates").fetchall() == [
            (math.ceil(60 / MAX_ROUND),)]
        ((version, state),) = db.execute("select teacher_version, teacher_state from curricula").fetchall()
    stored = build_teacher("alp-gmm", build_task_space(spec.task_space), {"fit_rate": 20}, 0)
    stored.load_state_bytes(state)
    assert (version, stored.updates) == (60, 50)  # the round of 49 to 60 stored the checkpoint of 50

    reference = build_teacher("alp-gmm", build_task_space(spec.task_space), {"fit_rate": 20}, 0)
    with hub.reading() as cursor:
        for v in range(1, 61):
            reference.update(read_batch(hub.driver, cursor, 1, v))
    with hub.sessions() as session:
        live = hub.runtime(hub.curriculum_row(session, "alp")).teacher
        assert live.describe() == reference.describe() and live.updates == 60 and live.fits == 3
    restarted = TeacherHub(hub.settings, hub.engine)
    with restarted.sessions() as session, restarted.current_teacher(session, restarted.curriculum_row(session, "alp")) as teacher:
        assert teacher.describe() == reference.describe() and teacher.updates == 60
    hub.close()


def report_two(hub: TeacherHub, curriculum: str) -> None:
    """Two episodes: a batch of the SPEC's teacher."""
    proposals = hub.proposing([ProposeRequest(curriculum=curriculum, student_id=f"s{k}") for k in range(2)]).result()
    hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                 signals=Signals(grad_norm_mean=1.0)) for p in proposals]).result()


def test_a_read_under_sustained_reporting_waits_for_the_updates_numbered_before_it_not_for_an_idle_updater(tmp_path):
    """Students report without a pause, as fast as the updater keeps up (a backlog of at most two rounds): it is
    never idle, since each round finds new batches. A read that settles waits for the batches numbered before it,
    and not, as it did, for its whole timeout (10 s, every read)."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2: a report of 8 numbers 4 batches
    numbered, stop = [0], threading.Event()

    def stored() -> int:
        with sqlite3.connect(tmp_path / "teacher.db") as db:
            return db.execute("select teacher_version from curricula").fetchone()[0]

    def report_without_a_pause() -> None:
        while not stop.is_set():
            if numbered[0] - stored() > 2 * MAX_ROUND:  # more than the updater applies: its backlog would grow
                time.sleep(0.005)
                continue
            proposals = hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(8)]).result()
            acks = hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                                signals=Signals(grad_norm_mean=1.0)) for p in proposals]).result()
            numbered[0] = max(a.teacher_version for a in acks)

    with ThreadPoolExecutor(1) as students:
        reporting = students.submit(report_without_a_pause)
        try:
            wait_until(lambda: hub.get_curriculum("cur").teacher_version >= 8, 120, "the first updates")  # worker warm
            found_pending = []
            for _ in range(3):
                before, start = numbered[0], time.monotonic()
                found_pending.append(hub.updater.settle(1, timeout_s=30))
                waited = time.monotonic() - start
                assert hub.get_curriculum("cur").teacher_version >= before
                assert waited < 15, waited  # far from the timeout
                assert not reporting.done()  # the reports went on throughout
            assert any(found_pending)  # the reads met a busy updater
        finally:
            stop.set()
        reporting.result()
    hub.close()


def test_a_read_waits_for_the_batches_another_replica_numbered_up_to_the_last_found(tmp_path):
    """Batches that this process did not number (another replica's, a crash's) are found in the database with the
    last version numbered: a read waits for that version, as for its own reports' (not for an idle updater)."""
    before = hub_in_process(tmp_path)
    before.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2
    before.updater.start = lambda: None  # this "replica" numbers batches and stops without applying them
    for _ in range(3):
        report_two(before, "cur")
    before.committer.close()
    hub = hub_in_process(tmp_path)
    hub.updater.start()  # finds them at its first poll, with the last version numbered
    wait_until(lambda: hub.updater._numbered == {1: 3}, 60, "the first poll")
    assert hub.get_curriculum("cur").teacher_version == 3  # the read waited for them (a new worker's imports too)
    hub.close()


def test_a_killed_update_worker_is_replaced_and_its_updates_applied(tmp_path, caplog):
    """The next update meets the dead worker, fails, is logged and tried again with a new worker; the new worker
    has no copy of another curriculum's teacher either, and is sent one."""
    hub = hub_in_process(tmp_path)
    for name in ("cur", "other"):
        hub.create_curriculum(CurriculumCreate(**{**SPEC, "name": name}))  # batch_size 2

    def versions() -> list[int]:
        return [hub.get_curriculum(name).teacher_version for name in ("cur", "other")]

    report_two(hub, "cur")
    report_two(hub, "other")
    wait_until(lambda: versions() == [1, 1], 60, "the first updates")
    first = hub.updater.worker.pid
    os.kill(first, signal.SIGKILL)
    report_two(hub, "cur")
    wait_until(lambda: versions() == [2, 1], 60, "the update after the worker died")
    report_two(hub, "other")
    wait_until(lambda: versions() == [2, 2], 60, "the other curriculum's update in the new worker")
    assert hub.updater.worker.pid not in (None, first)
    (failed,) = [record for record in caplog.records if record.exc_info]  # the one update that met the dead worker
    assert "curriculum 1 failed" in failed.getMessage() and "worker stopped (exit code -9)" in str(failed.exc_info[1])
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select curriculum_id, version from teacher_updates order by id").fetchall() == [
            (1, 1), (2, 1), (1, 2), (2, 2)]
    hub.close()
    assert hub.updater.worker.pid is None


def test_a_frozen_update_worker_is_replaced_after_the_time_limit_and_deleted_curricula_leave_it(tmp_path, caplog):
    hub = hub_in_process(tmp_path)
    for name in ("cur", "other"):
        hub.create_curriculum(CurriculumCreate(**{**SPEC, "name": name}))  # batch_size 2; ids 1 and 2
    for name in ("cur", "other"):
        report_two(hub, name)
    wait_until(lambda: [hub.get_curriculum(name).teacher_version for name in ("cur", "other")] == [1, 1], 60,
               "the first updates")
    hub.delete_curriculum("other")
    report_two(hub, "cur")  # its round tells the worker to drop the deleted curriculum's copy (at version 1)
    wait_until(lambda: hub.get_curriculum("cur").teacher_version == 2, 60, "the second update")
    assert hub.updater.settle(timeout_s=10) is False  # the updater is idle: the worker is ours for a moment
    with pytest.raises(StaleLearner):
        hub.updater.worker.update(UpdateJob(2, first=2, batches=[[]]), timeout_s=60)

    hub.updater.timeout_s = 5  # only now: a round slowed down by a loaded machine is not what is tested
    frozen = hub.updater.worker.pid
    os.kill(frozen, signal.SIGSTOP)
    report_two(hub, "cur")
    wait_until(lambda: hub.get_curriculum("cur").teacher_version == 3, 60, "the update after the time limit")
    assert not running(frozen) and hub.updater.worker.pid not in (None, frozen)
    (failed,) = [record for record in caplog.records if record.exc_info]
    assert "the teacher update took more than 5 s; its worker was stopped" in str(failed.exc_info[1])
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select version from teacher_updates where curriculum_id = 1 order by id").fetchall() == [
            (1,), (2,), (3,)]
    hub.close()


def read_while_the_worker_imports(hub: TeacherHub, timeout_s: float) -> None:
    """A read that settles, made as the update worker starts: with the worker frozen while it imports (3 s here, 8 to
    14 s on a busy machine), the read still waits after twice its timeout; once the worker goes on, the read sees
    the update (a version 1 to apply)."""
    with ThreadPoolExecutor(1) as reader:
        settling = reader.submit(hub.updater.settle, 1, timeout_s)
        wait_until(lambda: hub.updater.worker.pid is not None, 20, "the worker's start")
        pid = hub.updater.worker.pid
        os.kill(pid, signal.SIGSTOP)
        time.sleep(2 * timeout_s)
        assert not settling.done()
        os.kill(pid, signal.SIGCONT)
        assert settling.result(60) is True
    assert hub.get_curriculum("cur").teacher_version == 1


def test_a_read_after_reports_waits_for_the_update_workers_imports_beyond_its_own_timeout(tmp_path):
    """The first updates wait for the worker's imports: a read that settles (GET /curricula/{name}) would otherwise
    miss them once its own timeout (10 s) was out."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2
    report_two(hub, "cur")  # its first proposal starts the worker
    read_while_the_worker_imports(hub, 1.0)
    hub.close()


def test_a_read_after_a_restart_waits_for_the_imports_of_the_worker_that_its_reports_start(tmp_path):
    """After a restart, reports of proposals made before it start the worker with their update, not with a proposal:
    a read made before the worker started waits for its imports too."""
    before = hub_in_process(tmp_path)
    before.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2
    proposals = before.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(2)]).result()
    before.close()
    hub = hub_in_process(tmp_path)
    hub.reporting([ReportRequest(proposal_id=p.proposal_id, student_id=p.student_id,
                                 signals=Signals(grad_norm_mean=1.0)) for p in proposals]).result()
    read_while_the_worker_imports(hub, 2.0)
    hub.close()


def test_a_service_stopped_while_its_update_worker_imports_kills_it_instead_of_waiting(tmp_path):
    """A worker that is not ready holds nothing: a service stopped soon after its first proposal (a test, a Ctrl-C)
    stops at once, where waiting for the worker's imports took 2.5 s here and up to 12 s in the suite."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()  # starts the worker
    wait_until(lambda: hub.updater.worker.pid is not None, 20, "the worker's start")
    pid = hub.updater.worker.pid
    os.kill(pid, signal.SIGSTOP)  # still importing
    with ThreadPoolExecutor(1) as closer:
        assert closer.submit(hub.close).result(5) is None  # a frozen worker asked to stop would be waited for 10 s
    assert not running(pid)


def test_a_teacher_checkpointed_every_few_updates_is_rebuilt_exactly_from_stored_reports(tmp_path):
    """ALP-GMM's checkpoint holds its history: stored every 50 updates, the updates since are replayed."""
    hub = hub_in_process(tmp_path)
    hub.start()
    spec = {"name": "alp", "task_space": {"kind": "box", "low": [0, 0], "high": [1, 2]},
            "teacher": {"algorithm": "alp-gmm", "params": {"fit_rate": 20}}, "reward_signal": "episode_return"}
    hub.create_curriculum(CurriculumCreate(**spec))
    for k in range(70):  # one at a time: ALP-GMM learns from every report
        (proposal,) = hub.proposing([ProposeRequest(curriculum="alp", student_id="s")]).result()
        hub.reporting([ReportRequest(proposal_id=proposal.proposal_id, student_id="s",
                                     signals=Signals(episode_return=sum(proposal.task.values) + 0.1 * k))]).result()
    hub.close()
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        ((version, state),) = db.execute("select teacher_version, teacher_state from curricula").fetchall()
    stored = build_teacher("alp-gmm", build_task_space(CurriculumCreate(**spec).task_space), {"fit_rate": 20}, 0)
    stored.load_state_bytes(state)
    assert (version, stored.updates) == (70, 50)  # the last checkpoint is at update 50

    with hub.sessions() as session:
        live = hub.runtime(hub.curriculum_row(session, "alp")).teacher.describe()
    restarted = TeacherHub(hub.settings, hub.engine)
    with restarted.sessions() as session:
        row = restarted.curriculum_row(session, "alp")
        with restarted.current_teacher(session, row) as teacher:
            assert teacher.describe() == live and teacher.updates == 70 and teacher.fits == 3


def delete_elsewhere(tmp_path, name: str) -> None:
    with sqlite3.connect(tmp_path / "teacher.db") as db:  # as another process would
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM curricula WHERE name = ?", (name,))


def test_a_proposal_for_a_curriculum_that_another_process_deleted_is_a_404(tmp_path):
    """This process still has the curriculum's teacher in its cache."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()
    delete_elsewhere(tmp_path, "cur")
    (result,) = hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()
    assert result.status_code == 404 and "cur" in result.detail
    hub.close()


def test_a_batch_with_a_deleted_curriculum_stores_the_other_proposals(tmp_path):
    """Only the items of the deleted curriculum get 404; the rest of the batch is stored and answered."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    hub.create_curriculum(CurriculumCreate(**{**SPEC, "name": "gone"}))
    hub.proposing([ProposeRequest(curriculum="gone", student_id="s")]).result()
    delete_elsewhere(tmp_path, "gone")
    requests = [ProposeRequest(curriculum=name, student_id=f"s{i}") for i, name in enumerate(["cur", "gone", "cur"])]
    first, second, third = hub.proposing(requests).result()
    assert second.status_code == 404 and "gone" in second.detail
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        stored = {row[0] for row in db.execute("SELECT proposal_id FROM proposals")}
    assert stored == {first.proposal_id, third.proposal_id}
    hub.close()


def test_another_replica_deleting_a_curriculum_while_a_job_proposes_waits_for_its_proposals(
        tmp_path, postgres_url, monkeypatch):
    """PostgreSQL, where reading does not stop other sessions from writing: the propose job's key-share lock on the
    curriculum makes another replica's DELETE wait for the job's commit, then take its proposals along (ON DELETE
    CASCADE). Without that lock the DELETE would go first and the job's insert fail on the foreign key."""
    engine = make_engine(postgres_url, request_threads=1)
    create_tables(engine)
    hub = TeacherHub(Settings(data_dir=tmp_path, database_url=postgres_url), engine)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    plain_url = postgres_url.replace("postgresql+psycopg", "postgresql")
    other_replica = psycopg.connect(plain_url, autocommit=True)
    deleting = threading.Thread(target=lambda: other_replica.execute("DELETE FROM curricula WHERE name = 'cur'"))
    decide = hub._decide

    def decide_while_another_replica_deletes(cursor, name, requests, now):
        outcomes = decide(cursor, name, requests, now)
        deleting.start()
        with psycopg.connect(plain_url, autocommit=True) as watcher:  # until the DELETE waits for a lock, or is done
            wait_until(lambda: not deleting.is_alive() or watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0] > 0, 10, "the other replica's DELETE")
        return outcomes

    monkeypatch.setattr(hub, "_decide", decide_while_another_replica_deletes)
    try:
        (proposal,) = hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()
        assert proposal.curriculum == "cur" and proposal.proposal_id
        deleting.join(10)
        assert not deleting.is_alive()
        assert other_replica.execute("SELECT (SELECT count(*) FROM curricula), (SELECT count(*) FROM proposals)"
                                     ).fetchone() == (0, 0)
    finally:
        hub.close()
        other_replica.close()
        engine.dispose()


def test_proposals_do_not_wait_for_a_report_lock_that_another_replica_holds(tmp_path, postgres_url):
    """PostgreSQL: a report holds its curriculum's row lock (NO KEY UPDATE) until its group commits; the proposals of
    another replica take only a key-share lock on that row, which does not wait for it."""
    engine = make_engine(postgres_url, request_threads=1)
    create_tables(engine)
    hub = TeacherHub(Settings(data_dir=tmp_path, database_url=postgres_url), engine)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    other_replica = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"))
    proposed: list = []
    try:
        other_replica.execute(hub.driver.sql["lock_curriculum"], {"curriculum_id": 1})  # a report's lock, held
        proposing = threading.Thread(target=lambda: proposed.extend(
            hub.proposing([ProposeRequest(curriculum="cur", student_id="s")]).result()))
        proposing.start()
        proposing.join(10)
        assert not proposing.is_alive() and proposed[0].curriculum == "cur"
    finally:
        other_replica.close()  # ends its transaction: a proposal that waited goes on
        hub.close()
        engine.dispose()


def test_a_job_alone_gets_a_transaction_of_its_own(tmp_path):
    """The updater stores a new teacher version alone, so that no propose job in its group loads that version into
    the cached teacher before it is committed (a rollback would leave the cache ahead of the database)."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))
    gate = hold_the_writer(hub)
    groups = hub.committer.groups
    seen: list[tuple[str, object]] = []

    def job(name: str):
        return lambda tx: seen.append((name, tx))

    futures = [hub.committer.submit(job("a")), hub.committer.submit(job("b")),
               hub.committer.submit(job("alone"), alone=True),
               hub.committer.submit(job("c")), hub.committer.submit(job("d"))]
    gate.set()
    for future in futures:
        future.result(10)
    assert hub.committer.groups - groups == 1 + 3  # the holding job's, then [a, b], [alone], [c, d]
    tx = dict(seen)
    assert tx["a"] is tx["b"] and tx["c"] is tx["d"] and len({id(tx[name]) for name in ("a", "alone", "c")}) == 3
    hub.close()


def test_a_stale_cache_replays_only_the_updates_it_misses(tmp_path, monkeypatch):
    """Another replica moved on by a few updates: the cache catches up by replaying those onto itself,
    not by loading the older checkpoint and replaying everything since it."""
    spec = CurriculumCreate(**{"name": "alp", "task_space": {"kind": "box", "low": [0, 0], "high": [1, 2]},
                               "teacher": {"algorithm": "alp-gmm", "params": {"fit_rate": 20}},
                               "reward_signal": "episode_return"})
    writer, reader = hub_in_process(tmp_path), hub_in_process(tmp_path)  # two replicas on one database
    # The reader applies no batch itself (a replica may, racing the writer; not what is tested here): it replays.
    monkeypatch.setattr(reader.updater, "start", lambda: None)
    writer.start()
    writer.create_curriculum(spec)

    def reports(count: int) -> None:
        for k in range(count):
            (proposal,) = writer.proposing([ProposeRequest(curriculum="alp", student_id="s")]).result()
            writer.reporting([ReportRequest(proposal_id=proposal.proposal_id, student_id="s",
                                            signals=Signals(episode_return=sum(proposal.task.values) + 0.1 * k))]).result()
        writer.updater.settle()

    reports(52)
    reader.proposing([ProposeRequest(curriculum="alp", student_id="r")]).result()  # its cache: checkpoint 50 + 2 replayed
    cached = reader.runtime_by_id(None, 1)
    assert cached.version == 52
    reports(3)
    replayed = []
    update = cached.teacher.update
    monkeypatch.setattr(cached.teacher, "update", lambda batch: replayed.append(batch) or update(batch))
    reader.proposing([ProposeRequest(curriculum="alp", student_id="r")]).result()
    assert len(replayed) == 3 and cached.version == 55
    with writer.sessions() as session:
        live = writer.runtime(writer.curriculum_row(session, "alp")).teacher
    assert cached.teacher.describe() == live.describe() and cached.teacher.updates == 55
    writer.close()
    reader.close()


def test_batch_counts_kept_in_memory_follow_a_rolled_back_group(tmp_path):
    """Reports count the episodes ready for a batch in memory within their transaction: when their group
    rolls back (another job fails) and each is run again alone, batches are numbered from what is stored."""
    hub = hub_in_process(tmp_path)
    hub.create_curriculum(CurriculumCreate(**SPEC))  # batch_size 2
    hub.updater.notify = lambda curriculum_id, version: None  # only the numbering is looked at
    proposals = hub.proposing([ProposeRequest(curriculum="cur", student_id=f"s{k}") for k in range(5)]).result()
    acks = []

    def report(p) -> threading.Thread:
        thread = threading.Thread(target=lambda: acks.extend(hub.reporting([ReportRequest(
            proposal_id=p.proposal_id, student_id=p.student_id, signals=Signals(grad_norm_mean=1.0))]).result()))
        thread.start()
        return thread

    def failing(tx):  # not an API error: rolls back the reports queued before it in its group
        tx.conn.exec_driver_sql("INSERT INTO curricula (id, name, spec, teacher_version, teacher_updates, "
                                "teacher_state, created_at) VALUES (1, 'x', '{}', 0, 0, x'00', '2026-01-01')")

    gate = hold_the_writer(hub)
    threads = [report(p) for p in proposals[:3]]
    wait_until(lambda: len(hub.committer._queue) == 3, 10, "three reports queued")
    bad = hub.committer.submit(failing)
    threads += [report(p) for p in proposals[3:]]
    wait_until(lambda: len(hub.committer._queue) == 6, 10, "all queued")
    gate.set()
    for t in threads:
        t.join(10)
    with pytest.raises(IntegrityError):
        bad.result(10)
    hub.close()
    assert sorted(a.teacher_version for a in acks) == [0, 1, 1, 2, 2] and sum(a.teacher_updated for a in acks) == 2
    with sqlite3.connect(tmp_path / "teacher.db") as db:
        assert db.execute("select consumed_version, count(*) from proposals group by 1").fetchall() == [
            (None, 1), (1, 2), (2, 2)]
