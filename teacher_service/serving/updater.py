"""Teacher updates off the request path: one thread applies each curriculum's closed batches, in order.

A report that completes a batch numbers it (the teacher version that will have learned from it, stored
as the batch's `consumed_version`) in its own transaction and is answered; this thread then applies the batches
numbered after the stored version N, N + 1 to N + k, in a round: it reads their committed rows, has a copy of the
teacher in the update worker (update_worker.py: a process of its own) learn from each in turn (proposals go on from
the teacher meanwhile: a propose changes nothing but the generator, as checkpoints already assume), loads the new
checkpoint into a spare teacher, and stores version N + k, the checkpoint and the `teacher_updates` rows in one
transaction that only succeeds if the stored version is still N; then the spare becomes the teacher. So each batch
is applied exactly once and in order, across replicas too: of two replicas applying the same batches, one stores
them and the other reloads them. A round is one update unless batches were numbered faster than they were applied.
Nothing lives only in memory: after a crash or restart, the batches numbered but not applied are found in
the committed rows (`pending_curricula`) and applied.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import Any, Protocol

from teacher_service.learning.teachers import Experience
from teacher_service.serving.group_commit import GroupCommitter, Tx
from teacher_service.serving.infra import metrics
from teacher_service.serving.store.statements import CurriculumRow, Driver
from teacher_service.serving.store.tables import utcnow
from teacher_service.serving.update_worker import IMPORT_LIMIT_S, Blueprint, StaleLearner, UpdateJob, UpdateWorker

log = logging.getLogger("teacher_service")

MAX_ROUND = 16  # the most batches that one round applies and stores


class Host(Protocol):
    """What the updater uses of the hub (hub.py), which owns it."""

    driver: Driver
    committer: GroupCommitter

    def reading(self) -> AbstractContextManager[Any]: ...
    def submit(self, job: Any, answer: Any, alone: bool = False) -> Any: ...
    def runtime_by_id(self, cursor: Any, curriculum_id: int) -> Any: ...
    def sync(self, cursor: Any, runtime: Any, stored_version: int) -> None: ...
    def reseed(self, runtime: Any, version: int, last_proposal: int | None = None) -> None: ...


def by_seq(row: tuple) -> int:
    return row[0]


def read_batch(driver: Driver, cursor: Any, curriculum_id: int, version: int) -> list[Experience]:
    """The stored batch that teacher `version` learns from, in sequence order."""
    load = driver.load_json
    return [
        Experience(seq=seq, student_id=student_id, trajectory=trajectory, task_index=task_index,
                   task_values=load(task_values), teacher_input=load(teacher_input), reward=reward)
        for seq, student_id, trajectory, task_index, task_values, teacher_input, reward
        in sorted(driver.all(cursor, "batch", {"curriculum_id": curriculum_id, "version": version}), key=by_seq)
    ]


class Updater:
    def __init__(self, hub: Host, poll_s: float = 1.0, timeout_s: float | None = None) -> None:
        self.hub = hub
        self.poll_s = poll_s  # how often it looks for batches that another replica numbered
        self.timeout_s = timeout_s  # the longest a round may take in the worker
        self._dirty: set[int] = set()  # curricula that may have a batch to apply
        # Per curriculum, the last version numbered that this process knows of (its reports', or found in the database:
        # another replica's, a crash's), and the last seen stored: what a read waits for (`settle`).
        self._numbered: dict[int, int] = {}
        self._stored: dict[int, int] = {}
        self._deleted: set[int] = set()  # curricula whose copies the worker is to drop with its next job
        self._worker_wanted = False  # students propose: start the worker before the first update needs it
        self._busy: int | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.worker = UpdateWorker()

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="teacher-updater", daemon=True)
                self._thread.start()

    def notify(self, curriculum_id: int, version: int) -> None:
        """Batches of this curriculum were numbered, up to `version`: apply them soon."""
        self.start()
        with self._cond:
            self._numbered_up_to(curriculum_id, version)
            self._cond.notify_all()

    def _numbered_up_to(self, curriculum_id: int, version: int) -> None:
        """(Holding the lock.)"""
        self._dirty.add(curriculum_id)
        self._numbered[curriculum_id] = max(self._numbered.get(curriculum_id, 0), version)

    def _saw_stored(self, curriculum_id: int, version: int) -> None:
        with self._cond:
            if version > self._stored.get(curriculum_id, -1):
                self._stored[curriculum_id] = version
                self._cond.notify_all()

    def expect_updates(self) -> None:
        """Students are proposing, their reports will follow: start the update worker now, an episode before the first
        update needs it (it imports what it needs: 3 s of CPU here, as much as the rest of a start-up). Not at
        start-up: a service that is only asked questions never pays for it."""
        if self._worker_wanted:
            return
        self.start()
        with self._cond:
            self._worker_wanted = True
            self._cond.notify_all()

    def forget(self, curriculum_id: int) -> None:
        """A curriculum was deleted: the worker drops its copy of the teacher."""
        with self._cond:
            self._deleted.add(curriculum_id)
            self._numbered.pop(curriculum_id, None)
            self._stored.pop(curriculum_id, None)

    def settle(self, curriculum_id: int | None = None, timeout_s: float = 10.0) -> bool:
        """Wait until the batches that this process knows of when called (of one curriculum, or of all) are applied:
        up to the last version numbered then (by its reports, or found in the database: another replica's, a
        crash's). Not for batches numbered meanwhile: under sustained reporting the updater is never idle, and a read
        that waited for it to be took its whole timeout, every time. Whether there were any. A new worker's
        imports, which its first update waits for, are not counted in `timeout_s` (up to IMPORT_LIMIT_S from its
        start): on a busy machine they alone can take longer, and a read would miss the first updates."""

        def settled() -> bool:
            if self._thread is None:
                return True
            pending = self._dirty | ({self._busy} if self._busy is not None else set())
            if curriculum_id is not None:
                pending &= {curriculum_id}
            return all(cid in numbered and self._stored.get(cid, -1) >= numbered[cid] for cid in pending)

        with self._cond:
            if curriculum_id is None:
                numbered = dict(self._numbered)
            else:
                numbered = {curriculum_id: self._numbered[curriculum_id]} if curriculum_id in self._numbered else {}
            if settled():
                return False
            deadline = time.monotonic() + timeout_s
            while not settled():
                started = self.worker.warming_since
                if started is not None:
                    deadline = max(deadline, started + IMPORT_LIMIT_S)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return True

    def close(self) -> None:
        """Apply what is pending, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self.worker.close()

    def _run(self) -> None:
        next_poll, final_poll_done, worker_started = 0.0, False, False
        while True:
            with self._cond:
                start_worker = self._worker_wanted and not worker_started
                if not self._dirty and not self._closing and not start_worker:
                    self._cond.wait(max(0.0, next_poll - time.monotonic()))
                    start_worker = self._worker_wanted and not worker_started
                closing = self._closing
            if start_worker:
                worker_started = True
                try:
                    self.worker.start()
                except Exception:  # noqa: BLE001 - the first update tries again
                    log.exception("starting the teacher update worker failed")
            if (time.monotonic() >= next_poll and not closing) or (closing and not final_poll_done):
                found = self._pending()  # outside the lock: reports notify meanwhile
                next_poll, final_poll_done = time.monotonic() + self.poll_s, closing
                with self._cond:
                    for curriculum_id, version in found:
                        self._numbered_up_to(curriculum_id, version)
            with self._cond:
                if not self._dirty:
                    if closing:
                        self._thread = None
                        self._cond.notify_all()
                        return
                    continue
                self._busy = busy = self._dirty.pop()
            try:
                self._apply_pending(busy)
            except Exception:  # noqa: BLE001 - logged; the batch stays numbered and is tried again
                log.exception("teacher update of curriculum %s failed; retrying in %.0f s", busy, self.poll_s)
                with self._cond:
                    if not closing:
                        self._dirty.add(busy)
                        self._cond.wait(self.poll_s)
            with self._cond:
                self._busy = None
                self._cond.notify_all()

    def _pending(self) -> list[tuple[int, int]]:
        """(curriculum id, last version numbered) of the curricula with batches to apply."""
        hub = self.hub
        try:
            with hub.reading() as cursor:
                return hub.driver.all(cursor, "pending_curricula")
        except Exception:  # noqa: BLE001 - the database may be briefly unreachable; poll again later
            log.exception("looking for pending teacher updates failed")
            return []

    def _apply_pending(self, curriculum_id: int) -> None:
        hub, driver = self.hub, self.hub.driver
        while True:
            with hub.reading() as cursor:
                raw = driver.one(cursor, "curriculum_by_id", {"curriculum_id": curriculum_id})
                if raw is None:
                    self.forget(curriculum_id)  # deleted, perhaps by another replica
                    return
                row = CurriculumRow(*raw)
                self._saw_stored(curriculum_id, row.teacher_version)  # by this updater or another replica's
                runtime = hub.runtime_by_id(cursor, curriculum_id)
                job = self._next_round(cursor, runtime, row.teacher_version)
                if job is None:
                    return
                with runtime.lock:
                    hub.sync(cursor, runtime, row.teacher_version)
                    if runtime.version != row.teacher_version:
                        continue  # another replica stored a version since `row` was read
                    if runtime.learner_version != runtime.version:  # the worker's copy starts from the teacher
                        job.base = (self._blueprint(runtime), runtime.teacher.state_bytes())
            # The worker's copy learns while the teacher goes on proposing.
            runtime.learner_version = -1  # in doubt until stored below
            with self._cond:
                # This curriculum's own deletion, if it came meanwhile, waits for the next job: this one rebuilds it.
                job.forget = sorted(self._deleted - {curriculum_id})
                self._deleted.intersection_update({curriculum_id})
            try:
                result = self.worker.update(job, self.timeout_s)
            except StaleLearner:
                continue  # the worker was restarted: the next round sends it the teacher
            if runtime.spare is None:
                runtime.spare = self._blueprint(runtime).build()
            runtime.spare.load_state_bytes(result.state)  # before the lock: proposals need not wait for it

            def store(tx: Tx) -> bool:
                ids = {"curriculum_id": curriculum_id, "version": job.last, "updates": len(job.batches)}
                if result.checkpoint is None:
                    changed = driver.execute(tx.cursor, "store_update_without_checkpoint", ids).rowcount
                else:
                    changed = driver.execute(tx.cursor, "store_update", {**ids, "state": result.checkpoint}).rowcount
                if changed != 1:
                    return False  # another replica stored these versions first
                created_at = driver.time(utcnow())
                driver.many(tx.cursor, "insert_update", [
                    {"curriculum_id": curriculum_id, "version": version, "stats": driver.json(stats),
                     "created_at": created_at} for version, stats in enumerate(result.stats, start=job.first)])
                return True

            def swap(stored: bool) -> bool:
                """In the writer thread, once the round is committed and before the next group: the spare, at the new
                version, becomes the teacher that proposes, before a propose job could see the version and replay the
                round into the teacher itself (up to MAX_ROUND updates, GMM fits among them, with every write waiting)."""
                if stored:
                    with runtime.lock:
                        runtime.learner_version = job.last
                        if runtime.version < job.last:  # else a request loaded the new version first
                            runtime.teacher, runtime.spare = runtime.spare, runtime.teacher
                            hub.reseed(runtime, job.last)  # not the worker copy's stream, a repeat of the last one's
                            runtime.version = job.last
                return stored

            if not hub.submit(store, swap, alone=True).result():  # alone: see TeacherHub._propose_job
                continue  # the next round reloads the stored teacher
            self._saw_stored(curriculum_id, job.last)
            metrics.UPDATES.labels(row.name).inc(len(job.batches))

    def _next_round(self, cursor: Any, runtime: Any, stored: int) -> UpdateJob | None:
        """The batches numbered after version `stored`, up to MAX_ROUND of them: a saturated service numbers them
        faster than it could store them one transaction each (docs/scale-history.md). None if there are none."""
        driver = self.hub.driver
        (numbered,) = driver.one(cursor, "last_scheduled", {"curriculum_id": runtime.curriculum_id})
        batches = []
        for version in range(stored + 1, min(numbered or 0, stored + MAX_ROUND) + 1):
            batch = read_batch(driver, cursor, runtime.curriculum_id, version)
            if not batch:
                break
            batches.append(batch)
        if not batches:
            return None
        # The checkpoint stored is the one at the last multiple of checkpoint_every: hub.sync replays from there.
        every = runtime.teacher.checkpoint_every
        last = stored + len(batches)
        checkpoint_version = last // every * every
        return UpdateJob(runtime.curriculum_id, stored + 1, batches,
                         checkpoint_version=checkpoint_version if checkpoint_version > stored else None)

    @staticmethod
    def _blueprint(runtime: Any) -> Blueprint:
        """How to build the curriculum's teacher anew, from the cached task space: the worker's copy, and the spare."""
        spec = runtime.spec
        return Blueprint(spec.teacher.algorithm, runtime.space, spec.teacher.params, spec.seed)
