"""Teacher updates in a process of their own, off the service process's GIL.

The service's threads (event loop, writer, updater) share one GIL. Under saturation the event loop and the
writer held it, and a REINFORCE update (5 to 8 ms of CPU) took 80 to 100 ms: the updater applied 5 to 8 updates/s
while the students numbered 60 (docs/scale-history.md). Here the worker keeps its own copy of each curriculum's teacher
(the learner), updates it with a round of batches and sends the new checkpoint back; the updater (updater.py)
loads that into a spare teacher (0.7 to 1.4 ms of CPU for REINFORCE) and swaps it in. The worker is a spawned
process that imports torch and the teachers itself (3 s of CPU here, 8 to 14 s of wall time on a busy machine),
started when students first propose (Updater.expect_updates); the service goes on meanwhile, and its first update
waits until the worker says it is ready. It ends when the updater closes it, or when the service dies (its pipe
closes).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the learning core is imported by the worker (serve), not by whoever imports this module
    from teacher_service.learning.task_spaces import TaskSpace
    from teacher_service.learning.teachers import Experience, Teacher

# fork would copy the service's threads' locks mid-use; spawned, each worker imports torch and the teachers itself
# (3 s of CPU), which only one that replaces a dead or stopped worker does a second time.
_CONTEXT = multiprocessing.get_context("spawn")
# The longest a new worker may take to import what it needs (3 s of CPU here, 8 to 14 s of wall time with three busy
# processes beside it); not counted in an update's time limit, and reads that settle wait for it (updater.py).
IMPORT_LIMIT_S = 60.0
# What a terminal's Ctrl-C or a stop of the whole process group sends the worker too (see `serve`).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class StaleLearner(Exception):
    """The worker has no copy of the teacher at the version an update starts from (say, it was restarted)."""


@dataclass
class Blueprint:
    """What the worker builds a curriculum's teacher from (the service's task space: no environment is made)."""

    algorithm: str
    space: TaskSpace
    params: dict[str, Any]
    seed: int

    def build(self) -> Teacher:
        from teacher_service.learning.teachers import build_teacher

        return build_teacher(self.algorithm, self.space, self.params, self.seed)


@dataclass
class UpdateJob:
    """Updates with consecutive batches, the first making version `first`."""

    curriculum_id: int
    first: int
    batches: list[list[Experience]]
    # The version whose checkpoint the service stores, if the round reaches one (Teacher.checkpoint_every).
    checkpoint_version: int | None = None
    # The teacher at version first - 1, sent when the worker's copy is not at that version.
    base: tuple[Blueprint, bytes] | None = None
    # Curricula deleted since the last job, whose copies the worker drops first.
    forget: list[int] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.first + len(self.batches) - 1


@dataclass
class UpdateResult:
    stats: list[dict[str, Any]]  # one per update
    state: bytes  # the checkpoint at the round's last version
    checkpoint: bytes | None  # the checkpoint at `checkpoint_version`


def learn(learners: dict[int, tuple[int, Teacher]], job: UpdateJob) -> UpdateResult:
    """Update the worker's copy of the job's teacher with each batch in turn."""
    for deleted in job.forget:
        learners.pop(deleted, None)
    if job.base is not None:
        blueprint, state = job.base
        teacher = blueprint.build()
        teacher.load_state_bytes(state)
        learners[job.curriculum_id] = (job.first - 1, teacher)
    # Taken out while it learns: an update that fails half-way leaves no copy behind.
    version, teacher = learners.pop(job.curriculum_id, (None, None))
    if version != job.first - 1:
        raise StaleLearner(f"no copy of curriculum {job.curriculum_id}'s teacher at version {job.first - 1}")
    stats, checkpoint = [], None
    for updated, batch in enumerate(job.batches, start=job.first):
        stats.append(teacher.update(batch))
        if updated == job.checkpoint_version:
            checkpoint = teacher.state_bytes()
    learners[job.curriculum_id] = (job.last, teacher)
    state = checkpoint if job.checkpoint_version == job.last else teacher.state_bytes()
    return UpdateResult(stats, state, checkpoint)


def serve(conn: Connection) -> None:
    """The worker's loop: a job in, ("ok", result), ("stale", message) or ("error", traceback) out."""
    # A Ctrl-C in a terminal, or a stop sent to the whole process group (systemd's default), reaches us too: the
    # service applies what is pending, then closes us; if it dies instead, our pipe closes. Before the imports: they
    # take seconds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by `start` until they were ignored
    import torch
    import torch._dynamo  # noqa: F401 - making an optimizer imports it (1.2 s here): now, not in the first update

    import teacher_service.learning.teachers  # noqa: F401 - now, not in the first update

    torch.set_num_threads(1)  # as the service: tiny networks
    try:
        conn.send(("ready", None))
    except OSError:  # the service died during our imports (BrokenPipeError): nobody to tell
        return
    learners: dict[int, tuple[int, Teacher]] = {}
    while True:
        try:
            job = conn.recv()
            if job is None:
                return
            try:
                answer = ("ok", learn(learners, job))
            except StaleLearner as exc:
                answer = ("stale", str(exc))
            except Exception:  # noqa: BLE001 - the service logs it and tries the batch again
                answer = ("error", traceback.format_exc())
            conn.send(answer)
        except (EOFError, OSError):  # the service is gone
            return


