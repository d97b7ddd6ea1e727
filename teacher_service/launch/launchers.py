"""Where `student-worker` runs: local processes (this module) or Ray tasks (ray_launcher.py), one interface.

acl-run and acl-experiment build the worker's arguments and its run directory; a launcher starts it,
reports its exit code through the handle's `poll()`, and stops it the way Ctrl-C would (the worker ends
its episode, reports it and checkpoints).
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from teacher_service.launch.processes import spawn, stop

WORKER_MODULE = "student_client.worker"


class WorkerHandle(Protocol):
    """A started worker; `subprocess.Popen` is one."""

    returncode: int | None

    def poll(self) -> int | None: ...


@dataclass(frozen=True)
class Resources:
    """What one worker process asks of the cluster (the local launcher runs it whatever it asks)."""

    cpus: float = 1.0
    gpus: float = 0.0


class Launcher(ABC):
    @abstractmethod
    def start(self, worker_args: list[str], workdir: Path, env: dict[str, str]) -> WorkerHandle:
        """`student-worker *worker_args` with these environment variables added, logging to workdir/worker.log."""

    @abstractmethod
    def stop(self, handles: list[WorkerHandle], timeout: float) -> None:
        """Ask each worker to stop cleanly; kill what has not exited within `timeout` seconds."""

    @abstractmethod
    def capacity(self) -> int:
        """How many workers can run at once."""

    def close(self) -> None:
        """Release the launcher's own resources (the Ray connection)."""


class LocalLauncher(Launcher):
    """Each worker a process on this machine, in a session of its own (processes.spawn)."""

    def start(self, worker_args: list[str], workdir: Path, env: dict[str, str]) -> WorkerHandle:
        return spawn([sys.executable, "-m", WORKER_MODULE, *worker_args], workdir / "worker.log",
                     {**os.environ, **env})

    def stop(self, handles: list[WorkerHandle], timeout: float) -> None:
        stop(handles, timeout)

    def capacity(self) -> int:
        return os.cpu_count() or 1
