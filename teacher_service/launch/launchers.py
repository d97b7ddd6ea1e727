"""Where `student-worker` runs: local processes (this module) or Ray tasks (ray_launcher.py), one interface.

acl-run and acl-experiment build the worker's arguments and its run directory; a launcher starts it,
reports its exit code through the handle's `poll()`, and stops it the way Ctrl-C would (the worker ends
its episode, reports it and checkpoints).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

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


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the students run")
    g.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: tasks on a Ray cluster (pip install 'acl-teacher[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="the cluster to use with --launcher ray: host:port of its head, ray://host:10001, or "
                   "'auto' (default: the RAY_ADDRESS variable, else a new single-machine cluster)")
    g.add_argument("--shared-dir", type=Path, default=None,
                   help="where the workers' run directories (checkpoints, logs) go; with Ray on several machines "
                   "it must be storage every node and this machine mount at the same path (default: the output dir)")
    g.add_argument("--service-host", default=None,
                   help="address the service listens on and the workers reach it at; with Ray on several "
                   "machines, this machine's address on the cluster's network (default: 127.0.0.1)")
    g.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs Ray reserves per worker (default: 1)")
    g.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs Ray reserves per worker (default: 0)")
    g.add_argument("--max-retries", type=int, default=3,
                   help="times Ray reruns a worker that was killed or whose node died; it resumes from its "
                   "checkpoint (default: 3)")


def make_launcher(args: argparse.Namespace, who: str, service_url: str) -> Launcher:
    if args.launcher == "local":
        ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--worker-gpus", args.worker_gpus))
                    if value]
        if ray_only:
            raise SystemExit(f"{who}: {', '.join(ray_only)} need --launcher ray")
        return LocalLauncher()
    from teacher_service.launch.ray_launcher import RayLauncher  # only this path needs ray installed

    return RayLauncher(args.ray_address, Resources(args.worker_cpus, args.worker_gpus), args.max_retries,
                       is_loopback(urlsplit(service_url).hostname), who)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