def _send(conn: Connection, payload: bytes) -> None:
    try:
        conn.send_bytes(payload)
    except OSError:
        pass  # the worker is gone: waiting for its answer finds that out


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """multiprocessing runs the caller's main module again in a new process (as __mp_main__) when it knows where
    it is. The worker needs nothing of it, and a script without an `if __name__ == "__main__":` guard that starts the
    service would start it again in the worker, each time the worker starts."""
    main = sys.modules["__main__"]
    spec, file = main.__spec__, main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__spec__ = spec
        if file is not None:
            main.__file__ = file


class UpdateWorker:
    """The service's side of the worker; used by the updater thread only (and `warming_since` by reads that settle)."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._sending: threading.Thread | None = None
        self._started_at: float | None = None  # while the worker imports: when it was started
        self._exit_hooked = False

    def start(self) -> None:
        """Start the worker if it is not running; at once: it imports what it needs, then says it is ready."""
        if self._process is not None:
            return
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=serve, args=(theirs,), name="teacher-update-worker", daemon=True)
        # Blocked in this thread, so in the new process until `serve` ignores them: a Ctrl-C in its first tens of
        # milliseconds (Python's start-up, multiprocessing's bootstrap) would end it. The resource tracker, which a
        # start starts first if it is not running, unblocks them after its own start: started before the block.
        resource_tracker.ensure_running()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            with main_module_hidden():
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        theirs.close()  # the worker's end lives in the worker only, so that it reads EOF when we are gone
        self._started_at = time.monotonic()
        self._process, self._conn = process, ours
        if not self._exit_hooked:
            # A process that exits without closing us (a script, a failed test) would wait for the worker for ever:
            # multiprocessing's own exit handler, which runs after this one, stops it with SIGTERM, which it ignores.
            atexit.register(self.close, kill=True)
            self._exit_hooked = True

    @property
    def warming_since(self) -> float | None:
        """When the worker was started (time.monotonic()), while it may still be importing; else None."""
        return self._started_at if self._process is not None else None

    def update(self, job: UpdateJob, timeout_s: float | None = None) -> UpdateResult:
        """`learn` in the worker. Raises StaleLearner, or RuntimeError if the update failed, the worker died or it
        did not answer within `timeout_s` (then it is killed: a hung update would hold up every later one, and the
        service's shutdown), not counting a new worker's imports (up to IMPORT_LIMIT_S); the next call starts
        another worker."""
        self.start()
        conn = self._conn
        if self._started_at is not None:
            self._receive(conn, IMPORT_LIMIT_S, "the teacher update worker's start")
            self._started_at = None
        # Sent from a thread of its own: a send larger than the pipe's buffer to a frozen worker (SIGSTOP, a paused
        # container) would block here for ever; killing the worker ends it. Pickled here, where errors are ours.
        self._sending = threading.Thread(target=_send, args=(conn, ForkingPickler.dumps(job)),
                                         name="teacher-update-send", daemon=True)
        self._sending.start()
        kind, result = self._receive(conn, timeout_s, "the teacher update")
        if kind == "stale":
            raise StaleLearner(result)
        if kind == "error":
            raise RuntimeError(f"the teacher update failed in the update worker:\n{result}")
        return result

    def _receive(self, conn: Connection, timeout_s: float | None, waiting_for: str) -> tuple[str, Any]:
        """The worker's next message. If the worker stops, or sends none within `timeout_s`, RuntimeError; then
        (and on any other failure) the worker is closed: a late answer would be read as the next job's."""
        process = self._process
        try:
            if conn.poll(timeout_s):
                return conn.recv()
        except (EOFError, OSError) as exc:
            process.join(5)  # it is ending: its own exit code, not close's kill
            code = self.close()
            raise RuntimeError(f"the teacher update worker stopped (exit code {code})") from exc
        except BaseException:
            self.close(kill=True)
            raise
        self.close(kill=True)
        raise RuntimeError(f"{waiting_for} took more than {timeout_s:g} s; its worker was stopped")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self, kill: bool = False) -> int | None:
        """Stop the worker (`kill`: at once, not once its update ends); its exit code. One that has not said it is
        ready holds nothing and may be importing still: it is killed, not waited for (a service stopped soon after
        its first proposal)."""
        process, conn, sending = self._process, self._conn, self._sending
        if process is None:
            return None
        self._process = self._conn = self._sending = None
        if kill or self._started_at is not None:
            process.kill()
        else:
            try:
                conn.send(None)
            except OSError:
                pass  # already gone
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        if sending is not None:
            sending.join()  # a send to a worker that is gone fails at once; only then may its pipe end be closed
        conn.close()
        return process.exitcode
