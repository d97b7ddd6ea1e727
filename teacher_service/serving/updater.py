"""Teacher updates off the request path: one thread applies each curriculum's closed batches, in order.

A report that completes a batch numbers it (the teacher version that will have learned from it, stored
as the batch's `consumed_version`) in its own transaction and is answered; this thread then applies batch
N = stored version + 1: it reads the batch's committed rows, updates a copy of the teacher (proposals go on
from the teacher meanwhile: a propose changes nothing but the generator, as checkpoints already assume),
and stores version N, the checkpoint and the `teacher_updates` row in one transaction that only succeeds if
the stored version is still N - 1; then the copy becomes the teacher. So each batch is applied exactly once and in order,
across replicas too: of two replicas applying the same batch, one stores it and the other reloads it.
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

log = logging.getLogger("teacher_service")


class Host(Protocol):
    """What the updater uses of the hub (hub.py), which owns it."""

    driver: Driver
    committer: GroupCommitter

    def reading(self) -> AbstractContextManager[Any]: ...
    def runtime_by_id(self, cursor: Any, curriculum_id: int) -> Any: ...
    def sync(self, cursor: Any, runtime: Any, stored_version: int) -> None: ...
    def build(self, spec: Any) -> tuple[Any, Any]: ...
    def reseed(self, runtime: Any, version: int) -> None: ...


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
    def __init__(self, hub: Host, poll_s: float = 1.0) -> None:
        self.hub = hub
        self.poll_s = poll_s  # how often it looks for batches that another replica numbered
        self._dirty: set[int] = set()  # curricula that may have a batch to apply
        self._busy: int | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="teacher-updater", daemon=True)
                self._thread.start()

    def notify(self, curriculum_id: int) -> None:
        """A batch of this curriculum was numbered: apply it soon."""
        self.start()
        with self._cond:
            self._dirty.add(curriculum_id)
            self._cond.notify_all()

    def settle(self, curriculum_id: int | None = None, timeout_s: float = 10.0) -> bool:
        """Wait until the batches that this process knows of (of one curriculum, or of all) are applied;
        whether there were any."""

        def settled() -> bool:
            if self._thread is None:
                return True
            if curriculum_id is None:
                return not self._dirty and self._busy is None
            return curriculum_id not in self._dirty and self._busy != curriculum_id

        with self._cond:
            if settled():
                return False
            self._cond.wait_for(settled, timeout_s)
            return True

    def close(self) -> None:
        """Apply what is pending, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        next_poll, final_poll_done = 0.0, False
        while True:
            with self._cond:
                if not self._dirty and not self._closing:
                    self._cond.wait(max(0.0, next_poll - time.monotonic()))
                closing = self._closing
            if (time.monotonic() >= next_poll and not closing) or (closing and not final_poll_done):
                found = self._pending()  # outside the lock: reports notify meanwhile
                next_poll, final_poll_done = time.monotonic() + self.poll_s, closing
                with self._cond:
                    self._dirty.update(found)
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

    def _pending(self) -> set[int]:
        hub = self.hub
        try:
            with hub.reading() as cursor:
                return {cid for (cid,) in hub.driver.all(cursor, "pending_curricula")}
        except Exception:  # noqa: BLE001 - the database may be briefly unreachable; poll again later
            log.exception("looking for pending teacher updates failed")
            return set()

    def _apply_pending(self, curriculum_id: int) -> None:
        hub, driver = self.hub, self.hub.driver
        while True:
            with hub.reading() as cursor:
                raw = driver.one(cursor, "curriculum_by_id", {"curriculum_id": curriculum_id})
                if raw is None:
                    return  # deleted
                row = CurriculumRow(*raw)
                version = row.teacher_version + 1
                batch = read_batch(driver, cursor, curriculum_id, version)
                if not batch:
                    return
                runtime = hub.runtime_by_id(cursor, curriculum_id)
                with runtime.lock:
                    hub.sync(cursor, runtime, row.teacher_version)
                    if runtime.version != row.teacher_version:
                        continue  # another replica stored this version since `row` was read
                    if runtime.learner_version != runtime.version:
                        _, runtime.learner = hub.build(runtime.spec)
                        runtime.learner.load_state_bytes(runtime.teacher.state_bytes())
                        runtime.learner_version = runtime.version
            # The copy learns without the teacher's lock: proposals go on from the teacher meanwhile.
            learner, runtime.learner_version = runtime.learner, -1  # in doubt until swapped in below
            stats = learner.update(batch)
            # A teacher may checkpoint every few updates: the ones since are replayed on load (hub.sync).
            state = learner.state_bytes() if version % learner.checkpoint_every == 0 else None

            def store(tx: Tx) -> bool:
                ids = {"curriculum_id": curriculum_id, "version": version}
                if state is None:
                    changed = driver.execute(tx.cursor, "store_update_without_checkpoint", ids).rowcount
                else:
                    changed = driver.execute(tx.cursor, "store_update", {**ids, "state": state}).rowcount
                if changed != 1:
                    return False  # another replica stored this version first
                driver.execute(tx.cursor, "insert_update",
                               {**ids, "stats": driver.json(stats), "created_at": driver.time(utcnow())})
                return True

            if not hub.committer.call(store, alone=True):  # alone: see TeacherHub._propose_job
                continue  # the next round reloads the stored teacher
            metrics.UPDATES.labels(row.name).inc()
            with runtime.lock:  # stored: the updated copy becomes the teacher that proposes
                if runtime.version >= version:
                    # A request saw version N stored first and loaded it: the copy, at N too, stays the copy.
                    runtime.learner, runtime.learner_version = learner, version
                    continue
                previous, runtime.teacher = runtime.teacher, learner
                hub.reseed(runtime, version)  # not the copy's stream, which repeats the previous one's draws
                runtime.version = version
            # The previous teacher becomes the next copy: bring it to this version.
            if state is not None:
                previous.load_state_bytes(state)
            else:
                previous.update(batch)
            runtime.learner, runtime.learner_version = previous, version
