"""The launcher options of acl-run and acl-experiment, and the launcher they ask for."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from teacher_service.launch.launchers import Launcher, LocalLauncher, Resources


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the students run")
    g.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="local: processes on this machine; ray: tasks on a Ray cluster "
                   "(pip install 'acl-teacher[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="the cluster for --launcher ray: its head's host:port, or 'auto' (default: RAY_ADDRESS, "
                   "else the cluster `ray start` started on this machine, else a new one inside this command)")
    g.add_argument("--shared-dir", type=Path, default=None,
                   help="where the workers' run directories (checkpoints, logs) go; with Ray on several machines "
                   "it must be storage every node and this machine mount at the same path "
                   "(default: --out of acl-experiment, --data-dir of acl-run)")
    g.add_argument("--service-host", default=None,
                   help="address the service listens on and the workers reach it at; with Ray on several "
                   "machines, this machine's address on the cluster's network "
                   "(default: 127.0.0.1; acl-run: TEACHER_HOST if set)")
    g.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs Ray reserves per worker (default: 1)")
    g.add_argument("--worker-gpus", type=float, default=0.0, help="GPUs Ray reserves per worker (default: 0)")
    g.add_argument("--max-retries", type=int, default=3,
                   help="times Ray reruns a worker that was killed or whose node died; it resumes from its "
                   "checkpoint (default: 3)")


def make_launcher(args: argparse.Namespace, who: str, service_url: str) -> Launcher:
    negative = [flag for flag in ("worker_cpus", "worker_gpus", "max_retries") if getattr(args, flag) < 0]
    if negative:
        raise SystemExit(f"{who}: --{negative[0].replace('_', '-')} cannot be negative")
    if args.launcher == "local":
        ray_only = [flag for flag, value in (("--ray-address", args.ray_address), ("--worker-gpus", args.worker_gpus))
                    if value]
        if ray_only:
            raise SystemExit(f"{who}: {', '.join(ray_only)}: only with --launcher ray")
        return LocalLauncher()
    try:
        from teacher_service.launch.ray_launcher import RayLauncher  # only this path needs ray installed
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise SystemExit(f"{who}: --launcher ray needs ray: pip install 'acl-teacher[ray]'") from None

    return RayLauncher(args.ray_address, Resources(args.worker_cpus, args.worker_gpus), args.max_retries,
                       is_loopback(urlsplit(service_url).hostname), who)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
