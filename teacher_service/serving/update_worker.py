"""Teacher updates in a process of their own, off the service process's GIL.

The service's threads (event loop, writer, updater) share one GIL. Under saturation the event loop and the
writer held it, and a REINFORCE update (5 to 8 ms of CPU) took 80 to 100 ms: the updater applied 5 to 8 updates/s
while the students numbered 60 (README "Scale"). Here the worker keeps its own copy of each curriculum's teacher
(the learner), updates it with a round of batches and sends the new checkpoint back; the updater (updater.py)
loads that into a spare teacher (0.7 to 1.4 ms of CPU for REINFORCE) and swaps it in. The worker is forked from a
server process that imported torch and the teachers once (3 s of CPU here), started when students first propose
(Updater.expect_updates); it ends when the updater closes it, or when the service dies (its pipe closes).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the learning core is imported by the fork server (below), not by whoever imports this module
    from teacher_service.learning.task_spaces import TaskSpace
    from teacher_service.learning.teachers import Experience, Teacher

# fork would copy the service's threads' locks mid-use; spawn would import torch again for every worker.
_CONTEXT = multiprocessing.get_context("forkserver")
# torch._dynamo: making an optimizer imports it (1.2 s here), which every worker's first update would wait for.
_CONTEXT.set_forkserver_preload(["teacher_service.learning.teachers", "torch._dynamo", __name__])


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
    import torch

    torch.set_num_threads(1)  # as the service: tiny networks
    # A Ctrl-C in a terminal, or a stop sent to the whole process group (systemd's default), reaches us too: the
    # service applies what is pending, then closes us; if it dies instead, our pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
    """The service's side of the worker; used by the updater thread only, except for its first start."""

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._sending: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        """Start the worker if it is not running (the first start in a process waits for the imports). A start
        under way in another thread (Updater.expect_updates) is waited for."""
        with self._starting:
            if self._process is not None:
                return
            ours, theirs = _CONTEXT.Pipe()
            process = _CONTEXT.Process(target=serve, args=(theirs,), name="teacher-update-worker", daemon=True)
            with main_module_hidden():
                process.start()
            theirs.close()  # the worker's end lives in the worker only, so that it reads EOF when we are gone
            self._process, self._conn = process, ours

    def update(self, job: UpdateJob, timeout_s: float | None = None) -> UpdateResult:
        """`learn` in the worker. Raises StaleLearner, or RuntimeError if the update failed, the worker died or it
        did not answer within `timeout_s` (then it is killed: a hung update would hold up every later one, and the
        service's shutdown); the next call starts another worker."""
        self.start()
        conn = self._conn
        # Sent from a thread of its own: a send larger than the pipe's buffer to a frozen worker (SIGSTOP, a paused
        # container) would block here for ever; killing the worker ends it. Pickled here, where errors are ours.
        self._sending = threading.Thread(target=_send, args=(conn, ForkingPickler.dumps(job)),
                                         name="teacher-update-send", daemon=True)
        self._sending.start()
        try:
            answered = conn.poll(timeout_s)
            if answered:
                kind, result = conn.recv()
        except (EOFError, OSError) as exc:
            code = self.close()
            raise RuntimeError(f"the teacher update worker stopped (exit code {code})") from exc
        except BaseException:
            self.close(kill=True)  # its answer, still to come, would be read as the next job's
            raise
        if not answered:
            self.close(kill=True)
            raise RuntimeError(f"the teacher update took more than {timeout_s:g} s; its worker was stopped")
        if kind == "stale":
            raise StaleLearner(result)
        if kind == "error":
            raise RuntimeError(f"the teacher update failed in the update worker:\n{result}")
        return result

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self, kill: bool = False) -> int | None:
        """Stop the worker (`kill`: at once, not once its update ends); its exit code."""
        process, conn, sending = self._process, self._conn, self._sending
        if process is None:
            return None
        self._process = self._conn = self._sending = None
        if kill:
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
