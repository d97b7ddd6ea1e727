"""The Ray launcher: each worker a Ray task on a cluster; the only module that imports ray.

The task runs `student-worker` as a child process on whichever node Ray picks, with the task's resource
request (CPUs, GPUs). The service stays where it is; the worker reaches it over HTTP. Its run directory
must be storage the cluster shares, so that a rerun on another node resumes from its checkpoint. Ray
reruns the task (up to --max-retries) when its node or its process dies, and when the worker is killed
by a signal (OOM killer, preemption, kill -9): a worker that exits with an error is not rerun, since the
same arguments would fail again.

Stopping (Ctrl-C in acl-run): the launcher writes a stop file in each run directory, which the task watches, and
cancels the task, which raises KeyboardInterrupt in it. Either makes the task stop its worker cleanly. The file is
the one that cannot be lost: a cancel raced with the task once in our tests and never arrived, and the worker
trained on until it was killed, two minutes later, without its last checkpoint (Ray's issue 32954 is alike).
How the stopped worker ended goes to a file beside it too (a cancelled task's result is lost), so that a worker killed
because it did not stop in time is reported as failed, not as stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

from teacher_service.launch.launchers import WORKER_MODULE, Launcher, Resources, WorkerHandle

# Linux: the worker is SIGKILLed when the task's process dies (PR_SET_PDEATHSIG survives exec); otherwise
# it would live on beside the rerun task's worker, both on one checkpoint. Set in the child before exec,
# not in a preexec_fn, which can deadlock in a process with threads (Ray's workers have many).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL); "
    "os.getppid() == int(sys.argv[1]) or sys.exit('student-worker: its Ray task exited before it started'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


STOP_TIMEOUT = 120  # seconds a stopped worker has to end its episode and checkpoint, as acl-run gives it
STOP_FILE = "stop-requested"  # in the run directory: written by RayLauncher.stop, removed by its start
STOP_RESULT = "stop-result"  # in the run directory: how a stopped worker ended (`stop_worker`), removed by start
KILL_MARGIN = 15  # seconds the launcher gives a stopped task beyond its worker's time to stop, before it kills it


class WorkerKilled(RuntimeError):
    """The worker died of a signal: Ray reruns the task, which resumes from the checkpoint."""


def worker_command(worker_args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", WORKER_MODULE, *worker_args]
    if sys.platform == "linux":
        return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]
    return cmd


def run_worker(worker_args: list[str], workdir: str, env: dict[str, str]) -> int:
    """The Ray task: `student-worker` on this node until it exits; its exit code."""
    workdir = Path(workdir)
    if not workdir.is_dir():  # not retried: another node would not see it either
        raise FileNotFoundError(f"{workdir} does not exist on node {ray.util.get_node_ip_address()}: "
                                "--shared-dir must be storage that every node mounts at the same path")
    stop_file = workdir / STOP_FILE
    if stop_file.exists():  # stopped before it started
        return -signal.SIGINT
    with open(workdir / "worker.log", "a") as log:
        child = subprocess.Popen(worker_command(worker_args), stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **env}, start_new_session=True)
    try:
        while child.poll() is None:  # short sleeps: ray.cancel's KeyboardInterrupt lands between them
            if stop_file.exists():
                return stop_worker(child, workdir)
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop_worker(child, workdir)
        raise
    if child.returncode < 0:
        raise WorkerKilled(f"student-worker was killed by {signal.Signals(-child.returncode).name}")
    return child.returncode


def stop_worker(child: subprocess.Popen, workdir: Path) -> int:
    """As Ctrl-C locally: the worker ends its episode and checkpoints; killed if it has not within STOP_TIMEOUT.
    SIGTERM, since Ray's worker processes ignore SIGINT and the child inherits that until it sets its handler.
    Returns the task's result, also written to STOP_RESULT: -SIGINT if the worker stopped (it exits 0 once stopped,
    or dies of the SIGTERM before it set its handler, having trained nothing yet), else its exit status (-SIGKILL:
    it did not stop in time, and its last episodes since its checkpoint are lost)."""
    child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    while child.returncode is None:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            with contextlib.suppress(OSError), open(workdir / "worker.log", "a") as log:  # where acl-run points
                log.write(f"\nstudent-worker did not stop within {STOP_TIMEOUT} s of the stop: killed\n")
        except KeyboardInterrupt:  # the launcher's cancel, arriving while the stop file's stop is under way
            pass  # the same stop: keep waiting, until the same deadline
    result = -signal.SIGINT if child.returncode in (0, -signal.SIGTERM) else child.returncode
    with contextlib.suppress(OSError):  # unwritten, a cancelled task counts as stopped, as it did before
        written = workdir / f"{STOP_RESULT}.{os.getpid()}"
        written.write_text(str(result))
        os.replace(written, workdir / STOP_RESULT)  # whole or not at all, should the launcher kill the task meanwhile
    return result


def stop_result(workdir: Path) -> int:
    """How a cancelled task's worker ended (`stop_worker`); -SIGINT, stopped, for a task that never started one."""
    try:
        return int((workdir / STOP_RESULT).read_text())
    except (OSError, ValueError):
        return -signal.SIGINT


