"""Launch overhead of the Ray launcher: what a run started through Ray costs more than a local process.

The same short run (`student-worker --help`: the worker's imports, then exit) is started through the
local launcher and through Ray, one run at a time, interleaved, and timed from `start()` until the
launcher reports its exit, and until the worker process runs (seen in /proc: Linux). The differences of
each local run and the Ray run after it are Ray's overhead per run; the one until the worker runs is free of
the noise of the worker's imports. Connecting to the cluster is paid once per acl-run or acl-experiment.

    python bench/ray_launch.py                          # RAY_ADDRESS, ray start's cluster, or a new one
    python bench/ray_launch.py --ray-address HOST:PORT  # an existing cluster
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from teacher_service.launch.launchers import Launcher, LocalLauncher, Resources
from teacher_service.launch.ray_launcher import RayLauncher


def worker_running(workdir: Path) -> bool:
    """Whether `student-worker` (after the Ray task's exec wrapper, if any) runs with this checkpoint dir."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if cmdline[1:3] == [b"-m", b"student_client.worker"] and str(workdir).encode() in cmdline:
            return True
    return False


def timed_run(launcher: Launcher, workdir: Path) -> tuple[float, float]:
    """Seconds from start() until the worker process runs, and until the launcher reports its exit."""
    start = time.perf_counter()
    handle = launcher.start(["--help", "--checkpoint-dir", str(workdir)], workdir, {"OMP_NUM_THREADS": "1"})
    running = None
    while handle.poll() is None:
        if running is None and worker_running(workdir):
            running = time.perf_counter() - start
        time.sleep(0.005)
    if handle.returncode != 0 or running is None:
        raise SystemExit(f"the run failed ({handle.returncode}); see {workdir / 'worker.log'}")
    return running, time.perf_counter() - start


def quartiles(values: list[float], sign: str = "") -> str:
    low, median, high = statistics.quantiles(values, n=4)
    return f"median {median:{sign}.3f} s (quartiles {low:{sign}.3f}, {high:{sign}.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ray-address", default=None,
                   help="an existing cluster (default: RAY_ADDRESS, ray start's, or a new one)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per launcher")
    args = p.parse_args()

    start = time.perf_counter()
    ray = RayLauncher(args.ray_address, Resources(cpus=1), max_retries=0, service_on_loopback=True,
                      who="ray_launch")
    connect = time.perf_counter() - start
    local = LocalLauncher()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        first_ray, first_local = timed_run(ray, workdir), timed_run(local, workdir)  # warm-up, not counted
        pairs = [(timed_run(local, workdir), timed_run(ray, workdir)) for _ in range(args.runs)]
    ray.close()

    print(f"ray.init (connect, or start a cluster here), once per command: {connect:.2f} s")
    print(f"first run, not counted (running after, done after): ray {first_ray[0]:.2f} s, {first_ray[1]:.2f} s; "
          f"local {first_local[0]:.2f} s, {first_local[1]:.2f} s")
    for name, k in (("local", 0), ("ray", 1)):
        print(f"{name:5} worker running after {quartiles([pair[k][0] for pair in pairs])}, "
              f"done after {quartiles([pair[k][1] for pair in pairs])}")
    print(f"Ray launch overhead per run, ray - local over {args.runs} interleaved pairs (goal: at most 2 s):")
    print(f"  until the worker runs: {quartiles([r[0] - loc[0] for loc, r in pairs], '+')}")
    print(f"  until its exit is seen: {quartiles([r[1] - loc[1] for loc, r in pairs], '+')}")


if __name__ == "__main__":
    main()