class RayWorker:
    """The handle of one worker's task; `returncode` as a process's: 0 done, -SIGINT stopped, else failed."""

    def __init__(self, ref: ray.ObjectRef, workdir: Path) -> None:
        self.ref = ref
        self.workdir = workdir
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and ray.wait([self.ref], timeout=0)[0]:
            try:
                self.returncode = ray.get(self.ref)
            except TaskCancelledError:
                self.returncode = stop_result(self.workdir)
            except RayError as exc:  # retries used up, or an error a rerun cannot fix
                self.returncode = 1
                with open(self.workdir / "worker.log", "a") as log:  # where the launchers point the user
                    log.write(f"\nRay: the worker's task failed: {exc}\n")
        return self.returncode


class RayLauncher(Launcher):
    def __init__(self, address: str | None, resources: Resources, max_retries: int, service_on_loopback: bool,
                 who: str) -> None:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SystemExit(f"{who}: cannot connect to the Ray cluster at {address or 'RAY_ADDRESS'}: {exc} "
                             "(a cluster with token authentication needs RAY_AUTH_MODE=token and its token in "
                             "RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
        here = ray.util.get_node_ip_address()
        others = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {here})
        if service_on_loopback and others:
            ray.shutdown()
            raise SystemExit(f"{who}: the Ray cluster has nodes on other machines ({', '.join(others)}), which "
                             "cannot reach a service on 127.0.0.1; give --service-host with this machine's "
                             f"address on the cluster's network (Ray sees it as {here})")
        self.resources = resources
        self.task = ray.remote(run_worker).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=max_retries,
            retry_exceptions=[WorkerKilled], name="student-worker")

    def start(self, worker_args: list[str], workdir: Path, env: dict[str, str]) -> WorkerHandle:
        (workdir / STOP_FILE).unlink(missing_ok=True)  # a previous run's stop
        (workdir / STOP_RESULT).unlink(missing_ok=True)
        ref = self.task.remote(worker_args, str(workdir), env)
        return RayWorker(ref, workdir)

    def stop(self, handles: list[WorkerHandle], timeout: float) -> None:
        running = [h for h in handles if h.poll() is None]
        for handle in running:
            try:
                (handle.workdir / STOP_FILE).touch()  # the task stops its worker cleanly
            except OSError as exc:  # the cancel below still stops it, and the stop goes on
                print(f"could not write the stop file in {handle.workdir}: {exc}", file=sys.stderr)
        for handle in running:
            ray.cancel(handle.ref)  # and so does the KeyboardInterrupt this raises in it; a pending task is dropped
        refs = [h.ref for h in running]
        # The tasks' own kill (stop_worker, after STOP_TIMEOUT) first, which records that the worker was killed.
        waited = max(timeout, STOP_TIMEOUT) + KILL_MARGIN
        _, late = ray.wait(refs, num_returns=len(refs), timeout=waited) if refs else ([], [])
        for handle in (h for h in running if h.ref in late):  # not even that: the force-cancel kills the worker
            with contextlib.suppress(OSError), open(handle.workdir / STOP_RESULT, "x") as result:
                result.write(str(-signal.SIGKILL))
        for ref in late:
            ray.cancel(ref, force=True)  # kills the task's process, and with it the worker
        for ref in late:
            try:
                ray.get(ref, timeout=30)
            except (RayError, GetTimeoutError):
                pass
        for handle in handles:
            handle.poll()

    def capacity(self) -> int:
        cluster = ray.cluster_resources()
        fits = [cluster.get("CPU", 0) / self.resources.cpus] if self.resources.cpus else []
        if self.resources.gpus:
            fits.append(cluster.get("GPU", 0) / self.resources.gpus)
        return max(int(min(fits, default=1)), 1)

    def close(self) -> None:
        ray.shutdown()
